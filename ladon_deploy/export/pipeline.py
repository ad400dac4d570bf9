"""Exporting a loaded Ladon model into a verified bundle directory.

The bundle is assembled in a temporary sibling directory and renamed into place only after every stage has been
exported, checked against PyTorch and hashed, with manifest.json written last: an interrupted or failed export
leaves nothing that looks like a bundle.
"""
import json
import os
import shutil
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np
import torch

import ladon_deploy
from ladon_deploy.atomic import make_staging_directory, replace_directory
from ladon_deploy.engines.ort_runner import OnnxRuntimeRunner
from ladon_deploy.errors import ExportError
from ladon_deploy.export import parity
from ladon_deploy.bundle import (FORMAT_NAME, FORMAT_VERSION, MANIFEST_NAME, STAGE_FILES,
                                        bundle_id_from_hashes, sha256_of)
from ladon_deploy.export.stages import StageSpec, stage_specs
from ladon_deploy.gmac import record_gmac
from ladon_deploy.models import ranked_detection
from ladon_deploy.models.ladon import IMAGE_MEAN, IMAGE_STD, INPUT_SIZE, PAD_MULTIPLE, LadonModel

# The newest opset the oldest target reads: onnxruntime 1.10.0 (the last Python 3.6 wheel, JetPack 4.6.1 on the Nano)
# refuses opset 17 models, and TensorRT 8.2's parser documents opsets up to 13.
OPSET = 13
RESIZE_POLICIES = ("longer_side", "square")

Progress = Callable[[str], None]


def _quiet(message: str) -> None:
    pass


def entropy_tables(model: LadonModel) -> Dict[str, np.ndarray]:
    bottleneck = model.entropy_bottleneck
    return {
        "quantized_cdf": bottleneck._quantized_cdf.detach().cpu().numpy().astype(np.int32),
        "cdf_length": bottleneck._cdf_length.detach().cpu().numpy().astype(np.int32).reshape(-1),
        "offset": bottleneck._offset.detach().cpu().numpy().astype(np.int32).reshape(-1),
        "medians": bottleneck._get_medians().detach().cpu().numpy().astype(np.float32).reshape(-1),
    }


def _onnx_io(path: str) -> Dict[str, List[Dict[str, Any]]]:
    import onnx

    graph = onnx.load(path, load_external_data=False).graph

    def describe(values) -> List[Dict[str, Any]]:
        described = []
        for value in values:
            tensor_type = value.type.tensor_type
            shape = [d.dim_param if d.dim_param else int(d.dim_value) for d in tensor_type.shape.dim]
            dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type).name
            described.append({"name": value.name, "shape": shape, "dtype": dtype})
        return described

    return {"inputs": describe(graph.input), "outputs": describe(graph.output)}


def export_stage(spec: StageSpec, example: Sequence[torch.Tensor], path: str, opset: int = OPSET) -> None:
    import warnings

    with warnings.catch_warnings():
        # Tracing warnings (constant-folded shape ops in torchvision's detection code) are expected and verified
        # by the parity check, which runs the exported graph at a second input size.
        warnings.simplefilter("ignore")
        with torch.no_grad():
            torch.onnx.export(spec.export_module, tuple(example), path, input_names=spec.inputs,
                              output_names=spec.outputs,
                              dynamic_axes=spec.dynamic_axes, opset_version=opset, dynamo=False,
                              do_constant_folding=True)


def _seeded_image(height: int, width: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn((1, 3, height, width), generator=generator)


class StageInputs:
    """The seeded inputs of every stage at one image size, computed once in PyTorch."""

    def __init__(self, model: LadonModel, height: int, width: int, seed: int) -> None:
        with torch.no_grad():
            self.image = _seeded_image(height, width, seed)
            self.latent = model.encode(self.image)
            self.latent_hat = model.quantize_dequantize(self.latent)
            features = model.body(self.latent_hat)
        self.features = [features[k] for k in ("1", "2", "3", "4")]
        # The image as the transform would leave it before padding: a little smaller than the padded canvas.
        self.image_size = torch.tensor([height - 11, width], dtype=torch.int64)

    def for_stage(self, name: str) -> List[torch.Tensor]:
        if name == "encoder":
            return [self.image]
        if name == "body":
            return [self.latent_hat]
        if name == "head_det":
            return list(self.features) + [self.image_size]
        return [self.features[3]]


def check_stage(spec: StageSpec, runner: OnnxRuntimeRunner, inputs: List[torch.Tensor]) -> Dict[str, Any]:
    with torch.no_grad():
        reference = spec.module(*inputs)
    if isinstance(reference, torch.Tensor):
        reference = (reference,)
    reference = [r.detach().cpu().numpy() for r in reference]
    outputs = runner.run({name: t.numpy() for name, t in zip(spec.inputs, inputs)})
    candidate = [outputs[name] for name in spec.outputs]
    if spec.name == "head_det":
        roi_heads = spec.module.head.roi_heads
        return parity.compare_detections(reference, candidate, score_threshold=float(roi_heads.score_thresh),
                                         max_detections=int(roi_heads.detections_per_img))
    return parity.compare_dense(spec.outputs, reference, candidate)


def encoder_input_shapes(input_size: int, resize_policy: str) -> List[List[int]]:
    """Every shape the device feeds the encoder: `square` gives input_size x input_size; `longer_side` resizes the
    longer side to input_size (a multiple of PAD_MULTIPLE, so padding keeps it) and pads the shorter one to a
    multiple of PAD_MULTIPLE, in either orientation."""
    if resize_policy == "square":
        return [[1, 3, input_size, input_size]]
    sides = range(PAD_MULTIPLE, input_size + 1, PAD_MULTIPLE)
    return [[1, 3, side, input_size] for side in sides] + [[1, 3, input_size, side] for side in sides
                                                           if side != input_size]


def export_bundle(model: LadonModel, out_dir: str, beta: Optional[float] = None,
                  sources: Optional[Dict[str, str]] = None, resize_policy: str = "longer_side",
                  input_size: int = INPUT_SIZE, threads: Optional[int] = None, force: bool = False,
                  progress: Progress = _quiet, seed: int = 0) -> Dict[str, Any]:
    """Exports every stage of `model` to `out_dir` and returns the manifest; raises ExportError on failure."""
    if resize_policy not in RESIZE_POLICIES:
        raise ExportError("unknown resize policy %r (choose from %s)" % (resize_policy, ", ".join(RESIZE_POLICIES)))
    if input_size % PAD_MULTIPLE:
        raise ExportError("input size %d is not a multiple of %d" % (input_size, PAD_MULTIPLE))
    out_dir = os.path.abspath(str(out_dir))
    if os.path.exists(out_dir) and not force:
        raise ExportError("%s already exists (pass --force to replace it)" % out_dir)
    parent = os.path.dirname(out_dir)
    if not os.path.isdir(parent):
        raise ExportError("cannot write %s: directory %s does not exist" % (out_dir, parent))
    if not model.has_entropy_tables():
        raise ExportError("the model's entropy tables are empty: run update() before exporting")

    model.eval()
    timings: Dict[str, float] = {}
    staging = make_staging_directory(out_dir)
    try:
        started = time.perf_counter()
        # Parity runs at the main input size and at a second, non-square one, so that every dynamic axis is used.
        sizes = [[input_size, input_size], [input_size - 2 * PAD_MULTIPLE, input_size]]
        probes = [StageInputs(model, h, w, seed + i) for i, (h, w) in enumerate(sizes)]
        timings["reference_inputs"] = time.perf_counter() - started

        stages: Dict[str, Dict[str, Any]] = {}
        checks: Dict[str, Dict[str, Any]] = {}
        for spec in stage_specs(model):
            path = os.path.join(staging, STAGE_FILES[spec.name])
            progress("exporting %s" % spec.name)
            started = time.perf_counter()
            export_stage(spec, probes[0].for_stage(spec.name), path)
            timings["export_" + spec.name] = time.perf_counter() - started
            progress("checking %s against PyTorch" % spec.name)
            started = time.perf_counter()
            # One session per stage serves every probe size: the body alone is ~100 MB to load.
            with OnnxRuntimeRunner(path, threads=threads) as runner:
                results = [check_stage(spec, runner, probe.for_stage(spec.name)) for probe in probes]
            timings["parity_" + spec.name] = time.perf_counter() - started
            checks[spec.name] = parity.merge_checks(results, sizes)
            stages[spec.name] = dict(_onnx_io(path), file=STAGE_FILES[spec.name], sha256=sha256_of(path))

        failed = [name for name, check in checks.items() if not check["passed"]]
        if failed:
            name = failed[0]
            check = checks[name]
            raise ExportError("parity check failed for %s: %s (tolerance %s)%s" % (
                name, {k: v for k, v in check.items() if k in ("rel_l2", "max_box_error_px", "max_score_error",
                                                                "matched_fraction", "missing", "extra", "replaced",
                                                                "unexplained")}, check["tolerance"],
                parity.describe_replacement(check)))

        # Counted here, where onnx is at hand, so that a device without it (a Jetson) reads the figure instead.
        progress("counting the encoder's GMAC")
        started = time.perf_counter()
        stages["encoder"]["gmac"] = record_gmac(os.path.join(staging, STAGE_FILES["encoder"]),
                                                stages["encoder"]["inputs"][0]["name"],
                                                encoder_input_shapes(input_size, resize_policy))
        timings["gmac_encoder"] = time.perf_counter() - started

        entropy_path = os.path.join(staging, STAGE_FILES["entropy"])
        tables = entropy_tables(model)
        np.savez(entropy_path, **tables)
        stages["entropy"] = {"file": STAGE_FILES["entropy"], "sha256": sha256_of(entropy_path),
                             "arrays": {k: {"shape": list(v.shape), "dtype": v.dtype.name}
                                        for k, v in tables.items()},
                             "precision_bits": 16, "coder": "compressai rANS (EntropyBottleneck.compress layout)"}
        _describe_postprocessing(stages)

        manifest = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "toolkit_version": ladon_deploy.__version__,
            "created_by": {"torch": torch.__version__, "onnx_opset": OPSET},
            "bundle_id": bundle_id_from_hashes({k: v["sha256"] for k, v in stages.items()}),
            "architecture": model.arch,
            "bottleneck_channels": model.num_bottleneck_channels,
            "beta": beta,
            "split": "bottleneck",
            "tasks": list(model.tasks),
            "sources": sources or {},
            "opset": OPSET,
            "preprocessing": {
                "input_size": input_size, "resize": resize_policy, "interpolation": "bilinear",
                "pad_multiple": PAD_MULTIPLE if resize_policy == "longer_side" else None,
                "mean": list(IMAGE_MEAN), "std": list(IMAGE_STD), "scale": "1/255", "color": "RGB",
                "order": "to float in [0,1], normalize, resize, pad bottom/right with zeros",
            },
            "latent": {"channels": model.num_bottleneck_channels, "dtype": "float32",
                       "quantization": "symbols = round(y - median) (half to even), y_hat = symbols + median"},
            "stages": stages,
            "parity": checks,
            "parity_inputs": {"seed": seed, "sizes": sizes, "runner": "onnxruntime CPUExecutionProvider fp32"},
            "export_seconds": timings,
        }
        with open(os.path.join(staging, MANIFEST_NAME), "w") as handle:
            json.dump(manifest, handle, indent=2, sort_keys=False)
            handle.write("\n")
        replace_directory(staging, out_dir)
        return manifest
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _describe_postprocessing(stages: Dict[str, Dict[str, Any]]) -> None:
    if "head_cls" in stages:
        stages["head_cls"]["postprocess"] = {"output": "softmax probabilities over the 1000 ImageNet classes"}
    if "head_det" in stages:
        stages["head_det"]["postprocess"] = {
            "image_size": "the resized image's (height, width) before padding",
            "boxes": "x1,y1,x2,y2 in resized-image pixels; scale by original/resized per axis (torchvision "
                     "resize_boxes) for original-image pixels",
            "labels": "COCO category ids (91-entry list, 0 = background)",
            "score_threshold": 0.05, "nms_iou": 0.5, "max_detections": 100, "pooled_fpn_levels": ["1", "2", "3"],
        }
        # Where the deployed (and parity-checked) head departs from the model as evaluated: only among tied scores.
        stages["head_det"]["ranking"] = ranked_detection.describe()
    if "head_seg" in stages:
        stages["head_seg"]["postprocess"] = {
            "logits": "21 VOC classes, bilinearly upsampled to the padded input size",
            "mask": "argmax over classes, crop to the resized region, nearest-neighbour resize to the original size",
        }
