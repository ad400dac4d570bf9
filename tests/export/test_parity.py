"""The comparator every export and every LC baseline check uses."""
import numpy as np
import pytest

from ladon_deploy.export.parity import compare_dense, compare_detections, dense_errors


def test_detection_matching_by_label_and_iou():
    ref = (np.array([[0, 0, 10, 10], [20, 20, 40, 40], [0, 0, 5, 5]], np.float32),
           np.array([0.9, 0.8, 0.1], np.float32), np.array([1, 2, 3]))
    got = (np.array([[20.2, 20, 40, 40], [0, 0, 10, 10.1]], np.float32),
           np.array([0.8, 0.9], np.float32), np.array([2, 1]))
    result = compare_detections(ref, got)
    assert (result["detections_reference"], result["detections_candidate"], result["matched"]) == (3, 2, 2)
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
