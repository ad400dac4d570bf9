"""A miniature bundle for the engine tests: the demo bundle's layout, names and symbolic shapes (so profiles, parity
chains, sidecars and the per-stage choice see what they see on a real bundle), with graphs of a few small
convolutions built with onnx.helper, so that a test builds one in milliseconds instead of a 45-second export.

encoder  image [1,3,H,W] -> latent [1,C,H/4-1,W/4-1]          (k5 s2 p2, k5 s2 p2, k2 s1 p0: the real encoder's geometry)
body     latent_hat [1,C,h,w] -> feat1 [1,8,H/4,W/4] .. feat4 [1,16,H/32,W/32]   (k2 p1, then stride-2 convs)
head_cls feat4 -> probabilities [1,10]
"""
import hashlib
import json
import os

import numpy as np

CHANNELS = 4
CLASSES = 1000  # the server names ImageNet classes


def _sha256(path):
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


def _conv(helper, numpy_helper, name, source, target, weight, stride, pad, initializers):
    initializers.append(numpy_helper.from_array(weight, name + "_w"))
    initializers.append(numpy_helper.from_array(np.zeros(weight.shape[0], np.float32), name + "_b"))
    k = weight.shape[2]
    return helper.make_node("Conv", [source, name + "_w", name + "_b"], [target], name=name,
                            kernel_shape=[k, k], strides=[stride, stride], pads=[pad] * 4)


def _save(onnx, helper, nodes, inputs, outputs, initializers, path):
    graph = helper.make_graph(nodes, os.path.basename(path), inputs, outputs, initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 7
    onnx.checker.check_model(model)
    onnx.save(model, path)


def _value(helper, onnx, name, shape, elem=None):
    return helper.make_tensor_value_info(name, elem or onnx.TensorProto.FLOAT, shape)


def write_encoder(path, scale=1.0, seed=1):
    import onnx
    from onnx import helper, numpy_helper

    rng = np.random.RandomState(seed)
    inits, nodes = [], []
    w = [rng.normal(0, 0.2, s).astype(np.float32) * np.float32(scale)
         for s in [(6, 3, 5, 5), (6, 6, 5, 5), (CHANNELS, 6, 2, 2)]]
    nodes.append(_conv(helper, numpy_helper, "enc1", "image", "e1", w[0], 2, 2, inits))
    nodes.append(helper.make_node("Relu", ["e1"], ["r1"], name="relu1"))
    nodes.append(_conv(helper, numpy_helper, "enc2", "r1", "e2", w[1], 2, 2, inits))
    nodes.append(helper.make_node("Relu", ["e2"], ["r2"], name="relu2"))
    nodes.append(_conv(helper, numpy_helper, "enc3", "r2", "e3", w[2], 1, 0, inits))
    inits.append(numpy_helper.from_array(np.asarray(2.0, np.float32), "gain"))
    nodes.append(helper.make_node("Mul", ["e3", "gain"], ["latent"], name="gain"))
    _save(onnx, helper, nodes, [_value(helper, onnx, "image", [1, 3, "height", "width"])],
          [_value(helper, onnx, "latent", [1, CHANNELS, "latent_h", "latent_w"])], inits, path)


def write_body(path, seed=2):
    import onnx
    from onnx import helper, numpy_helper

    rng = np.random.RandomState(seed)
    inits, nodes = [], []
    nodes.append(_conv(helper, numpy_helper, "dec", "latent_hat", "feat1",
                       rng.normal(0, 0.2, (8, CHANNELS, 2, 2)).astype(np.float32), 1, 1, inits))
    previous, channels = "feat1", 8
    for index, out in ((2, 8), (3, 16), (4, 16)):
        nodes.append(_conv(helper, numpy_helper, "down%d" % index, previous, "feat%d" % index,
                           rng.normal(0, 0.1, (out, channels, 3, 3)).astype(np.float32), 2, 1, inits))
        previous, channels = "feat%d" % index, out
    outputs = [_value(helper, onnx, "feat%d" % i, [1, c, "feat%d_h" % i, "feat%d_w" % i])
               for i, c in ((1, 8), (2, 8), (3, 16), (4, 16))]
    _save(onnx, helper, nodes, [_value(helper, onnx, "latent_hat", [1, CHANNELS, "latent_h", "latent_w"])],
          outputs, inits, path)


def write_head_cls(path, seed=3):
    import onnx
    from onnx import helper, numpy_helper

    rng = np.random.RandomState(seed)
    inits = [numpy_helper.from_array(rng.normal(0, 0.3, (16, CLASSES)).astype(np.float32), "fc_w"),
             numpy_helper.from_array(np.zeros(CLASSES, np.float32), "fc_b")]
    nodes = [helper.make_node("GlobalAveragePool", ["feat4"], ["pooled"], name="pool"),
             helper.make_node("Flatten", ["pooled"], ["flat"], name="flatten", axis=1),
             helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], name="fc"),
             helper.make_node("Softmax", ["logits"], ["probabilities"], name="softmax", axis=1)]
    _save(onnx, helper, nodes, [_value(helper, onnx, "feat4", [1, 16, "feat4_h", "feat4_w"])],
          [_value(helper, onnx, "probabilities", [1, CLASSES])], inits, path)


def write_entropy(path):
    symbols = 17  # -8..8, then the escape symbol
    length = symbols + 2
    shape = np.exp(-0.3 * np.abs(np.arange(-8, 9)))
    counts = np.floor(shape / shape.sum() * (65536 - 2 * (symbols + 1))).astype(np.int64) + 1
    counts = np.concatenate([counts, [1]])  # the escape symbol
    counts[8] += 65536 - counts.sum()  # the rounding remainder goes to the most probable symbol
    cdf = np.concatenate([[0], np.cumsum(counts)])
    table = np.tile(cdf.astype(np.int32), (CHANNELS, 1))
    np.savez(path, quantized_cdf=table, cdf_length=np.full(CHANNELS, length, np.int32),
             offset=np.full(CHANNELS, -8, np.int32), medians=np.linspace(-0.2, 0.2, CHANNELS).astype(np.float32))


STAGE_IO = {
    "encoder": ([("image", [1, 3, "height", "width"], "float32")],
                [("latent", [1, CHANNELS, "latent_h", "latent_w"], "float32")]),
    "body": ([("latent_hat", [1, CHANNELS, "latent_h", "latent_w"], "float32")],
             [("feat%d" % i, [1, c, "feat%d_h" % i, "feat%d_w" % i], "float32")
              for i, c in ((1, 8), (2, 8), (3, 16), (4, 16))]),
    "head_cls": ([("feat4", [1, 16, "feat4_h", "feat4_w"], "float32")],
                 [("probabilities", [1, CLASSES], "float32")]),
}


def write_manifest(directory):
    from ladon_deploy.bundle import bundle_id_from_hashes

    stages = {}
    for stage, file_name in (("encoder", "encoder.onnx"), ("entropy", "entropy.npz"), ("body", "body.onnx"),
                             ("head_cls", "head_cls.onnx")):
        entry = {"file": file_name, "sha256": _sha256(os.path.join(directory, file_name))}
        if stage in STAGE_IO:
            inputs, outputs = STAGE_IO[stage]
            entry["inputs"] = [{"name": n, "shape": s, "dtype": d} for n, s, d in inputs]
            entry["outputs"] = [{"name": n, "shape": s, "dtype": d} for n, s, d in outputs]
        stages[stage] = entry
    manifest = {
        "format": "ladon-bundle", "format_version": 1, "toolkit_version": "test",
        "bundle_id": bundle_id_from_hashes({k: v["sha256"] for k, v in stages.items()}),
        "architecture": "tiny", "bottleneck_channels": CHANNELS, "split": "bottleneck", "tasks": ["cls"],
        "preprocessing": {"input_size": 416, "resize": "longer_side", "interpolation": "bilinear",
                          "pad_multiple": 32, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
        "stages": stages, "parity": {},
    }
    with open(os.path.join(directory, "manifest.json"), "w") as handle:
        json.dump(manifest, handle, indent=2)


def make_tiny_bundle(directory):
    """Writes the miniature bundle into `directory` (created) and returns its path as a string."""
    directory = str(directory)
    os.makedirs(directory, exist_ok=True)
    write_encoder(os.path.join(directory, "encoder.onnx"))
    write_body(os.path.join(directory, "body.onnx"))
    write_head_cls(os.path.join(directory, "head_cls.onnx"))
    write_entropy(os.path.join(directory, "entropy.npz"))
    write_manifest(directory)
    return directory


def tensorrt_sidecar(bundle, stage="encoder", precision="fp16", plan=b"plan bytes", dla_core=None,
                     version="8.2.1.8", capability="5.3", machine="aarch64", target="jetson-nano"):
    """Writes a sidecar as the builder writes it, with a (placeholder) plan file next to it; returns (path, doc)."""
    from ladon_deploy.engines import sidecar

    document = sidecar.new_sidecar(bundle, target, stage, "tensorrt", precision, dla_core, machine)
    plan_file = sidecar.plan_path(bundle, target, stage, precision, dla_core)
    os.makedirs(os.path.dirname(plan_file), exist_ok=True)
    with open(plan_file, "wb") as handle:
        handle.write(plan)
    document.update({
        "file": os.path.basename(plan_file), "engine_sha256": hashlib.sha256(plan).hexdigest(),
        "tensorrt": {"version": version, "api": "bindings"},
        "gpu": {"name": "NVIDIA Tegra X1", "compute_capability": capability},
        "profile": {"image": {"min": [1, 3, 32, 32], "opt": [1, 3, 416, 416], "max": [1, 3, 416, 416]}},
        "build_options": {"workspace_mb": 256}, "build_seconds": 1.0, "parity": {"passed": True},
    })
    path = sidecar.sidecar_path(bundle, target, stage, precision, dla_core)
    sidecar.write_sidecar(path, document)
    return path, document
