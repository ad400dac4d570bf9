"""ladon-build's defaults and messages a user meets first, and the fp16 request an engine cannot honour."""
import pytest

from ladon_deploy.bundle import open_bundle
from ladon_deploy.cli_support import run_command
from ladon_deploy.engines import cli, registry, sidecar
from ladon_deploy.errors import EngineError
from tiny_bundle import make_tiny_bundle


def _run(argv, capsys):
    code = run_command(cli.PROG, cli.main, argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_target_cpu_builds_with_its_own_default_precision(tmp_path, capsys):
    bundle = make_tiny_bundle(tmp_path / "tiny")
    code, _, err = _run(["--target", "cpu", "--bundle", bundle], capsys)
    assert code == 0, err
    assert "no TensorRT engine to build (ONNX Runtime runs the FP32 models); 3 sidecars written" in err
    assert "nothing to build" not in err
    opened = open_bundle(bundle)
    assert sidecar.read_sidecar(sidecar.sidecar_path(opened, "cpu", "encoder", "fp32"))["precision"] == "fp32"
    # An explicit precision the target lacks is still refused in one line.
    code, _, err = _run(["--target", "cpu", "--bundle", bundle, "--precision", "fp16", "--force"], capsys)
    assert code == 2 and "builds fp32/int8, not fp16" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("argv", [["--target", "jetson-tx2", "--bundle", "b"], ["--bundle", "b"]])
def test_unknown_or_missing_target_lists_triton_too(argv, capsys):
    code, _, err = _run(argv, capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "jetson-nano, xavier-nx, server, cpu, triton" in err


def test_fp16_is_refused_where_the_engine_runs_fp32(tmp_path):
    bundle = open_bundle(make_tiny_bundle(tmp_path / "tiny"))
    for engine in ("onnxruntime", "onnxruntime-cuda"):
        with pytest.raises(EngineError, match="--precision fp16: engine %s runs the bundle's fp32 ONNX" % engine):
            registry.choose_stage(bundle, "encoder", engine, precision="fp16")
        assert registry.choose_stage(bundle, "encoder", engine, precision="fp32").engine == engine
        assert registry.choose_stage(bundle, "encoder", engine).engine == engine
    assert registry.choose_stage(bundle, "encoder", "onnxruntime-tensorrt", precision="fp16").engine == \
        "onnxruntime-tensorrt"
