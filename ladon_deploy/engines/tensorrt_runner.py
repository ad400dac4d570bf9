"""The TensorRT runner: one engine, one execution context, device buffers sized per input shape.

The sidecar is checked (TensorRT version, compute capability, platform, source ONNX sha256, plan sha256) before the
plan is deserialized: see registry.open_stage_runner and sidecar.check_runnable. The feeds are checked against the
engine's inputs and the sidecar's optimization profile before anything reaches the GPU, and converted to the
engine's dtypes (TensorRT 8.x's ONNX parser turns int64 inputs into int32 ones).

Edge subset: Python 3.6-clean; tensorrt and the CUDA binding come in through tensorrt_api only.
"""
import platform
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from ladon_deploy.engines import tensorrt_api
from ladon_deploy.engines.base import Runner
from ladon_deploy.errors import EngineError


def coerce_feed(spec: tensorrt_api.TensorSpec, value: Any) -> np.ndarray:
    """`value` as a C-contiguous array of the engine's dtype; integers must fit (int64 -> int32 on TensorRT 8.x)."""
    array = np.asarray(value)
    if array.dtype == spec.dtype:
        return np.ascontiguousarray(array)
    if np.issubdtype(spec.dtype, np.integer):
        if not np.issubdtype(array.dtype, np.integer):
            raise EngineError("input %s must be integer (%s), got %s" % (spec.name, spec.dtype, array.dtype))
        limits = np.iinfo(spec.dtype)
        if array.size and (array.min() < limits.min or array.max() > limits.max):
            raise EngineError("input %s has values outside %s" % (spec.name, spec.dtype))
    elif np.issubdtype(spec.dtype, np.floating) and not np.issubdtype(array.dtype, np.floating):
        raise EngineError("input %s must be floating point (%s), got %s" % (spec.name, spec.dtype, array.dtype))
    return np.ascontiguousarray(array.astype(spec.dtype))


def check_shape(name: str, shape: Sequence[int], spec: tensorrt_api.TensorSpec,
                profile: Optional[Dict[str, Dict[str, List[int]]]]) -> None:
    """Refuses a shape the engine cannot take: wrong rank, a static dimension changed, outside the profile."""
    shape = tuple(int(d) for d in shape)
    if len(shape) != len(spec.shape):
        raise EngineError("input %s must have %d dimensions, got shape %s" % (name, len(spec.shape), shape))
    for axis, (got, declared) in enumerate(zip(shape, spec.shape)):
        if declared >= 0 and got != declared:
            raise EngineError("input %s dimension %d must be %d, got %d" % (name, axis, declared, got))
    if profile and name in profile:
        low, high = profile[name]["min"], profile[name]["max"]
        if any(g < lo or g > hi for g, lo, hi in zip(shape, low, high)):
            raise EngineError("input %s shape %s is outside the engine's optimization profile %s..%s: rebuild the "
                              "engine for these sizes" % (name, list(shape), list(low), list(high)))


def output_buffers(specs: Sequence[tensorrt_api.TensorSpec],
                   output_shapes: Dict[str, Tuple[int, ...]]) -> Dict[str, np.ndarray]:
    """Host arrays for the outputs; a data-dependent output (-1 after the input shapes are set) is refused."""
    buffers = {}
    for spec in specs:
        if spec.is_input:
            continue
        shape = output_shapes[spec.name]
        if any(d < 0 for d in shape):
            raise EngineError("output %s has a data-dependent shape %s: this runner has no output allocator; run "
                              "the stage on ONNX Runtime" % (spec.name, list(shape)))
        buffers[spec.name] = np.empty(shape, dtype=spec.dtype)
    return buffers


class TensorRTRunner(Runner):
    """Runs a serialized TensorRT engine (plan bytes) on named numpy arrays.

    profile: input name -> {"min", "opt", "max"} from the engine's sidecar; feeds outside it are refused.
    """

    name = "tensorrt"

    def __init__(self, plan: Union[bytes, str], target: str,
                 profile: Optional[Dict[str, Dict[str, List[int]]]] = None, dla_core: Optional[int] = None,
                 before_load: Optional[Callable[[tensorrt_api.MachineFacts], None]] = None) -> None:
        """plan: the serialized engine, or the path of a plan file. before_load(facts) runs once TensorRT and the GPU
        are known and before the plan is read or deserialized: the place for the sidecar's refusals."""
        trt = tensorrt_api.import_tensorrt(target)
        version = tensorrt_api.tensorrt_version(trt)
        self.generation = tensorrt_api.Generation(version)
        self.profile = profile
        self.cuda = tensorrt_api.open_cuda(target)
        try:
            gpu_name, capability = self.cuda.gpu()
            self.facts = tensorrt_api.MachineFacts(platform.machine(), trt_version=version, gpu_name=gpu_name,
                                                   compute_capability=capability)
            if before_load is not None:
                before_load(self.facts)
            if not isinstance(plan, bytes):
                with open(plan, "rb") as handle:
                    plan = handle.read()
            self._engine = tensorrt_api.LoadedEngine(trt, self.generation, plan, dla_core)
        except BaseException:
            self.cuda.close()
            raise
        self._specs = {spec.name: spec for spec in self._engine.specs}
        self._device = {}  # type: Dict[str, Tuple[int, int]]  # name -> (pointer, capacity in bytes)

    @property
    def input_names(self) -> List[str]:
        return [s.name for s in self._engine.specs if s.is_input]

    @property
    def output_names(self) -> List[str]:
        return [s.name for s in self._engine.specs if not s.is_input]

    def _pointer(self, name: str, nbytes: int) -> int:
        pointer, capacity = self._device.get(name, (0, 0))
        if capacity < nbytes:
            if pointer:
                self.cuda.free(pointer)
            pointer, capacity = self.cuda.alloc(nbytes), nbytes
            self._device[name] = (pointer, capacity)
        return pointer

    def run(self, feeds: Dict[str, np.ndarray], release_memory: bool = False) -> Dict[str, np.ndarray]:
        # release_memory is ignored: the execution context and the buffers below live as long as the runner.
        if self._engine is None:
            raise EngineError("runner is closed")
        inputs = self.input_names
        unknown, missing = set(feeds) - set(inputs), set(inputs) - set(feeds)
        if unknown or missing:
            raise EngineError("inputs do not match the engine: missing %s, unexpected %s"
                              % (sorted(missing), sorted(unknown)))
        hosts = {}
        for name in inputs:
            spec = self._specs[name]
            hosts[name] = coerce_feed(spec, feeds[name])
            check_shape(name, hosts[name].shape, spec, self.profile)
        outputs = output_buffers(self._engine.specs,
                                 self._engine.set_input_shapes({n: a.shape for n, a in hosts.items()}))
        addresses = {}
        for name, array in list(hosts.items()) + list(outputs.items()):
            addresses[name] = self._pointer(name, array.nbytes)
        for name, array in hosts.items():
            self.cuda.to_device(addresses[name], array)
        self._engine.execute(addresses, self.cuda.stream_handle)
        for name, array in outputs.items():
            self.cuda.to_host(array, addresses[name])
        self.cuda.synchronize()
        return outputs

    def close(self) -> None:
        if self._engine is None:
            return
        for pointer, _ in self._device.values():
            self.cuda.free(pointer)
        self._device = {}
        self._engine.close()
        self._engine = None
        self.cuda.close()
