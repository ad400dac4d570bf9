"""TensorRT's implicit INT8 calibration for the device's builder: an IInt8EntropyCalibrator2 that feeds the same
batches as the ONNX Runtime calibration (same folder, seed and count, preprocessed as the device stage does) and
reuses the calibration cache written next to the QDQ models.

TensorRT drives the calibrator: get_batch_size(), then get_batch(names) until it returns None, then
write_calibration_cache(cache); read_calibration_cache() returning bytes skips the batches altogether. The batch
logic (EncoderBatches, CachePolicy) is plain Python and unit-tested; the subclass is a thin adapter created by
`entropy_calibrator` with `tensorrt` imported by the caller, and has never run on this project's machines (no GPU).
Implicit calibration exists in TensorRT 8.x to 10.x (deprecated in 10.1, removed in 11.0); TensorRT >= 8.5 can
instead build the explicit QDQ model, which needs no calibrator.

Edge subset: Python 3.6-clean, never imports torch; tensorrt and the CUDA binding come from the caller.
"""
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from ladon_deploy.bundle import Bundle
from ladon_deploy.calibration import cache as calibration_cache
from ladon_deploy.calibration.data import Progress, iterate_images, pad_to, split_images, stderr_lines
from ladon_deploy.errors import EngineError


class EncoderBatches(object):
    """The encoder's calibration batches: the calibration split's images, preprocessed, padded to `shape` (the
    calibration profile's [1, 3, H, W]), float32 and C-contiguous, one image per batch."""

    def __init__(self, bundle: Bundle, images_dir: str, count: int, shape: Sequence[int], seed: int = 0,
                 input_name: str = "image", progress: Optional[Progress] = stderr_lines) -> None:
        if len(shape) != 4 or int(shape[0]) != 1:
            raise EngineError("the encoder is calibrated one image at a time: shape must be [1, 3, H, W], got %s"
                              % (list(shape),))
        self.shape = tuple(int(d) for d in shape)
        self.input_name = input_name
        self.split = split_images(images_dir, count, seed)
        if progress and self.split.skipped:
            progress("calibration images: %s" % self.split.describe())
        self._images = iterate_images(bundle, self.split.calibration, "calibration batches", progress)

    @property
    def batch_size(self) -> int:
        return 1

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * 4

    def next_batch(self) -> Optional[Dict[str, np.ndarray]]:
        for _, image in self._images:
            tensor = pad_to(image.tensor, self.shape[2], self.shape[3])
            return {self.input_name: np.ascontiguousarray(tensor, dtype=np.float32)}
        return None


class CachePolicy(object):
    """Where the cache lives and which TensorRT version reads it.

    A cache on disk is handed to TensorRT under the running version's header (see cache.retag: the scales come from
    our ONNX Runtime calibration, not from a TensorRT release), so an existing cache always skips the batches.
    """

    def __init__(self, path: str, trt_version: str) -> None:
        self.path = path
        self.trt_version = trt_version

    def read(self) -> Optional[bytes]:
        import os

        if not os.path.isfile(self.path):
            return None
        with open(self.path, "rb") as handle:
            data = handle.read()
        return calibration_cache.retag(data, self.trt_version)

    def write(self, data: bytes) -> None:
        calibration_cache.parse_cache(data)  # TensorRT's own output must parse as the format we document
        from ladon_deploy.atomic import write_bytes_atomically

        write_bytes_atomically(self.path, data)


def calibrator_methods(batches: EncoderBatches, policy: CachePolicy, cuda: Any) -> Dict[str, Any]:
    """The four methods TensorRT calls, over `batches`, `policy` and a CudaBinding (engines.tensorrt_api)."""
    state = {"pointer": None}  # type: Dict[str, Any]

    def get_batch_size(self) -> int:
        return batches.batch_size

    def get_batch(self, names: List[str]) -> Optional[List[int]]:
        batch = batches.next_batch()
        if batch is None:
            return None
        if list(names) != [batches.input_name]:
            raise EngineError("the calibrator feeds %s, TensorRT asked for %s" % (batches.input_name, list(names)))
        if state["pointer"] is None:
            state["pointer"] = cuda.alloc(batches.nbytes)
        cuda.to_device(state["pointer"], batch[batches.input_name])
        return [int(state["pointer"])]

    def read_calibration_cache(self) -> Optional[bytes]:
        return policy.read()

    def write_calibration_cache(self, data: Any) -> None:
        policy.write(bytes(data))

    return {"get_batch_size": get_batch_size, "get_batch": get_batch,
            "read_calibration_cache": read_calibration_cache, "write_calibration_cache": write_calibration_cache}


def entropy_calibrator(trt: Any, batches: EncoderBatches, policy: CachePolicy, cuda: Any) -> Any:
    """An instance of a trt.IInt8EntropyCalibrator2 subclass; assign it to config.int8_calibrator and set
    config.set_calibration_profile to the profile whose opt shape is batches.shape."""
    base = trt.IInt8EntropyCalibrator2
    methods = calibrator_methods(batches, policy, cuda)

    def __init__(self) -> None:
        # pybind11 trampolines need the base constructor called explicitly.
        base.__init__(self)

    namespace = dict(methods, __init__=__init__)
    return type("LadonEntropyCalibrator", (base,), namespace)()
