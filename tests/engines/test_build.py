"""ladon-build's orchestration: optimization profiles, machine and precision refusals, the parity gate, atomic
writes and --force, the timing cache. TensorRT is not installed here: where a build needs an engine compiler,
ONNX Runtime stands in for it (compile = the stage's ONNX bytes, run = an ONNX Runtime session over them), so that
the gate compares two real computations; the TensorRT calls themselves are never executed here (README)."""
import os
import subprocess

import numpy as np
import pytest

from ladon_deploy.bundle import open_bundle
from ladon_deploy.engines import build, parity, sidecar
from ladon_deploy.engines.ort_runner import OnnxRuntimeRunner
from ladon_deploy.engines.targets import get_target
from ladon_deploy.errors import EngineError, LadonError
from tiny_bundle import make_tiny_bundle, write_encoder


@pytest.fixture
def tiny(tmp_path):
    return make_tiny_bundle(tmp_path / "tiny")


DEMO_PREPROCESSING = {"input_size": 416, "resize": "longer_side", "pad_multiple": 32}


def test_image_sizes_follow_the_preprocessing():
    assert build.image_size_range(DEMO_PREPROCESSING) == ((32, 32), (416, 416), (416, 416))
    assert build.image_size_range(dict(DEMO_PREPROCESSING, input_size=400)) == ((32, 32), (416, 416), (416, 416))
    assert build.image_size_range(dict(DEMO_PREPROCESSING, resize="square")) == ((416, 416),) * 3
    assert build.image_size_range(DEMO_PREPROCESSING, static=True) == ((416, 416),) * 3


def test_profile_matches_what_the_stages_really_produce(tiny):
    """The latent and feature ranges are derived from dimension rules; running the ONNX stages at the profile's
    smallest and largest image measures them independently."""
    bundle = open_bundle(tiny)
    encoder, body, head = (build.stage_profile(bundle, s) for s in ("encoder", "body", "head_cls"))
    assert encoder["image"] == {"min": [1, 3, 32, 32], "opt": [1, 3, 416, 416], "max": [1, 3, 416, 416]}
    with OnnxRuntimeRunner(bundle.path("encoder")) as enc, OnnxRuntimeRunner(bundle.path("body")) as bod:
        for key in ("min", "max"):
            image = np.zeros(encoder["image"][key], np.float32)
            latent = enc.run({"image": image})["latent"]
            assert list(latent.shape) == body["latent_hat"][key]
            features = bod.run({"latent_hat": latent})
            assert list(features["feat4"].shape) == head["feat4"][key]


def test_profile_of_the_demo_manifest_shapes():
    class Manifested(object):
        preprocessing = DEMO_PREPROCESSING

        def stage(self, name):
            return {"inputs": [{"name": "feat1", "shape": [1, 256, "feat1_h", "feat1_w"]},
                               {"name": "image_size", "shape": [2]}]}

    profile = build.stage_profile(Manifested(), "head_det")
    assert profile["feat1"] == {"min": [1, 256, 8, 8], "opt": [1, 256, 104, 104], "max": [1, 256, 104, 104]}
    assert profile["image_size"] == {"min": [2], "opt": [2], "max": [2]}


def test_unknown_dynamic_dimension_is_refused(tiny):
    bundle = open_bundle(tiny)
    bundle.manifest["stages"]["body"]["inputs"][0]["shape"][2] = "mystery"
    with pytest.raises(EngineError, match="unknown dynamic dimension 'mystery'"):
        build.stage_profile(bundle, "body")


def test_jetson_targets_are_built_on_the_jetson():
    with pytest.raises(EngineError, match="built on the Jetson Nano itself"):
        build.check_build_machine(get_target("jetson-nano"), "x86_64", None)
    with pytest.raises(EngineError, match="built on that board"):
        build.check_build_machine(get_target("jetson-nano"), "aarch64", "NVIDIA Jetson Xavier NX Developer Kit")
    build.check_build_machine(get_target("jetson-nano"), "aarch64", "NVIDIA Jetson Nano Developer Kit")
    build.check_build_machine(get_target("server"), "x86_64", None)


def test_refusals_come_before_any_work(tiny):
    with pytest.raises(LadonError, match="fp16"):
        build.build_engines(tiny, "jetson-nano", "int8")
    with pytest.raises(EngineError, match="built on the Jetson Nano"):
        build.build_engines(tiny, "jetson-nano", "fp16")
    with pytest.raises(LadonError, match="no DLA"):
        build.build_engines(tiny, "server", "fp16", dla_core=0)
    with pytest.raises(EngineError, match="int8 needs --calib-images"):
        build.build_engines(tiny, "server", "int8")
    assert not os.path.exists(os.path.join(tiny, "engines"))


def test_server_build_without_tensorrt_says_what_to_install(tiny):
    pytest.importorskip("onnx")
    try:
        import tensorrt  # noqa: F401
        pytest.skip("tensorrt is installed here")
    except ImportError:
        pass
    with pytest.raises(EngineError, match="tensorrt Python package is not installed.*pip install tensorrt"):
        build.build_engines(tiny, "server", "fp16")
    assert not os.path.exists(os.path.join(tiny, "engines", "server"))


def test_cpu_target_writes_sidecars_and_force_replaces_them(tiny):
    messages = []
    documents = build.build_engines(tiny, "cpu", "fp32", progress=messages.append)
    assert [d["stage"] for d in documents] == ["encoder", "body", "head_cls"]
    bundle = open_bundle(tiny)
    for document in documents:
        path = sidecar.sidecar_path(bundle, "cpu", document["stage"], "fp32")
        assert sidecar.read_sidecar(path)["engine"] == "onnxruntime"
        assert document["source"]["sha256"] == bundle.stage(document["stage"])["sha256"]
    with pytest.raises(EngineError, match="--force"):
        build.build_engines(tiny, "cpu", "fp32", progress=messages.append)
    build.build_engines(tiny, "cpu", "fp32", force=True, progress=messages.append)
    leftovers = [n for n in os.listdir(bundle.engines_dir("cpu")) if n.startswith(".")]
    assert leftovers == []


class OnnxRuntimeStandIn(object):
    """Stands in for TensorRTCompiler: 'compiles' a stage to the bytes of an ONNX file (the stage's own, or a
    replacement to make it miss parity) and runs it on ONNX Runtime. Not TensorRT, and never reported as such."""

    version = "0.0-onnxruntime-stand-in"
    api = "none"

    def __init__(self, directory, replacements=None):
        self.directory = str(directory)
        self.replacements = replacements or {}
        self.compiled = []

    def compile(self, onnx_path, profile, precision, workspace_bytes, timing_cache):
        stage = os.path.splitext(os.path.basename(onnx_path))[0]
        self.compiled.append((stage, profile, workspace_bytes, timing_cache))
        with open(self.replacements.get(stage, onnx_path), "rb") as handle:
            return handle.read(), (timing_cache or b"") + stage.encode("ascii") + b";"

    def open(self, plan, profile):
        path = os.path.join(self.directory, "candidate-%d.onnx" % len(self.compiled))
        with open(path, "wb") as handle:
            handle.write(plan)
        return OnnxRuntimeRunner(path)


def _build_with(bundle, compiler, precision="fp16", stages=("encoder", "body", "head_cls"), verdicts=None):
    results = build.build_stages(bundle, get_target("server"), list(stages), precision, None, 64, compiler,
                                 "stand-in GPU", "8.6", "x86_64", verdicts or {}, lambda line: None)
    build._commit(bundle, get_target("server"), results)
    return results


def test_orchestration_writes_plans_sidecars_and_keeps_the_timing_cache(tiny, tmp_path):
    bundle = open_bundle(tiny)
    stand_in = OnnxRuntimeStandIn(tmp_path)
    verdicts = {"head_cls": {"verdict": "onnxruntime", "unsupported": [{"op": "X", "node": "n", "why": "test"}]}}
    results = _build_with(bundle, stand_in, verdicts=verdicts)
    assert [stage for stage, _, _, _ in stand_in.compiled] == ["encoder", "body"]  # head_cls stays on ORT
    assert stand_in.compiled[0][2] == 64 << 20
    assert stand_in.compiled[0][1] == build.stage_profile(bundle, "encoder")
    encoder = sidecar.read_sidecar(sidecar.sidecar_path(bundle, "server", "encoder", "fp16"))
    assert encoder["engine"] == "tensorrt" and encoder["parity"]["passed"]
    assert encoder["parity"]["symbol_agreement"] == 1.0
    assert [p["input_size"] for p in encoder["parity"]["per_input_size"]] == [[416, 416], [352, 416]]
    sidecar.check_engine_file(encoder, bundle.engines_dir("server"), "encoder sidecar")
    head = sidecar.read_sidecar(sidecar.sidecar_path(bundle, "server", "head_cls", "fp16"))
    assert head["engine"] == "onnxruntime" and head["check"]["unsupported"][0]["op"] == "X"
    assert not os.path.exists(sidecar.plan_path(bundle, "server", "head_cls", "fp16"))
    cache = build.timing_cache_path(bundle, "server", stand_in.version, "8.6")
    assert open(cache, "rb").read() == b"encoder;body;"
    # The next build starts from the kept cache.
    second = OnnxRuntimeStandIn(tmp_path)
    _build_with(bundle, second, stages=("encoder",))
    assert second.compiled[0][3] == b"encoder;body;"
    assert len(results) == 3


def test_an_engine_that_misses_parity_leaves_nothing_behind(tiny, tmp_path):
    bundle = open_bundle(tiny)
    drifted = str(tmp_path / "drifted_encoder.onnx")
    write_encoder(drifted, scale=1.02)  # 2% weight drift: far beyond fp16's 1e-2 relative L2 on the latent
    stand_in = OnnxRuntimeStandIn(tmp_path, {"encoder": drifted})
    with pytest.raises(EngineError, match=r"encoder engine misses parity at 416x416: .*no engine was written"):
        build.build_stages(bundle, get_target("server"), ["body", "encoder"], "fp16", None, None, stand_in,
                           "stand-in GPU", "8.6", "x86_64", {}, lambda line: None)
    assert not os.path.exists(bundle.engines_dir("server"))  # the body passed, but nothing was committed


def test_force_replaces_an_engine_whole(tiny, tmp_path):
    bundle = open_bundle(tiny)
    _build_with(bundle, OnnxRuntimeStandIn(tmp_path), stages=("encoder",))
    first = sidecar.read_sidecar(sidecar.sidecar_path(bundle, "server", "encoder", "fp16"))
    # A rebuild that moves the stage to ONNX Runtime removes the stale plan along with replacing the sidecar.
    _build_with(bundle, OnnxRuntimeStandIn(tmp_path), stages=("encoder",),
                verdicts={"encoder": {"verdict": "onnxruntime", "unsupported": []}})
    second = sidecar.read_sidecar(sidecar.sidecar_path(bundle, "server", "encoder", "fp16"))
    assert first["engine"] == "tensorrt" and second["engine"] == "onnxruntime"
    assert not os.path.exists(sidecar.plan_path(bundle, "server", "encoder", "fp16"))


def test_parity_tolerances_per_precision():
    rng = np.random.RandomState(0)
    latent = rng.normal(0, 30, (1, 4, 20, 20)).astype(np.float32)
    medians = np.zeros(4, np.float32)
    small = latent * np.float32(1 + 5e-5)
    assert parity.compare_outputs("encoder", {"latent": latent}, {"latent": small}, "fp32", medians)["passed"]
    drift = latent * np.float32(1 + 5e-3)
    assert not parity.compare_outputs("encoder", {"latent": latent}, {"latent": drift}, "fp32", medians)["passed"]
    figures = parity.compare_outputs("encoder", {"latent": latent}, {"latent": drift}, "fp16", medians)
    assert figures["outputs"]["latent"]["rel_l2"] < 1e-2
    # 5e-3 relative drift moves some symbols across a rounding boundary; the gate counts them.
    expected = float(np.mean(np.round(latent) == np.round(drift)))
    assert figures["symbol_agreement"] == pytest.approx(expected)
    assert figures["passed"] == (expected >= 0.995)
    flipped = latent.copy()
    flipped.flat[:20] += 1.0  # 20 of 1600 symbols moved by one: 98.75% agreement, tiny relative L2
    figures = parity.compare_outputs("encoder", {"latent": latent}, {"latent": flipped}, "fp16", medians)
    assert figures["outputs"]["latent"]["rel_l2"] < 1e-2 and not figures["passed"]
    assert "symbols agree" in figures["failures"][0]
    nan = latent.copy()
    nan.flat[0] = np.nan
    assert not parity.compare_outputs("body", {"f": latent}, {"f": nan}, "fp16")["passed"]
    assert not parity.compare_outputs("body", {"f": latent}, {"f": latent[:, :, :10]}, "fp16")["passed"]


ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PYTHON36 = os.path.join(ROOT, ".venv36", "bin", "python")
ON_PYTHON36 = """
import sys
from ladon_deploy.bundle import open_bundle
from ladon_deploy.engines import build, parity, registry, tensorrt_runner
from ladon_deploy.errors import LadonError
bundle = open_bundle(sys.argv[1])
chain = parity.ReferenceChain(bundle, parity.probe_sizes((32, 32), (416, 416), 32))
figures = parity.check_parity(chain, "encoder", registry.open_runner(bundle.path("encoder")), "fp16")
print(sys.version_info[:2], figures["passed"], figures["symbol_agreement"])
for target in ("jetson-nano", "cpu"):
    try:
        print(len(build.build_engines(sys.argv[1], target, "fp16" if target != "cpu" else "fp32",
                                      progress=lambda line: None)))
    except LadonError as exc:
        print(str(exc).split(":")[0])
"""


@pytest.mark.skipif(not os.path.exists(PYTHON36), reason="no .venv36 (setup.sh found no Python 3.6 interpreter)")
def test_the_nano_side_of_the_builder_runs_on_python36(tiny):
    """The Nano builds its encoder on Python 3.6 (onnxruntime 1.10 for the parity reference): the gate and the
    orchestration up to TensorRT run there."""
    result = subprocess.run([PYTHON36, "-c", ON_PYTHON36, tiny], capture_output=True, text=True, timeout=120,
                            env=dict(os.environ, PYTHONPATH=ROOT))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["(3, 6) True 1.0", "target jetson-nano engines are built on the Jetson Nano "
                                          "itself (aarch64), this machine is x86_64", "3"]
