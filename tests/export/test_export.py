"""The exported bundle: its manifest, its parity figures, its atomic writing, and fidelity to sc2bench."""
import json
import os

import numpy as np
import pytest
import torch

from ladon_deploy.engines.ort_runner import OnnxRuntimeRunner
from ladon_deploy.errors import BundleError, ExportError
from ladon_deploy.export import parity, pipeline, stages
from ladon_deploy.bundle import STAGE_FILES, open_bundle, sha256_of


def test_demo_bundle_manifest_is_complete(demo_bundle):
    bundle = open_bundle(demo_bundle)  # verifies every sha256
    manifest = bundle.manifest
    assert manifest["architecture"] == "resnet50" and manifest["bottleneck_channels"] == 24
    assert manifest["tasks"] == ["cls", "det", "seg"]
    assert manifest["opset"] == 13 and manifest["toolkit_version"]
    assert manifest["preprocessing"]["resize"] == "longer_side" and manifest["preprocessing"]["input_size"] == 416
    assert manifest["preprocessing"]["mean"] == [0.485, 0.456, 0.406]
    assert set(manifest["stages"]) == set(STAGE_FILES)
    encoder = manifest["stages"]["encoder"]
    assert encoder["inputs"] == [{"name": "image", "shape": [1, 3, "height", "width"], "dtype": "float32"}]
    assert encoder["outputs"][0]["name"] == "latent" and encoder["outputs"][0]["dtype"] == "float32"
    assert [o["name"] for o in manifest["stages"]["body"]["outputs"]] == ["feat1", "feat2", "feat3", "feat4"]
    assert manifest["stages"]["head_det"]["inputs"][-1]["dtype"] == "int64"
    assert "postprocess" in manifest["stages"]["head_det"] and "postprocess" in manifest["stages"]["head_seg"]
    # The export raises when a check fails, so the figures are not re-judged here; what is checked is that they
    # cover both probe sizes and that detection parity was measured on real detections at each.
    for name, check in manifest["parity"].items():
        assert [c["input_size"] for c in check["per_input_size"]] == manifest["parity_inputs"]["sizes"], name
    det = manifest["parity"]["head_det"]
    per_size = det["per_input_size"]
    assert all(c["detections_reference"] > 0 for c in per_size), "detection parity must see real detections"
    assert det["detections_reference"] == sum(c["detections_reference"] for c in per_size)
    assert det["matched"] == sum(c["matched"] for c in per_size)


def test_encoder_output_shape_at_416_and_dynamic_sizes(demo_bundle, demo_model):
    runner = OnnxRuntimeRunner(os.path.join(demo_bundle, "encoder.onnx"))
    for height, width, latent in ((416, 416, (103, 103)), (288, 416, (71, 103))):
        image = np.random.default_rng(0).standard_normal((1, 3, height, width)).astype(np.float32)
        out = runner.run({"image": image})["latent"]
        assert out.shape == (1, 24) + latent
        with torch.no_grad():
            reference = demo_model.encode(torch.from_numpy(image)).numpy()
        assert parity.dense_errors(reference, out)["rel_l2"] <= 1e-5


def test_entropy_tables_match_the_model(demo_bundle, demo_model):
    tables = open_bundle(demo_bundle).load_entropy_tables()
    bottleneck = demo_model.entropy_bottleneck
    assert np.array_equal(tables["quantized_cdf"], bottleneck._quantized_cdf.numpy())
    assert np.array_equal(tables["cdf_length"], bottleneck._cdf_length.numpy())
    assert np.array_equal(tables["offset"], bottleneck._offset.numpy())
    assert np.array_equal(tables["medians"], bottleneck.quantiles[:, 0, 1].detach().numpy())
    assert tables["quantized_cdf"].dtype == np.int32 and tables["medians"].dtype == np.float32


class _ExtraBoxRunner(OnnxRuntimeRunner):
    """head_det's ONNX Runtime session with one confident box added to what the graph returned."""

    def run(self, feeds):
        outputs = super().run(feeds)
        outputs["boxes"] = np.concatenate([outputs["boxes"], np.array([[3, 5, 60, 70]], np.float32)])
        outputs["scores"] = np.append(outputs["scores"], np.float32(0.9))
        outputs["labels"] = np.append(outputs["labels"], outputs["labels"][:1] if len(outputs["labels"]) else [1])
        return outputs


def test_detection_gate_fails_an_extra_onnx_box(demo_bundle, demo_model):
    """The export's own check of head_det, on the demo bundle's graph and a small seeded probe."""
    (spec,) = [s for s in stages.stage_specs(demo_model) if s.name == "head_det"]
    probe = pipeline.StageInputs(demo_model, 192, 256, seed=5).for_stage("head_det")
    with OnnxRuntimeRunner(os.path.join(demo_bundle, "head_det.onnx")) as runner:
        honest = pipeline.check_stage(spec, runner, probe)
    assert honest["passed"] and honest["detections_reference"] > 0
    with _ExtraBoxRunner(os.path.join(demo_bundle, "head_det.onnx")) as runner:
        extra = pipeline.check_stage(spec, runner, probe)
    assert extra["extra"] == 1 and extra["unexplained"] == 1
    assert not extra["passed"]


def test_tampered_bundle_is_refused(demo_bundle, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(demo_bundle, str(copy))
    with open(str(copy / "entropy.npz"), "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(BundleError, match="sha256"):
        open_bundle(str(copy))
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["format_version"] = 99
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="version"):
        open_bundle(str(copy))
    with pytest.raises(BundleError, match="no manifest.json"):
        open_bundle(str(tmp_path))


def _leftovers(directory):
    return [name for name in os.listdir(str(directory)) if ".partial-" in name or ".old-" in name]


def test_failed_parity_leaves_nothing_behind(demo_model, tmp_path, monkeypatch):
    original = parity.compare_dense

    def impossible_tolerance(names, reference, candidate, tolerance=None):
        return original(names, reference, candidate, -1.0)

    monkeypatch.setattr(parity, "compare_dense", impossible_tolerance)
    out = tmp_path / "bundle"
    with pytest.raises(ExportError, match="parity check failed for encoder"):
        pipeline.export_bundle(demo_model, str(out))
    assert not out.exists()
    assert _leftovers(tmp_path) == []


def test_interrupted_export_leaves_nothing_behind(demo_model, tmp_path, monkeypatch):
    calls = []

    def interrupt_after_body(spec, example, path, opset=pipeline.OPSET):
        calls.append(spec.name)
        if spec.name == "head_cls":
            raise KeyboardInterrupt
        return original(spec, example, path, opset)

    original = pipeline.export_stage
    monkeypatch.setattr(pipeline, "export_stage", interrupt_after_body)
    out = tmp_path / "bundle"
    with pytest.raises(KeyboardInterrupt):
        pipeline.export_bundle(demo_model, str(out))
    assert calls == ["encoder", "body", "head_cls"]
    assert not out.exists() and _leftovers(tmp_path) == []


def test_existing_directory_needs_force(demo_model, tmp_path):
    out = tmp_path / "bundle"
    out.mkdir()
    with pytest.raises(ExportError, match="already exists"):
        pipeline.export_bundle(demo_model, str(out))


@pytest.mark.slow
def test_sc2bench_checkpoints_export_and_encoder_reproduces_sc2bench(sc2bench_files, sc2bench_trio, tmp_path):
    from ladon_deploy.models.checkpoint import load_ladon

    loaded = load_ladon(list(sc2bench_files.values()))
    out = tmp_path / "bundle"
    manifest = pipeline.export_bundle(loaded.model, str(out), beta=loaded.beta, sources=loaded.sources)
    assert manifest["beta"] == 5.12 and manifest["tasks"] == ["cls", "det", "seg"]

    cls_model = sc2bench_trio[0]
    runner = OnnxRuntimeRunner(str(out / "encoder.onnx"))
    rng = np.random.default_rng(7)
    for height, width in ((416, 416), (288, 416)):
        image = rng.standard_normal((1, 3, height, width)).astype(np.float32)
        with torch.no_grad():
            reference = cls_model.bottleneck_layer.encoder(torch.from_numpy(image)).numpy()
        ours = runner.run({"image": image})["latent"]
        assert parity.dense_errors(reference, ours)["rel_l2"] <= 1e-5

    # The tables in the bundle are sc2bench's own after update().
    tables = open_bundle(str(out)).load_entropy_tables()
    assert np.array_equal(tables["quantized_cdf"], cls_model.bottleneck_layer.entropy_bottleneck._quantized_cdf.numpy())


@pytest.mark.slow
def test_square_policy_and_subset_of_tasks(demo_model, tmp_path):
    from ladon_deploy.models.ladon import build_demo_model

    model = build_demo_model(tasks=("cls",))
    manifest = pipeline.export_bundle(model, str(tmp_path / "b"), resize_policy="square")
    assert manifest["tasks"] == ["cls"] and manifest["preprocessing"]["resize"] == "square"
    assert set(manifest["stages"]) == {"encoder", "entropy", "body", "head_cls"}
    assert sha256_of(str(tmp_path / "b" / "encoder.onnx")) == manifest["stages"]["encoder"]["sha256"]


@pytest.mark.slow
def test_resnest269e_exports_with_parity(tmp_path):
    from ladon_deploy.models.ladon import build_demo_model

    model = build_demo_model("resnest269e", tasks=("cls",))
    manifest = pipeline.export_bundle(model, str(tmp_path / "resnest"))
    assert manifest["architecture"] == "resnest269e" and manifest["bottleneck_channels"] == 32
    assert manifest["stages"]["encoder"]["outputs"][0]["shape"][1] == 32
    tables = open_bundle(str(tmp_path / "resnest")).load_entropy_tables()
    assert tables["quantized_cdf"].shape[0] == 32
