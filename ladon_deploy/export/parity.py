"""Comparing an exported stage's outputs with PyTorch's: dense tensors by relative L2, detections by matching.

Tolerances (fp32, ONNX Runtime CPU against PyTorch eager on the same seeded inputs):
    dense stages (encoder, body, head_cls, head_seg): relative L2 error <= 1e-4 for every output
    head_det: boxes within 0.5 px and scores within 1e-3 for matched detections, and at least 90% of PyTorch's
              detections matched (same label, IoU >= 0.5); near-tied scores may swap a few boxes at the top-k cut.
"""
from typing import Any, Dict, List, Sequence

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


def compare_detections(reference: Sequence[np.ndarray], candidate: Sequence[np.ndarray]) -> Dict[str, Any]:
    """reference/candidate: (boxes [N,4], scores [N], labels [N])."""
    ref_boxes, ref_scores, ref_labels = (np.asarray(a) for a in reference)
    boxes, scores, labels = (np.asarray(a) for a in candidate)
    pairs = match_detections(ref_boxes, ref_labels, boxes, labels)
    if pairs:
        ref_index, index = (np.array(p) for p in zip(*pairs))
        box_error = float(np.abs(ref_boxes[ref_index] - boxes[index]).max())
        score_error = float(np.abs(ref_scores[ref_index] - scores[index]).max())
    else:
        box_error = score_error = 0.0
    matched_fraction = len(pairs) / float(len(ref_boxes)) if len(ref_boxes) else (1.0 if len(boxes) == 0 else 0.0)
    passed = (box_error <= BOX_TOLERANCE_PX and score_error <= SCORE_TOLERANCE
              and matched_fraction >= MIN_MATCHED_FRACTION)
    return {"metric": "matched_detections", "detections_reference": int(len(ref_boxes)),
            "detections_candidate": int(len(boxes)), "matched": len(pairs), "matched_fraction": matched_fraction,
            "max_box_error_px": box_error, "max_score_error": score_error,
            "tolerance": {"box_px": BOX_TOLERANCE_PX, "score": SCORE_TOLERANCE,
                          "matched_fraction": MIN_MATCHED_FRACTION},
            "passed": bool(passed)}
