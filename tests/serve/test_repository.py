"""The Triton model repository (ladon-build --target triton): every config.pbtxt of every backend variant parsed with
Triton's own schema (tritonclient's model_config_pb2), checked against the bundle's manifest and against Triton's
ensemble rules; the ONNX copies compute what the bundle's files compute; writing is atomic.

The TensorRT variant is written from placeholder plan files with valid sidecars: what is tested is the repository
(file names, cc_model_filenames, batch limits from the profiles), never a TensorRT engine.
"""
import json
import os

import numpy as np
import pytest

from ladon_deploy.bundle import TASK_HEADS, engine_name, open_bundle
from ladon_deploy.engines import sidecar as sidecars
from ladon_deploy.errors import EngineError, LadonError
from ladon_deploy.serve import repository
from ladon_deploy.serve.repository import RepositoryOptions, write_repository

# The module's fixture writes three repositories (about 5 s each on 2 cores, on top of the session's demo bundle).
pytestmark = pytest.mark.slow

model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")
text_format = pytest.importorskip("google.protobuf.text_format")

TYPES = {"float32": model_config_pb2.TYPE_FP32, "int64": model_config_pb2.TYPE_INT64}
KIND_GPU = model_config_pb2.ModelInstanceGroup.KIND_GPU
KIND_CPU = model_config_pb2.ModelInstanceGroup.KIND_CPU


def parse_config(path):
    with open(path) as handle:
        return text_format.Parse(handle.read(), model_config_pb2.ModelConfig())


def parse_repository(directory):
    configs = {}
    for name in sorted(os.listdir(directory)):
        path = os.path.join(directory, name, "config.pbtxt")
        if os.path.isfile(path):
            configs[name] = parse_config(path)
            assert configs[name].name == name
            assert os.path.isdir(os.path.join(directory, name, "1"))
    return configs


def linked_bundle(source, destination):
    """A bundle of hard links to the demo bundle's files (plans can be added to it without touching the fixture)."""
    os.makedirs(destination)
    for name in os.listdir(source):
        if os.path.isfile(os.path.join(source, name)):
            os.link(os.path.join(source, name), os.path.join(destination, name))
    return str(destination)


def add_placeholder_plan(bundle_dir, directory, stage, capability, max_batch, precision="fp16"):
    bundle = open_bundle(bundle_dir, verify=False)
    os.makedirs(directory, exist_ok=True)
    name = engine_name(stage, precision)
    plan = os.path.join(directory, name + ".plan")
    with open(plan, "wb") as handle:
        handle.write(b"placeholder plan for sm %s" % capability.encode())
    document = sidecars.new_sidecar(bundle, "server", stage, "tensorrt", precision, None, "x86_64")
    profile = {}
    for tensor in bundle.stage(stage)["inputs"]:
        rest = [4 if not isinstance(d, int) else d for d in tensor["shape"][1:]]
        profile[tensor["name"]] = {"min": [1] + rest, "opt": [1] + rest, "max": [max_batch] + rest}
    document.update({"file": name + ".plan", "engine_sha256": sidecars.sha256_of(plan),
                     "tensorrt": {"version": "10.3.0"}, "gpu": {"name": "test", "compute_capability": capability},
                     "profile": profile, "build_options": {}, "build_seconds": 0.0, "parity": {}})
    sidecars.write_sidecar(os.path.join(directory, name + ".json"), document)


@pytest.fixture(scope="module")
def repositories(demo_bundle, tmp_path_factory):
    root = tmp_path_factory.mktemp("triton-repositories")
    bundle_dir = linked_bundle(demo_bundle, root / "bundle")
    server_dir = open_bundle(bundle_dir, verify=False).engines_dir("server")
    other_gpu = str(root / "other-gpu-engines")
    for stage in ("body", "head_cls", "head_seg"):
        add_placeholder_plan(bundle_dir, server_dir, stage, "8.6", max_batch=16)
        add_placeholder_plan(bundle_dir, other_gpu, stage, "8.9", max_batch=4)
    written = {}
    for backend, options in (("onnxruntime", RepositoryOptions("onnxruntime", instances=2)),
                             ("python", RepositoryOptions("python", max_batch=4, max_queue_delay_ms=2.5)),
                             ("tensorrt", RepositoryOptions("tensorrt", plan_dirs=[other_gpu]))):
        out = str(root / backend)
        write_repository(bundle_dir, out, options)
        written[backend] = out
    return {"bundle": bundle_dir, "dirs": written, "other_gpu": other_gpu, "root": root}


@pytest.mark.parametrize("backend", ["onnxruntime", "python", "tensorrt"])
def test_configs_parse_and_agree_with_the_manifest(repositories, backend):
    bundle = open_bundle(repositories["bundle"], verify=False)
    directory = repositories["dirs"][backend]
    configs = parse_repository(directory)
    assert set(configs) == {"ladon", "ladon_decode", "ladon_body", "ladon_results"} | {
        "ladon_" + TASK_HEADS[t] for t in bundle.tasks}
    info = json.load(open(os.path.join(directory, repository.REPOSITORY_INFO)))
    assert info["bundle_id"] == bundle.bundle_id and info["options"]["backend"] == backend
    for name, config in configs.items():
        assert config.parameters["bundle_id"].string_value == bundle.bundle_id
    for stage in ["body"] + [TASK_HEADS[t] for t in bundle.tasks]:
        config = configs["ladon_" + stage]
        manifest = bundle.stage(stage)
        # The manifest's shapes, batch dimension removed: tensors that lead with the batch of 1 drop it; the
        # detection head's per-image tensors (image_size [2], the detections) keep their shape (Triton adds it).
        inputs = [t for t in config.input if t.name != "task_mask"]
        # Only the python variant's heads take the payload's task mask (to skip unrequested tasks).
        assert len(inputs) == len(config.input) - (backend == "python" and stage != "body")
        for declared, tensors in ((inputs, manifest["inputs"]), (config.output, manifest["outputs"])):
            assert [t.name for t in declared] == [t["name"] for t in tensors]
            for got, tensor in zip(declared, tensors):
                shape = tensor["shape"]
                batched = stage != "head_det" or (len(shape) >= 2 and shape[0] == 1)
                expected = [d if isinstance(d, int) else -1 for d in (shape[1:] if batched else shape)]
                if config.max_batch_size == 0:  # a plan with a fixed batch: Triton sees its full shape
                    expected = [1] + expected
                assert list(got.dims) == expected, (stage, got.name)
                assert got.data_type == TYPES[tensor["dtype"]]


@pytest.mark.parametrize("backend", ["onnxruntime", "python", "tensorrt"])
def test_ensemble_follows_tritons_rules(repositories, backend):
    configs = parse_repository(repositories["dirs"][backend])
    ensemble = configs["ladon"]
    assert ensemble.platform == "ensemble" and ensemble.max_batch_size == 1
    assert [(t.name, t.data_type, list(t.dims)) for t in ensemble.input] == [
        ("payload", model_config_pb2.TYPE_STRING, [1])]
    assert [(t.name, t.data_type, list(t.dims)) for t in ensemble.output] == [
        ("result", model_config_pb2.TYPE_STRING, [1])]
    available = {"payload": ("payload", model_config_pb2.TYPE_STRING)}
    steps = ensemble.ensemble_scheduling.step
    assert [s.model_name for s in steps][0] == "ladon_decode" and steps[-1].model_name == "ladon_results"
    for step in steps:
        model = configs[step.model_name]
        # Triton refuses an ensemble whose max_batch_size exceeds a composing model's (0 = no batching: full shape).
        assert model.max_batch_size == 0 or model.max_batch_size >= ensemble.max_batch_size
        inputs = {t.name: t for t in model.input}
        assert set(step.input_map) == set(inputs), step.model_name
        for key, tensor in step.input_map.items():
            assert tensor in available, (step.model_name, tensor)
            assert available[tensor][1] == inputs[key].data_type
        outputs = {t.name: t for t in model.output}
        assert set(step.output_map) <= set(outputs)
        for key, tensor in step.output_map.items():
            assert tensor not in available, "tensor %s produced twice" % tensor
            available[tensor] = (step.model_name, outputs[key].data_type)
    assert available["result"][0] == "ladon_results"


def test_batching_instances_and_backends(repositories):
    ort = parse_repository(repositories["dirs"]["onnxruntime"])
    python = parse_repository(repositories["dirs"]["python"])
    trt = parse_repository(repositories["dirs"]["tensorrt"])
    for name in ("ladon_body", "ladon_head_cls", "ladon_head_seg"):
        assert ort[name].platform == "onnxruntime_onnx" and ort[name].max_batch_size == 8
        assert ort[name].dynamic_batching.max_queue_delay_microseconds == 5000
        assert [(g.count, g.kind) for g in ort[name].instance_group] == [(2, KIND_GPU)]
        assert python[name].backend == "python" and python[name].max_batch_size == 4
        assert python[name].dynamic_batching.max_queue_delay_microseconds == 2500
        assert [g.kind for g in python[name].instance_group] == [KIND_CPU]
        assert trt[name].platform == "tensorrt_plan"
        assert trt[name].max_batch_size == 4  # min(--max-batch 8, the smaller profile: 4 on the sm 8.9 plans)
    for configs in (ort, python, trt):
        assert configs["ladon_head_det"].max_batch_size == 1  # one image per run
        for name in ("ladon_decode", "ladon_results"):
            assert configs[name].backend == "python"
            assert [g.kind for g in configs[name].instance_group] == [KIND_CPU]
    det = trt["ladon_head_det"]
    assert det.platform == "onnxruntime_onnx"
    assert [a.name for a in det.optimization.execution_accelerators.gpu_execution_accelerator] == ["tensorrt"]


def test_tensorrt_plans_one_per_compute_capability(repositories):
    directory = repositories["dirs"]["tensorrt"]
    body = parse_config(os.path.join(directory, "ladon_body", "config.pbtxt"))
    assert dict(body.cc_model_filenames) == {"8.6": "body.fp16.sm86.plan", "8.9": "body.fp16.sm89.plan"}
    assert body.default_model_filename == "body.fp16.sm86.plan"
    for capability, file_name in body.cc_model_filenames.items():
        with open(os.path.join(directory, "ladon_body", "1", file_name), "rb") as handle:
            assert handle.read() == b"placeholder plan for sm %s" % capability.encode()


def test_tensorrt_fixed_batch_plan_and_refusals(repositories, tmp_path):
    bundle_dir = linked_bundle(repositories["bundle"], tmp_path / "bundle")
    server_dir = open_bundle(bundle_dir, verify=False).engines_dir("server")
    with pytest.raises(EngineError, match="no fp16 TensorRT plan of the body"):
        write_repository(bundle_dir, str(tmp_path / "none"), RepositoryOptions("tensorrt"))
    assert not os.path.exists(str(tmp_path / "none"))
    add_placeholder_plan(bundle_dir, server_dir, "body", "7.5", max_batch=1)
    write_repository(bundle_dir, str(tmp_path / "fixed"), RepositoryOptions("tensorrt"))
    body = parse_config(str(tmp_path / "fixed" / "ladon_body" / "config.pbtxt"))
    assert body.max_batch_size == 0 and not body.HasField("dynamic_batching")
    assert list(body.input[0].dims) == [1, 24, -1, -1]
    # Two plans for one compute capability cannot both be named in cc_model_filenames.
    add_placeholder_plan(bundle_dir, str(tmp_path / "twin"), "body", "7.5", max_batch=1)
    with pytest.raises(EngineError, match="two body fp16 plans for compute capability 7.5"):
        write_repository(bundle_dir, str(tmp_path / "twins"), RepositoryOptions("tensorrt",
                                                                                plan_dirs=[str(tmp_path / "twin")]))
    # A plan replaced behind its sidecar's back is refused.
    with open(os.path.join(server_dir, "body.fp16.plan"), "ab") as handle:
        handle.write(b"tampered")
    with pytest.raises(EngineError, match="does not match the sha256"):
        write_repository(bundle_dir, str(tmp_path / "tampered"), RepositoryOptions("tensorrt"))


def test_onnx_copies_compute_what_the_bundle_computes(repositories):
    """The batch-capable copies run two latents at once as they run each alone; the detection copy wrapped in a
    batch of 1 gives the bundle's detections with a leading 1."""
    from ladon_deploy.engines.registry import open_runner

    bundle = open_bundle(repositories["bundle"], verify=False)
    directory = repositories["dirs"]["onnxruntime"]
    rng = np.random.default_rng(0)
    latents = rng.normal(0, 1, (2, 24, 7, 20)).astype(np.float32)
    original = open_runner(bundle.path("body"))
    copy = open_runner(os.path.join(directory, "ladon_body", "1", "model.onnx"))
    batched = copy.run({"latent_hat": latents})
    features = original.run({"latent_hat": latents[:1]})
    for row in range(2):
        single = original.run({"latent_hat": latents[row:row + 1]})
        for name, value in single.items():
            assert np.array_equal(batched[name][row:row + 1], value), name
    feeds = {name: features[name] for name in ("feat1", "feat2", "feat3", "feat4")}
    reference = open_runner(bundle.path("head_det")).run(dict(feeds, image_size=np.asarray([28, 80], np.int64)))
    wrapped = open_runner(os.path.join(directory, "ladon_head_det", "1", "model.onnx")).run(
        dict(feeds, image_size=np.asarray([[28, 80]], np.int64)))
    assert set(wrapped) == set(reference)
    for name, value in reference.items():
        assert wrapped[name].shape == (1,) + value.shape
        assert np.array_equal(wrapped[name][0], value), name


def test_python_variant_carries_its_steps(repositories, demo_bundle):
    directory = repositories["dirs"]["python"]
    steps = os.path.join(os.path.dirname(repository.__file__), "triton_python")
    for model, source in (("ladon_decode", "ladon_decode.py"), ("ladon_results", "ladon_results.py"),
                          ("ladon_body", "ladon_onnx.py"), ("ladon_head_det", "ladon_onnx.py")):
        with open(os.path.join(directory, model, "1", "model.py")) as copied, open(os.path.join(steps, source)) as src:
            assert copied.read() == src.read()
    decode = open_bundle(os.path.join(directory, "ladon_decode", "1"), verify=False)
    decode.verify(["entropy"])
    assert decode.bundle_id == open_bundle(demo_bundle, verify=False).bundle_id
    results = parse_config(os.path.join(directory, "ladon_results", "config.pbtxt"))
    assert results.parameters["unbatched_outputs"].string_value == "det_boxes,det_scores,det_labels"
    assert json.loads(results.parameters["engines"].string_value)["body"] == "onnxruntime"


def test_writing_is_atomic_and_refuses_what_it_did_not_write(repositories, tmp_path, monkeypatch):
    bundle_dir = repositories["bundle"]
    out = str(tmp_path / "repo")
    write_repository(bundle_dir, out, RepositoryOptions("python"))
    with pytest.raises(LadonError, match="already exists"):
        write_repository(bundle_dir, out, RepositoryOptions("python"))
    before = sorted(os.listdir(out))

    def broken(*args, **kwargs):
        raise LadonError("disk full (simulated)")

    monkeypatch.setattr(repository, "write_triton_onnx", broken)
    with pytest.raises(LadonError, match="simulated"):
        write_repository(bundle_dir, out, RepositoryOptions("onnxruntime"), force=True)
    assert sorted(os.listdir(out)) == before
    assert json.load(open(os.path.join(out, repository.REPOSITORY_INFO)))["options"]["backend"] == "python"
    assert [n for n in os.listdir(str(tmp_path)) if n.startswith(".")] == []  # no staging left behind
    monkeypatch.undo()
    write_repository(bundle_dir, out, RepositoryOptions("onnxruntime", max_batch=1), force=True)
    body = parse_config(os.path.join(out, "ladon_body", "config.pbtxt"))
    assert body.platform == "onnxruntime_onnx" and body.max_batch_size == 1
    other = tmp_path / "not-a-repository"
    other.mkdir()
    with pytest.raises(LadonError, match="not a Ladon Triton repository"):
        write_repository(bundle_dir, str(other), RepositoryOptions("python"), force=True)


@pytest.mark.parametrize("kwargs, message", [
    ({"backend": "triton"}, "unknown Triton backend"), ({"instances": 0}, "--instances"),
    ({"max_batch": 0}, "--max-batch"), ({"max_queue_delay_ms": -1}, "--max-queue-delay-ms"),
    ({"backend": "tensorrt", "instance_kind": "cpu"}, "GPU instances only"), ({"instance_kind": "tpu"}, "kind")])
def test_options_are_checked(kwargs, message):
    with pytest.raises(LadonError, match=message):
        RepositoryOptions(**kwargs)


def test_ladon_build_target_triton_cli(repositories, tmp_path, capsys):
    from ladon_deploy.cli_support import run_command
    from ladon_deploy.engines.cli import PROG, main

    out = str(tmp_path / "cli-repo")
    assert run_command(PROG, main, ["--bundle", repositories["bundle"], "--target", "triton", "--out", out,
                                    "--backend", "python", "--instances", "2", "--max-batch", "2"]) == 0
    assert "backend python" in capsys.readouterr().out
    body = parse_config(os.path.join(out, "ladon_body", "config.pbtxt"))
    assert body.max_batch_size == 2 and body.instance_group[0].count == 2
    for argv, message in (([], "needs --bundle DIR and --out DIR"), (["--out", out], "already exists"),
                          (["--out", str(tmp_path / "x"), "--max-batch", "0"], "--max-batch"),
                          (["--out", str(tmp_path / "y"), "--check"], "not for --target triton")):
        assert run_command(PROG, main, ["--bundle", repositories["bundle"], "--target", "triton"] + argv) == 2
        error = capsys.readouterr().err
        assert message in error and len(error.strip().splitlines()) == 1


def test_ladon_serve_refuses_what_the_bundled_server_cannot_load(repositories, tmp_path, capsys):
    from ladon_deploy.cli_support import run_command
    from ladon_deploy.serve.cli import PROG, main

    pytest.importorskip("pytriton")
    for directory, message in ((repositories["dirs"]["onnxruntime"], "has only python"),
                               (str(tmp_path), "not a Ladon Triton repository"),
                               (str(tmp_path / "missing"), "model repository not found")):
        assert run_command(PROG, main, ["--model-repository", directory, "--port", "1"]) == 2
        error = capsys.readouterr().err
        assert message in error and len(error.strip().splitlines()) == 1, error
    assert run_command(PROG, main, ["--model-repository", str(tmp_path), "--bundle", "b"]) == 2
    assert "one of --bundle B or --model-repository DIR" in capsys.readouterr().err
