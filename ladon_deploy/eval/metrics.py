"""Task metrics: top-1/top-5 accuracy, COCO mAP (pycocotools), mIoU from a confusion matrix.

Each metric is computed from per-image records that a journal can hold (ranked class ids, detections in original
image pixels, a sparse confusion matrix), so a resumed run gives exactly what an uninterrupted one gives.
"""
import contextlib
import io
from typing import Any, Dict, Iterable, List, Optional, Sequence

import numpy as np

VOC_CLASSES = 21
IGNORE_LABEL = 255


def topk_correct(ranked: Sequence[int], label: int, k: int) -> bool:
    """Whether `label` is among the first k of `ranked` (class ids, most probable first)."""
    return int(label) in [int(c) for c in ranked[:k]]


def topk_accuracy(rankings: Sequence[Sequence[int]], labels: Sequence[int], k: int) -> float:
    """The fraction of images whose label is among their k most probable classes."""
    if len(rankings) != len(labels):
        raise ValueError("%d rankings for %d labels" % (len(rankings), len(labels)))
    if not labels:
        raise ValueError("no images to score")
    return sum(topk_correct(r, l, k) for r, l in zip(rankings, labels)) / float(len(labels))


# --- segmentation -------------------------------------------------------------------------------------------------


def confusion(prediction: np.ndarray, target: np.ndarray, classes: int = VOC_CLASSES,
              ignore: int = IGNORE_LABEL) -> np.ndarray:
    """classes x classes counts, rows = ground truth, columns = prediction; `ignore` pixels left out."""
    prediction = np.asarray(prediction).astype(np.int64).ravel()
    target = np.asarray(target).astype(np.int64).ravel()
    if prediction.shape != target.shape:
        raise ValueError("prediction and target differ in size: %d and %d pixels" % (prediction.size, target.size))
    keep = target != ignore
    if np.any((target[keep] < 0) | (target[keep] >= classes)):
        raise ValueError("ground truth holds a label outside 0..%d and %d" % (classes - 1, ignore))
    if np.any((prediction[keep] < 0) | (prediction[keep] >= classes)):
        raise ValueError("prediction holds a label outside 0..%d" % (classes - 1))
    return np.bincount(target[keep] * classes + prediction[keep], minlength=classes * classes).reshape(classes, classes)


def sparse_confusion(matrix: np.ndarray) -> List[List[int]]:
    """[[truth, predicted, count], ...] for the non-zero cells: what a journal line stores."""
    rows, cols = np.nonzero(matrix)
    return [[int(r), int(c), int(matrix[r, c])] for r, c in zip(rows, cols)]


def dense_confusion(cells: Iterable[Sequence[int]], classes: int = VOC_CLASSES) -> np.ndarray:
    matrix = np.zeros((classes, classes), dtype=np.int64)
    for truth, predicted, count in cells:
        matrix[truth, predicted] += count
    return matrix


def class_iou(matrix: np.ndarray) -> np.ndarray:
    """IoU per class (intersection over union from the confusion matrix); NaN where a class is in neither the ground
    truth nor the prediction."""
    matrix = np.asarray(matrix, dtype=np.float64)
    intersection = np.diag(matrix)
    union = matrix.sum(0) + matrix.sum(1) - intersection
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, intersection / np.where(union > 0, union, 1.0), np.nan)


def mean_iou(matrix: np.ndarray) -> float:
    """Mean IoU over the classes present in the ground truth or the prediction (over all 21 on VOC val, where every
    class occurs; a tiny set may lack some, which then do not count)."""
    iou = class_iou(matrix)
    if np.all(np.isnan(iou)):
        raise ValueError("the confusion matrix is empty: no labelled pixels")
    return float(np.nanmean(iou))


# --- detection ----------------------------------------------------------------------------------------------------


def coco_records(image_id: int, detections: Iterable[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Detections {"box": [x1, y1, x2, y2], "score", "label"} in original pixels -> COCO result records (xywh);
    the label is the COCO category id (the head's 91-entry list is indexed by category id)."""
    records = []
    for detection in detections:
        x1, y1, x2, y2 = [float(v) for v in detection["box"]]
        records.append({"image_id": int(image_id), "category_id": int(detection["label"]),
                        "bbox": [x1, y1, x2 - x1, y2 - y1], "score": float(detection["score"])})
    return records


def coco_map(coco: Any, results: List[Dict[str, Any]], image_ids: Sequence[int]) -> Dict[str, Any]:
    """COCO bbox AP@[.5:.95] and AP50 over `image_ids` (pycocotools COCOeval, its printing silenced).

    With no detections at all, AP is 0 where the images hold annotations (pycocotools cannot load an empty result
    list)."""
    from pycocotools.cocoeval import COCOeval

    ids = sorted(int(i) for i in image_ids)
    if not results:
        annotated = coco.getAnnIds(imgIds=ids, iscrowd=False)
        return {"map": 0.0 if annotated else None, "ap50": 0.0 if annotated else None, "stats": None}
    with contextlib.redirect_stdout(io.StringIO()):
        detections = coco.loadRes(results)
        evaluator = COCOeval(coco, detections, "bbox")
        evaluator.params.imgIds = ids
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    stats = [float(v) for v in evaluator.stats]
    # pycocotools reports -1 where no ground truth exists for the area range or set.
    return {"map": _defined(stats[0]), "ap50": _defined(stats[1]), "stats": stats}


def _defined(value: float) -> Optional[float]:
    return None if value < 0 else value
