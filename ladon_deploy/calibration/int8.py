"""INT8 models for a target, calibrated on real images, gated by the fidelity report.

    build_int8(bundle_dir, "cpu", "photos/", 512, accept_fidelity=False, force=False, progress=print)

What is written into the bundle's engines area (engines/<target>/):
    cpu           <stage>.int8.onnx for every stage: ONNX Runtime's QOperator form (QLinearConv / QGemm, uint8
                  activations, int8 per-channel weights). Measured (int8_bench.py --forms, encoder, same ranges, three
                  runs): 0.44-0.47x the FP32 time, asymmetric uint8 QDQ 0.41-0.55x (ONNX Runtime 1.32 fuses it into the
                  same kernels), the symmetric int8 QDQ form TensorRT needs 1.14-1.39x FP32 on this CPU
    xavier-nx,    <stage>.int8.qdq.onnx: QDQ with symmetric int8 activations (zero point 0) and per-channel symmetric
    server        weights, the explicit-quantization form TensorRT >= 8.5 builds (10.x, and 11.x strongly typed);
                  <stage>.int8.calibration.cache: the same activation scales in TensorRT's EntropyCalibration2 cache
                  format, for TensorRT 8.x-10.x implicit calibration (trt_calibrator.py reuses it on the device)
    every target  int8-fidelity.json and int8-fidelity.md: FP32 against INT8 on held-out images (fidelity.py)

Each stage is calibrated on its real inputs: the encoder on the preprocessed calibration images, the body on the
dequantized latents of those images (FP32 encoder -> round(y - median) + median), the heads on the FP32 body's
features. GDN / IGDN blocks (|x| or x^2 -> convolution -> [square root] -> division, or -> multiply) stay in
FP32 where quantizing them measurably costs accuracy (CPU form: measured per block on the calibration images) and
always in the TensorRT form (DLA cannot run the division and square root, NVIDIA advises keeping x^2 out of reduced
precision, and symmetric int8 spends half its codes on a sign a non-negative range never has).

A build whose figures miss fidelity.THRESHOLDS raises (exit 2) and ships no model unless accept_fidelity; the report
is written either way and says which.

Needs onnx and onnxruntime (with onnxruntime.quantization); never torch, Python 3.8-clean (runs on a Xavier NX).
"""
import datetime
import os
import shutil
import sys
import tempfile
import time
from collections import OrderedDict
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from ladon_deploy.atomic import write_text_atomically
from ladon_deploy.bundle import Bundle, open_bundle
from ladon_deploy.calibration import cache as calibration_cache
from ladon_deploy.calibration import fidelity
from ladon_deploy.calibration.data import (DEFAULT_HELD_OUT, DEFAULT_SEED, ImageSplit, ProgressLines,
                                           iterate_images, split_images)
from ladon_deploy.device.entropy import EntropyCoder
from ladon_deploy.engines.targets import Target, get_target
from ladon_deploy.errors import LadonError

Progress = Callable[[str], Any]

REPORT_JSON = "int8-fidelity.json"
REPORT_MARKDOWN = "int8-fidelity.md"
QDQ_EXTENSION = "qdq.onnx"
CACHE_EXTENSION = "calibration.cache"
FEATURES = ("feat1", "feat2", "feat3", "feat4")

# Op types quantized per stage (None: every op type onnxruntime.quantization quantizes). The classification head's
# Softmax stays FP32: 1000 probabilities near 1e-3 collapse onto a few uint8 codes and the ranking is lost (measured:
# top-5 of a quantized Softmax shared no class with FP32's). The segmentation head's bilinear Resize of the logits to
# the input size stays FP32 (quantized, the head ran 1.4x slower than FP32 on ONNX Runtime CPU); the detection head's
# box decoding, NMS and RoIAlign are data-dependent and stay FP32.
STAGE_OP_TYPES: Dict[str, Optional[Tuple[str, ...]]] = {
    "encoder": None,
    "body": None,
    "head_cls": ("Gemm",),
    "head_seg": ("Conv",),
    "head_det": ("Conv", "Gemm", "MatMul"),
}
# Quantizing a GDN block must not raise the stage's relative L2 error by more than this factor (CPU form).
GDN_ERROR_FACTOR = 1.1
GDN_SENSITIVITY_IMAGES = 4
TRT_GDN_WHY = ("kept in FP32/FP16 for TensorRT: DLA runs no division or square root, NVIDIA advises keeping x^2 out "
               "of reduced precision, and symmetric int8 wastes half its range on the non-negative |x| and its norm")


class Form:
    """How one target's INT8 models are quantized (onnxruntime.quantization settings) and named."""

    def __init__(self, name: str, description: str, extension: str, quant_format: str, activation: str,
                 symmetric_activations: bool, keep_gdn: str) -> None:
        self.name = name
        self.description = description
        self.extension = extension
        self.quant_format = quant_format
        self.activation = activation
        self.symmetric_activations = symmetric_activations
        self.keep_gdn = keep_gdn  # "measure" or "always"

    def quantize_kwargs(self) -> Dict[str, Any]:
        from onnxruntime.quantization import QuantFormat, QuantType

        return {
            "quant_format": getattr(QuantFormat, self.quant_format),
            "activation_type": getattr(QuantType, self.activation),
            "weight_type": QuantType.QInt8,
            "per_channel": True,
            "extra_options": {"ActivationSymmetric": self.symmetric_activations, "WeightSymmetric": True},
        }


CPU_FORM = Form("ort-cpu", "ONNX Runtime QOperator (QLinearConv), uint8 activations, int8 per-channel weights",
                "onnx", "QOperator", "QUInt8", False, "measure")
TENSORRT_FORM = Form("tensorrt-qdq", "QDQ, symmetric int8 activations (zero point 0), int8 per-channel weights",
                     QDQ_EXTENSION, "QDQ", "QInt8", True, "always")
FORMS = {"cpu": CPU_FORM, "xavier-nx": TENSORRT_FORM, "server": TENSORRT_FORM}


def _quiet(message: str) -> None:
    pass


# -------------------------------------------------------------------------------------------------- graph facts
def gdn_blocks(model: Any) -> List[List[str]]:
    """Node names of each GDN / IGDN block, found by following the graph: (Abs | Pow | Mul x*x) -> Conv -> up to four
    single-consumer nodes (Sqrt, Reciprocal, Div, Mul by a constant) -> Mul or Div with the block's own input. The
    demo bundle's GDN is Abs -> Conv -> Div (Reciprocal -> Mul in earlier exports), its IGDN Abs -> Conv -> Mul
    (sc2bench's simplified GDN)."""
    graph = model.graph
    consumers: Dict[str, List[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    blocks = []
    for node in graph.node:
        squares = node.op_type == "Abs" or node.op_type == "Pow" or (
            node.op_type == "Mul" and len(node.input) == 2 and node.input[0] == node.input[1])
        if not squares:
            continue
        block_input = node.input[0]
        convs = [c for c in consumers.get(node.output[0], []) if c.op_type == "Conv"]
        if len(convs) != 1:
            continue
        chain = [node, convs[0]]
        current = convs[0]
        for _ in range(4):
            following = consumers.get(current.output[0], [])
            if len(following) != 1:
                break
            current = following[0]
            chain.append(current)
            if current.op_type in ("Mul", "Div") and block_input in current.input:
                break
        last = chain[-1]
        # GDN divides the input by the normalisation (through Reciprocal, Sqrt or Div), IGDN multiplies by it.
        if last.op_type in ("Mul", "Div") and block_input in last.input:
            blocks.append([n.name for n in chain])
    return blocks


def graph_tensor_names(path: str) -> List[str]:
    """Every tensor name of an ONNX graph: inputs and node outputs (what TensorRT's ONNX parser names its tensors)."""
    import onnx

    graph = onnx.load(path, load_external_data=False).graph
    names = [value.name for value in graph.input]
    for node in graph.node:
        names.extend(output for output in node.output if output)
    return names


def qdq_activation_scales(qdq_path: str, allowed: Sequence[str]) -> "OrderedDict[str, float]":
    """Per-tensor activation scales (amax / 127) read from a symmetric QDQ model's QuantizeLinear nodes, for the
    tensors of the original graph (`allowed`) only: the cache TensorRT reads names the FP32 graph's tensors."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(qdq_path)
    initializers = {init.name: init for init in model.graph.initializer}
    allowed_set = set(allowed)
    scales: "OrderedDict[str, float]" = OrderedDict()
    for node in model.graph.node:
        if node.op_type != "QuantizeLinear" or node.input[0] in initializers or node.input[0] not in allowed_set:
            continue
        scale = numpy_helper.to_array(initializers[node.input[1]]) if node.input[1] in initializers else None
        if scale is None or scale.size != 1:
            continue  # per-channel scales belong to weights, which TensorRT quantizes itself
        if len(node.input) > 2 and node.input[2] in initializers:
            zero_point = numpy_helper.to_array(initializers[node.input[2]])
            if np.any(zero_point != 0):
                raise LadonError("QDQ model %s has a non-zero zero point for %s: TensorRT needs symmetric "
                                 "quantization" % (qdq_path, node.input[0]))
        scales[node.input[0]] = float(scale.reshape(()))
    return scales


# -------------------------------------------------------------------------------------------------- runners
def _session(path: str, threads: Optional[int], quantized: bool = False) -> Any:
    from ladon_deploy.engines.ort_runner import OnnxRuntimeRunner

    return OnnxRuntimeRunner(path, threads=threads, quantized=quantized)  # as the runtime opens them (registry.py)


class Fp32Chain:
    """The bundle's FP32 stages on ONNX Runtime CPU: the reference of the report and the source of every stage's
    calibration inputs."""

    def __init__(self, bundle: Bundle, stages: Sequence[str], threads: Optional[int]) -> None:
        self.bundle = bundle
        self.coder = EntropyCoder.from_tables(bundle.load_entropy_tables())
        needed = ["encoder"] + (["body"] if any(s != "encoder" for s in stages) else [])
        needed += [s for s in stages if s.startswith("head_")]
        self.runners = {stage: _session(bundle.path(stage), threads) for stage in needed}

    def encode(self, tensor: np.ndarray) -> np.ndarray:
        return self.runners["encoder"].run({"image": tensor})["latent"]

    def close(self) -> None:
        for runner in self.runners.values():
            runner.close()


def stage_feeds(stage: str, image: Any, latent_hat: np.ndarray, features: Optional[Dict[str, np.ndarray]]
                ) -> Dict[str, np.ndarray]:
    if stage == "encoder":
        return {"image": image.tensor}
    if stage == "body":
        return {"latent_hat": latent_hat}
    assert features is not None
    if stage == "head_det":
        feeds = {name: features[name] for name in FEATURES}
        feeds["image_size"] = np.asarray(image.resized_size, dtype=np.int64)
        return feeds
    return {"feat4": features["feat4"]}


class _TqdmBar:
    """A tqdm bar with ProgressLines' step(), for an interactive terminal."""

    def __init__(self, label: str, total: int) -> None:
        from tqdm import tqdm

        self._bar = tqdm(total=total, desc=label, unit="image", leave=False)

    def step(self, count: int = 1) -> None:
        self._bar.update(count)
        if self._bar.n >= self._bar.total:
            self._bar.close()


def progress_bar(label: str, total: int, progress: Progress) -> Any:
    """A tqdm bar on an interactive terminal (where tqdm is installed), else plain lines through `progress`."""
    if progress is not _quiet and sys.stderr.isatty():
        try:
            return _TqdmBar(label, total)
        except ImportError:
            pass
    return ProgressLines(label, total, progress)


def calibration_feeds(chain: Fp32Chain, stage: str, bundle: Bundle, paths: Sequence[str],
                      progress: Progress) -> Iterator[Dict[str, np.ndarray]]:
    """The stage's real inputs for each calibration image, computed lazily through the FP32 chain (a body's worth of
    features per image is ~21 MB: nothing is kept past its use)."""
    lines = progress_bar("calibrating %s" % stage, len(paths), progress)
    for _, image in iterate_images(bundle, paths, progress=None):
        latent_hat = None
        features = None
        if stage != "encoder":
            latent_hat = chain.coder.dequantize(chain.coder.quantize(chain.encode(image.tensor)))
        if stage.startswith("head_"):
            features = chain.runners["body"].run({"latent_hat": latent_hat})
        yield stage_feeds(stage, image, latent_hat, features)
        lines.step()


class _Reader:
    """onnxruntime.quantization.CalibrationDataReader over a generator (duck-typed: get_next only), stopping after
    `limit` items so that the calibrator can reduce what it collected to ranges in between."""

    def __init__(self, feeds: Iterator[Dict[str, np.ndarray]], limit: Optional[int] = None) -> None:
        self._feeds = feeds
        self._left = limit
        self.exhausted = False

    def get_next(self) -> Optional[Dict[str, np.ndarray]]:
        if self._left is not None:
            if self._left <= 0:
                return None
            self._left -= 1
        item = next(self._feeds, None)
        if item is None:
            self.exhausted = True
        return item


# -------------------------------------------------------------------------------------------------- quantization
# Stages whose data-dependent shapes (NMS, RoIAlign, TopK) defeat onnxruntime's symbolic shape inference. Skipped up
# front: a failed attempt leaves its temporary model and external data in the working directory.
NO_SYMBOLIC_SHAPES = ("head_det",)


def preprocess_model(source: str, destination: str, stage: str = "") -> None:
    """onnxruntime's quantization pre-processing: shape inference and constant folding (GDN's reparametrised gamma
    and beta become initializers, so its convolution can be quantized)."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    skip = stage in NO_SYMBOLIC_SHAPES
    try:
        quant_pre_process(source, destination, skip_symbolic_shape=skip)
    except Exception:  # onnxruntime's symbolic shape inference raises assorted errors on data-dependent graphs
        if skip:
            raise
        quant_pre_process(source, destination, skip_symbolic_shape=True)


# Images whose intermediate tensors the calibrator holds at once before reducing them to ranges: the body's augmented
# model outputs every intermediate tensor, ~0.5 GB per image at 416x416.
CALIBRATION_CHUNK = 2


def calibrate_ranges(prepared: str, stage: str, feeds: Iterator[Dict[str, np.ndarray]], work: str) -> Optional[str]:
    """Collects MinMax ranges CALIBRATION_CHUNK images at a time and saves them where quantize_static reads them
    (its calibration_cache_path, present in onnxruntime 1.32); None on an onnxruntime without it (quantize_static then
    calibrates itself, holding every image's tensors)."""
    import inspect

    from onnxruntime import quantization
    from onnxruntime.quantization import CalibrationMethod, create_calibrator, quantize_static

    if "calibration_cache_path" not in inspect.signature(quantize_static).parameters or not hasattr(
            quantization, "save_tensors_data"):
        return None
    op_types = STAGE_OP_TYPES.get(stage)
    calibrator = create_calibrator(prepared, list(op_types) if op_types else [],
                                   augmented_model_path=os.path.join(work, stage + ".augmented.onnx"),
                                   calibrate_method=CalibrationMethod.MinMax, use_external_data_format=False)
    while True:
        reader = _Reader(feeds, CALIBRATION_CHUNK)
        calibrator.collect_data(reader)
        if reader.exhausted:
            break
    ranges = os.path.join(work, stage + ".ranges.json")
    quantization.save_tensors_data(calibrator.compute_data(), ranges)
    del calibrator
    return ranges


def quantize_stage(prepared: str, output: str, form: Form, stage: str, feeds: Optional[Iterator[Dict[str, Any]]],
                   exclude: Sequence[str], ranges: Optional[str] = None) -> None:
    from onnxruntime.quantization import CalibrationMethod, quantize_static

    op_types = STAGE_OP_TYPES.get(stage)
    extra = {"calibration_cache_path": ranges} if ranges else {}
    quantize_static(prepared, output, _Reader(feeds) if ranges is None else None,
                    calibrate_method=CalibrationMethod.MinMax,
                    op_types_to_quantize=list(op_types) if op_types else None,
                    nodes_to_exclude=list(exclude), **form.quantize_kwargs(), **extra)


def _outputs_error(runner: Any, reference: Any, inputs: List[Dict[str, np.ndarray]], stage: str) -> float:
    errors = []
    for feeds in inputs:
        mine = runner.run(feeds)
        theirs = reference.run(feeds)
        if stage == "head_det":
            continue
        errors.append(np.mean([fidelity.rel_l2(mine[name], theirs[name]) for name in theirs]))
    return float(np.mean(errors)) if errors else 0.0


def _sample_inputs(chain: Fp32Chain, stage: str, bundle: Bundle, paths: Sequence[str]) -> List[Dict[str, np.ndarray]]:
    return list(calibration_feeds(chain, stage, bundle, paths[:GDN_SENSITIVITY_IMAGES], _quiet))


def quantize_with_gdn_choice(chain: Fp32Chain, bundle: Bundle, stage: str, form: Form, prepared: str, output: str,
                             paths: Sequence[str], work: str, threads: Optional[int],
                             progress: Progress) -> Dict[str, Any]:
    """Quantizes one stage; returns what stayed FP32 and why (measured for the CPU form)."""
    import onnx

    blocks = gdn_blocks(onnx.load(prepared, load_external_data=False))
    kept: List[Dict[str, Any]] = []
    ranges = calibrate_ranges(prepared, stage, calibration_feeds(chain, stage, bundle, paths, progress), work)

    def quantize(output_path: str, exclude: Sequence[str]) -> None:
        # Without saved ranges (older onnxruntime) every quantization calibrates again, on the same images.
        feeds = None if ranges else calibration_feeds(chain, stage, bundle, paths, progress)
        quantize_stage(prepared, output_path, form, stage, feeds, exclude, ranges)

    if not blocks:
        quantize(output, [])
        return {"kept_fp32": kept, "gdn_blocks": 0}
    everything = [name for block in blocks for name in block]
    if form.keep_gdn == "always":
        quantize(output, everything)
        return {"kept_fp32": [{"nodes": block, "why": TRT_GDN_WHY} for block in blocks], "gdn_blocks": len(blocks)}
    # CPU form: quantize with and without the GDN blocks, keep them FP32 only where that is measurably more exact.
    with_gdn = os.path.join(work, stage + ".gdn-int8.onnx")
    quantize(with_gdn, [])
    quantize(output, everything)
    samples = _sample_inputs(chain, stage, bundle, paths)
    reference = chain.runners[stage] if stage in chain.runners else _session(bundle.path(stage), threads)
    quantized_error = _outputs_error(_session(with_gdn, threads, quantized=True), reference, samples, stage)
    kept_error = _outputs_error(_session(output, threads, quantized=True), reference, samples, stage)
    measured = "relative L2 of the stage's outputs on %d calibration images: %.4f with GDN in int8, %.4f with GDN in " \
               "FP32" % (len(samples), quantized_error, kept_error)
    if quantized_error > GDN_ERROR_FACTOR * kept_error:
        return {"kept_fp32": [{"nodes": block, "why": "GDN " + measured} for block in blocks],
                "gdn_blocks": len(blocks), "gdn_measurement": measured}
    shutil.move(with_gdn, output)
    return {"kept_fp32": [], "gdn_blocks": len(blocks),
            "gdn_measurement": measured + ": quantized (within %.0f%%)" % ((GDN_ERROR_FACTOR - 1) * 100)}


# -------------------------------------------------------------------------------------------------- fidelity
class Int8Chain:
    """The pipeline with this build's INT8 models in place of the FP32 stages they replace."""

    def __init__(self, chain: Fp32Chain, int8_paths: Dict[str, str], threads: Optional[int]) -> None:
        self.fp32 = chain
        self.int8 = {stage: _session(path, threads, quantized=True) for stage, path in int8_paths.items()}

    def runner(self, stage: str) -> Any:
        return self.int8.get(stage) or self.fp32.runners[stage]

    def close(self) -> None:
        for runner in self.int8.values():
            runner.close()


def _timed(times: Dict[str, List[float]], key: str, runner: Any, feeds: Dict[str, np.ndarray]) -> Dict[str, Any]:
    started = time.perf_counter()
    outputs = runner.run(feeds)
    times.setdefault(key, []).append(time.perf_counter() - started)
    return outputs


def evaluate_image(chain: Fp32Chain, int8: Int8Chain, image: Any,
                   times: Optional[Dict[str, List[float]]] = None) -> Dict[str, float]:
    """One held-out image's figures; `times` collects (stage, precision) wall-clock seconds of the stage calls."""
    coder = chain.coder
    row: Dict[str, float] = {}
    times = times if times is not None else {}
    latent32 = _timed(times, "encoder fp32", chain.runners["encoder"], {"image": image.tensor})["latent"]
    symbols32 = coder.quantize(latent32)
    latent8 = _timed(times, "encoder int8", int8.runner("encoder"), {"image": image.tensor})["latent"]
    symbols8 = coder.quantize(latent8)
    if "encoder" in int8.int8:
        row["encoder.rel_l2"] = fidelity.rel_l2(latent8, latent32)
        row["encoder.symbol_agreement"] = fidelity.symbol_agreement(symbols8, symbols32)
        bytes32, bytes8 = len(coder.encode(symbols32)), len(coder.encode(symbols8))
        row["encoder.payload_bytes_fp32"] = float(bytes32)
        row["encoder.payload_bytes_int8"] = float(bytes8)
        row["encoder.payload_ratio"] = bytes8 / float(bytes32)
    heads = [s for s in chain.runners if s.startswith("head_")]
    if "body" not in chain.runners:
        return row
    hat32, hat8 = coder.dequantize(symbols32), coder.dequantize(symbols8)
    features32 = _timed(times, "body fp32", chain.runners["body"], {"latent_hat": hat32})
    features8 = _timed(times, "body int8", int8.runner("body"), {"latent_hat": hat8})
    if "body" in int8.int8:
        isolated = int8.int8["body"].run({"latent_hat": hat32})
        row["body.rel_l2"] = float(np.mean([fidelity.rel_l2(isolated[n], features32[n]) for n in FEATURES]))
    for stage in heads:
        task = stage[len("head_"):]
        reference = _timed(times, stage + " fp32", chain.runners[stage], stage_feeds(stage, image, hat32, features32))
        end_to_end = _timed(times, stage + " int8", int8.runner(stage), stage_feeds(stage, image, hat8, features8))
        if stage in int8.int8 and stage != "head_det":
            isolated = int8.int8[stage].run(stage_feeds(stage, image, hat32, features32))
            row["%s.rel_l2" % task] = float(np.mean([fidelity.rel_l2(isolated[n], reference[n]) for n in reference]))
        if task == "cls":
            for key, value in fidelity.classification_agreement(end_to_end["probabilities"],
                                                                reference["probabilities"]).items():
                row["cls." + key] = value
        elif task == "det":
            matched = fidelity.match_detections(end_to_end, reference)
            row["det.matched"] = float(matched["matched"])
            row["det.reference_detections"] = float(matched["reference_detections"])
            if matched["matched"]:
                row["det.box_error_px"] = matched["box_error_px"]
        elif task == "seg":
            row["seg.pixel_agreement"] = fidelity.mask_agreement(end_to_end["logits"], reference["logits"],
                                                                 image.resized_size)
    return row


# -------------------------------------------------------------------------------------------------- build
def int8_paths(bundle: Bundle, target: str, stages: Sequence[str]) -> Dict[str, str]:
    form = FORMS[target]
    return {stage: bundle.engine_path(target, stage, "int8", form.extension) for stage in stages}


def cache_path(bundle: Bundle, target: str, stage: str) -> str:
    return bundle.engine_path(target, stage, "int8", CACHE_EXTENSION)


def report_paths(bundle: Bundle, target: str) -> Tuple[str, str]:
    directory = bundle.engines_dir(target)
    return os.path.join(directory, REPORT_JSON), os.path.join(directory, REPORT_MARKDOWN)


def target_stages(bundle: Bundle, target: Target) -> List[str]:
    present = set(bundle.manifest["stages"])
    return [stage for stage in target.stages if stage in present]


SLOWER_NOTE = ("Not faster in INT8 on this machine: %s. What stays FP32 there (STAGE_OP_TYPES: the segmentation "
               "head's bilinear upsampling of 21 logit planes to the input size, the detection head's box decoding, "
               "NMS and RoIAlign, the classification head's Softmax) dominates its time, and each int8/fp32 boundary "
               "adds a quantize or dequantize pass. Timings of one call per held-out image: see int8_bench.py for "
               "medians of 20.")


def speed_table(times: Dict[str, List[float]], stages: Sequence[str]) -> "OrderedDict[str, Dict[str, float]]":
    """Median ms per stage call, FP32 and INT8, over the held-out images (the INT8 stages of this build only)."""
    table: "OrderedDict[str, Dict[str, float]]" = OrderedDict()
    for stage in stages:
        if stage + " fp32" in times and stage + " int8" in times:
            fp32 = float(np.median(times[stage + " fp32"])) * 1000.0
            int8 = float(np.median(times[stage + " int8"])) * 1000.0
            table[stage] = {"fp32_ms": round(fp32, 2), "int8_ms": round(int8, 2), "ratio": round(int8 / fp32, 3)}
    return table


def build_int8(bundle_dir: str, target: str, images_dir: Optional[str], count: int, accept_fidelity: bool = False,
               force: bool = False, progress: Progress = print, seed: int = DEFAULT_SEED,
               held_out: int = DEFAULT_HELD_OUT, threads: Optional[int] = None) -> Dict[str, Any]:
    """Calibrates, quantizes and evaluates every stage `target` runs; returns the fidelity report (a dict).

    Raises LadonError (one line, exit 2) for bad input, and when the report misses a threshold without
    accept_fidelity: then the report is written and no model is."""
    spec = get_target(target)
    spec.check_precision("int8")
    form = FORMS.get(spec.name)
    if form is None:
        raise LadonError("target %s has no INT8 form" % spec.name)
    if not images_dir:
        raise LadonError("--precision int8 needs --calib-images DIR: a folder of real photographs like the ones the "
                         "device will see (a folder of noise calibrates nothing)")
    bundle = open_bundle(bundle_dir, verify=False)
    stages = target_stages(bundle, spec)
    if not stages:
        raise LadonError("bundle %s has none of the stages target %s runs" % (bundle_dir, spec.name))
    bundle.verify(sorted(set(stages) | {"encoder", "entropy"} | ({"body"} if stages != ["encoder"] else set())))
    outputs = int8_paths(bundle, spec.name, stages)
    existing = [path for path in outputs.values() if os.path.exists(path)]
    if existing and not force:
        raise LadonError("%s already exists: pass --force to replace the INT8 build" % existing[0])
    split = split_images(images_dir, count, seed, held_out)
    progress("INT8 for target %s: %s" % (spec.name, split.describe()))
    started = time.perf_counter()

    os.makedirs(bundle.engines_dir(spec.name), exist_ok=True)
    work = tempfile.mkdtemp(prefix=".int8-", dir=bundle.engines_dir(spec.name))
    chain = Fp32Chain(bundle, stages, threads)
    try:
        stage_entries: "OrderedDict[str, Dict[str, Any]]" = OrderedDict()
        staged: Dict[str, str] = {}
        for stage in stages:
            stage_started = time.perf_counter()
            prepared = os.path.join(work, stage + ".prepared.onnx")
            progress("%s: pre-processing for quantization" % stage)
            preprocess_model(bundle.path(stage), prepared, stage)
            staged[stage] = os.path.join(work, os.path.basename(outputs[stage]))
            choice = quantize_with_gdn_choice(chain, bundle, stage, form, prepared, staged[stage], split.calibration,
                                              work, threads, progress)
            entry: Dict[str, Any] = {"form": form.description, "file": os.path.basename(outputs[stage]),
                                     "op_types": list(STAGE_OP_TYPES.get(stage) or ["all onnxruntime quantizes"])}
            entry.update(choice)
            if form is TENSORRT_FORM:
                scales = qdq_activation_scales(staged[stage], graph_tensor_names(bundle.path(stage)))
                staged[stage + ".cache"] = os.path.join(work, os.path.basename(cache_path(bundle, spec.name, stage)))
                calibration_cache.write_cache(staged[stage + ".cache"], scales, spec.trt or "8.5")
                entry["calibration_cache"] = os.path.basename(cache_path(bundle, spec.name, stage))
                entry["cache_tensors"] = len(scales)
            entry["seconds"] = round(time.perf_counter() - stage_started, 1)
            stage_entries[stage] = entry
            os.remove(prepared)

        progress("fidelity: FP32 against INT8 on %d held-out images" % len(split.held_out))
        int8_chain = Int8Chain(chain, {stage: staged[stage] for stage in stages}, threads)
        rows = []
        times: Dict[str, List[float]] = {}
        lines = progress_bar("fidelity", len(split.held_out), progress)
        try:
            for _, image in iterate_images(bundle, split.held_out, progress=None):
                rows.append(evaluate_image(chain, int8_chain, image, times))
                lines.step()
        finally:
            int8_chain.close()
        report = make_report(bundle, spec, form, split, stage_entries, rows, accept_fidelity, started)
        report["speed"] = speed_table(times, stages)
        slower = [stage for stage, row in report["speed"].items() if row["ratio"] >= 1.0]
        if slower:
            report["notes"].append(SLOWER_NOTE % ", ".join(slower))
        json_path, markdown_path = report_paths(bundle, spec.name)
        if report["shipped"]:
            for stage in stages:
                os.replace(staged[stage], outputs[stage])
                if stage + ".cache" in staged:
                    os.replace(staged[stage + ".cache"], cache_path(bundle, spec.name, stage))
        write_text_atomically(json_path, fidelity.to_json(report))
        write_text_atomically(markdown_path, fidelity.to_markdown(report))
    finally:
        chain.close()
        shutil.rmtree(work, ignore_errors=True)
    for line in fidelity.terminal_summary(report):
        progress(line)
    progress("report: %s" % markdown_path)
    if not report["passed"] and not accept_fidelity:
        raise LadonError("INT8 fidelity below the thresholds (%s): nothing shipped; see %s, or pass --accept-fidelity "
                         "to ship anyway" % ("; ".join(fidelity.failures(report["checks"])), markdown_path))
    return report


def make_report(bundle: Bundle, spec: Target, form: Form, split: ImageSplit, stages: Dict[str, Dict[str, Any]],
                rows: List[Dict[str, float]], accept_fidelity: bool, started: float) -> Dict[str, Any]:
    import onnxruntime

    summary = fidelity.summarize(rows)
    checks = fidelity.check_thresholds(summary)
    passed = all(check["passed"] for check in checks)
    shipped = passed or accept_fidelity
    if passed:
        verdict = "passed every threshold: INT8 models shipped"
    elif accept_fidelity:
        verdict = "below the thresholds (%s), shipped because --accept-fidelity was given" % "; ".join(
            fidelity.failures(checks))
    else:
        verdict = "below the thresholds (%s): nothing shipped (--accept-fidelity not given)" % "; ".join(
            fidelity.failures(checks))
    notes = [split.describe()]
    if spec.name != "cpu":
        notes.append("Figures come from ONNX Runtime's CPU provider running the QDQ models, a proxy for TensorRT: "
                     "TensorRT fuses and picks kernels itself, so rebuild the report on the target to be exact.")
    if "head_det" in stages:
        notes.append("Detection: FP32 detections with score >= %.2f matched to INT8 detections of the same label at "
                     "IoU >= %.2f; box error in resized-image pixels." % (fidelity.DETECTION_SCORE,
                                                                        fidelity.DETECTION_IOU))
    random_weights = not bundle.manifest.get("sources")
    if random_weights:
        notes.append(fidelity.RANDOM_WEIGHTS_NOTE)
    return OrderedDict([
        ("bundle_id", bundle.bundle_id), ("target", spec.name), ("precision", "int8"),
        ("created", datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")),
        ("onnxruntime", onnxruntime.__version__), ("random_weights", random_weights),
        ("evaluated_with", "onnxruntime %s CPUExecutionProvider" % onnxruntime.__version__),
        ("images", {"description": split.describe(), "folder": split.directory, "seed": split.seed,
                    "requested": split.requested,
                    "calibration": [os.path.basename(p) for p in split.calibration],
                    "held_out": [os.path.basename(p) for p in split.held_out]}),
        ("stages", stages), ("summary", summary), ("per_image", rows),
        ("thresholds", {k: {"comparison": c, "threshold": t} for k, (c, t) in fidelity.THRESHOLDS.items()}),
        ("checks", checks), ("passed", passed), ("accepted", bool(accept_fidelity and not passed)),
        ("shipped", shipped), ("verdict", verdict), ("notes", notes),
        ("seconds", round(time.perf_counter() - started, 1)),
    ])
