"""The INT8 fidelity report: FP32 against INT8 on held-out images, the thresholds it is held against, and its
renderings (JSON, Markdown, a terminal summary).

Figures per held-out image, then averaged (min where the threshold is a floor on the worst image):
    <stage> rel_l2            ||int8 - fp32|| / ||fp32|| of the stage's outputs on the SAME fp32 inputs (isolated)
    encoder symbol_agreement  fraction of latent symbols round(y - median) that INT8 leaves unchanged
    encoder payload_ratio     INT8 payload bytes / FP32 payload bytes
    cls top1_agreement        INT8 top-1 == FP32 top-1 (end to end: INT8 encoder -> payload -> INT8 body -> head)
    cls top5_overlap          |top-5 INT8 & top-5 FP32| / 5 (end to end), pooled over images as one ratio of counts
    det matched_fraction      FP32 detections (score >= DETECTION_SCORE) paired with an INT8 detection of the same label
                              at IoU >= 0.5, one to one by the shared optimal matcher (compare.py) (end to end)
    det box_error_px          mean |coordinate difference| of the matched boxes, resized-image pixels (end to end)
    seg pixel_agreement       fraction of mask pixels (argmax over classes, real-pixel region) unchanged (end to end)
"""
import json
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np

from ladon_deploy import compare

TOP_K = 5
DETECTION_SCORE = 0.5
DETECTION_IOU = 0.5

# metric -> (comparison, threshold). A build whose figure misses one ships nothing unless --accept-fidelity.
THRESHOLDS: Dict[str, Tuple[str, float]] = {
    "encoder.symbol_agreement": (">=", 0.99),
    "encoder.symbol_agreement_worst": (">=", 0.98),
    "encoder.payload_ratio_deviation": ("<=", 0.05),
    "body.rel_l2": ("<=", 0.15),
    "cls.top1_agreement": (">=", 0.75),
    "cls.top5_overlap": (">=", 0.8),
    "det.matched_fraction": (">=", 0.7),
    "det.box_error_px": ("<=", 4.0),
    "seg.pixel_agreement": (">=", 0.9),
}

RANDOM_WEIGHTS_NOTE = ("The bundle has no checkpoint sources (a demo bundle: random weights); its accuracy figures say "
                       "how far INT8 moves an untrained model's outputs, not what a trained model loses.")


def rel_l2(candidate: np.ndarray, reference: np.ndarray) -> float:
    return compare.relative_l2(reference, candidate)


def symbol_agreement(candidate: np.ndarray, reference: np.ndarray) -> float:
    return float(np.mean(np.asarray(candidate) == np.asarray(reference)))


def top_k(probabilities: np.ndarray, k: int = TOP_K) -> List[int]:
    """The k most probable classes; equal probabilities keep the lower class id first (as server/postprocess.py)."""
    flat = np.asarray(probabilities).reshape(-1)
    return [int(i) for i in np.argsort(-flat, kind="stable")[:k]]


def classification_agreement(candidate: np.ndarray, reference: np.ndarray) -> Dict[str, float]:
    mine, theirs = top_k(candidate), top_k(reference)
    return {"top1_agreement": float(mine[0] == theirs[0]), "top5_overlap": len(set(mine) & set(theirs)) / float(TOP_K)}


def match_detections(candidate: Dict[str, np.ndarray], reference: Dict[str, np.ndarray],
                     score: float = DETECTION_SCORE, iou: float = DETECTION_IOU) -> Dict[str, Any]:
    """Reference detections with score >= `score` paired one to one with candidate detections (any score) of the
    same label at IoU >= `iou` by the shared optimal matcher (ladon_deploy/compare.py); any box and score count as
    a pair here, the box error is judged by its own threshold."""
    reference = compare.as_detections(reference)
    reference = reference.subset(reference.scores >= score)
    result = compare.match_detections(reference, candidate, box_tolerance_px=float("inf"),
                                      score_tolerance=float("inf"), iou_threshold=iou)
    pairs = result.matched
    return {"reference_detections": len(reference), "matched": len(pairs),
            "matched_fraction": len(pairs) / float(len(reference)) if len(reference) else 1.0,
            "box_error_px": result.mean_coordinate_error(pairs),
            "candidate_detections": int(np.sum(result.candidate.scores >= score))}


def mask_agreement(candidate_logits: np.ndarray, reference_logits: np.ndarray, resized: Sequence[int]) -> float:
    height, width = int(resized[0]), int(resized[1])
    mine = np.argmax(candidate_logits[0, :, :height, :width], axis=0)
    theirs = np.argmax(reference_logits[0, :, :height, :width], axis=0)
    return float(np.mean(mine == theirs))


def summarize(per_image: List[Dict[str, float]]) -> Dict[str, float]:
    """Means over the held-out images, plus the worst symbol agreement; detection figures pooled over images."""
    summary: Dict[str, float] = {}
    keys = sorted({key for row in per_image for key in row})
    for key in keys:
        values = [row[key] for row in per_image if key in row]
        if key in ("det.matched", "det.reference_detections"):
            summary[key] = float(np.sum(values))
        elif key == "cls.top5_overlap":
            # Pooled as one ratio of counts, so that a figure equal to its threshold compares equal (4/5 is the
            # double nearest 0.8; a mean of per-image fractions can land an ulp off).
            summary[key] = sum(int(round(v * TOP_K)) for v in values) / float(TOP_K * len(values))
        else:
            summary[key] = float(np.mean(values))
    if "encoder.symbol_agreement" in summary:
        summary["encoder.symbol_agreement_worst"] = float(min(row["encoder.symbol_agreement"] for row in per_image
                                                             if "encoder.symbol_agreement" in row))
    if "encoder.payload_ratio" in summary:
        summary["encoder.payload_ratio_deviation"] = abs(summary["encoder.payload_ratio"] - 1.0)
    if summary.get("det.reference_detections"):
        summary["det.matched_fraction"] = summary["det.matched"] / summary["det.reference_detections"]
    return summary


def threshold_passes(metric: str, value: float) -> bool:
    """The INT8 gate for one figure: THRESHOLDS[metric] holds (a figure equal to its threshold passes)."""
    comparison, threshold = THRESHOLDS[metric]
    return compare.within(value, comparison, threshold)


def check_thresholds(summary: Dict[str, float]) -> List[Dict[str, Any]]:
    checks = []
    for metric, (comparison, threshold) in THRESHOLDS.items():
        if metric not in summary:
            continue
        checks.append({"metric": metric, "value": summary[metric], "comparison": comparison, "threshold": threshold,
                       "passed": threshold_passes(metric, summary[metric])})
    return checks


def failures(checks: List[Dict[str, Any]]) -> List[str]:
    return ["%s %.4g (needs %s %.4g)" % (c["metric"], c["value"], c["comparison"], c["threshold"])
            for c in checks if not c["passed"]]


def to_json(report: Dict[str, Any]) -> str:
    return json.dumps(report, indent=2, sort_keys=False) + "\n"


def _figure(value: Any) -> str:
    if isinstance(value, float):
        return "%.4f" % value if abs(value) < 100 else "%.1f" % value
    return str(value)


def to_markdown(report: Dict[str, Any]) -> str:
    lines = ["# INT8 fidelity report: bundle %s, target %s" % (report["bundle_id"], report["target"]), ""]
    lines.append("Verdict: **%s**" % report["verdict"])
    lines.append("")
    if report.get("random_weights"):
        lines += ["> " + RANDOM_WEIGHTS_NOTE, ""]
    images = report["images"]
    lines.append("Images: %s. Held out (never calibrated on): %s." % (images["description"],
                                                                      ", ".join(images["held_out"])))
    lines.append("Evaluated with: %s." % report["evaluated_with"])
    lines += ["", "## Checks", "", "| metric | value | threshold | passed |", "| --- | --- | --- | --- |"]
    for check in report["checks"]:
        lines.append("| %s | %s | %s %s | %s |" % (check["metric"], _figure(check["value"]), check["comparison"],
                                                   _figure(check["threshold"]), "yes" if check["passed"] else "NO"))
    lines += ["", "## All figures (means over held-out images)", "", "| figure | value |", "| --- | --- |"]
    for key, value in report["summary"].items():
        lines.append("| %s | %s |" % (key, _figure(value)))
    lines += ["", "## Stages", "", "| stage | form | file | kept in fp32 |", "| --- | --- | --- | --- |"]
    for stage, entry in report["stages"].items():
        kept = "; ".join("%s (%s)" % (", ".join(k["nodes"]), k["why"]) for k in entry["kept_fp32"]) or "none"
        lines.append("| %s | %s | %s | %s |" % (stage, entry["form"], entry["file"], kept))
    for stage, entry in report["stages"].items():
        if entry.get("gdn_measurement"):
            lines.append("")
            lines.append("%s GDN blocks: %s." % (stage, entry["gdn_measurement"]))
    if report.get("speed"):
        lines += ["", "## Speed (ONNX Runtime CPU, median per held-out image, this build's machine)", "",
                  "| stage | fp32 ms | int8 ms | int8 / fp32 |", "| --- | --- | --- | --- |"]
        for stage, row in report["speed"].items():
            lines.append("| %s | %.1f | %.1f | %.2f |" % (stage, row["fp32_ms"], row["int8_ms"], row["ratio"]))
    if report.get("notes"):
        lines += ["", "## Notes", ""] + ["- " + note for note in report["notes"]]
    return "\n".join(lines) + "\n"


def terminal_summary(report: Dict[str, Any]) -> List[str]:
    lines = ["INT8 fidelity (%d held-out images%s):" % (len(report["images"]["held_out"]),
                                                        "; random-weight demo model" if report.get("random_weights")
                                                        else "")]
    for check in report["checks"]:
        lines.append("  %-34s %10s  %s %-8s %s" % (check["metric"], _figure(check["value"]), check["comparison"],
                                                    _figure(check["threshold"]), "ok" if check["passed"] else "FAIL"))
    lines.append("  verdict: %s" % report["verdict"])
    return lines


