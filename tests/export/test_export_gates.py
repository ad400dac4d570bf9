"""The export's parity gate at each of its boundaries, both ways: a figure exactly at its tolerance passes, one just
past it fails (docs/fidelity.md lists them)."""
import numpy as np
import pytest

from ladon_deploy.export import parity

UP, DOWN = np.inf, -np.inf


def _past(value, direction):
    return float(np.nextafter(value, direction))


def test_dense_relative_l2_boundary():
    assert parity.dense_passes(parity.DENSE_REL_L2)
    assert not parity.dense_passes(_past(parity.DENSE_REL_L2, UP))
    assert not parity.dense_passes(float("nan"))
    assert parity.DENSE_REL_L2 == 1e-4


def test_detection_gate_figures_boundaries():
    at = {"matched_fraction": parity.MIN_MATCHED_FRACTION, "unexplained": 0}
    assert parity.detection_failures(at) == []
    below = dict(at, matched_fraction=_past(parity.MIN_MATCHED_FRACTION, DOWN))
    assert parity.detection_failures(below)[0].startswith("matched_fraction")
    one = dict(at, unexplained=1)
    assert parity.detection_failures(one)[0].startswith("unexplained")
    assert parity.MIN_MATCHED_FRACTION == 0.9


def _one(box, score, label=1):
    return (np.array([box], np.float64), np.array([score], np.float64), np.array([label]))


def test_box_and_score_tolerances_of_a_pair():
    """A pair 0.5 px / 1e-3 apart agrees; just past either, it is a replacement, which fails the gate."""
    reference = _one([10, 10, 60, 60], 0.0)
    at_box = parity.compare_detections(reference, _one([10.5, 10, 60, 60], 0.0))
    assert at_box["passed"] and at_box["matched"] == 1
    past_box = parity.compare_detections(reference, _one([_past(10.5, UP), 10, 60, 60], 0.0))
    assert (past_box["replaced"], past_box["unexplained"], past_box["passed"]) == (1, 1, False)
    at_score = parity.compare_detections(reference, _one([10, 10, 60, 60], parity.SCORE_TOLERANCE))
    assert at_score["passed"]
    past_score = parity.compare_detections(reference, _one([10, 10, 60, 60], _past(parity.SCORE_TOLERANCE, UP)))
    assert past_score["replaced"] == 1 and not past_score["passed"]
    assert (parity.BOX_TOLERANCE_PX, parity.SCORE_TOLERANCE) == (0.5, 1e-3)


def test_the_score_threshold_excuses_only_scores_within_tolerance_of_it():
    threshold = 0.05
    edge = threshold + parity.SCORE_TOLERANCE
    nothing = (np.zeros((0, 4)), np.zeros(0), np.zeros(0, np.int64))
    at = parity.compare_detections(_one([10, 10, 60, 60], edge), nothing, score_threshold=threshold)
    assert (at["missing"], at["unexplained"]) == (1, 0)
    past = parity.compare_detections(_one([10, 10, 60, 60], _past(edge, UP)), nothing, score_threshold=threshold)
    assert (past["missing"], past["unexplained"]) == (1, 1)
    extra = parity.compare_detections(nothing, _one([10, 10, 60, 60], _past(edge, UP)), score_threshold=threshold)
    assert (extra["extra"], extra["unexplained"]) == (1, 1)


def test_the_per_image_cap_excuses_only_scores_within_tolerance_of_the_last_kept():
    kept = (np.array([[0, 0, 10, 10], [100, 100, 120, 120]], np.float64), np.array([0.9, 0.5]), np.array([1, 2]))
    lowest = 0.5
    edge = lowest + parity.SCORE_TOLERANCE
    at = (np.concatenate([kept[0][:1], [[200, 200, 230, 230]]]), np.array([0.9, edge]), np.array([1, 3]))
    result = parity.compare_detections(at, kept, max_detections=2)
    assert (result["missing"], result["extra"], result["unexplained"]) == (1, 1, 0)
    past = (at[0], np.array([0.9, _past(edge, UP)]), at[2])
    result = parity.compare_detections(past, kept, max_detections=2)
    assert result["unexplained"] == 1 and not result["passed"]
    # Not at the cap (room for a third detection): nothing is excused.
    assert parity.compare_detections(at, kept, max_detections=3)["unexplained"] == 2


def test_matched_fraction_boundary_end_to_end():
    """10 reference detections, 9 matched and 1 excused at the score threshold: 0.9 passes; 8 of 10 fails."""
    rng = np.random.RandomState(0)
    corners = rng.uniform(0, 300, (10, 2)) + np.arange(10)[:, None] * 400  # disjoint boxes
    boxes = np.concatenate([corners, corners + 50], axis=1)
    scores = np.linspace(0.9, 0.5, 10)
    labels = np.arange(1, 11)
    scores[9] = scores[8] = 0.0505  # near the 0.05 threshold: either side may drop them
    reference = (boxes, scores, labels)
    nine = parity.compare_detections(reference, (boxes[:9], scores[:9], labels[:9]), score_threshold=0.05)
    assert (nine["matched_fraction"], nine["unexplained"], nine["passed"]) == (0.9, 0, True)
    eight = parity.compare_detections(reference, (boxes[:8], scores[:8], labels[:8]), score_threshold=0.05)
    assert (eight["matched_fraction"], eight["unexplained"], eight["passed"]) == (0.8, 0, False)


@pytest.mark.parametrize("failed", [True, False])
def test_merged_verdict_is_every_size(failed):
    reference = _one([10, 10, 60, 60], 0.5)
    good = parity.compare_detections(reference, reference)
    other = parity.compare_detections(reference, _one([12, 10, 62, 60], 0.5) if failed else reference)
    merged = parity.merge_checks([good, other], [[416, 416], [352, 416]])
    assert merged["passed"] is not failed
    assert merged["replaced"] == (1 if failed else 0) and len(merged["replacements"]) == merged["replaced"]


def test_the_failure_line_names_the_replaced_pair():
    reference = _one([100, 100, 200, 220], 0.61, 7)
    replaced = parity.compare_detections(reference, _one([111.5, 100, 211.5, 220], 0.31, 7))
    line = parity.describe_replacement(replaced)
    assert "label 7, PyTorch score 0.61" in line and "ONNX score 0.31" in line and "(11.5 px apart)" in line
    assert parity.describe_replacement(parity.compare_detections(reference, reference)) == ""
