"""`ladon-build` (not --check): the engines of one target, built on that target, parity-gated, written atomically.

    build_engines(bundle_dir, "jetson-nano", "fp16")   # on the Nano: encoder.fp16.plan + encoder.fp16.json

For each stage the target runs (targets.py) the check (check.py) decides TensorRT or ONNX Runtime; a TensorRT stage
is built with one optimization profile derived from the bundle's preprocessing (the padded image sizes the device
stage can produce, and the latent and feature sizes that follow from them), the target's timing cache (kept in the
engines area per TensorRT version and GPU, reused by the next build) and an optional workspace limit; the engine then
passes the parity gate (parity.py) or the build fails and writes nothing. Every stage gets a sidecar (sidecar.py).
Nothing is written until every stage has passed; an existing build is replaced only with force=True.

Edge subset: Python 3.6-clean, never imports torch (the Nano builds its encoder on Python 3.6).
"""
import collections
import os
import platform
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from ladon_deploy.atomic import write_bytes_atomically
from ladon_deploy.bundle import Bundle, open_bundle
from ladon_deploy.engines import parity, sidecar, tensorrt_api
from ladon_deploy.engines.targets import Target, get_target
from ladon_deploy.errors import EngineError

# A workspace limit where the target needs one: the Nano's 4 GB are shared by CPU and GPU, and builds with
# TensorRT's default workspace get killed by the out-of-memory killer (DESIGN.md section 8).
DEFAULT_WORKSPACE_MB = {"jetson-nano": 256, "xavier-nx": 1024}

# How each dynamic dimension name of the bundle's manifest follows from the padded image's (height, width):
# (which side, stride, offset): size = side // stride + offset. The encoder's last convolution (k2, s1, p0) makes the
# latent one smaller than a quarter of the image; the body's first decoder convolution (k2, p1) restores it.
DIMENSION_RULES = {
    "height": ("h", 1, 0), "width": ("w", 1, 0),
    "latent_h": ("h", 4, -1), "latent_w": ("w", 4, -1),
    "feat1_h": ("h", 4, 0), "feat1_w": ("w", 4, 0),
    "feat2_h": ("h", 8, 0), "feat2_w": ("w", 8, 0),
    "feat3_h": ("h", 16, 0), "feat3_w": ("w", 16, 0),
    "feat4_h": ("h", 32, 0), "feat4_w": ("w", 32, 0),
}


def image_size_range(preprocessing: Dict[str, Any],
                     static: bool = False) -> Tuple[Tuple[int, int], Tuple[int, int], Tuple[int, int]]:
    """(min, opt, max) padded (height, width) the device stage feeds the encoder.

    "longer_side": the longer side becomes input_size and both sides are padded up to pad_multiple, so each side is
    one of pad_multiple, 2 * pad_multiple, ... up to input_size rounded up; opt is the square maximum (the size the
    model was trained at, and the one the slowest kernels must be tuned for). "square": exactly input_size. static
    (DLA cores take static shapes only): min = opt = max.
    """
    size = int(preprocessing["input_size"])
    if preprocessing.get("resize") == "square":
        square = (size, size)
        return square, square, square
    pad = int(preprocessing.get("pad_multiple") or 1)
    largest = -(-size // pad) * pad
    high = (largest, largest)
    if static:
        return high, high, high
    return (pad, pad), high, high


def _dimension(name: Any, side: Tuple[int, int], where: str) -> int:
    if isinstance(name, int):
        return name
    if name not in DIMENSION_RULES:
        raise EngineError("cannot derive an optimization profile for %s: unknown dynamic dimension %r" % (where, name))
    axis, stride, offset = DIMENSION_RULES[name]
    return side[0 if axis == "h" else 1] // stride + offset


def stage_profile(bundle: Bundle, stage: str, static: bool = False) -> Dict[str, Dict[str, List[int]]]:
    """input name -> {"min", "opt", "max"} shapes of one stage, from the manifest's symbolic input shapes."""
    sizes = image_size_range(bundle.preprocessing, static)
    profile = collections.OrderedDict()  # type: Dict[str, Dict[str, List[int]]]
    for value in bundle.stage(stage).get("inputs", []):
        where = "%s input %s" % (stage, value["name"])
        shapes = [[_dimension(d, side, where) for d in value["shape"]] for side in sizes]
        if any(d < 1 for shape in shapes for d in shape):
            raise EngineError("%s: the profile's smallest image (%dx%d) gives an empty dimension"
                              % (where, sizes[0][0], sizes[0][1]))
        profile[value["name"]] = {"min": shapes[0], "opt": shapes[1], "max": shapes[2]}
    if not profile:
        raise EngineError("bundle stage %s declares no inputs in its manifest" % stage)
    return profile


def target_stages(bundle: Bundle, target: Target) -> List[str]:
    present = bundle.manifest["stages"]
    return [stage for stage in target.stages if stage in present]


def check_build_machine(target: Target, machine: str, jetson_model: Optional[str]) -> None:
    """An engine is bound to the TensorRT version and GPU that built it: a target's engines are built on it."""
    if target.machine is not None and machine != target.machine:
        raise EngineError("target %s engines are built on the %s itself (%s), this machine is %s: an engine loads "
                          "only with the TensorRT version and GPU that built it"
                          % (target.name, target.description.split(",")[0], target.machine, machine))
    if target.name not in ("jetson-nano", "xavier-nx"):
        return
    here = tensorrt_api.this_target(machine, jetson_model)
    if here != target.name:
        raise EngineError("target %s engines are built on that board; this machine is %s"
                          % (target.name, jetson_model or here))


def timing_cache_path(bundle: Bundle, target: str, trt_version: str, compute_capability: str) -> str:
    """One timing cache per target, TensorRT version and GPU (a cache is bound to both), reused by every build."""
    return os.path.join(bundle.engines_dir(target),
                        "timing.trt%s.sm%s.cache" % (trt_version, compute_capability.replace(".", "")))


def existing_build(bundle: Bundle, target: str, stages: Sequence[str], precision: str,
                   dla_core: Optional[int]) -> List[str]:
    return [path for path in (sidecar.sidecar_path(bundle, target, stage, precision, dla_core) for stage in stages)
            if os.path.exists(path)]


def stage_verdicts(bundle: Bundle, target: Target, trt_version: Optional[str],
                   progress: Callable[[str], Any]) -> Dict[str, Dict[str, Any]]:
    """stage -> {"verdict", "unsupported"} from the parser-support check (ladon-build --check).

    Without the onnx package (a bare Jetson) the check cannot read the graphs: then TensorRT's own parser decides
    during the build, and a stage it cannot parse stays on ONNX Runtime.
    """
    try:
        import onnx  # noqa: F401  (only whether it is there matters here)
    except ImportError:
        progress("onnx is not installed: TensorRT's parser decides which stages it takes")
        return {}
    from ladon_deploy.engines.check import check_bundle

    version = None
    if trt_version is not None:
        version = "%d.%d" % tensorrt_api.parse_version(trt_version)
    report = check_bundle(bundle.directory, target.name, version)
    return {item.stage: {"verdict": item.verdict, "unsupported": [f.to_json() for f in item.unsupported]}
            for item in report.stages}


def _utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _onnxruntime_sidecar(bundle: Bundle, target: Target, stage: str, precision: str, machine: str,
                         check: Dict[str, Any], why: str) -> Dict[str, Any]:
    document = sidecar.new_sidecar(bundle, target.name, stage, "onnxruntime", precision, None, machine)
    document["why"] = why
    document["check"] = check
    document["built_at"] = _utc_now()
    return document


def _commit(bundle: Bundle, target: Target, results: List[Tuple[Dict[str, Any], Optional[bytes]]]) -> None:
    """Writes every plan, then its sidecar (a run trusts a plan only through its sidecar, which names its sha256)."""
    os.makedirs(bundle.engines_dir(target.name), exist_ok=True)
    for document, plan in results:
        stem = (document["stage"], document["precision"], document["dla_core"])
        plan_file = sidecar.plan_path(bundle, target.name, *stem)
        if plan is not None:
            write_bytes_atomically(plan_file, plan)
        sidecar.write_sidecar(sidecar.sidecar_path(bundle, target.name, *stem), document)
        if plan is None and os.path.exists(plan_file):
            os.remove(plan_file)  # a rebuild that moved the stage to ONNX Runtime leaves no stale plan


def build_engines(bundle_dir: str, target: str, precision: str = "fp16", dla_core: Optional[int] = None,
                  workspace_mb: Optional[int] = None, force: bool = False, progress: Callable[[str], Any] = print,
                  calib_images: Optional[str] = None, calib_count: int = 512,
                  accept_fidelity: bool = False) -> List[Dict[str, Any]]:
    """Builds (or, for ONNX Runtime stages and the cpu target, records) every stage of `target`; returns the
    sidecars written. Refusals are EngineError/LadonError, raised before anything is built or written."""
    spec = get_target(target)
    spec.check_precision(precision)
    spec.check_dla(dla_core)
    if precision == "int8" and not calib_images:
        raise EngineError("--precision int8 needs --calib-images DIR: a folder of real photographs like the ones the "
                          "device will see (a folder of noise calibrates nothing)")
    if workspace_mb is not None and workspace_mb < 1:
        raise EngineError("--workspace-mb must be at least 1")
    machine = platform.machine()
    if spec.builds_engines:
        check_build_machine(spec, machine, tensorrt_api.read_jetson_model() if machine == "aarch64" else None)
    bundle = open_bundle(bundle_dir, verify=False)
    stages = target_stages(bundle, spec)
    if not stages:
        raise EngineError("bundle %s has none of the stages target %s runs (%s)"
                          % (bundle_dir, spec.name, ", ".join(spec.stages)))
    bundle.verify(stages + ["entropy"])
    present = existing_build(bundle, spec.name, stages, precision, dla_core)
    if present and not force:
        raise EngineError("%s already holds target %s's %s build (%s): pass --force to replace it"
                          % (bundle.engines_dir(spec.name), spec.name, precision, os.path.basename(present[0])))

    if precision == "int8" and not spec.builds_engines:
        _build_int8(bundle_dir, spec, calib_images, calib_count, accept_fidelity, force, progress)
    if not spec.builds_engines:
        verdicts = {stage: {"verdict": "onnxruntime", "unsupported": []} for stage in stages}
        results = [(_onnxruntime_sidecar(bundle, spec, stage, precision, machine, verdicts[stage],
                                         "target %s runs ONNX Runtime only" % spec.name), None) for stage in stages]
        _commit(bundle, spec, results)
        progress("target %s: no TensorRT engine to build (ONNX Runtime runs the %s models); %d sidecars written to %s"
                 % (spec.name, precision.upper(), len(results), bundle.engines_dir(spec.name)))
        return [document for document, _ in results]

    trt = tensorrt_api.import_tensorrt(spec.name)
    trt_version = tensorrt_api.tensorrt_version(trt)
    if not tensorrt_api.version_in_range(trt_version, spec.trt_supported):
        raise EngineError("target %s builds with TensorRT %s..%s, this machine has TensorRT %s"
                          % (spec.name, spec.trt_supported[0], spec.trt_supported[1], trt_version))
    generation = tensorrt_api.Generation(trt_version)
    generation.check_precision(precision, dla_core)
    if precision == "int8":
        # The QDQ models TensorRT parses below (explicit quantization), with their calibration caches.
        _build_int8(bundle_dir, spec, calib_images, calib_count, accept_fidelity, force, progress)
    cuda = tensorrt_api.open_cuda(spec.name)
    try:
        gpu_name, capability = cuda.gpu()
        if spec.compute_capability is not None and capability != spec.compute_capability:
            raise EngineError("target %s has a GPU of compute capability %s, this one (%s) is %s"
                              % (spec.name, spec.compute_capability, gpu_name, capability))
        workspace = workspace_mb if workspace_mb is not None else DEFAULT_WORKSPACE_MB.get(spec.name)
        verdicts = stage_verdicts(bundle, spec, trt_version, progress)
        results = build_stages(bundle, spec, stages, precision, dla_core, workspace,
                               TensorRTCompiler(trt, generation, spec.name, dla_core), gpu_name, capability, machine,
                               verdicts, progress)
    finally:
        cuda.close()
    _commit(bundle, spec, results)
    progress("target %s: %d engines, %d stages on ONNX Runtime, written to %s"
             % (spec.name, sum(1 for _, plan in results if plan is not None),
                sum(1 for _, plan in results if plan is None), bundle.engines_dir(spec.name)))
    return [document for document, _ in results]


class TensorRTCompiler(object):
    """The two things a build needs from TensorRT: one serialized engine per stage, and a runner over it."""

    def __init__(self, trt: Any, generation: tensorrt_api.Generation, target: str, dla_core: Optional[int],
                 calibrator: Any = None) -> None:
        self.trt = trt
        self.calibrator = calibrator  # INT8 on TensorRT < 11 (ladon_deploy.calibration)
        self.generation = generation
        self.version = generation.version
        self.api = generation.name
        self.target = target
        self.dla_core = dla_core

    def compile(self, onnx_path: str, profile: Dict[str, Dict[str, List[int]]], precision: str,
                workspace_bytes: Optional[int], timing_cache: Optional[bytes]) -> Tuple[bytes, bytes]:
        return tensorrt_api.build_serialized_engine(self.trt, self.generation, onnx_path, profile, precision,
                                                    workspace_bytes, self.dla_core, timing_cache, self.calibrator)

    def open(self, plan: bytes, profile: Dict[str, Dict[str, List[int]]]) -> Any:
        from ladon_deploy.engines.tensorrt_runner import TensorRTRunner

        return TensorRTRunner(plan, self.target, profile, self.dla_core)


def build_stages(bundle: Bundle, spec: Target, stages: Sequence[str], precision: str, dla_core: Optional[int],
                 workspace_mb: Optional[int], compiler: Any, gpu_name: str, capability: str, machine: str,
                 verdicts: Dict[str, Dict[str, Any]],
                 progress: Callable[[str], Any]) -> List[Tuple[Dict[str, Any], Optional[bytes]]]:
    """Builds and parity-checks every stage in memory; returns (sidecar, plan or None) per stage, or raises on the
    first stage that misses parity (nothing is written then, apart from the timing cache of a complete run).

    compiler: TensorRTCompiler (compile(onnx, profile, precision, workspace_bytes, timing_cache) -> (plan, cache);
    open(plan, profile) -> Runner; version; api).
    """
    cache_file = timing_cache_path(bundle, spec.name, compiler.version, capability)
    timing_cache = None
    cache_reused = os.path.isfile(cache_file)
    if cache_reused:
        with open(cache_file, "rb") as handle:
            timing_cache = handle.read()
    static = dla_core is not None
    pad = int(bundle.preprocessing.get("pad_multiple") or 1)
    sizes = image_size_range(bundle.preprocessing, static)
    chain = parity.ReferenceChain(bundle, parity.probe_sizes(sizes[0], sizes[2], pad))
    results = []  # type: List[Tuple[Dict[str, Any], Optional[bytes]]]
    try:
        for stage in stages:
            check = verdicts.get(stage, {"verdict": "tensorrt", "unsupported": []})
            if check["verdict"] != "tensorrt":
                progress("%s: ONNX Runtime (%d nodes TensorRT %s cannot import)"
                         % (stage, len(check["unsupported"]), compiler.version))
                results.append((_onnxruntime_sidecar(bundle, spec, stage, precision, machine, check,
                                                     "TensorRT %s cannot import it (ladon-build --check)"
                                                     % compiler.version), None))
                continue
            profile = stage_profile(bundle, stage, static)
            progress("%s: building TensorRT %s %s engine%s" % (stage, compiler.version, precision,
                                                               "" if dla_core is None else " on DLA core %d" % dla_core))
            started = time.perf_counter()
            plan, timing_cache = compiler.compile(_source_model(bundle, spec, stage, precision), profile, precision,
                                                  workspace_mb * (1 << 20) if workspace_mb else None, timing_cache)
            build_seconds = time.perf_counter() - started
            runner = compiler.open(plan, profile)
            try:
                figures = parity.check_parity(chain, stage, runner, precision)
            except EngineError as exc:
                if "data-dependent shape" not in str(exc):
                    raise
                progress("%s: ONNX Runtime (%s)" % (stage, exc))
                results.append((_onnxruntime_sidecar(bundle, spec, stage, precision, machine, check, str(exc)), None))
                continue
            finally:
                runner.close()
            if not figures["passed"]:
                raise EngineError("%s; no engine was written" % parity.parity_failure(stage, figures))
            document = sidecar.new_sidecar(bundle, spec.name, stage, "tensorrt", precision, dla_core, machine)
            document["file"] = os.path.basename(sidecar.plan_path(bundle, spec.name, stage, precision, dla_core))
            document["engine_sha256"] = _sha256_bytes(plan)
            document["tensorrt"] = {"version": compiler.version, "api": compiler.api}
            document["gpu"] = {"name": gpu_name, "compute_capability": capability}
            document["profile"] = profile
            document["build_options"] = {"workspace_mb": workspace_mb, "timing_cache": os.path.basename(cache_file),
                                         "timing_cache_reused": cache_reused,
                                         "gpu_fallback": dla_core is not None, "static_shapes": static}
            document["build_seconds"] = round(build_seconds, 3)
            document["built_at"] = _utc_now()
            document["parity"] = figures
            document["check"] = check
            results.append((document, plan))
            progress("%s: built in %.1f s, parity rel L2 %.2g%s" % (
                stage, build_seconds, figures["rel_l2"] or 0.0,
                ", symbols %.4f" % figures["symbol_agreement"] if "symbol_agreement" in figures else ""))
    finally:
        chain.close()
    if timing_cache:
        os.makedirs(bundle.engines_dir(spec.name), exist_ok=True)
        write_bytes_atomically(cache_file, timing_cache)
    return results


def _build_int8(bundle_dir: str, spec: Target, calib_images: str, calib_count: int, accept_fidelity: bool,
                force: bool, progress: Callable[[str], Any]) -> None:
    """INT8 models (cpu) or QDQ models + calibration caches (TensorRT targets) and the fidelity report; raises (exit
    2, nothing shipped) when the report misses its thresholds without accept_fidelity."""
    from ladon_deploy.calibration.int8 import build_int8

    build_int8(bundle_dir, spec.name, calib_images, calib_count, accept_fidelity, force, progress)


def _source_model(bundle: Bundle, spec: Target, stage: str, precision: str) -> str:
    """The ONNX file TensorRT parses: the bundle's FP32 stage, or for int8 the QDQ model _build_int8 wrote."""
    if precision != "int8":
        return bundle.path(stage)
    from ladon_deploy.calibration.int8 import int8_paths

    return int8_paths(bundle, spec.name, [stage])[stage]


def _sha256_bytes(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()
