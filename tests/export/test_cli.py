"""ladon-export's command line: the demo run, and one line + exit code 2 for every bad input."""
import subprocess
import sys

import pytest
import torch

from ladon_deploy.cli_support import run_command
from ladon_deploy.bundle import open_bundle
from ladon_deploy.export.cli import PROG, main


def _run(argv, capsys):
    code = run_command(PROG, main, argv)
    captured = capsys.readouterr()
    return code, captured.err


def _assert_one_line_error(code, err, pattern):
    assert code == 2
    lines = [line for line in err.splitlines() if line.startswith(PROG + ": error")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert pattern in lines[0], lines[0]


def test_unknown_split(capsys, tmp_path):
    code, err = _run(["--demo", "--split", "layer3", "--out", str(tmp_path / "b")], capsys)
    _assert_one_line_error(code, err, "unknown --split 'layer3'")


def test_missing_file(capsys, tmp_path):
    code, err = _run(["--ckpt", str(tmp_path / "nope.pt"), "--out", str(tmp_path / "b")], capsys)
    _assert_one_line_error(code, err, "checkpoint not found")


def test_non_checkpoint_file(capsys, tmp_path):
    junk = tmp_path / "image.jpg"
    junk.write_bytes(b"\xff\xd8\xff\xe0 not a checkpoint")
    code, err = _run(["--ckpt", str(junk), "--out", str(tmp_path / "b")], capsys)
    _assert_one_line_error(code, err, "not a readable PyTorch checkpoint")


def test_wrong_architecture(capsys, tmp_path):
    from torchvision.models import resnet50

    path = tmp_path / "resnet50.pth"
    torch.save(resnet50(weights=None).state_dict(), str(path))
    code, err = _run(["--ckpt", str(path), "--out", str(tmp_path / "b")], capsys)
    _assert_one_line_error(code, err, "plain ResNet")
    assert not (tmp_path / "b").exists()


def test_two_betas(capsys, tmp_path, sc2bench_trio):
    first = tmp_path / "ilsvrc2012-splittable_resnet50-fp-beta0.32_from_resnet50.pt"
    second = tmp_path / "coco2017-faster_rcnn_splittable_resnet50-fp-beta20.48_fpn.pt"
    torch.save({"model": sc2bench_trio[0].state_dict()}, str(first))
    torch.save({"model": sc2bench_trio[1].state_dict()}, str(second))
    code, err = _run(["--ckpt", str(first), "--ckpt", str(second), "--out", str(tmp_path / "b")], capsys)
    _assert_one_line_error(code, err, "different betas")


def test_unknown_option_and_missing_source(capsys, tmp_path):
    code, err = _run(["--bogus"], capsys)
    _assert_one_line_error(code, err, "unrecognized arguments")
    code, err = _run(["--out", str(tmp_path / "b")], capsys)
    _assert_one_line_error(code, err, "--ckpt PATH")


@pytest.mark.slow
def test_checkpoints_export_and_save_merged(capsys, tmp_path, sc2bench_files):
    merged = tmp_path / "ladon.pt"
    out = tmp_path / "bundle"
    code, err = _run(["--ckpt", sc2bench_files["cls"], "--ckpt", sc2bench_files["det"], "--ckpt",
                      sc2bench_files["seg"], "--split", "bottleneck", "--out", str(out), "--save-merged",
                      str(merged), "--tasks", "cls,seg"], capsys)
    assert code == 0, err
    assert "parity encoder" in err and "total" in err
    bundle = open_bundle(str(out))
    assert bundle.tasks == ["cls", "seg"] and bundle.manifest["beta"] == 5.12
    # A single merged file is accepted by the same command.
    code, err = _run(["--ckpt", str(merged), "--out", str(tmp_path / "again"), "--quiet"], capsys)
    assert code == 0, err
    assert open_bundle(str(tmp_path / "again")).tasks == ["cls", "seg"]


@pytest.mark.slow
def test_console_script_demo_end_to_end(tmp_path):
    out = tmp_path / "demo-bundle"
    result = subprocess.run([sys.executable, "-m", "ladon_deploy.export.cli", "--demo", "--out", str(out)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(out)
    for stage in ("build model", "export_encoder", "parity_head_det"):
        assert stage in result.stderr
    assert all(check["passed"] for check in open_bundle(str(out)).manifest["parity"].values())
