"""The comparator every export and every LC baseline check uses."""
import numpy as np
import pytest

from ladon_deploy.export.parity import compare_dense, compare_detections, dense_errors, merge_checks


def test_detection_matching_by_label_and_iou():
    ref = (np.array([[0, 0, 10, 10], [20, 20, 40, 40], [0, 0, 5, 5]], np.float32),
           np.array([0.9, 0.8, 0.1], np.float32), np.array([1, 2, 3]))
    got = (np.array([[20.2, 20, 40, 40], [0, 0, 10, 10.1]], np.float32),
           np.array([0.8, 0.9], np.float32), np.array([2, 1]))
    result = compare_detections(ref, got)
    assert (result["detections_reference"], result["detections_candidate"], result["matched"]) == (3, 2, 2)
    assert (result["missing"], result["extra"], result["unexplained"]) == (1, 0, 1)
    assert result["max_box_error_px"] == pytest.approx(0.2, abs=1e-5)
    assert not result["passed"]  # 2 of 3 matched is under the 90% floor
    wrong_label = (got[0], got[1], np.array([5, 5]))
    assert compare_detections(ref, wrong_label)["matched"] == 0
    assert compare_detections(ref, tuple(a[:0] for a in got))["matched"] == 0
    assert compare_detections(tuple(a[:0] for a in ref), tuple(a[:0] for a in got))["passed"]


def test_detection_tolerances_fail_when_exceeded():
    boxes = np.array([[0, 0, 10, 10]], np.float32)
    ref = (boxes, np.array([0.5], np.float32), np.array([1]))
    assert compare_detections(ref, (boxes + 0.4, ref[1], ref[2]))["passed"]
    assert not compare_detections(ref, (boxes + 0.6, ref[1], ref[2]))["passed"]
    assert not compare_detections(ref, (boxes, ref[1] + 2e-3, ref[2]))["passed"]


def test_dense_relative_l2():
    reference = np.ones((4, 4), np.float32)
    assert dense_errors(reference, reference)["rel_l2"] == 0.0
    assert dense_errors(reference, reference * 1.001)["rel_l2"] == pytest.approx(1e-3, rel=1e-3)
    assert dense_errors(reference, np.ones((2, 2)))["rel_l2"] == float("inf")
    assert not compare_dense(["x"], [reference], [reference * 1.001])["passed"]
    assert compare_dense(["x"], [reference], [reference * (1 + 1e-5)])["passed"]


def _detections(count, seed=0, low=0.3):
    rng = np.random.default_rng(seed)
    corners = rng.uniform(0, 300, (count, 2))
    boxes = np.concatenate([corners, corners + rng.uniform(20, 80, (count, 2))], axis=1).astype(np.float32)
    scores = np.sort(rng.uniform(low, 1.0, count))[::-1].astype(np.float32)
    return boxes, scores, rng.integers(1, 91, count)


def _with_box(detections, box, score, label):
    boxes, scores, labels = detections
    return (np.concatenate([boxes, np.array([box], np.float32)]), np.append(scores, np.float32(score)),
            np.append(labels, label))


def test_an_extra_candidate_box_fails_even_among_many():
    reference = _detections(40)
    assert compare_detections(reference, reference, score_threshold=0.05, max_detections=100)["passed"]
    extra = _with_box(reference, [400, 400, 450, 460], 0.9, 7)  # 40 of 41 matched: above any fraction floor
    result = compare_detections(reference, extra, score_threshold=0.05, max_detections=100)
    assert (result["matched"], result["extra"], result["unexplained"]) == (40, 1, 1)
    assert not result["passed"]
    missing = compare_detections(extra, reference, score_threshold=0.05, max_detections=100)
    assert (missing["missing"], missing["unexplained"], missing["passed"]) == (1, 1, False)


def test_boxes_a_score_cut_can_decide_are_excused():
    reference = _detections(40)
    # Scores within the score tolerance of the threshold: either side may keep the box.
    at_threshold = _with_box(reference, [400, 400, 450, 460], 0.0505, 7)
    assert compare_detections(reference, at_threshold, score_threshold=0.05, max_detections=100)["passed"]
    assert not compare_detections(reference, at_threshold, score_threshold=None, max_detections=100)["passed"]
    # Both sides full at the top-k cut, each keeping a different near-tied last box.
    full = _detections(10, seed=1, low=0.5)
    ours = _with_box(full, [400, 400, 450, 460], 0.2, 3)
    theirs = _with_box(full, [0, 300, 40, 350], 0.2004, 5)
    swapped = compare_detections(ours, theirs, score_threshold=0.05, max_detections=11)
    assert (swapped["missing"], swapped["extra"], swapped["unexplained"], swapped["passed"]) == (1, 1, 0, True)
    # The same swap is a difference when the lists are not at the cut.
    assert not compare_detections(ours, theirs, score_threshold=0.05, max_detections=100)["passed"]


def test_merged_figures_cover_every_probe_size():
    reference = _detections(30)
    good = compare_detections(reference, reference, score_threshold=0.05, max_detections=100)
    shifted = (reference[0] + 0.25, reference[1] + 5e-4, reference[2])
    worse = compare_detections(reference, shifted, score_threshold=0.05, max_detections=100)
    merged = merge_checks([good, worse], [[416, 416], [352, 416]])
    assert merged["passed"]
    assert (merged["detections_reference"], merged["detections_candidate"], merged["matched"]) == (60, 60, 60)
    assert merged["max_box_error_px"] == pytest.approx(0.25, abs=1e-4)
    assert merged["max_score_error"] == pytest.approx(5e-4, abs=1e-5)
    assert [c["input_size"] for c in merged["per_input_size"]] == [[416, 416], [352, 416]]
    failing = compare_detections(reference, _with_box(reference, [400, 400, 450, 460], 0.9, 7),
                                 score_threshold=0.05, max_detections=100)
    late_failure = merge_checks([good, failing], [[416, 416], [352, 416]])
    assert not late_failure["passed"] and late_failure["unexplained"] == 1 and late_failure["extra"] == 1
    dense = merge_checks([compare_dense(["x"], [np.ones(4)], [np.ones(4)]),
                          compare_dense(["x"], [np.ones(4)], [np.ones(4) * 1.00002])], [[1], [2]])
    assert dense["rel_l2"] == pytest.approx(2e-5, rel=1e-3) and "outputs" not in dense
