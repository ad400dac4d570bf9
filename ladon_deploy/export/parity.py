"""Comparing an exported stage's outputs with PyTorch's: dense tensors by relative L2, detections by the shared
matcher (ladon_deploy/compare.py: optimal one-to-one, replacements reported as such).

Tolerances (fp32, ONNX Runtime CPU against PyTorch eager on the same seeded inputs), each inclusive:
    dense stages (encoder, body, head_cls, head_seg): relative L2 error <= 1e-4 for every output (dense_passes)
    head_det: a pair agrees when boxes are within 0.5 px (every coordinate) and scores within 1e-3 (same label,
              IoU >= 0.5); detection_failures then asks for at least 90% of each side matched and no unexplained
              difference: every missing, extra or replaced detection must lie within 1e-3 of a score cut (the score
              threshold, or the other side's lowest kept score when that side is at the per-image cap).
The PyTorch reference of head_det is the ranked detection head (models/ranked_detection.py), whose outputs do not
depend on the order of tied scores; the manifest records where it departs from the model as evaluated.
"""
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from ladon_deploy import compare

DENSE_REL_L2 = 1e-4
BOX_TOLERANCE_PX = 0.5
SCORE_TOLERANCE = 1e-3
MIN_MATCHED_FRACTION = 0.9


def dense_errors(reference: np.ndarray, candidate: np.ndarray) -> Dict[str, float]:
    reference = np.asarray(reference, dtype=np.float64)
    candidate = np.asarray(candidate, dtype=np.float64)
    if reference.shape != candidate.shape:
        return {"max_abs": float("inf"), "rel_l2": float("inf")}
    difference = candidate - reference
    return {"max_abs": float(np.abs(difference).max()) if difference.size else 0.0,
            "rel_l2": compare.relative_l2(reference, candidate)}


def dense_passes(rel_l2: float, tolerance: float = DENSE_REL_L2) -> bool:
    """The dense gate: relative L2 at most the tolerance (equal passes, NaN fails)."""
    return compare.within(rel_l2, "<=", tolerance)


def compare_dense(names: Sequence[str], reference: Sequence[np.ndarray],
                  candidate: Sequence[np.ndarray], tolerance: float = DENSE_REL_L2) -> Dict[str, Any]:
    outputs = {name: dense_errors(r, c) for name, r, c in zip(names, reference, candidate)}
    worst_rel = max(o["rel_l2"] for o in outputs.values())
    worst_abs = max(o["max_abs"] for o in outputs.values())
    return {"metric": "rel_l2", "max_abs": worst_abs, "rel_l2": worst_rel, "tolerance": {"rel_l2": tolerance},
            "outputs": outputs, "passed": all(dense_passes(o["rel_l2"], tolerance) for o in outputs.values())}


def detection_failures(figures: Dict[str, Any], min_matched_fraction: float = MIN_MATCHED_FRACTION) -> List[str]:
    """The detection gate on compare.compare_detections' figures: what it misses, one line each (none: passed)."""
    return compare.failures(figures, [("matched_fraction", ">=", min_matched_fraction), ("unexplained", "<=", 0)])


def compare_detections(reference: Sequence[np.ndarray], candidate: Sequence[np.ndarray],
                       score_threshold: Optional[float] = None,
                       max_detections: Optional[int] = None) -> Dict[str, Any]:
    """reference/candidate: (boxes [N,4], scores [N], labels [N]); figures and verdict of the export's gate."""
    figures = compare.compare_detections(reference, candidate, BOX_TOLERANCE_PX, SCORE_TOLERANCE,
                                         score_threshold=score_threshold, max_detections=max_detections)
    failed = detection_failures(figures)
    figures.update({"metric": "matched_detections",
                    "tolerance": {"box_px": BOX_TOLERANCE_PX, "score": SCORE_TOLERANCE, "iou": compare.MATCH_IOU,
                                  "matched_fraction": MIN_MATCHED_FRACTION, "unexplained": 0,
                                  "score_threshold": score_threshold, "max_detections": max_detections},
                    "failures": failed, "passed": not failed})
    return figures


def describe_replacement(check: Dict[str, Any]) -> str:
    """'; first replaced detection: ...' naming both detections of the first replaced pair, or '' if none."""
    if not check.get("replacements"):
        return ""
    pair = check["replacements"][0]
    return ("; first replaced detection: label %d, PyTorch score %.4g box %s, ONNX score %.4g box %s (%.1f px apart)"
            % (pair["label"], pair["reference_score"], [round(v, 1) for v in pair["reference_box"]],
               pair["candidate_score"], [round(v, 1) for v in pair["candidate_box"]], pair["box_error_px"]))


def merge_checks(checks: Sequence[Dict[str, Any]], sizes: Sequence[Sequence[int]]) -> Dict[str, Any]:
    """One figure per stage over every checked input size: counts summed, errors at their worst, fractions at
    their lowest, passed only if every size passed; each size's own figures are kept under per_input_size."""
    merged: Dict[str, Any] = {}
    for key, value in checks[0].items():
        values = [check[key] for check in checks]
        if key == "passed":
            merged[key] = all(values)
        elif isinstance(value, list):
            merged[key] = [item for check in checks for item in check[key]]
        elif key.endswith("fraction"):
            merged[key] = min(values)
        elif isinstance(value, bool) or not isinstance(value, (int, float)):
            merged[key] = value
        elif isinstance(value, int):
            merged[key] = sum(values)
        else:
            merged[key] = max(values)
    merged.pop("outputs", None)
    merged["per_input_size"] = [dict(check, input_size=list(size)) for check, size in zip(checks, sizes)]
    return merged
