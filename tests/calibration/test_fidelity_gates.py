"""The INT8 fidelity gate at each threshold, both ways, and its detection and classification figures."""
import numpy as np
import pytest

from ladon_deploy.calibration import fidelity

METRICS = sorted(fidelity.THRESHOLDS)


def _past(value, comparison):
    """The nearest float on the failing side of `value`."""
    return float(np.nextafter(value, -np.inf if comparison == ">=" else np.inf))


@pytest.mark.parametrize("metric", METRICS)
def test_each_threshold_passes_at_its_value_and_fails_just_past_it(metric):
    comparison, threshold = fidelity.THRESHOLDS[metric]
    assert fidelity.threshold_passes(metric, threshold)
    assert not fidelity.threshold_passes(metric, _past(threshold, comparison))
    assert not fidelity.threshold_passes(metric, float("nan"))
    [at] = fidelity.check_thresholds({metric: threshold})
    [past] = fidelity.check_thresholds({metric: _past(threshold, comparison)})
    assert at["passed"] and not past["passed"]
    assert fidelity.failures([at, past]) == ["%s %.4g (needs %s %.4g)" % (metric, past["value"], comparison,
                                                                         threshold)]


def test_both_directions_are_present_and_ceilings_fail_above():
    directions = {comparison for comparison, _ in fidelity.THRESHOLDS.values()}
    assert directions == {">=", "<="}
    checks = fidelity.check_thresholds({"body.rel_l2": 0.3, "det.box_error_px": 4.5,
                                        "encoder.payload_ratio_deviation": 0.06, "cls.top1_agreement": 1.0})
    assert [c["passed"] for c in checks] == [False, False, True, False]


def test_top5_overlap_pooled_lands_on_the_threshold():
    """Four images at 4/5 overlap are exactly 0.8, the threshold (a mean of per-image floats could land an ulp off)."""
    rows = [{"cls.top5_overlap": 0.8, "cls.top1_agreement": 1.0}] * 3 + [{"cls.top5_overlap": 0.8,
                                                                          "cls.top1_agreement": 0.0}]
    summary = fidelity.summarize(rows)
    assert summary["cls.top5_overlap"] == 0.8 and summary["cls.top1_agreement"] == 0.75
    assert all(c["passed"] for c in fidelity.check_thresholds(summary))
    rows[0] = {"cls.top5_overlap": 0.6, "cls.top1_agreement": 1.0}
    assert not fidelity.check_thresholds(fidelity.summarize(rows))[1]["passed"]


def test_classification_ties_keep_the_lower_class():
    probabilities = np.zeros(10)
    probabilities[[7, 2, 5]] = 0.3
    assert fidelity.top_k(probabilities, 3) == [2, 5, 7]


def _detections(boxes, scores, labels):
    return {"boxes": np.array(boxes, np.float64).reshape(-1, 4), "scores": np.array(scores, np.float64),
            "labels": np.array(labels)}


def test_detection_figures_use_the_optimal_matcher_and_its_boundaries():
    # Greedy by reference score gave A the candidate B needed: optimal pairs both.
    reference = _detections([[0, 0, 100, 100], [0, 30, 100, 130]], [0.9, 0.8], [1, 1])
    candidate = _detections([[0, 15, 100, 115], [0, -20, 100, 80]], [0.2, 0.2], [1, 1])
    figures = fidelity.match_detections(candidate, reference)
    assert (figures["matched"], figures["matched_fraction"], figures["candidate_detections"]) == (2, 1.0, 0)
    assert figures["box_error_px"] == pytest.approx((7.5 + 10) / 2)
    # Reference detections count from DETECTION_SCORE inclusive.
    at = _detections([[0, 0, 10, 10]], [fidelity.DETECTION_SCORE], [1])
    below = _detections([[0, 0, 10, 10]], [np.nextafter(fidelity.DETECTION_SCORE, 0)], [1])
    assert fidelity.match_detections(at, at)["reference_detections"] == 1
    assert fidelity.match_detections(below, below)["reference_detections"] == 0
    # IoU exactly DETECTION_IOU pairs, just under does not.
    half = _detections([[0, 0, 100, 50]], [0.9], [1])
    assert fidelity.match_detections(half, _detections([[0, 0, 100, 100]], [0.9], [1]))["matched"] == 1
    under = _detections([[0, 0, 100, 49.99]], [0.9], [1])
    assert fidelity.match_detections(under, _detections([[0, 0, 100, 100]], [0.9], [1]))["matched"] == 0
    assert (fidelity.DETECTION_SCORE, fidelity.DETECTION_IOU) == (0.5, 0.5)
