"""The accuracy gate of an INT8 or FP16 build: its own ladon-eval result against the FP32 result on the same images.

    ladon-eval --bundle B --imagenet val/ --limit 2000 --json fp32.json                       # the reference
    ladon-eval --bundle B --imagenet val/ --limit 2000 --precision int8 --json int8.json      # the candidate
    ladon-build --bundle B --target cpu --precision int8 --gate-on int8.json --gate-reference fp32.json

A build passes when it loses at most `max_loss` of the task's accuracy (absolute, as a fraction: 0.01 = one point of
top-1, mAP or mIoU); a loss equal to the threshold passes. Both results must come from the same bundle, dataset and
image subset, the reference at FP32, the candidate at the precision being judged.
"""
import json
import os
from typing import Any, Dict, Optional

from ladon_deploy.bundle import open_bundle
from ladon_deploy.errors import LadonError

DEFAULT_MAX_LOSS = 0.01
GATE_METRICS = {"cls": "top1", "det": "map", "seg": "miou"}
# Metrics are means over images, so a loss equal to the threshold can come out of the subtraction a few ulps off it
# (0.76 - 0.75 = 0.010000000000000009): the loss is rounded to this many decimals before the comparison.
LOSS_DECIMALS = 9


def within_loss(reference: float, candidate: float, max_loss: float) -> bool:
    """The gate itself: reference - candidate <= max_loss (a candidate may gain any amount)."""
    return round(reference - candidate, LOSS_DECIMALS) <= max_loss


def _read(path: str, what: str) -> Dict[str, Any]:
    if not os.path.isfile(path):
        raise LadonError("%s result not found: %s" % (what, path))
    try:
        with open(path) as handle:
            document = json.load(handle)
        if document.get("format") != "ladon-eval":
            raise ValueError("not a ladon-eval result")
        return document
    except (ValueError, AttributeError) as exc:
        raise LadonError("%s result %s is not a ladon-eval result file (%s)" % (what, path, exc))


def _same(candidate: Dict[str, Any], reference: Dict[str, Any], key: str, *path: str) -> None:
    def dig(document: Dict[str, Any]) -> Any:
        for part in path:
            document = (document or {}).get(part)
        return document

    if dig(candidate) != dig(reference):
        raise LadonError("the candidate and reference results differ in %s (%r against %r): compare runs over the "
                         "same bundle, dataset and --limit/--seed" % (key, dig(candidate), dig(reference)))


def judge(candidate: Dict[str, Any], reference: Dict[str, Any], max_loss: float = DEFAULT_MAX_LOSS,
          precision: str = "") -> Dict[str, Any]:
    """The verdict on two result documents; raises LadonError when they are not comparable."""
    if not 0 <= max_loss < 1:
        raise LadonError("--max-accuracy-loss is a fraction in [0, 1) (0.01 = one point), got %g" % max_loss)
    _same(candidate, reference, "task", "task")
    _same(candidate, reference, "bundle", "bundle", "bundle_id")
    _same(candidate, reference, "dataset", "dataset", "path")
    _same(candidate, reference, "annotations", "dataset", "annotations")
    _same(candidate, reference, "image subset", "subset", "images_sha256")
    if reference.get("precision") != "fp32":
        raise LadonError("the reference result is %s, not fp32" % reference.get("precision"))
    if precision and candidate.get("precision") != precision:
        raise LadonError("the candidate result is %s, not the %s build being judged"
                         % (candidate.get("precision"), precision))
    metric = GATE_METRICS[reference["task"]]
    before, after = reference["summary"][metric], candidate["summary"][metric]
    if before is None or after is None:
        raise LadonError("%s is undefined in one of the results (no annotated images?)" % metric)
    return {"metric": metric, "reference": before, "candidate": after, "loss": before - after,
            "max_loss": max_loss, "passed": within_loss(before, after, max_loss), "images": candidate["summary"]["images"]}


def gate_build(candidate_path: str, reference_path: str, max_loss: float, precision: str,
               bundle_dir: Optional[str] = None) -> str:
    """ladon-build --gate-on: one line on a pass; LadonError (exit 2) on a refusal."""
    candidate = _read(candidate_path, "candidate")
    if bundle_dir is not None:
        bundle_id = open_bundle(bundle_dir, verify=False).bundle_id
        if candidate.get("bundle", {}).get("bundle_id") != bundle_id:
            raise LadonError("%s evaluated bundle %s, not %s (%s)" % (candidate_path, candidate.get("bundle", {}).get(
                "bundle_id"), bundle_dir, bundle_id))
    verdict = judge(candidate, _read(reference_path, "reference"), max_loss, precision)
    line = ("%s %s %.4f against fp32 %.4f on %d images: loss %.4f, allowed %.4f"
            % (precision, verdict["metric"], verdict["candidate"], verdict["reference"], verdict["images"],
               verdict["loss"], max_loss))
    if not verdict["passed"]:
        raise LadonError("accuracy gate refused the build: " + line)
    return "accuracy gate passed: " + line
