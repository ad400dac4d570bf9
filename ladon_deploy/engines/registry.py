"""Which runner runs a stage: one place that knows the engine kinds and the per-stage choice.

    onnxruntime            ONNX Runtime, CPU execution provider (CUDA off)
    onnxruntime-cuda       ONNX Runtime, CUDA execution provider (then CPU)
    onnxruntime-tensorrt   ONNX Runtime, TensorRT execution provider (falls back node by node to CUDA, then CPU),
                           its engine cache in the bundle's engines area (engines/onnxruntime-tensorrt/)
    tensorrt               the bundle's TensorRT engines for this machine (ladon-build), ONNX Runtime for the rest:
                           chosen per stage from the sidecars, where ladon-build recorded the check's verdicts

Every refusal (tensorrt or a CUDA binding missing, an engine built by another TensorRT version, for another GPU,
from another ONNX, on another platform, a provider this onnxruntime lacks) is one EngineError line raised before
any engine is deserialized.

Edge subset: Python 3.6-clean, never imports torch.
"""
import os
from typing import Any, Optional, Sequence

from ladon_deploy.bundle import Bundle
from ladon_deploy.engines import sidecar as sidecars
from ladon_deploy.engines import tensorrt_api
from ladon_deploy.engines.base import Runner
from ladon_deploy.engines.targets import get_target
from ladon_deploy.errors import EngineError

ENGINES = ("onnxruntime", "onnxruntime-cuda", "onnxruntime-tensorrt", "tensorrt")
# Where `--engine tensorrt` runs a stage that has no TensorRT engine: the first ONNX Runtime engine this wheel has.
FALLBACK_ORDER = ("onnxruntime-tensorrt", "onnxruntime-cuda", "onnxruntime")
ORT_TENSORRT_CACHE = "onnxruntime-tensorrt"


def _check_engine(engine: str) -> None:
    if engine not in ENGINES:
        raise EngineError("unknown engine %r (known: %s)" % (engine, ", ".join(ENGINES)))


def open_runner(path: str, engine: str = "onnxruntime", threads: Optional[int] = None,
                cache_dir: Optional[str] = None, precision: str = "fp32", quantized: bool = False) -> Runner:
    """Loads one ONNX file with an ONNX Runtime engine (cache_dir: the TensorRT provider's engine cache; quantized:
    the file is one of ladon-build's INT8 models)."""
    _check_engine(engine)
    if engine == "tensorrt":
        raise EngineError("engine tensorrt runs the engines ladon-build wrote into a bundle, not a bare ONNX file "
                          "(%s): use onnxruntime-tensorrt for that" % path)
    from ladon_deploy.engines.ort_runner import OnnxRuntimeRunner, engine_providers

    runner = OnnxRuntimeRunner(path, threads=threads, providers=engine_providers(engine, cache_dir, precision),
                               quantized=quantized)
    runner.name = engine
    return runner


class StageChoice(object):
    """What runs one stage: the engine, and for TensorRT the sidecar that vouches for the plan."""

    def __init__(self, stage: str, engine: str, why: str, sidecar_path: Optional[str] = None,
                 sidecar: Optional[dict] = None, target: Optional[str] = None) -> None:
        self.stage = stage
        self.engine = engine
        self.why = why
        self.sidecar_path = sidecar_path
        self.sidecar = sidecar
        self.target = target

    @property
    def label(self) -> str:
        """What result documents and timing tables name: 'tensorrt fp16', 'tensorrt fp16 dla0', 'onnxruntime'."""
        if self.engine != "tensorrt" or self.sidecar is None:
            return self.engine
        dla = self.sidecar.get("dla_core")
        return "tensorrt %s%s" % (self.sidecar["precision"], "" if dla is None else " dla%d" % dla)

    def __repr__(self) -> str:
        return "StageChoice(%s -> %s: %s)" % (self.stage, self.label, self.why)


def fallback_engine(available: Sequence[str]) -> str:
    """The ONNX Runtime engine `--engine tensorrt` gives a stage TensorRT does not run, from the providers here."""
    from ladon_deploy.engines.ort_runner import PROVIDERS

    for engine in FALLBACK_ORDER:
        if PROVIDERS[engine][0] in available:
            return engine
    return "onnxruntime"


def require_tensorrt(target: str) -> Any:
    """tensorrt and a CUDA binding importable, or one line saying what to install (nothing is loaded)."""
    trt = tensorrt_api.import_tensorrt(target)
    tensorrt_api.find_cuda_binding(target)
    return trt


def choose_stage(bundle: Bundle, stage: str, engine: str, target: Optional[str] = None,
                 precision: Optional[str] = None, available: Optional[Sequence[str]] = None) -> StageChoice:
    """The runner kind for one stage. For 'tensorrt': this machine's target (or `target`), its sidecar for the stage
    (fp16 before fp32 unless `precision` says), and ONNX Runtime where the target has no engine for the stage or
    ladon-build recorded an ONNX Runtime verdict. available: this onnxruntime's providers (for the fallback)."""
    _check_engine(engine)
    if engine != "tensorrt":
        if precision == "fp16" and engine != "onnxruntime-tensorrt":
            raise EngineError("--precision fp16: engine %s runs the bundle's fp32 ONNX as it is; fp16 runs on "
                              "onnxruntime-tensorrt or tensorrt (or leave --precision out)" % engine)
        return StageChoice(stage, engine, "asked for")
    if available is None:
        from ladon_deploy.engines.ort_runner import available_providers

        available = available_providers()
    target = target or tensorrt_api.this_target()
    if stage not in get_target(target).stages:
        return StageChoice(stage, fallback_engine(available),
                           "target %s builds no engine for %s" % (target, stage), target=target)
    path = sidecars.find_stage_sidecar(bundle, target, stage, precision)
    if path is None:
        raise EngineError("bundle %s has no %s engine for %s on target %s: build it here with ladon-build --bundle "
                          "%s --target %s" % (bundle.directory, precision or "fp16/fp32", stage, target,
                                              bundle.directory, target))
    document = sidecars.read_sidecar(path)
    sidecars.check_source(document, bundle, path)
    if document["engine"] != "tensorrt":
        return StageChoice(stage, fallback_engine(available), document.get("why", "ladon-build chose ONNX Runtime"),
                           path, document, target)
    return StageChoice(stage, "tensorrt", "built by ladon-build", path, document, target)


def int8_model(bundle: Bundle, stage: str) -> str:
    """The INT8 ONNX model of a stage (ladon-build --target cpu --precision int8 writes them), or a one-line refusal."""
    path = bundle.engine_path("cpu", stage, "int8", "onnx")
    if not os.path.isfile(path):
        raise EngineError("bundle %s has no INT8 model for %s: build it with ladon-build --bundle %s --target cpu "
                          "--precision int8 --calib-images DIR" % (bundle.directory, stage, bundle.directory))
    return path


def open_choice(bundle: Bundle, choice: StageChoice, threads: Optional[int] = None,
                precision: Optional[str] = None) -> Runner:
    if choice.engine != "tensorrt":
        cache = bundle.engines_dir(ORT_TENSORRT_CACHE) if choice.engine == "onnxruntime-tensorrt" else None
        # ONNX Runtime runs INT8 as the quantized model itself; its providers then run at their fp32 settings.
        source = int8_model(bundle, choice.stage) if precision == "int8" else bundle.path(choice.stage)
        provider_precision = "fp32" if precision in (None, "int8") else precision
        runner = open_runner(source, choice.engine, threads, cache, provider_precision, quantized=precision == "int8")
    else:
        from ladon_deploy.engines.tensorrt_runner import TensorRTRunner

        document, path = choice.sidecar, choice.sidecar_path
        directory = os.path.dirname(path)

        def refuse_unless_runnable(facts: tensorrt_api.MachineFacts) -> None:
            sidecars.check_runnable(document, bundle, facts, path)
            sidecars.check_engine_file(document, directory, path)

        runner = TensorRTRunner(os.path.join(directory, document["file"]), choice.target, document["profile"],
                                document.get("dla_core"), before_load=refuse_unless_runnable)
    runner.engine_label = choice.label + (" int8" if precision == "int8" and choice.engine != "tensorrt" else "")
    return runner


def choose_runnable_stage(bundle: Bundle, stage: str, engine: str = "onnxruntime", precision: Optional[str] = None,
                          target: Optional[str] = None) -> StageChoice:
    """choose_stage, after checking that what `engine` needs is installed (one line otherwise); loads nothing."""
    _check_engine(engine)
    if engine == "tensorrt":
        require_tensorrt(target or tensorrt_api.this_target())
    return choose_stage(bundle, stage, engine, target, precision)


def open_stage_runner(bundle: Bundle, stage: str, engine: str = "onnxruntime", threads: Optional[int] = None,
                      precision: Optional[str] = None, target: Optional[str] = None) -> Runner:
    """The runner of one bundle stage under `engine`; runner.engine_label names what actually runs it."""
    return open_choice(bundle, choose_runnable_stage(bundle, stage, engine, precision, target), threads, precision)
