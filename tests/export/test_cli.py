"""ladon-export's command line: the demo run, and one line + exit code 2 for every bad input."""
import os
import shutil
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
    open_bundle(str(out))  # a whole, verified bundle (the export itself refuses one that fails parity)


def test_existing_out_is_refused_before_the_model_is_built(capsys, tmp_path, monkeypatch):
    import ladon_deploy.models.ladon as ladon_models

    def never(*args, **kwargs):
        raise AssertionError("the model was built before the output was checked")

    monkeypatch.setattr(ladon_models, "build_demo_model", never)
    existing = tmp_path / "bundle"
    existing.mkdir()
    code, err = _run(["--demo", "--out", str(existing)], capsys)
    _assert_one_line_error(code, err, "already exists (pass --force to replace it)")
    code, err = _run(["--demo", "--out", str(tmp_path / "missing" / "bundle")], capsys)
    _assert_one_line_error(code, err, "does not exist")
    code, err = _run(["--demo", "--out", str(tmp_path / "b"), "--timings-json", str(existing)], capsys)
    _assert_one_line_error(code, err, "is a directory")


def test_version_and_defaults_in_help(capsys):
    from ladon_deploy import __version__

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0 and capsys.readouterr().out.strip() == "ladon-export " + __version__
    with pytest.raises(SystemExit):
        main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    for fragment in ("(default: resnet50)", "(default: bottleneck)", "(default: 0)", "(default 416)"):
        assert fragment in text, fragment
    assert "(default: None)" not in text and "(default: False)" not in text and "(default: [])" not in text


# --- --force: the old bundle stays whole until the new one is in place -----------------------------------------


class _EncoderOnlyInputs(object):
    """The export's probe inputs for the encoder alone: keeps a --force run to a few seconds."""

    def __init__(self, model, height, width, seed):
        from ladon_deploy.export import pipeline

        self.image = pipeline._seeded_image(height, width, seed)

    def for_stage(self, name):
        return [self.image]


@pytest.fixture
def quick_demo_export(monkeypatch, demo_model):
    """`ladon-export --demo` on the session's demo model, exporting (and checking) only its encoder."""
    from ladon_deploy.export import pipeline, stages
    from ladon_deploy.models import ladon

    monkeypatch.setattr(ladon, "build_demo_model", lambda *args, **kwargs: demo_model)
    monkeypatch.setattr(pipeline, "StageInputs", _EncoderOnlyInputs)
    monkeypatch.setattr(pipeline, "stage_specs", lambda model: stages.stage_specs(model)[:1])


def _hidden_siblings(directory):
    return sorted(name for name in os.listdir(str(directory)) if name.startswith("."))


def _fail_rename_into(final, exception):
    """os.rename that raises `exception` when a staged bundle is renamed onto `final` (the second rename)."""
    from ladon_deploy import atomic

    real_rename = os.rename

    def rename(source, destination):
        if os.path.abspath(destination) == os.path.abspath(final) and ".partial-" in os.path.basename(source):
            raise exception
        return real_rename(source, destination)

    return atomic.os, "rename", rename


@pytest.mark.parametrize("exception, exit_code", [(KeyboardInterrupt(), 130), (OSError(28, "No space left"), 1)])
def test_force_keeps_the_old_bundle_when_the_second_rename_fails(capsys, tmp_path, monkeypatch, demo_bundle,
                                                                 quick_demo_export, exception, exit_code):
    old = tmp_path / "bundle"
    shutil.copytree(demo_bundle, str(old))
    before = open_bundle(str(old)).bundle_id
    monkeypatch.setattr(*_fail_rename_into(old, exception))
    code, err = _run(["--demo", "--out", str(old), "--force", "--quiet"], capsys)
    assert code == exit_code, err
    assert open_bundle(str(old)).bundle_id == before  # opens, every sha256 verified, the same bundle
    assert _hidden_siblings(tmp_path) == []


def test_force_replaces_the_bundle_and_leaves_nothing_aside(capsys, tmp_path, demo_bundle, quick_demo_export):
    old = tmp_path / "bundle"
    shutil.copytree(demo_bundle, str(old))
    (old / "stale-file").write_text("from the old bundle")
    code, err = _run(["--demo", "--out", str(old), "--force", "--quiet"], capsys)
    assert code == 0, err
    assert not (old / "stale-file").exists()
    assert set(os.listdir(str(old))) == {"manifest.json", "encoder.onnx", "entropy.npz"}
    assert _hidden_siblings(tmp_path) == []
