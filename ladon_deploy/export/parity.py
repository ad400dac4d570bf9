"""Comparing an exported stage's outputs with PyTorch's: dense tensors by relative L2, detections by matching.

Tolerances (fp32, ONNX Runtime CPU against PyTorch eager on the same seeded inputs):
    dense stages (encoder, body, head_cls, head_seg): relative L2 error <= 1e-4 for every output
    head_det: boxes within 0.5 px and scores within 1e-3 for matched detections (same label, IoU >= 0.5), counted
              in both directions: every reference box matched and every ONNX box matched, except boxes whose score
              lies within 1e-3 of the score threshold or of the top-k cut (there the score tolerance can decide
              which side keeps a box), and at least 90% of each side matched.
"""
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

DENSE_REL_L2 = 1e-4
BOX_TOLERANCE_PX = 0.5
SCORE_TOLERANCE = 1e-3
MIN_MATCHED_FRACTION = 0.9
MATCH_IOU = 0.5


def dense_errors(reference: np.ndarray, candidate: np.ndarray) -> Dict[str, float]:
    reference = np.asarray(reference, dtype=np.float64)
    candidate = np.asarray(candidate, dtype=np.float64)
    if reference.shape != candidate.shape:
        return {"max_abs": float("inf"), "rel_l2": float("inf")}
    difference = candidate - reference
    norm = float(np.linalg.norm(reference))
    rel = float(np.linalg.norm(difference)) / norm if norm > 0 else float(np.linalg.norm(difference))
    return {"max_abs": float(np.abs(difference).max()) if difference.size else 0.0, "rel_l2": rel}


def compare_dense(names: Sequence[str], reference: Sequence[np.ndarray],
                  candidate: Sequence[np.ndarray], tolerance: float = DENSE_REL_L2) -> Dict[str, Any]:
    outputs = {name: dense_errors(r, c) for name, r, c in zip(names, reference, candidate)}
    worst_rel = max(o["rel_l2"] for o in outputs.values())
    worst_abs = max(o["max_abs"] for o in outputs.values())
    return {"metric": "rel_l2", "max_abs": worst_abs, "rel_l2": worst_rel, "tolerance": {"rel_l2": tolerance},
            "outputs": outputs, "passed": bool(worst_rel <= tolerance)}


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    top_left = np.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(bottom_right - top_left, 0, None).prod(axis=2)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def match_detections(ref_boxes: np.ndarray, ref_labels: np.ndarray, boxes: np.ndarray,
                     labels: np.ndarray) -> List[tuple]:
    """Greedy one-to-one matching in the reference's (score) order: same label, highest IoU >= MATCH_IOU."""
    if len(ref_boxes) == 0 or len(boxes) == 0:
        return []
    iou = box_iou(ref_boxes.astype(np.float64), boxes.astype(np.float64))
    iou[ref_labels[:, None] != labels[None, :]] = -1.0
    taken = np.zeros(len(boxes), dtype=bool)
    pairs = []
    for i in range(len(ref_boxes)):
        row = np.where(taken, -1.0, iou[i])
        j = int(row.argmax())
        if row[j] >= MATCH_IOU:
            taken[j] = True
            pairs.append((i, j))
    return pairs


def _unexplained(scores: np.ndarray, unmatched: np.ndarray, other_scores: np.ndarray,
                 score_threshold: Optional[float], max_detections: Optional[int]) -> int:
    """How many unmatched boxes no score tolerance can account for.

    A box may be on one side only when a score within SCORE_TOLERANCE of a cut decided it: the score threshold, or
    the last score the other side kept when that side is full (max_detections, the top-k cut). Any other extra or
    missing box is a difference between the two graphs.
    """
    if not len(unmatched):
        return 0
    explained = np.zeros(len(unmatched), dtype=bool)
    box_scores = scores[unmatched].astype(np.float64)
    if score_threshold is not None:
        explained |= box_scores <= score_threshold + SCORE_TOLERANCE
    if max_detections is not None and len(other_scores) >= max_detections:
        explained |= box_scores <= float(np.min(other_scores)) + SCORE_TOLERANCE
    return int((~explained).sum())


def compare_detections(reference: Sequence[np.ndarray], candidate: Sequence[np.ndarray],
                       score_threshold: Optional[float] = None,
                       max_detections: Optional[int] = None) -> Dict[str, Any]:
    """reference/candidate: (boxes [N,4], scores [N], labels [N]).

    Counted in both directions: a reference box without a match is missing, a candidate box without one is extra,
    and each fails the check unless a score cut explains it (see _unexplained); at least MIN_MATCHED_FRACTION of
    each side must be matched either way.
    """
    ref_boxes, ref_scores, ref_labels = (np.asarray(a) for a in reference)
    boxes, scores, labels = (np.asarray(a) for a in candidate)
    pairs = match_detections(ref_boxes, ref_labels, boxes, labels)
    if pairs:
        ref_index, index = (np.array(p) for p in zip(*pairs))
        box_error = float(np.abs(ref_boxes[ref_index] - boxes[index]).max())
        score_error = float(np.abs(ref_scores[ref_index] - scores[index]).max())
    else:
        ref_index = index = np.zeros(0, dtype=np.int64)
        box_error = score_error = 0.0
    missing = np.setdiff1d(np.arange(len(ref_boxes)), ref_index)
    extra = np.setdiff1d(np.arange(len(boxes)), index)
    unexplained = (_unexplained(ref_scores, missing, scores, score_threshold, max_detections)
                   + _unexplained(scores, extra, ref_scores, score_threshold, max_detections))
    fraction_reference = len(pairs) / float(len(ref_boxes)) if len(ref_boxes) else 1.0
    fraction_candidate = len(pairs) / float(len(boxes)) if len(boxes) else 1.0
    matched_fraction = min(fraction_reference, fraction_candidate)
    passed = (box_error <= BOX_TOLERANCE_PX and score_error <= SCORE_TOLERANCE
              and matched_fraction >= MIN_MATCHED_FRACTION and unexplained == 0)
    return {"metric": "matched_detections", "detections_reference": int(len(ref_boxes)),
            "detections_candidate": int(len(boxes)), "matched": len(pairs), "missing": int(len(missing)),
            "extra": int(len(extra)), "unexplained": unexplained, "matched_fraction": matched_fraction,
            "max_box_error_px": box_error, "max_score_error": score_error,
            "tolerance": {"box_px": BOX_TOLERANCE_PX, "score": SCORE_TOLERANCE,
                          "matched_fraction": MIN_MATCHED_FRACTION, "unexplained": 0,
                          "score_threshold": score_threshold, "max_detections": max_detections},
            "passed": bool(passed)}


def merge_checks(checks: Sequence[Dict[str, Any]], sizes: Sequence[Sequence[int]]) -> Dict[str, Any]:
    """One figure per stage over every checked input size: counts summed, errors at their worst, fractions at
    their lowest, passed only if every size passed; each size's own figures are kept under per_input_size."""
    merged: Dict[str, Any] = {}
    for key, value in checks[0].items():
        values = [check[key] for check in checks]
        if key == "passed":
            merged[key] = all(values)
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
