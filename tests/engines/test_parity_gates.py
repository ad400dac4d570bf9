"""The engine build's parity gate at each tolerance, both ways, per precision; head_det compared as detections."""
import numpy as np
import pytest

from ladon_deploy.engines import parity

PRECISIONS = sorted(parity.TOLERANCES)
UP, DOWN = np.inf, -np.inf


def _past(value, direction):
    return float(np.nextafter(value, direction))


@pytest.mark.parametrize("precision", PRECISIONS)
def test_float_output_and_symbol_boundaries(precision):
    tolerance = parity.tolerance_for(precision, "encoder")
    assert parity.float_output_passes(tolerance["rel_l2"], tolerance)
    assert not parity.float_output_passes(_past(tolerance["rel_l2"], UP), tolerance)
    assert not parity.float_output_passes(float("nan"), tolerance)
    if "symbol_agreement" in tolerance:
        assert parity.symbol_agreement_passes(tolerance["symbol_agreement"], tolerance)
        assert not parity.symbol_agreement_passes(_past(tolerance["symbol_agreement"], DOWN), tolerance)
    assert "symbol_agreement" not in parity.tolerance_for(precision, "body")


@pytest.mark.parametrize("precision", PRECISIONS)
def test_detection_gate_boundaries(precision):
    tolerance = parity.tolerance_for(precision, "head_det")
    at = {"matched_fraction": tolerance["matched_fraction"], "unexplained": 0}
    assert parity.detection_failures(at, tolerance) == []
    below = dict(at, matched_fraction=_past(tolerance["matched_fraction"], DOWN))
    assert parity.detection_failures(below, tolerance)[0].startswith("matched_fraction")
    assert parity.detection_failures(dict(at, unexplained=1), tolerance)[0].startswith("unexplained")


def _det(box, score, label=1):
    return {"boxes": np.array([box], np.float32), "scores": np.array([score], np.float64),
            "labels": np.array([label], np.int64)}


@pytest.mark.parametrize("precision", PRECISIONS)
def test_detection_pairs_at_the_box_and_score_tolerance(precision):
    tolerance = parity.tolerance_for(precision, "head_det")
    reference = _det([8, 8, 72, 72], 0.0)
    # Box coordinates and tolerances here are exact in float32 (0.5, 2, 8 px).
    at_box = _det([8 + tolerance["box_px"], 8, 72, 72], 0.0)
    assert parity.compare_detection_outputs(reference, at_box, precision)["passed"]
    past_box = _det([np.nextafter(np.float32(8 + tolerance["box_px"]), np.float32(UP)), 8, 72, 72], 0.0)
    figures = parity.compare_detection_outputs(reference, past_box, precision)
    assert figures["replaced"] == 1 and not figures["passed"]
    assert parity.compare_detection_outputs(reference, _det([8, 8, 72, 72], tolerance["score"]), precision)["passed"]
    past_score = _det([8, 8, 72, 72], _past(tolerance["score"], UP))
    assert not parity.compare_detection_outputs(reference, past_score, precision)["passed"]


def test_an_fp16_head_with_reordered_detections_passes_where_dense_arrays_failed():
    """Same detections, slightly moved and in another order (NMS on another engine): the dense comparison of the
    arrays failed it; as detections it passes, and a missing confident detection fails it."""
    rng = np.random.RandomState(0)
    corners = rng.uniform(0, 300, (30, 2)) + np.arange(30)[:, None] * 400
    boxes = np.concatenate([corners, corners + 60], axis=1).astype(np.float32)
    reference = {"boxes": boxes, "scores": np.linspace(0.9, 0.3, 30).astype(np.float32),
                 "labels": rng.randint(1, 91, 30).astype(np.int64)}
    order = rng.permutation(30)
    moved = {"boxes": reference["boxes"][order] + 0.7, "scores": reference["scores"][order] + 0.004,
             "labels": reference["labels"][order]}
    assert not parity.compare_outputs("head_cls", reference, moved, "fp16")["passed"]  # as dense arrays
    figures = parity.compare_detection_outputs(reference, moved, "fp16", (0.05, 100))
    assert figures["passed"] and figures["matched"] == 30
    assert not parity.compare_detection_outputs(reference, moved, "fp32", (0.05, 100))["passed"]
    dropped = {name: value[1:] for name, value in moved.items()}
    figures = parity.compare_detection_outputs(reference, dropped, "fp16", (0.05, 100))
    assert figures["missing"] == 1 and figures["unexplained"] == 1 and not figures["passed"]
    assert not parity.compare_detection_outputs(reference, {"boxes": boxes}, "fp16")["passed"]


def test_integer_outputs_must_agree_exactly():
    reference = {"labels": np.arange(10, dtype=np.int64)}
    assert parity.compare_outputs("head_cls", reference, {"labels": np.arange(10, dtype=np.int64)}, "int8")["passed"]
    changed = np.arange(10, dtype=np.int64)
    changed[3] = 0
    assert not parity.compare_outputs("head_cls", reference, {"labels": changed}, "int8")["passed"]
