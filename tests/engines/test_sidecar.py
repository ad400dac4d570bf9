"""The engine sidecar: written and read back, validated, and every refusal made on the JSON alone (before a plan is
read or deserialized): another TensorRT version, another compute capability, another platform, a re-exported ONNX,
a plan replaced behind its sidecar's back."""
import copy
import json
import os

import pytest

from ladon_deploy.bundle import Bundle, open_bundle
from ladon_deploy.engines import sidecar
from ladon_deploy.engines.tensorrt_api import MachineFacts
from ladon_deploy.errors import EngineError
from tiny_bundle import make_tiny_bundle, tensorrt_sidecar


@pytest.fixture
def bundle(tmp_path):
    return open_bundle(make_tiny_bundle(tmp_path / "tiny"))


NANO = MachineFacts("aarch64", "NVIDIA Jetson Nano Developer Kit", "8.2.1.8", "NVIDIA Tegra X1", "5.3")


def test_round_trip_and_names(bundle):
    path, written = tensorrt_sidecar(bundle)
    assert path.endswith(os.path.join("engines", "jetson-nano", "encoder.fp16.json"))
    assert sidecar.read_sidecar(path) == json.loads(json.dumps(written))
    assert written["source"] == {"file": "encoder.onnx", "sha256": bundle.stage("encoder")["sha256"]}
    sidecar.check_runnable(sidecar.read_sidecar(path), bundle, NANO, path)
    dla_path, _ = tensorrt_sidecar(bundle, dla_core=1, target="xavier-nx", capability="7.2", version="8.5.2.2")
    assert dla_path.endswith("encoder.fp16.dla1.json")


@pytest.mark.parametrize("change, message", [
    (lambda d: d.pop("gpu"), "lacks gpu"),
    (lambda d: d.update(format="something-else"), "not a Ladon engine sidecar"),
    (lambda d: d.update(format_version=99), "format version 99"),
    (lambda d: d.update(engine="openvino"), "unknown engine"),
    (lambda d: d.update(file="../../elsewhere.plan"), "inside the engines folder"),
    (lambda d: d["profile"]["image"].pop("opt"), "lacks min/opt/max"),
])
def test_malformed_sidecars_are_refused(bundle, change, message):
    path, document = tensorrt_sidecar(bundle)
    broken = copy.deepcopy(document)
    change(broken)
    with pytest.raises(EngineError, match=message):
        sidecar.validate_sidecar(broken, path)
    with open(path, "w") as handle:
        handle.write("{not json")
    with pytest.raises(EngineError, match="cannot read engine sidecar"):
        sidecar.read_sidecar(path)


@pytest.mark.parametrize("facts, message", [
    (MachineFacts("aarch64", None, "8.2.3.0", "NVIDIA Tegra X1", "5.3"),
     "built by TensorRT 8.2.1.8, this machine has TensorRT 8.2.3.0"),
    (MachineFacts("aarch64", None, "8.2.1.8", "Xavier", "7.2"), "compute capability 5.3 .*this GPU is 7.2"),
    (MachineFacts("x86_64", None, "8.2.1.8", "RTX", "5.3"), "built on aarch64, this machine is x86_64"),
])
def test_engines_for_another_machine_are_refused(bundle, facts, message):
    path, document = tensorrt_sidecar(bundle)
    with pytest.raises(EngineError, match=message) as caught:
        sidecar.check_runnable(document, bundle, facts, path)
    assert "\n" not in str(caught.value)


def test_engine_from_a_re_exported_onnx_is_refused(bundle):
    path, document = tensorrt_sidecar(bundle)
    manifest = copy.deepcopy(bundle.manifest)
    manifest["stages"]["encoder"]["sha256"] = "0" * 64  # the bundle's encoder was re-exported since the build
    with pytest.raises(EngineError, match="built from another encoder.onnx.*--force"):
        sidecar.check_runnable(document, Bundle(bundle.directory, manifest), NANO, path)


def test_plan_replaced_behind_its_sidecar_is_refused(bundle):
    path, document = tensorrt_sidecar(bundle)
    directory = os.path.dirname(path)
    assert sidecar.check_engine_file(document, directory, path).endswith("encoder.fp16.plan")
    with open(os.path.join(directory, document["file"]), "wb") as handle:
        handle.write(b"another plan")
    with pytest.raises(EngineError, match="does not match the sha256"):
        sidecar.check_engine_file(document, directory, path)
    os.remove(os.path.join(directory, document["file"]))
    with pytest.raises(EngineError, match="does not exist"):
        sidecar.check_engine_file(document, directory, path)


def test_run_picks_fp16_then_fp32_and_gpu_before_dla(bundle):
    assert sidecar.find_stage_sidecar(bundle, "xavier-nx", "encoder") is None
    tensorrt_sidecar(bundle, precision="fp32", target="xavier-nx")
    assert sidecar.find_stage_sidecar(bundle, "xavier-nx", "encoder").endswith("encoder.fp32.json")
    tensorrt_sidecar(bundle, precision="fp16", dla_core=0, target="xavier-nx")
    assert sidecar.find_stage_sidecar(bundle, "xavier-nx", "encoder").endswith("encoder.fp16.dla0.json")
    tensorrt_sidecar(bundle, precision="fp16", target="xavier-nx")
    assert sidecar.find_stage_sidecar(bundle, "xavier-nx", "encoder").endswith("encoder.fp16.json")
    assert sidecar.find_stage_sidecar(bundle, "xavier-nx", "encoder", "fp32").endswith("encoder.fp32.json")
