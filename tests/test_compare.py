"""The one detection matcher every gate shares (ladon_deploy/compare.py): optimal, honest about replacements."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from ladon_deploy.compare import Detections, box_iou, linear_assignment, match_detections, within

TOL = {"box_tolerance_px": 0.5, "score_tolerance": 1e-3}


def _detections(boxes, scores, labels):
    return (np.array(boxes, np.float32).reshape(-1, 4), np.array(scores, np.float32), np.array(labels))


def _greedy_count(reference, candidate):
    """The matcher this module replaced: references in score order take the best unused IoU >= 0.5."""
    iou = box_iou(reference[0], candidate[0])
    iou[reference[2][:, None] != candidate[2][None, :]] = -1
    taken, count = set(), 0
    for i in np.argsort(-reference[1], kind="stable"):
        row = [(-1 if j in taken else iou[i, j]) for j in range(len(candidate[0]))]
        j = int(np.argmax(row))
        if row[j] >= 0.5:
            taken.add(j)
            count += 1
    return count


def test_optimal_assignment_pairs_what_greedy_cannot():
    # Reference A overlaps candidates X (best) and Y; reference B overlaps only X. Greedy gives A X and loses B.
    reference = _detections([[0, 0, 100, 100], [0, 30, 100, 130]], [0.9, 0.8], [1, 1])
    candidate = _detections([[0, 15, 100, 115], [0, -20, 100, 80]], [0.9, 0.8], [1, 1])
    assert _greedy_count(reference, candidate) == 1
    result = match_detections(reference, candidate, box_tolerance_px=float("inf"), score_tolerance=float("inf"))
    assert result.matched == [(0, 1), (1, 0)]
    assert (result.missing, result.extra, result.replaced) == ([], [], [])


def test_an_11px_different_detection_is_reported_as_a_replacement():
    """The case greedy matching called '100% matched, box error 11.5 px': a different detection took the slot."""
    shared = [[10, 10, 60, 60], [200, 200, 260, 280]]
    reference = _detections(shared + [[100, 100, 200, 220]], [0.9, 0.8, 0.61], [3, 4, 7])
    candidate = _detections(shared + [[111.5, 100, 211.5, 220]], [0.9, 0.8, 0.31], [3, 4, 7])
    result = match_detections(reference, candidate, **TOL)
    assert result.matched == [(0, 0), (1, 1)]
    assert result.replaced == [(2, 2)]
    assert (result.missing, result.extra) == ([], [])
    summary = result.summary()
    assert (summary["matched"], summary["replaced"], summary["max_box_error_px"]) == (2, 1, 0.0)
    replacement = summary["replacements"][0]
    assert replacement["box_error_px"] == pytest.approx(11.5)
    assert replacement["score_error"] == pytest.approx(0.30, abs=1e-6)
    assert (replacement["reference_score"], replacement["label"]) == (pytest.approx(0.61), 7)
    # A score change alone (same box) is a replacement too.
    rescored = _detections(shared + [[100, 100, 200, 220]], [0.9, 0.8, 0.31], [3, 4, 7])
    assert match_detections(reference, rescored, **TOL).replaced == [(2, 2)]


def test_an_agreeing_pair_outranks_two_replacements():
    # A can pair with X (agreeing) or Y (30 px off); B only with X (30 px off). One exact match beats two
    # replacements; the maximum number of pairs alone would take A Y and B X.
    reference = _detections([[0, 0, 100, 100], [30, 0, 130, 100]], [0.9, 0.8], [1, 1])
    candidate = _detections([[0, 0, 100, 100], [-30, 0, 70, 100]], [0.9, 0.9], [1, 1])
    assert box_iou(reference[0], candidate[0]).round(2).tolist() == [[1.0, 0.54], [0.54, 0.25]]
    result = match_detections(reference, candidate, **TOL)
    assert result.matched == [(0, 0)]
    assert (result.replaced, result.missing, result.extra) == ([], [1], [1])


def test_tolerances_are_inclusive_both_ways():
    reference = _detections([[0, 0, 100, 100]], [0.5], [1])
    at_box = _detections([[0.5, 0, 100, 100]], [0.5], [1])
    past_box = _detections([[0.5001, 0, 100, 100]], [0.5], [1])
    assert match_detections(reference, at_box, **TOL).matched == [(0, 0)]
    assert match_detections(reference, past_box, **TOL).replaced == [(0, 0)]
    # Scores exactly representable: 0.75 - 0.5 is exactly the 0.25 tolerance.
    at_score = (reference[0], np.array([0.75]), reference[2])
    assert match_detections(reference, at_score, box_tolerance_px=0.5, score_tolerance=0.25).matched == [(0, 0)]
    past_score = (reference[0], np.array([np.nextafter(0.75, 1)]), reference[2])
    assert match_detections(reference, past_score, box_tolerance_px=0.5, score_tolerance=0.25).replaced == [(0, 0)]
    # IoU exactly 0.5 pairs; just under does not.
    half = _detections([[0, 0, 100, 100]], [0.5], [1])
    overlapping = _detections([[0, 0, 100, 50]], [0.5], [1])  # IoU = 0.5
    assert box_iou(half[0], overlapping[0])[0, 0] == 0.5
    assert match_detections(half, overlapping, box_tolerance_px=100, score_tolerance=1).matched == [(0, 0)]
    under = _detections([[0, 0, 100, 49.9]], [0.5], [1])
    result = match_detections(half, under, box_tolerance_px=100, score_tolerance=1)
    assert (result.matched, result.missing, result.extra) == ([], [0], [0])


def test_labels_never_pair_and_empty_sets():
    reference = _detections([[0, 0, 10, 10]], [0.9], [1])
    other_label = _detections([[0, 0, 10, 10]], [0.9], [2])
    result = match_detections(reference, other_label, **TOL)
    assert (result.matched, result.missing, result.extra) == ([], [0], [0])
    empty = _detections(np.zeros((0, 4)), [], [])
    assert match_detections(empty, empty, **TOL).summary()["matched"] == 0
    only_reference = match_detections(reference, empty, **TOL)
    assert (only_reference.missing, only_reference.extra) == ([0], [])
    only_candidate = match_detections(empty, reference, **TOL)
    assert (only_candidate.missing, only_candidate.extra) == ([], [0])
    with pytest.raises(ValueError):
        Detections(np.zeros((2, 4)), [0.1], [1, 2])


def test_ties_are_broken_by_the_lowest_index():
    reference = _detections([[0, 0, 10, 10]], [0.5], [1])
    twins = _detections([[0, 0, 10, 10], [0, 0, 10, 10]], [0.5, 0.5], [1, 1])
    result = match_detections(reference, twins, **TOL)
    assert (result.matched, result.extra) == ([(0, 0)], [1])
    both = match_detections(twins, twins, **TOL)
    assert both.matched == [(0, 0), (1, 1)]
    cost = np.zeros((3, 3))
    assert [list(a) for a in linear_assignment(cost)] == [[0, 1, 2], [0, 1, 2]]


def test_dict_inputs_and_mean_error():
    reference = {"boxes": np.array([[0, 0, 10, 10]]), "scores": np.array([0.9]), "labels": np.array([1])}
    candidate = {"boxes": np.array([[1, 1, 11, 11]]), "scores": np.array([0.9]), "labels": np.array([1])}
    result = match_detections(reference, candidate, box_tolerance_px=float("inf"), score_tolerance=float("inf"))
    assert result.mean_coordinate_error(result.matched) == 1.0


@pytest.mark.parametrize("shape", [(1, 1), (5, 5), (4, 9), (9, 4), (12, 12), (0, 3), (3, 0)])
def test_assignment_equals_scipy(shape):
    scipy_optimize = pytest.importorskip("scipy.optimize")
    rng = np.random.RandomState(shape[0] * 31 + shape[1])
    for trial in range(20):
        # Half of the trials with small integer costs: many equal-cost optima.
        cost = rng.randint(0, 4, shape).astype(float) if trial % 2 else rng.uniform(-5, 5, shape)
        rows, columns = linear_assignment(cost)
        expected_rows, expected_columns = scipy_optimize.linear_sum_assignment(cost)
        assert len(rows) == len(expected_rows) == min(shape)
        assert len(set(rows)) == len(rows) and len(set(columns)) == len(columns)
        assert list(rows) == sorted(rows)
        assert cost[rows, columns].sum() == pytest.approx(cost[expected_rows, expected_columns].sum(), abs=1e-9)


def test_assignment_refuses_bad_costs():
    with pytest.raises(ValueError):
        linear_assignment(np.array([[np.inf, 1.0]]))
    with pytest.raises(ValueError):
        linear_assignment(np.zeros(3))


def test_within_is_inclusive_and_nan_fails():
    assert within(0.9, ">=", 0.9) and not within(np.nextafter(0.9, 0), ">=", 0.9)
    assert within(4.0, "<=", 4.0) and not within(np.nextafter(4.0, 5), "<=", 4.0)
    assert not within(float("nan"), ">=", 0.0) and not within(float("nan"), "<=", 1.0)
    with pytest.raises(ValueError):
        within(1.0, "<", 2.0)


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ON_EDGE = """
import json, sys
import numpy as np
from ladon_deploy.compare import match_detections
rng = np.random.RandomState(0)
corners = rng.uniform(0, 200, (40, 2))
boxes = np.concatenate([corners, corners + rng.uniform(20, 60, (40, 2))], axis=1)
labels = rng.randint(1, 4, 40)
moved = boxes + rng.normal(0, 2, boxes.shape)
result = match_detections((boxes, np.linspace(1, 0, 40), labels), (moved[::-1], np.linspace(0, 1, 40), labels[::-1]),
                          1.0, 0.05)
print(json.dumps([result.matched, result.replaced, result.missing, result.extra]))
"""


@pytest.mark.parametrize("venv", [".venv36", ".venv38"])
def test_the_matcher_gives_the_same_report_on_the_device_pythons(venv):
    """The engine gate runs on the device: Python 3.6 / numpy 1.19 (JetPack 4.6) and Python 3.8 give this
    machine's report."""
    python = os.path.join(ROOT, venv, "bin", "python")
    if not os.path.exists(python):
        pytest.skip("no %s (setup.sh found no such interpreter)" % venv)
    here = subprocess.run([sys.executable, "-c", ON_EDGE], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=ROOT))
    there = subprocess.run([python, "-c", ON_EDGE], capture_output=True, text=True, timeout=120,
                           env=dict(os.environ, PYTHONPATH=ROOT))
    assert there.returncode == 0, there.stderr
    report = json.loads(here.stdout)
    assert report[0] and report[1]  # some matched, some replaced: the comparison is not trivial
    assert json.loads(there.stdout) == report
