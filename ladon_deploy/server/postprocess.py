"""Turning the task heads' raw outputs into results, in numpy only.

The arithmetic that maps results back to the original image follows torchvision exactly (``resize_boxes`` for
boxes, ``F.interpolate(mode="nearest")`` for masks), so a deployed result equals what evaluation measured.

Class names ship as package data (``labels/*.txt``, one name per line, generated once from torchvision's weight
metadata) so that the edge never needs torchvision to name a class.

On the edge import path: Python 3.6 / numpy 1.19 clean, never imports torch.
"""

import collections
import io
import os
from typing import Dict, List, Sequence, Tuple, Union

import numpy as np
from PIL import Image

from ladon_deploy.atomic import write_bytes_atomically

LABEL_SETS = {"imagenet": 1000, "coco": 91, "voc": 21}

_LABELS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "labels")
_label_cache: Dict[str, List[str]] = {}

ClassScore = collections.namedtuple("ClassScore", ["class_id", "probability", "name"])

Size = Tuple[int, int]


def load_labels(name: str) -> List[str]:
    """Class names of ``name`` ("imagenet", "coco" with '__background__' and 'N/A' entries, or "voc")."""
    if name not in LABEL_SETS:
        raise ValueError("unknown label set %r (expected one of %s)" % (name, ", ".join(sorted(LABEL_SETS))))
    cached = _label_cache.get(name)
    if cached is not None:
        return cached
    path = os.path.join(_LABELS_DIR, name + ".txt")
    try:
        with io.open(path, "r", encoding="utf-8") as handle:
            names = [line.rstrip("\r\n") for line in handle]
    except IOError as exc:
        raise RuntimeError("label file %s is missing from the installed package: %s" % (path, exc))
    while names and names[-1] == "":
        names.pop()
    if len(names) != LABEL_SETS[name]:
        raise RuntimeError("label file %s has %d names, expected %d" % (path, len(names), LABEL_SETS[name]))
    _label_cache[name] = names
    return names


def _pair(size: Sequence[int], what: str) -> Size:
    if len(size) != 2 or int(size[0]) < 1 or int(size[1]) < 1:
        raise ValueError("%s must be a positive (height, width), got %r" % (what, tuple(size)))
    return int(size[0]), int(size[1])


# --- classification -------------------------------------------------------------------------------------------


def top_classes(probabilities: np.ndarray, k: int = 5, labels: str = "imagenet") -> List[ClassScore]:
    """The ``k`` most probable classes of a [1, C] or [C] probability vector, most probable first.

    Ties keep the lower class id first (what torch.topk returns on CPU is not specified for ties).
    """
    probs = np.asarray(probabilities)
    if probs.ndim == 2 and probs.shape[0] == 1:
        probs = probs[0]
    names = load_labels(labels)
    if probs.ndim != 1 or probs.shape[0] != len(names):
        raise ValueError("expected probabilities of shape [1, %d], got %s" % (len(names), np.shape(probabilities)))
    if k < 1:
        raise ValueError("k must be at least 1, got %d" % k)
    order = np.argsort(-probs, kind="stable")[:k]
    return [ClassScore(int(i), float(probs[i]), names[i]) for i in order]


# --- detection ------------------------------------------------------------------------------------------------


def rescale_boxes(boxes: np.ndarray, original_size: Sequence[int], resized_size: Sequence[int]) -> np.ndarray:
    """Map [N, 4] (x1, y1, x2, y2) boxes from resized-image pixels to original-image pixels.

    Same arithmetic as torchvision's ``resize_boxes(boxes, resized_size, original_size)``: float32 ratios
    original/resized, one multiplication per coordinate, no clipping.
    """
    orig_h, orig_w = _pair(original_size, "original_size")
    res_h, res_w = _pair(resized_size, "resized_size")
    boxes = np.asarray(boxes)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError("expected boxes of shape [N, 4], got %s" % (boxes.shape,))
    if not np.issubdtype(boxes.dtype, np.floating):
        boxes = boxes.astype(np.float32)
    ratio_h = np.float32(orig_h) / np.float32(res_h)
    ratio_w = np.float32(orig_w) / np.float32(res_w)
    # float32 ratio scalars times a float64 array stay float64, as a 0-dim float32 tensor does in torch.
    scale = np.array([ratio_w, ratio_h, ratio_w, ratio_h], dtype=np.float32).astype(boxes.dtype)
    return boxes * scale


def detection_results(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, original_size: Sequence[int],
                      resized_size: Sequence[int], score_threshold: float = 0.0) -> List[Dict[str, object]]:
    """Detections as ``{"box": [x1, y1, x2, y2], "score", "label", "name"}`` in original-image pixels.

    ``labels`` index torchvision's 91-entry COCO category list (so 'N/A' slots keep their ids); detections are
    kept in the head's order (descending score, equal scores in the order the ranked head fixes: lower proposal
    rank, then lower class id) and filtered by ``score >= score_threshold``.
    """
    boxes = rescale_boxes(boxes, original_size, resized_size)
    scores = np.asarray(scores).reshape(-1)
    labels = np.asarray(labels).reshape(-1)
    if not (boxes.shape[0] == scores.shape[0] == labels.shape[0]):
        raise ValueError("boxes, scores and labels disagree on the number of detections: %d, %d, %d" % (
            boxes.shape[0], scores.shape[0], labels.shape[0]))
    names = load_labels("coco")
    if labels.size and (labels.min() < 0 or labels.max() >= len(names)):
        raise ValueError("detection label out of range [0, %d): %d" % (
            len(names), labels.min() if labels.min() < 0 else labels.max()))
    results: List[Dict[str, object]] = []
    for box, score, label in zip(boxes, scores, labels):
        if score < score_threshold:
            continue
        results.append({"box": [float(v) for v in box], "score": float(score), "label": int(label),
                        "name": names[int(label)]})
    return results


# --- segmentation ---------------------------------------------------------------------------------------------


def _nearest_index(in_size: int, out_size: int) -> np.ndarray:
    # ATen's nearest_idx: the 1x and 2x cases are special-cased there, and the general case floors a float32
    # product (OpenCV's INTER_NEAREST rule, not "nearest-exact").
    if out_size == in_size:
        return np.arange(out_size, dtype=np.int64)
    if out_size == 2 * in_size:
        return np.arange(out_size, dtype=np.int64) >> 1
    scale = np.float32(in_size) / np.float32(out_size)
    src = np.floor(np.arange(out_size, dtype=np.float32) * scale).astype(np.int64)
    return np.minimum(src, in_size - 1)


def resize_nearest(mask: np.ndarray, out_height: int, out_width: int) -> np.ndarray:
    """Resize a [H, W] array like ``F.interpolate(mode="nearest")`` (the legacy rule, not "nearest-exact")."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError("expected a [H, W] mask, got shape %s" % (mask.shape,))
    if out_height < 1 or out_width < 1:
        raise ValueError("output size must be positive, got %dx%d" % (out_height, out_width))
    rows = _nearest_index(mask.shape[0], out_height)
    cols = _nearest_index(mask.shape[1], out_width)
    return mask[rows[:, None], cols[None, :]]


def segmentation_mask(logits: np.ndarray, original_size: Sequence[int], resized_size: Sequence[int]) -> np.ndarray:
    """Class-index mask (uint8, original H x W) from [1, C, Hp, Wp] logits at the padded input size.

    Argmax over classes (first maximum wins, like torch.argmax), crop the padding away, then nearest-resize
    the integer mask to the original size.
    """
    orig_h, orig_w = _pair(original_size, "original_size")
    res_h, res_w = _pair(resized_size, "resized_size")
    logits = np.asarray(logits)
    if logits.ndim == 4 and logits.shape[0] == 1:
        logits = logits[0]
    if logits.ndim != 3:
        raise ValueError("expected logits of shape [1, C, H, W], got %s" % (np.shape(logits),))
    if logits.shape[0] > 256:
        raise ValueError("a uint8 mask holds at most 256 classes, logits have %d" % logits.shape[0])
    if logits.shape[1] < res_h or logits.shape[2] < res_w:
        raise ValueError("logits %dx%d are smaller than the resized image %dx%d" % (
            logits.shape[1], logits.shape[2], res_h, res_w))
    # Crop before argmax: same result, less work.
    classes = np.argmax(logits[:, :res_h, :res_w], axis=0).astype(np.uint8)
    return resize_nearest(classes, orig_h, orig_w)


def mask_pixel_counts(mask: np.ndarray, labels: str = "voc") -> Dict[str, int]:
    """Pixels per class present in ``mask``, keyed by class name, in class-id order; absent classes omitted."""
    names = load_labels(labels)
    counts = np.bincount(np.asarray(mask, dtype=np.int64).ravel(), minlength=len(names))
    if counts.shape[0] > len(names):
        raise ValueError("mask holds class id %d, beyond the %d %s classes" % (
            counts.shape[0] - 1, len(names), labels))
    result: Dict[str, int] = collections.OrderedDict()
    for class_id in np.nonzero(counts)[0]:
        result[names[class_id]] = int(counts[class_id])
    return result


def voc_palette() -> List[int]:
    """The PASCAL VOC colour map as a flat 768-entry [r, g, b, ...] list (index 255 is the 'void' colour)."""
    palette: List[int] = []
    for index in range(256):
        red = green = blue = 0
        code = index
        for bit in range(8):
            red |= ((code >> 0) & 1) << (7 - bit)
            green |= ((code >> 1) & 1) << (7 - bit)
            blue |= ((code >> 2) & 1) << (7 - bit)
            code >>= 3
        palette.extend((red, green, blue))
    return palette


def save_mask_png(mask: np.ndarray, path: Union[str, os.PathLike]) -> None:
    """Write a uint8 class-index mask as a paletted PNG with the VOC colours (pixel values stay class ids)."""
    write_bytes_atomically(os.fspath(path), encode_mask_png(mask))


def encode_mask_png(mask: np.ndarray) -> bytes:
    """A uint8 class-index mask as the bytes of a paletted PNG with the VOC colours (ladon-serve sends these)."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError("expected a [H, W] mask, got shape %s" % (mask.shape,))
    if mask.dtype != np.uint8:
        if mask.size and (mask.min() < 0 or mask.max() > 255):
            raise ValueError("mask values must fit in uint8")
        mask = mask.astype(np.uint8)
    # frombytes, not fromarray(mode="P"): the mode argument of fromarray is deprecated in recent Pillow.
    image = Image.frombytes("P", (int(mask.shape[1]), int(mask.shape[0])), np.ascontiguousarray(mask).tobytes())
    image.putpalette(voc_palette())
    encoded = io.BytesIO()
    image.save(encoded, format="PNG")
    return encoded.getvalue()
