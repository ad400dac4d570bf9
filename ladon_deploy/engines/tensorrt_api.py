"""The thin layer over TensorRT and the CUDA Python bindings: every call into `tensorrt`, `pycuda` or `cuda-python`
lives here, dispatched on the TensorRT API generation. Everything around these calls (which generation, profiles,
buffer shapes and dtypes, refusals) is plain Python in this module and its callers, and is unit-tested without
TensorRT; the calls themselves have never run on this project's build machines (no GPU there; README).

API generations (DESIGN.md section 6; NVIDIA's Python API references per release and the 10.x -> 11.x migration
guide, docs.nvidia.com/deeplearning/tensorrt/<version>/api/python_api and .../api/migration):

    bindings  8.2, 8.4   engine.num_bindings / get_binding_name / binding_is_input / get_binding_dtype,
                         context.set_binding_shape / get_binding_shape, execute_async_v2(bindings, stream_handle);
                         EXPLICIT_BATCH network flag; config.max_workspace_size on 8.2 (set_memory_pool_limit from 8.4)
    named     8.5 .. 10  engine.num_io_tensors / get_tensor_name / get_tensor_mode / get_tensor_dtype,
                         context.set_input_shape / get_tensor_shape / set_tensor_address, execute_async_v3(stream_handle);
                         8.5 and 8.6 still have the bindings calls, named tensors are preferred there; 10.x removed
                         bindings and implicit batch (the EXPLICIT_BATCH flag is deprecated and ignored)
    strong    11.x       named tensors as in 10.x; the precision BuilderFlags (FP16, INT8, ...), the IInt8*Calibrator
                         classes, int8_calibrator and EXPLICIT_BATCH removed: networks are strongly typed, the ONNX
                         file's own types decide the precision

Every call below, on every path a generation reaches, is checked against the binding sources of each release
(API conformance, not execution): `python -m ladon_deploy.engines.api_check`, docs/engines-api.md.

Edge subset: Python 3.6-clean (the Jetson Nano's TensorRT 8.2 bindings exist for Python 3.6 only), numpy and the
standard library at import time; tensorrt and the CUDA binding are imported only when an engine is built or run.
"""
import os
import platform
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ladon_deploy.errors import EngineError

# What to install where, per target (targets.py names): the refusal when tensorrt or a CUDA binding is missing.
TENSORRT_INSTALL = {
    "jetson-nano": "TensorRT 8.2.1 ships with JetPack 4.6.1-4.6.x (L4T R32.7) for the system Python 3.6 (plain "
                   "JetPack 4.6, L4T R32.6.1, has 8.0.1: upgrade): `sudo apt-get install python3-libnvinfer` and "
                   "run with /usr/bin/python3",
    "xavier-nx": "TensorRT 8.5 ships with JetPack 5.1 (L4T R35) for the system Python 3.8: "
                 "`sudo apt-get install python3-libnvinfer` (or use the l4t-tensorrt:r8.5.2 container)",
    "server": "`pip install tensorrt` (10.x for CUDA 12; `pip install tensorrt==8.6.1` for an 8.x server)",
}
CUDA_INSTALL = {
    "jetson-nano": "`pip3 install pycuda` on JetPack 4.6 (needs CUDA 10.2's nvcc on PATH: "
                   "export PATH=/usr/local/cuda/bin:$PATH)",
    "xavier-nx": "`pip3 install pycuda` on JetPack 5.1 (needs CUDA 11.4's nvcc on PATH: "
                 "export PATH=/usr/local/cuda/bin:$PATH)",
    "server": "`pip install cuda-python` (or pycuda, which needs the CUDA toolkit's headers)",
}

BINDINGS = "bindings"
NAMED = "named-tensors"
STRONGLY_TYPED = "strongly-typed"


class Generation(object):
    """What one TensorRT release's Python API offers, as far as the builder and the runner use it."""

    def __init__(self, version: str) -> None:
        self.version = version
        self.major_minor = parse_version(version)
        major, minor = self.major_minor
        if self.major_minor < (8, 2):
            raise EngineError("TensorRT %s is older than 8.2, the oldest this toolkit builds for: on a Jetson Nano "
                              "upgrade plain JetPack 4.6 (L4T R32.6.1, TensorRT 8.0.1) to JetPack 4.6.1 or later "
                              "(L4T R32.7, TensorRT 8.2.1)" % version)
        if major > 11:
            raise EngineError("TensorRT %s is newer than this toolkit knows (8.2 to 11.x)" % version)
        # 8.5 and 8.6 have both forms; named tensors are the ones 10.x kept.
        self.named_tensors = self.major_minor >= (8, 5)
        self.memory_pool_limit = self.major_minor >= (8, 4)
        self.explicit_batch_flag = major < 10
        self.weak_typing = major < 11  # BuilderFlag.FP16 / INT8 exist
        self.calibrators = major < 11  # IInt8EntropyCalibrator2 and config.int8_calibrator (deprecated in 10.1)
        if major >= 11:
            self.name = STRONGLY_TYPED
        elif self.named_tensors:
            self.name = NAMED
        else:
            self.name = BINDINGS

    def check_precision(self, precision: str, dla_core: Optional[int] = None) -> None:
        """Refuses what this generation cannot build, before any work."""
        if dla_core is not None and precision == "fp32":
            raise EngineError("DLA cores run fp16 or int8 only: use --precision fp16 with --dla")
        if precision == "fp16" and not self.weak_typing:
            raise EngineError("TensorRT %s builds strongly typed networks only (BuilderFlag.FP16 was removed in 11.0): "
                              "convert the ONNX to fp16 first (python -m modelopt.onnx.autocast) or build "
                              "--precision fp32" % self.version)
        if precision == "int8" and not self.weak_typing:
            raise EngineError("TensorRT %s has no INT8 calibration (removed in 11.0): INT8 needs a Q/DQ ONNX model"
                              % self.version)

    def __repr__(self) -> str:
        return "Generation(%s, %s)" % (self.version, self.name)


def parse_version(text: str) -> Tuple[int, int]:
    """'8.2.1.8' -> (8, 2); refuses what is not a TensorRT version string."""
    parts = str(text).strip().split(".")
    try:
        return int(parts[0]), int(parts[1])
    except (ValueError, IndexError):
        raise EngineError("not a TensorRT version: %r" % text)


def version_in_range(version: str, supported: Optional[Tuple[str, str]]) -> bool:
    if supported is None:
        return False
    return parse_version(supported[0]) <= parse_version(version) <= parse_version(supported[1])


# TensorRT DataType names -> numpy. BF16 and the FP8/FP4/INT4 types have no numpy dtype: an engine whose I/O uses
# them is refused by the runner.
NUMPY_DTYPES = {
    "FLOAT": np.float32, "HALF": np.float16, "INT8": np.int8, "INT32": np.int32, "INT64": np.int64,
    "BOOL": np.bool_, "UINT8": np.uint8,
}


def numpy_dtype(trt_dtype: Any) -> Any:
    """A tensorrt.DataType (or its name) as a numpy dtype."""
    name = str(trt_dtype).split(".")[-1].upper()
    if name not in NUMPY_DTYPES:
        raise EngineError("engine tensor type %s has no numpy equivalent" % name)
    return np.dtype(NUMPY_DTYPES[name])


class TensorSpec(object):
    """One engine input or output: name, direction, numpy dtype, shape (-1 where the engine leaves it dynamic)."""

    def __init__(self, name: str, is_input: bool, dtype: Any, shape: Sequence[int]) -> None:
        self.name = name
        self.is_input = is_input
        self.dtype = np.dtype(dtype)
        self.shape = tuple(int(d) for d in shape)

    def __repr__(self) -> str:
        return "TensorSpec(%s, %s, %s, %s)" % (self.name, "in" if self.is_input else "out", self.dtype, self.shape)


def import_tensorrt(target: str) -> Any:
    """The tensorrt module, or a one-line refusal saying what to install on this target."""
    try:
        import tensorrt  # noqa: F401 (the import is the check)
    except ImportError as exc:
        raise EngineError("the tensorrt Python package is not installed (%s): %s"
                          % (str(exc).splitlines()[0] if str(exc) else "ImportError",
                             TENSORRT_INSTALL.get(target, TENSORRT_INSTALL["server"])))
    return tensorrt


# ----------------------------------------------------------------------------------------------------------- CUDA
class CudaBinding(object):
    """Device memory, one stream and the GPU's identity through pycuda or cuda-python (the same five operations)."""

    name = "abstract"

    def alloc(self, nbytes: int) -> int:
        raise NotImplementedError

    def free(self, pointer: int) -> None:
        raise NotImplementedError

    def to_device(self, pointer: int, host: np.ndarray) -> None:
        raise NotImplementedError

    def to_host(self, host: np.ndarray, pointer: int) -> None:
        raise NotImplementedError

    def synchronize(self) -> None:
        raise NotImplementedError

    @property
    def stream_handle(self) -> int:
        raise NotImplementedError

    def gpu(self) -> Tuple[str, str]:
        """(name, compute capability 'major.minor') of device 0."""
        raise NotImplementedError

    def close(self) -> None:
        """Releases the stream and the context this binding holds."""


class PycudaBinding(CudaBinding):
    """pycuda (what JetPack users install): device 0's primary context, shared with TensorRT's runtime API calls."""

    name = "pycuda"

    def __init__(self) -> None:
        import pycuda.driver as cuda

        self._cuda = cuda
        cuda.init()
        self._device = cuda.Device(0)
        self._context = self._device.retain_primary_context()
        self._context.push()
        self._stream = cuda.Stream()
        self._allocations = {}  # type: Dict[int, Any]

    def alloc(self, nbytes: int) -> int:
        allocation = self._cuda.mem_alloc(max(int(nbytes), 1))
        self._allocations[int(allocation)] = allocation
        return int(allocation)

    def free(self, pointer: int) -> None:
        allocation = self._allocations.pop(pointer, None)
        if allocation is not None:
            allocation.free()

    # pycuda documents its *_async copies for page-locked memory only; the feeds are ordinary numpy arrays, so the
    # synchronous copies are used: they run on the legacy default stream, which orders itself with this (blocking)
    # stream, and the inference between them is waited for explicitly.
    def to_device(self, pointer: int, host: np.ndarray) -> None:
        self._cuda.memcpy_htod(pointer, host)

    def to_host(self, host: np.ndarray, pointer: int) -> None:
        self._stream.synchronize()
        self._cuda.memcpy_dtoh(host, pointer)

    def synchronize(self) -> None:
        self._stream.synchronize()

    @property
    def stream_handle(self) -> int:
        return int(self._stream.handle)

    def gpu(self) -> Tuple[str, str]:
        major, minor = self._device.compute_capability()
        return str(self._device.name()), "%d.%d" % (major, minor)

    def close(self) -> None:
        for pointer in list(self._allocations):
            self.free(pointer)
        if self._context is not None:
            self._context.pop()
            self._context = None


class CudaPythonBinding(CudaBinding):
    """cuda-python's runtime API (`cuda.bindings.runtime`, `cuda.cudart` before 12.6): each call returns (err, ...)."""

    name = "cuda-python"

    def __init__(self) -> None:
        self._cudart = _import_cudart()
        self._stream = None
        self._check(self._cudart.cudaSetDevice(0))
        self._stream = self._check(self._cudart.cudaStreamCreate())

    def _check(self, result: Any) -> Any:
        error = result[0]
        if error != self._cudart.cudaError_t.cudaSuccess:
            raise EngineError("CUDA runtime error %s" % getattr(error, "name", error))
        return result[1] if len(result) == 2 else result[1:]

    def alloc(self, nbytes: int) -> int:
        return int(self._check(self._cudart.cudaMalloc(max(int(nbytes), 1))))

    def free(self, pointer: int) -> None:
        self._check(self._cudart.cudaFree(pointer))

    def to_device(self, pointer: int, host: np.ndarray) -> None:
        self._check(self._cudart.cudaMemcpyAsync(pointer, host.ctypes.data, host.nbytes,
                                                 self._cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, self._stream))

    def to_host(self, host: np.ndarray, pointer: int) -> None:
        self._check(self._cudart.cudaMemcpyAsync(host.ctypes.data, pointer, host.nbytes,
                                                 self._cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost, self._stream))

    def synchronize(self) -> None:
        self._check(self._cudart.cudaStreamSynchronize(self._stream))

    @property
    def stream_handle(self) -> int:
        return int(self._stream)

    def gpu(self) -> Tuple[str, str]:
        properties = self._check(self._cudart.cudaGetDeviceProperties(0))
        name = properties.name
        if isinstance(name, bytes):
            name = name.split(b"\0", 1)[0].decode("utf-8", "replace")
        return str(name), "%d.%d" % (properties.major, properties.minor)

    def close(self) -> None:
        if self._stream is not None:
            self._cudart.cudaStreamDestroy(self._stream)
            self._stream = None


def _import_cudart() -> Any:
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        from cuda import cudart  # cuda-python < 12.6 (the only form before; removed in 13.0)
    return cudart


def _import_pycuda() -> Any:
    import pycuda.driver

    return pycuda.driver


# pycuda first: it is what the Jetsons have; a server may have either.
CUDA_BINDINGS = (("pycuda", PycudaBinding, _import_pycuda), ("cuda-python", CudaPythonBinding, _import_cudart))


def find_cuda_binding(target: str) -> Any:
    """The class of the first CUDA binding that imports (nothing is opened), or a one-line refusal saying what to
    install on this target."""
    reasons = []
    for name, binding, importer in CUDA_BINDINGS:
        try:
            importer()
        except ImportError as exc:
            reasons.append("%s: %s" % (name, str(exc).splitlines()[0] if str(exc) else "ImportError"))
            continue
        return binding
    raise EngineError("neither pycuda nor cuda-python is installed (%s): %s"
                      % ("; ".join(reasons), CUDA_INSTALL.get(target, CUDA_INSTALL["server"])))


def open_cuda(target: str) -> CudaBinding:
    """Device 0 through the first CUDA binding that imports (see find_cuda_binding)."""
    binding = find_cuda_binding(target)
    try:
        return binding()
    except Exception as exc:  # the binding's own errors (no GPU, driver too old) have no common type
        raise EngineError("%s cannot open GPU 0: %s" % (binding.name, str(exc).splitlines()[0] if str(exc) else exc))


# ------------------------------------------------------------------------------------------------------ machine
class MachineFacts(object):
    """What the refusals compare an engine's sidecar with: platform, Jetson model, TensorRT version, GPU."""

    def __init__(self, machine: str, jetson_model: Optional[str] = None, trt_version: Optional[str] = None,
                 gpu_name: Optional[str] = None, compute_capability: Optional[str] = None) -> None:
        self.machine = machine
        self.jetson_model = jetson_model
        self.trt_version = trt_version
        self.gpu_name = gpu_name
        self.compute_capability = compute_capability


JETSON_MODELS = (("jetson nano", "jetson-nano"), ("xavier nx", "xavier-nx"))
DEVICE_TREE_MODEL = "/proc/device-tree/model"


def read_jetson_model(path: str = DEVICE_TREE_MODEL) -> Optional[str]:
    try:
        with open(path, "rb") as handle:
            return handle.read().split(b"\0", 1)[0].decode("utf-8", "replace").strip() or None
    except (IOError, OSError):
        return None


def this_target(machine: Optional[str] = None, jetson_model: Optional[str] = None) -> str:
    """The target name of the machine described (this one by default): a Jetson by its device-tree model, an aarch64
    board that is neither Jetson a refusal, anything else 'server'."""
    machine = machine if machine is not None else platform.machine()
    if jetson_model is None and machine == "aarch64":
        jetson_model = read_jetson_model()
    if jetson_model:
        lowered = jetson_model.lower()
        for needle, target in JETSON_MODELS:
            if needle in lowered:
                return target
        raise EngineError("%s is not a Jetson this toolkit has a target for (jetson-nano, xavier-nx)" % jetson_model)
    return "server"


def tensorrt_version(trt: Any) -> str:
    return str(trt.__version__)


def log_severity(trt: Any) -> Any:
    return trt.Logger.WARNING if not os.environ.get("LADON_TRT_VERBOSE") else trt.Logger.VERBOSE


# ------------------------------------------------------------------------------------------------------ builder
def build_serialized_engine(trt: Any, generation: Generation, onnx_path: str,
                            profile: Dict[str, Dict[str, List[int]]], precision: str,
                            workspace_bytes: Optional[int], dla_core: Optional[int],
                            timing_cache: Optional[bytes], calibrator: Any = None) -> Tuple[bytes, bytes]:
    """Parses `onnx_path` and builds one serialized engine; returns (plan, timing cache) as bytes.

    profile: input name -> {"min", "opt", "max"} shapes (one optimization profile). calibrator: an
    IInt8EntropyCalibrator2 for implicit INT8 (TensorRT < 11). The caller has refused what this generation cannot
    build (Generation.check_precision).
    """
    logger = trt.Logger(log_severity(trt))
    builder = trt.Builder(logger)
    flags = 0
    if generation.explicit_batch_flag:
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    with open(onnx_path, "rb") as handle:
        parsed = parser.parse(handle.read())
    if not parsed:
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise EngineError("TensorRT %s cannot parse %s: %s"
                          % (generation.version, onnx_path, (errors[0] if errors else "no error given").splitlines()[0]))
    config = builder.create_builder_config()
    if workspace_bytes:
        if generation.memory_pool_limit:
            config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_bytes))
        else:
            config.max_workspace_size = int(workspace_bytes)
    if precision in ("fp16", "int8") and generation.weak_typing:
        config.set_flag(trt.BuilderFlag.FP16)
    if precision == "int8" and generation.weak_typing:
        config.set_flag(trt.BuilderFlag.INT8)
    if calibrator is not None and generation.calibrators:
        config.int8_calibrator = calibrator
    if dla_core is not None:
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = int(dla_core)
        config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
    optimization_profile = builder.create_optimization_profile()
    for name, shapes in profile.items():
        optimization_profile.set_shape(name, tuple(shapes["min"]), tuple(shapes["opt"]), tuple(shapes["max"]))
    config.add_optimization_profile(optimization_profile)
    cache = config.create_timing_cache(timing_cache or b"")
    config.set_timing_cache(cache, False)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise EngineError("TensorRT %s failed to build %s (run with LADON_TRT_VERBOSE=1 for its log)"
                          % (generation.version, onnx_path))
    return bytes(plan), bytes(config.get_timing_cache().serialize())


# ------------------------------------------------------------------------------------------------------ runtime
class LoadedEngine(object):
    """A deserialized engine with one execution context, driven through the generation's calls."""

    def __init__(self, trt: Any, generation: Generation, plan: bytes, dla_core: Optional[int] = None) -> None:
        self.generation = generation
        self._logger = trt.Logger(log_severity(trt))
        self._runtime = trt.Runtime(self._logger)
        if dla_core is not None:
            self._runtime.DLA_core = int(dla_core)
        self._engine = self._runtime.deserialize_cuda_engine(plan)
        if self._engine is None:
            raise EngineError("TensorRT %s could not deserialize the engine (see its log above)" % generation.version)
        self._context = self._engine.create_execution_context()
        self._input_mode = trt.TensorIOMode.INPUT if generation.named_tensors else None
        self.specs = self._describe()

    def _describe(self) -> List[TensorSpec]:
        engine = self._engine
        specs = []
        if self.generation.named_tensors:
            for index in range(engine.num_io_tensors):
                name = engine.get_tensor_name(index)
                specs.append(TensorSpec(name, engine.get_tensor_mode(name) == self._input_mode,
                                        numpy_dtype(engine.get_tensor_dtype(name)), engine.get_tensor_shape(name)))
        else:
            for index in range(engine.num_bindings):
                specs.append(TensorSpec(engine.get_binding_name(index), engine.binding_is_input(index),
                                        numpy_dtype(engine.get_binding_dtype(index)),
                                        engine.get_binding_shape(index)))
        return specs

    def set_input_shapes(self, shapes: Dict[str, Tuple[int, ...]]) -> Dict[str, Tuple[int, ...]]:
        """Sets every input's shape; returns every output's resulting shape (-1 where data-dependent)."""
        context, engine = self._context, self._engine
        outputs = {}
        if self.generation.named_tensors:
            for name, shape in shapes.items():
                if context.set_input_shape(name, tuple(shape)) is False:
                    raise EngineError("TensorRT refused input %s with shape %s" % (name, tuple(shape)))
            for spec in self.specs:
                if not spec.is_input:
                    outputs[spec.name] = tuple(int(d) for d in context.get_tensor_shape(spec.name))
        else:
            for name, shape in shapes.items():
                if context.set_binding_shape(engine.get_binding_index(name), tuple(shape)) is False:
                    raise EngineError("TensorRT refused input %s with shape %s" % (name, tuple(shape)))
            if not context.all_binding_shapes_specified:
                raise EngineError("TensorRT: not every input shape is specified")
            for spec in self.specs:
                if not spec.is_input:
                    outputs[spec.name] = tuple(int(d) for d in
                                               context.get_binding_shape(engine.get_binding_index(spec.name)))
        return outputs

    def execute(self, addresses: Dict[str, int], stream_handle: int) -> None:
        """Enqueues one inference on the stream; every input and output tensor has a device address."""
        context, engine = self._context, self._engine
        if self.generation.named_tensors:
            for name, pointer in addresses.items():
                context.set_tensor_address(name, int(pointer))
            ok = context.execute_async_v3(stream_handle)
        else:
            bindings = [0] * engine.num_bindings
            for name, pointer in addresses.items():
                bindings[engine.get_binding_index(name)] = int(pointer)
            ok = context.execute_async_v2(bindings, stream_handle)
        if ok is False:
            raise EngineError("TensorRT failed to enqueue the inference")

    def close(self) -> None:
        self._context = None
        self._engine = None
        self._runtime = None
