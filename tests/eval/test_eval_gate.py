"""The accuracy gate of INT8/FP16 builds: at its threshold both ways, per task metric, and through ladon-build."""
import json

import pytest

from cli_helpers import command_runner
from ladon_deploy.engines.cli import PROG, main
from ladon_deploy.errors import LadonError
from ladon_deploy.eval import gate

_run, _one_line_error = command_runner(PROG, main)


def _document(task, value, precision="fp32", bundle_id="abcd1234", images_sha256="s", dataset="/data/val"):
    metric = gate.GATE_METRICS[task]
    summary = {k: None for k in ("top1", "top5", "map", "ap50", "miou")}
    summary.update({metric: value, "images": 10})
    return {"format": "ladon-eval", "task": task, "precision": precision, "bundle": {"bundle_id": bundle_id},
            "dataset": {"path": dataset}, "subset": {"images_sha256": images_sha256}, "summary": summary}


@pytest.mark.parametrize("task", ["cls", "det", "seg"])
def test_loss_at_the_threshold_passes_and_just_above_fails(task):
    reference = _document(task, 0.76)
    at = gate.judge(_document(task, 0.75, "int8"), reference, max_loss=0.01, precision="int8")
    assert at["passed"] and at["metric"] == gate.GATE_METRICS[task]
    above = gate.judge(_document(task, 0.75 - 1e-6, "int8"), reference, max_loss=0.01, precision="int8")
    assert not above["passed"]
    # a gain passes whatever the threshold
    assert gate.judge(_document(task, 0.9, "fp16"), reference, max_loss=0.0, precision="fp16")["passed"]


def test_within_loss_boundary():
    assert gate.within_loss(0.5, 0.48, 0.02)
    assert not gate.within_loss(0.5, 0.48 - 1e-7, 0.02)
    assert gate.within_loss(0.5, 0.5, 0.0)
    assert not gate.within_loss(0.5, 0.5 - 1e-7, 0.0)


@pytest.mark.parametrize("field,value,pattern", [
    ("bundle_id", "other", "bundle"), ("images_sha256", "other", "image subset"), ("dataset", "/x", "dataset")])
def test_results_of_different_runs_are_not_compared(field, value, pattern):
    with pytest.raises(LadonError, match=pattern):
        gate.judge(_document("cls", 0.7, "int8", **{field: value}), _document("cls", 0.7), 0.01, "int8")


def test_reference_must_be_fp32_and_candidate_the_judged_precision():
    with pytest.raises(LadonError, match="not fp32"):
        gate.judge(_document("cls", 0.7, "int8"), _document("cls", 0.7, "fp16"), 0.01, "int8")
    with pytest.raises(LadonError, match="not the int8 build"):
        gate.judge(_document("cls", 0.7, "fp16"), _document("cls", 0.7), 0.01, "int8")


def _write(path, document):
    with open(str(path), "w") as handle:
        json.dump(document, handle)
    return str(path)


def test_ladon_build_gate_on_passes_and_refuses_in_one_line(tmp_path, capsys):
    reference = _write(tmp_path / "fp32.json", _document("seg", 0.668))
    passing = _write(tmp_path / "ok.json", _document("seg", 0.661, "int8"))
    failing = _write(tmp_path / "bad.json", _document("seg", 0.650, "int8"))
    base = ["--target", "cpu", "--precision", "int8", "--gate-reference", reference, "--max-accuracy-loss", "0.01"]
    code, out, err = _run(base + ["--gate-on", passing], capsys)
    assert code == 0, err
    assert out.startswith("accuracy gate passed: int8 miou 0.6610 against fp32 0.6680")
    code, _, err = _run(base + ["--gate-on", failing], capsys)
    _one_line_error(code, err, "accuracy gate refused the build")
    code, _, err = _run(["--target", "cpu", "--precision", "int8", "--gate-on", passing], capsys)
    _one_line_error(code, err, "--gate-reference")


def test_ladon_build_gate_checks_the_bundle(tmp_path, capsys, tiny_cls_bundle):
    reference = _write(tmp_path / "fp32.json", _document("cls", 0.7))
    candidate = _write(tmp_path / "c.json", _document("cls", 0.7, "int8"))
    code, _, err = _run(["--bundle", tiny_cls_bundle, "--target", "cpu", "--precision", "int8", "--gate-on",
                         candidate, "--gate-reference", reference], capsys)
    _one_line_error(code, err, "evaluated bundle abcd1234")
