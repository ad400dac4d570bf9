"""ONNX Runtime runners: CPU by default; the CUDA and TensorRT execution providers where the wheel has them.

The TensorRT execution provider partitions the graph itself: what TensorRT can import runs as TensorRT engines
(cached on disk, in the bundle's engines area when the registry opens it), the rest falls back node by node to the
CUDA provider, then the CPU.
"""
import os
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np

from ladon_deploy.engines.base import Runner
from ladon_deploy.errors import EngineError

# engine name -> execution providers in order of preference (ONNX Runtime falls back along the list per node).
PROVIDERS = {
    "onnxruntime": ("CPUExecutionProvider",),
    "onnxruntime-cuda": ("CUDAExecutionProvider", "CPUExecutionProvider"),
    "onnxruntime-tensorrt": ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"),
}
# What to install when a provider is missing (DESIGN.md section 6: there is no aarch64 onnxruntime-gpu on PyPI).
PROVIDER_INSTALL = {
    "CUDAExecutionProvider": "install onnxruntime-gpu on an x86_64 machine with an NVIDIA GPU (on a Jetson: NVIDIA's "
                             "Jetson Zoo onnxruntime-gpu wheel for its JetPack)",
    "TensorrtExecutionProvider": "install onnxruntime-gpu with TensorRT's libraries on the library path (pip install "
                                 "tensorrt; on a Jetson: the Jetson Zoo wheel for its JetPack)",
}

ProviderSpec = Union[str, tuple]


def available_providers() -> List[str]:
    import onnxruntime

    return list(onnxruntime.get_available_providers())


def provider_name(provider: ProviderSpec) -> str:
    return provider if isinstance(provider, str) else provider[0]


# The TensorRT provider's timing-cache options are asked for only from the ONNX Runtime release that has them: the
# older wheels of the Jetson Zoo (1.11 with TensorRT 8.2) predate them, and a provider refuses options it does not
# know. trt_timing_cache_enable came in 1.16 (the cache then lives in the engine cache path), trt_timing_cache_path
# in 1.17 (api_tables/onnxruntime-ep-options.json, checked by `python -m ladon_deploy.engines.api_check`).
TIMING_CACHE_OPTIONS_FROM = (1, 16)
TIMING_CACHE_PATH_FROM = (1, 17)


def _release(version: str) -> tuple:
    try:
        return tuple(int(part) for part in version.split(".")[:2])
    except ValueError:
        return (0, 0)


def tensorrt_provider_options(cache_dir: Optional[str], precision: str = "fp32",
                              onnxruntime_version: Optional[str] = None) -> Dict[str, Any]:
    """TensorRT execution provider options: engine (and, where this onnxruntime has the options, timing) caches
    under cache_dir (None: no cache on disk)."""
    if onnxruntime_version is None:
        import onnxruntime

        onnxruntime_version = onnxruntime.__version__
    options = {"trt_fp16_enable": precision == "fp16"}  # type: Dict[str, Any]
    if cache_dir:
        options.update({"trt_engine_cache_enable": True, "trt_engine_cache_path": cache_dir})
        if _release(onnxruntime_version) >= TIMING_CACHE_OPTIONS_FROM:
            options["trt_timing_cache_enable"] = True
        if _release(onnxruntime_version) >= TIMING_CACHE_PATH_FROM:
            options["trt_timing_cache_path"] = cache_dir
    return options


def engine_providers(engine: str, cache_dir: Optional[str] = None, precision: str = "fp32") -> List[ProviderSpec]:
    """The providers list an InferenceSession gets for one engine name."""
    if engine not in PROVIDERS:
        raise EngineError("%s is not an ONNX Runtime engine (known: %s)" % (engine, ", ".join(PROVIDERS)))
    providers = list(PROVIDERS[engine])  # type: List[ProviderSpec]
    if engine == "onnxruntime-tensorrt":
        providers[0] = ("TensorrtExecutionProvider", tensorrt_provider_options(cache_dir, precision))
    return providers


def check_providers(wanted: Sequence[ProviderSpec], available: Sequence[str]) -> None:
    """Refuses, in one line saying what to install, a provider this onnxruntime does not have."""
    missing = [provider_name(p) for p in wanted if provider_name(p) not in available]
    if missing:
        hint = PROVIDER_INSTALL.get(missing[0])
        raise EngineError("onnxruntime has no execution provider %s (available: %s)%s"
                          % (", ".join(missing), ", ".join(available), ": " + hint if hint else ""))


class OnnxRuntimeRunner(Runner):
    """Runs an ONNX file through an onnxruntime.InferenceSession.

    threads: intra-op threads (None lets ONNX Runtime choose: one per core).
    providers: execution providers in order of preference; the default is the CPU provider only, so that results do
    not depend on which onnxruntime wheel happens to be installed.
    optimize: False turns ONNX Runtime's graph optimizations off.
    quantized: the file is one of ladon-build's INT8 models (QOperator form: QLinearConv and friends).
    """

    name = "onnxruntime"

    def __init__(self, path: str, threads: Optional[int] = None,
                 providers: Optional[Sequence[ProviderSpec]] = None, optimize: bool = True,
                 quantized: bool = False) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        if not optimize:
            # The graph as written, no fusions: the reference ladon-doctor holds every engine (ORT CPU included) to.
            options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
        if threads:
            options.intra_op_num_threads = int(threads)
            options.inter_op_num_threads = 1
        options.log_severity_level = 3
        # The memory-pattern planner keeps a second copy of the activations after the first run (the encoder's peak
        # RSS grows from 123 to 175 MB over five runs with it, stays at 123 MB without), for no measurable speed-up.
        options.enable_mem_pattern = False
        # A split process holds several sessions (encoder, body, heads); threads that spin after their run starve
        # the next session's threads on a small CPU (the encoder took 44 ms instead of 14 ms next to idle heads).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if quantized:
            # A QOperator model leaves ONNX Runtime's QDQ rewrites nothing to fuse; one of them still gives each
            # consumer of a DequantizeLinear its own copy (the GDN's input feeds both Abs and Div): one more pass over
            # the encoder's largest tensor, 14.8 -> 13.4 ms at 416x416, outputs bit for bit the same
            # (tests/calibration/test_int8_build.py).
            options.add_session_config_entry("session.disable_quant_qdq", "1")
        wanted = list(providers) if providers else ["CPUExecutionProvider"]
        check_providers(wanted, onnxruntime.get_available_providers())
        for provider in wanted:
            cache = provider[1].get("trt_engine_cache_path") if not isinstance(provider, str) else None
            if cache:
                try:
                    os.makedirs(cache, exist_ok=True)
                except OSError as exc:
                    raise EngineError("cannot create the TensorRT engine cache %s: %s" % (cache, exc))
        try:
            self._session = onnxruntime.InferenceSession(str(path), sess_options=options, providers=wanted)
        except Exception as exc:  # onnxruntime raises its own untyped errors for unreadable models
            raise EngineError("cannot load %s with onnxruntime: %s" % (path, str(exc).splitlines()[0]))
        self.providers = self._session.get_providers()
        # A listed provider whose libraries fail to load (TensorRT's, CUDA's) is dropped by ONNX Runtime with only a
        # log line; the first one asked for must really be there, or the run would silently be another engine's.
        if provider_name(wanted[0]) not in self.providers:
            raise EngineError("onnxruntime could not start %s for %s (it runs %s instead): %s"
                              % (provider_name(wanted[0]), path, ", ".join(self.providers),
                                 PROVIDER_INSTALL.get(provider_name(wanted[0]), "check its libraries")))
        self._inputs = [i.name for i in self._session.get_inputs()]
        self._outputs = [o.name for o in self._session.get_outputs()]
        # Frees the CPU arena's unused regions when a run ends: the last encoder band of a one-image device process
        # would otherwise leave the band's activations resident under the quantizer and the coder. Only on the CPU
        # provider alone: with CUDA or TensorRT the activations live on the GPU, and the option was never run there.
        # onnxruntime before 1.11 (JetPack 4.6's 1.10) has no run config entries: there the arena stays.
        self._release = None
        release = onnxruntime.RunOptions()
        if hasattr(release, "add_run_config_entry") and self.providers == ["CPUExecutionProvider"]:
            release.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
            self._release = release

    @property
    def input_names(self) -> List[str]:
        return list(self._inputs)

    @property
    def output_names(self) -> List[str]:
        return list(self._outputs)

    def input_shape(self, name: str) -> List[object]:
        """The declared shape of an input: ints for static dimensions, names (str) for dynamic ones."""
        for value in self._session.get_inputs():
            if value.name == name:
                return list(value.shape)
        raise EngineError("the model has no input %r" % name)

    def run(self, feeds: Dict[str, np.ndarray], release_memory: bool = False) -> Dict[str, np.ndarray]:
        if self._session is None:
            raise EngineError("runner is closed")
        unknown = set(feeds) - set(self._inputs)
        missing = set(self._inputs) - set(feeds)
        if unknown or missing:
            raise EngineError("inputs do not match the model: missing %s, unexpected %s"
                              % (sorted(missing), sorted(unknown)))
        values = self._session.run(self._outputs, feeds, self._release if release_memory else None)
        return dict(zip(self._outputs, values))

    def close(self) -> None:
        self._session = None
