"""Comparing two implementations' detections: one optimal one-to-one matcher that every fidelity gate shares.

A reference detection and a candidate detection may pair only when they have the same label and IoU >= the
threshold. Among all one-to-one pairings (Hungarian / Jonker-Volgenant assignment, written here in numpy) the one
chosen has, in this order of priority:
    1. the most pairs that agree within tolerance (box coordinates within box_tolerance_px, scores within
       score_tolerance): "matched";
    2. then the most pairs in all: a pair that is out of tolerance is a reference detection REPLACED by a different
       one (another score, another box), reported as that pair with its errors, never as a match;
    3. then the closest pairs (IoU, score).
Reference detections left unpaired are "missing", candidate detections left unpaired are "extra". Ties in the
assignment are broken deterministically (lowest index first).

Also the one threshold comparison every gate uses (`within`): a value exactly at its threshold passes.

Edge subset: Python 3.6-clean, numpy only (the engine build gate runs this on the device).
"""
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

MATCH_IOU = 0.5


def within(value, comparison, threshold):
    # type: (float, str, float) -> bool
    """True when `value` satisfies `comparison` ('>=' a floor or '<=' a ceiling) against `threshold`; NaN fails."""
    if comparison == ">=":
        return bool(value >= threshold)
    if comparison == "<=":
        return bool(value <= threshold)
    raise ValueError("unknown comparison %r (expected '>=' or '<=')" % (comparison,))


def box_iou(a, b):
    # type: (np.ndarray, np.ndarray) -> np.ndarray
    """IoU of every x1,y1,x2,y2 box of `a` [N,4] with every box of `b` [M,4]: [N,M]."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    top_left = np.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(bottom_right - top_left, 0, None).prod(axis=2)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def linear_assignment(cost):
    # type: (np.ndarray) -> Tuple[np.ndarray, np.ndarray]
    """Minimum-cost one-to-one assignment of a finite [N,M] cost matrix: (rows, columns), min(N,M) pairs, rows
    ascending (what scipy.optimize.linear_sum_assignment returns). Shortest augmenting paths with row and column
    potentials (Jonker-Volgenant's scheme), O(N^2 M); the inner loop over columns is vectorised."""
    cost = np.asarray(cost, dtype=np.float64)
    if cost.ndim != 2:
        raise ValueError("the cost matrix must be 2-D, got shape %s" % (cost.shape,))
    if not np.all(np.isfinite(cost)):
        raise ValueError("the cost matrix must be finite")
    transposed = cost.shape[0] > cost.shape[1]
    if transposed:
        cost = cost.T
    rows, columns = cost.shape
    if rows == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty
    row_potential = np.zeros(rows + 1)
    column_potential = np.zeros(columns + 1)
    owner = np.zeros(columns + 1, dtype=np.int64)  # owner[j]: 1-based row assigned to column j; column 0 is virtual
    previous = np.zeros(columns + 1, dtype=np.int64)
    for row in range(1, rows + 1):
        owner[0] = row
        current = 0
        distance = np.full(columns + 1, np.inf)
        visited = np.zeros(columns + 1, dtype=bool)
        while True:
            visited[current] = True
            source = owner[current]
            open_columns = ~visited[1:]
            reduced = cost[source - 1] - row_potential[source] - column_potential[1:]
            better = open_columns & (reduced < distance[1:])
            distance[1:][better] = reduced[better]
            previous[1:][better] = current
            candidates = np.where(open_columns, distance[1:], np.inf)
            nearest = int(np.argmin(candidates)) + 1
            step = candidates[nearest - 1]
            seen = np.flatnonzero(visited)
            row_potential[owner[seen]] += step
            column_potential[seen] -= step
            distance[1:][open_columns] -= step
            current = nearest
            if owner[current] == 0:
                break
        while current:
            back = previous[current]
            owner[current] = owner[back]
            current = back
    assigned = np.flatnonzero(owner[1:]) + 1
    row_index = owner[assigned] - 1
    column_index = assigned - 1
    if transposed:
        row_index, column_index = column_index, row_index
    order = np.argsort(row_index, kind="mergesort")
    return row_index[order].astype(np.int64), column_index[order].astype(np.int64)


class Detections(object):
    """boxes [N,4] x1,y1,x2,y2, scores [N], labels [N] as numpy arrays."""

    def __init__(self, boxes, scores, labels):
        # type: (Any, Any, Any) -> None
        self.boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        self.scores = np.asarray(scores, dtype=np.float64).reshape(-1)
        self.labels = np.asarray(labels).reshape(-1)
        if not len(self.boxes) == len(self.scores) == len(self.labels):
            raise ValueError("boxes, scores and labels disagree on the number of detections: %d, %d, %d" % (
                len(self.boxes), len(self.scores), len(self.labels)))

    def __len__(self):
        # type: () -> int
        return len(self.scores)

    def subset(self, keep):
        # type: (np.ndarray) -> Detections
        return Detections(self.boxes[keep], self.scores[keep], self.labels[keep])


def as_detections(value):
    # type: (Any) -> Detections
    """A Detections from a Detections, a (boxes, scores, labels) sequence or a dict with those keys."""
    if isinstance(value, Detections):
        return value
    if isinstance(value, dict):
        return Detections(value["boxes"], value["scores"], value["labels"])
    boxes, scores, labels = value
    return Detections(boxes, scores, labels)


class DetectionMatch(object):
    """What happened to each detection: matched pairs, replaced pairs, missing and extra (indices into the inputs).

    For each pair p of `matched` / `replaced`: (reference index, candidate index), its IoU, its box error (largest
    coordinate difference, px) and its score error (absolute difference).
    """

    def __init__(self, reference, candidate, pairs, good, iou):
        # type: (Detections, Detections, List[Tuple[int, int]], List[bool], List[float]) -> None
        self.reference = reference
        self.candidate = candidate
        self.matched = [p for p, ok in zip(pairs, good) if ok]  # type: List[Tuple[int, int]]
        self.replaced = [p for p, ok in zip(pairs, good) if not ok]  # type: List[Tuple[int, int]]
        self.iou = dict(zip(pairs, iou))  # type: Dict[Tuple[int, int], float]
        paired_reference = set(p[0] for p in pairs)
        paired_candidate = set(p[1] for p in pairs)
        self.missing = [i for i in range(len(reference)) if i not in paired_reference]  # type: List[int]
        self.extra = [j for j in range(len(candidate)) if j not in paired_candidate]  # type: List[int]

    def box_error(self, pair):
        # type: (Tuple[int, int]) -> float
        return float(np.abs(self.reference.boxes[pair[0]] - self.candidate.boxes[pair[1]]).max())

    def score_error(self, pair):
        # type: (Tuple[int, int]) -> float
        return float(abs(self.reference.scores[pair[0]] - self.candidate.scores[pair[1]]))

    def mean_coordinate_error(self, pairs):
        # type: (Sequence[Tuple[int, int]]) -> float
        """Mean |coordinate difference| over `pairs` (0.0 for none)."""
        if not pairs:
            return 0.0
        return float(np.mean([np.abs(self.reference.boxes[i] - self.candidate.boxes[j]).mean() for i, j in pairs]))

    def describe_pair(self, pair):
        # type: (Tuple[int, int]) -> Dict[str, Any]
        i, j = pair
        return {"reference": int(i), "candidate": int(j), "label": int(self.reference.labels[i]),
                "reference_score": float(self.reference.scores[i]), "candidate_score": float(self.candidate.scores[j]),
                "reference_box": [float(v) for v in self.reference.boxes[i]],
                "candidate_box": [float(v) for v in self.candidate.boxes[j]],
                "iou": float(self.iou[pair]), "box_error_px": self.box_error(pair),
                "score_error": self.score_error(pair)}

    def summary(self):
        # type: () -> Dict[str, Any]
        """Counts, the worst errors of the matched pairs and every replaced pair, as plain JSON values."""
        return {"detections_reference": len(self.reference), "detections_candidate": len(self.candidate),
                "matched": len(self.matched), "replaced": len(self.replaced), "missing": len(self.missing),
                "extra": len(self.extra),
                "max_box_error_px": max([self.box_error(p) for p in self.matched] or [0.0]),
                "max_score_error": max([self.score_error(p) for p in self.matched] or [0.0]),
                "replacements": [self.describe_pair(p) for p in self.replaced]}


def match_detections(reference, candidate, box_tolerance_px, score_tolerance, iou_threshold=MATCH_IOU):
    # type: (Any, Any, float, float, float) -> DetectionMatch
    """The optimal one-to-one pairing of `reference` and `candidate` (see the module docstring).

    Each side is a Detections, a (boxes, scores, labels) sequence or a dict; tolerances are inclusive (an error equal
    to the tolerance is within it); pass float('inf') to accept any box or score in a pair.
    """
    reference, candidate = as_detections(reference), as_detections(candidate)
    pairs = []  # type: List[Tuple[int, int]]
    good = []  # type: List[bool]
    overlaps = []  # type: List[float]
    # Pairs exist only within a label: each label is its own (small) assignment problem.
    for label in np.unique(np.concatenate([reference.labels, candidate.labels])):
        rows = np.flatnonzero(reference.labels == label)
        columns = np.flatnonzero(candidate.labels == label)
        if not len(rows) or not len(columns):
            continue
        iou = box_iou(reference.boxes[rows], candidate.boxes[columns])
        allowed = iou >= iou_threshold
        if not allowed.any():
            continue
        box_error = np.abs(reference.boxes[rows][:, None, :] - candidate.boxes[columns][None, :, :]).max(axis=2)
        score_error = np.abs(reference.scores[rows][:, None] - candidate.scores[columns][None, :])
        agrees = (box_error <= box_tolerance_px) & (score_error <= score_tolerance)
        # Lexicographic value as one number: an agreeing pair outweighs any number of other pairs (2 * size), a
        # pair outweighs any closeness (closeness / size sums to less than 1), closeness breaks the remaining ties.
        size = float(min(len(rows), len(columns)) + 1)
        closeness = iou * (1.0 - np.minimum(score_error, 1.0))
        value = np.where(allowed, 2.0 * size * agrees + 1.0 + closeness / size, 0.0)
        chosen_rows, chosen_columns = linear_assignment(-value)
        for r, c in zip(chosen_rows, chosen_columns):
            if allowed[r, c]:
                pairs.append((int(rows[r]), int(columns[c])))
                good.append(bool(agrees[r, c]))
                overlaps.append(float(iou[r, c]))
    order = sorted(range(len(pairs)), key=lambda k: pairs[k])
    return DetectionMatch(reference, candidate, [pairs[k] for k in order], [good[k] for k in order],
                          [overlaps[k] for k in order])


def _unexplained(scores, unpaired, other_scores, score_threshold, max_detections, score_tolerance):
    # type: (np.ndarray, Sequence[int], np.ndarray, Optional[float], Optional[int], float) -> np.ndarray
    """For each unpaired detection: True when no score cut can account for it being on one side only.

    A cut decides by score, so a score within `score_tolerance` of it may fall either way: the score threshold, or
    the lowest score the other side kept when that side is full (max_detections, the per-image cap).
    """
    unpaired = np.asarray(unpaired, dtype=np.int64)
    if not len(unpaired):
        return np.zeros(0, dtype=bool)
    box_scores = scores[unpaired]
    explained = np.zeros(len(unpaired), dtype=bool)
    if score_threshold is not None:
        explained |= box_scores <= score_threshold + score_tolerance
    if max_detections is not None and len(other_scores) >= max_detections:
        explained |= box_scores <= float(np.min(other_scores)) + score_tolerance
    return ~explained


def compare_detections(reference, candidate, box_tolerance_px, score_tolerance, score_threshold=None,
                       max_detections=None):
    # type: (Any, Any, float, float, Optional[float], Optional[int]) -> Dict[str, Any]
    """Figures of one comparison for a gate: counts, matched_fraction (the lower of the two sides' matched
    fractions) and `unexplained`, the missing, extra and replaced detections that no score cut accounts for (a
    replaced pair is accounted for only when both its detections are)."""
    result = match_detections(reference, candidate, box_tolerance_px, score_tolerance)
    ref, cand = result.reference, result.candidate
    cut = (score_threshold, max_detections, score_tolerance)
    missing = _unexplained(ref.scores, result.missing, cand.scores, *cut)
    extra = _unexplained(cand.scores, result.extra, ref.scores, *cut)
    replaced_reference = _unexplained(ref.scores, [p[0] for p in result.replaced], cand.scores, *cut)
    replaced_candidate = _unexplained(cand.scores, [p[1] for p in result.replaced], ref.scores, *cut)
    figures = result.summary()
    figures["unexplained"] = int(missing.sum() + extra.sum() + (replaced_reference | replaced_candidate).sum())
    figures["matched_fraction"] = min(len(result.matched) / float(len(ref)) if len(ref) else 1.0,
                                      len(result.matched) / float(len(cand)) if len(cand) else 1.0)
    return figures


def relative_l2(reference, candidate):
    # type: (np.ndarray, np.ndarray) -> float
    """||candidate - reference|| / ||reference||; against an all-zero reference, 0 if equal, else infinity."""
    reference = np.asarray(reference, dtype=np.float64)
    candidate = np.asarray(candidate, dtype=np.float64)
    norm = float(np.linalg.norm(reference))
    error = float(np.linalg.norm(candidate - reference))
    if norm == 0.0:
        return 0.0 if error == 0.0 else float("inf")
    return error / norm


def failures(figures, limits):
    # type: (Dict[str, Any], Sequence[Tuple[str, str, Optional[float]]]) -> List[str]
    """Each (metric, comparison, threshold) of `limits` that `figures` misses, as a line; thresholds of None are
    not checked. Every gate's verdict is this list being empty."""
    missed = []
    for metric, comparison, threshold in limits:
        if threshold is not None and not within(figures[metric], comparison, threshold):
            missed.append("%s %.6g (needs %s %.6g)" % (metric, figures[metric], comparison, threshold))
    return missed
