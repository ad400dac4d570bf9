"""The runners behind one interface and the per-stage choice of `--engine tensorrt`: the bundle's engines for this
machine's target, ONNX Runtime (the best provider this wheel has) for the rest; one-line refusals, exit 2, for what
is missing here (tensorrt, pycuda, onnxruntime providers); every result names the engine that ran each stage."""
import json
import os

import pytest

from ladon_deploy.bundle import Bundle, open_bundle
from ladon_deploy.cli_support import run_command
from ladon_deploy.engines import registry
from ladon_deploy.engines.ort_runner import available_providers, engine_providers, tensorrt_provider_options
from ladon_deploy.errors import EngineError
from ladon_deploy.runtime.cli import PROG, main
from images import make_image
from tiny_bundle import make_tiny_bundle, tensorrt_sidecar

CPU_ONLY = ["CPUExecutionProvider"]


def _tensorrt_installed():
    try:
        import tensorrt  # noqa: F401
        return True
    except ImportError:
        return False


@pytest.fixture
def bundle(tmp_path):
    return open_bundle(make_tiny_bundle(tmp_path / "tiny"))


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    return make_image(tmp_path_factory.mktemp("img") / "street.png", 333, 500, 21)


def test_engines_offered():
    assert registry.ENGINES == ("onnxruntime", "onnxruntime-cuda", "onnxruntime-tensorrt", "tensorrt")


def test_fallback_takes_the_best_provider_this_wheel_has():
    assert registry.fallback_engine(CPU_ONLY) == "onnxruntime"
    assert registry.fallback_engine(["CUDAExecutionProvider"] + CPU_ONLY) == "onnxruntime-cuda"
    assert registry.fallback_engine(["TensorrtExecutionProvider", "CUDAExecutionProvider"] + CPU_ONLY) \
        == "onnxruntime-tensorrt"


def test_per_stage_choice_reads_the_sidecars(bundle):
    # Nothing built for the Nano yet: a one-line refusal that says how to build it.
    with pytest.raises(EngineError, match="no fp16/fp32 engine for encoder on target jetson-nano.*ladon-build"):
        registry.choose_stage(bundle, "encoder", "tensorrt", "jetson-nano", available=CPU_ONLY)
    path, _ = tensorrt_sidecar(bundle)
    choice = registry.choose_stage(bundle, "encoder", "tensorrt", "jetson-nano", available=CPU_ONLY)
    assert (choice.engine, choice.label, choice.sidecar_path) == ("tensorrt", "tensorrt fp16", path)
    # The server target builds no encoder engine: --engine tensorrt runs it on ONNX Runtime there.
    choice = registry.choose_stage(bundle, "encoder", "tensorrt", "server", available=CPU_ONLY)
    assert choice.engine == "onnxruntime" and "builds no engine for encoder" in choice.why
    # A stage ladon-build left on ONNX Runtime (the check's verdict, recorded in its sidecar).
    from ladon_deploy.engines import sidecar

    document = sidecar.new_sidecar(bundle, "server", "body", "onnxruntime", "fp16", None, "x86_64")
    document["why"] = "TensorRT 10.0 cannot import it (ladon-build --check)"
    os.makedirs(bundle.engines_dir("server"))
    sidecar.write_sidecar(sidecar.sidecar_path(bundle, "server", "body", "fp16"), document)
    choice = registry.choose_stage(bundle, "body", "tensorrt", "server",
                                   available=["CUDAExecutionProvider"] + CPU_ONLY)
    assert choice.engine == "onnxruntime-cuda" and "cannot import" in choice.why
    # Other engines are what was asked for, whatever the engines area holds.
    assert registry.choose_stage(bundle, "encoder", "onnxruntime").label == "onnxruntime"


def test_stale_engine_is_refused_before_it_is_opened(bundle):
    tensorrt_sidecar(bundle)
    manifest = json.loads(json.dumps(bundle.manifest))
    manifest["stages"]["encoder"]["sha256"] = "f" * 64
    with pytest.raises(EngineError, match="built from another encoder.onnx"):
        registry.choose_stage(Bundle(bundle.directory, manifest), "encoder", "tensorrt", "jetson-nano",
                              available=CPU_ONLY)


def test_tensorrt_provider_keeps_its_engine_cache_in_the_engines_area(bundle):
    cache = bundle.engines_dir(registry.ORT_TENSORRT_CACHE)
    providers = engine_providers("onnxruntime-tensorrt", cache, "fp16")
    name, options = providers[0]
    assert name == "TensorrtExecutionProvider" and providers[1:] == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert options["trt_engine_cache_enable"] and options["trt_engine_cache_path"] == cache
    assert options["trt_fp16_enable"] is True
    assert cache.startswith(os.path.join(bundle.directory, "engines"))
    # The Jetson Zoo's onnxruntime 1.11 (TensorRT 8.2) predates the timing-cache options: they are not passed there.
    jetson = tensorrt_provider_options(cache, "fp32", "1.11.0")
    assert jetson == {"trt_fp16_enable": False, "trt_engine_cache_enable": True, "trt_engine_cache_path": cache}
    assert tensorrt_provider_options(cache, "fp32", "1.19.2")["trt_timing_cache_path"] == cache
    assert tensorrt_provider_options(None, "fp16", "1.19.2") == {"trt_fp16_enable": True}


@pytest.mark.skipif(_tensorrt_installed(), reason="tensorrt is installed here")
def test_open_stage_runner_tensorrt_says_what_to_install(bundle):
    with pytest.raises(EngineError, match="tensorrt Python package is not installed"):
        registry.open_stage_runner(bundle, "encoder", "tensorrt")
    with pytest.raises(EngineError, match="JetPack 4.6.*Python 3.6"):
        registry.require_tensorrt("jetson-nano")


def test_open_runner_refuses_tensorrt_on_a_bare_onnx(bundle):
    with pytest.raises(EngineError, match="use onnxruntime-tensorrt"):
        registry.open_runner(bundle.path("encoder"), "tensorrt")
    with pytest.raises(EngineError, match="unknown engine 'openvino'"):
        registry.open_runner(bundle.path("encoder"), "openvino")


def _run(argv, capsys):
    code = run_command(PROG, main, argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _one_line(code, err, pattern):
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith(PROG + ": error"), err
    assert pattern in lines[0], lines[0]


@pytest.mark.skipif(_tensorrt_installed(), reason="tensorrt is installed here")
def test_mobile_tensorrt_here_exits_2_saying_what_is_missing(bundle, image, tmp_path, capsys):
    out = str(tmp_path / "p.ldn")
    code, _, err = _run(["mobile", "--bundle", bundle.directory, "--image", image, "--out", out,
                         "--engine", "tensorrt"], capsys)
    _one_line(code, err, "the tensorrt Python package is not installed")
    assert not os.path.exists(out)


def test_mobile_onnxruntime_tensorrt_here_exits_2_saying_what_is_missing(bundle, image, tmp_path, capsys):
    if "TensorrtExecutionProvider" in available_providers():
        pytest.skip("this onnxruntime has the TensorRT execution provider")
    out = str(tmp_path / "p.ldn")
    code, _, err = _run(["mobile", "--bundle", bundle.directory, "--image", image, "--out", out,
                         "--engine", "onnxruntime-tensorrt"], capsys)
    _one_line(code, err, "no execution provider TensorrtExecutionProvider")
    assert "install onnxruntime-gpu" in err
    assert not os.path.exists(bundle.engines_dir(registry.ORT_TENSORRT_CACHE))


def test_results_name_the_engine_of_every_stage(bundle, image, tmp_path, capsys):
    out = str(tmp_path / "p.ldn")
    code, stdout, err = _run(["mobile", "--bundle", bundle.directory, "--image", image, "--out", out, "--json"],
                             capsys)
    assert code == 0, err
    assert json.loads(stdout)["engines"] == {"encoder": "onnxruntime"}
    code, stdout, err = _run(["server", "--bundle", bundle.directory, "--payload", out, "--json"], capsys)
    assert code == 0, err
    assert json.loads(stdout)["engines"] == {"body": "onnxruntime", "head_cls": "onnxruntime"}
    code, stdout, err = _run(["split", "--bundle", bundle.directory, "--image", image, "--rate", "100kbps"], capsys)
    assert code == 0, err
    rows = {line.split()[1]: line.split()[-1] for line in stdout.splitlines()
            if line.startswith(("device ", "server "))}
    assert rows["encoder"] == rows["body"] == rows["head_cls"] == "onnxruntime"
