"""The device's calibrator: the batches it feeds and its cache handling. TensorRT itself is not installed here: the
methods are exercised as TensorRT calls them, over a host-memory stand-in for the CUDA binding; the trt subclass
adapter (`entropy_calibrator`) has never run."""
import numpy as np
import pytest

from ladon_deploy.bundle import open_bundle
from ladon_deploy.calibration import cache, data
from ladon_deploy.calibration.trt_calibrator import CachePolicy, EncoderBatches, calibrator_methods
from ladon_deploy.errors import EngineError


class HostMemory(object):
    """Device memory kept in host arrays: what CudaBinding.alloc / to_device would hold."""

    def __init__(self):
        self.buffers = {}

    def alloc(self, nbytes):
        pointer = 4096 * (len(self.buffers) + 1)
        self.buffers[pointer] = bytearray(nbytes)
        return pointer

    def to_device(self, pointer, host):
        raw = np.ascontiguousarray(host).tobytes()
        assert len(raw) == len(self.buffers[pointer])
        self.buffers[pointer][:] = raw


def test_batches_are_the_calibration_split_padded_to_the_profile(demo_bundle, photos):
    bundle = open_bundle(demo_bundle, verify=False)
    batches = EncoderBatches(bundle, photos, count=3, shape=(1, 3, 416, 416), seed=5, progress=None)
    split = data.split_images(photos, 3, 5)
    assert batches.split.calibration == split.calibration
    fed = []
    while True:
        batch = batches.next_batch()
        if batch is None:
            break
        fed.append(batch["image"])
    assert len(fed) == 3
    for tensor, path in zip(fed, split.calibration):
        reference = data.preprocess_image(bundle, path).tensor
        assert tensor.shape == (1, 3, 416, 416) and tensor.flags["C_CONTIGUOUS"]
        h, w = reference.shape[2:]
        assert np.array_equal(tensor[:, :, :h, :w], reference) and not tensor[:, :, h:, :].any()


def test_methods_feed_one_buffer_then_stop(demo_bundle, photos, tmp_path):
    bundle = open_bundle(demo_bundle, verify=False)
    batches = EncoderBatches(bundle, photos, count=2, shape=(1, 3, 416, 416), progress=None)
    memory = HostMemory()
    methods = calibrator_methods(batches, CachePolicy(str(tmp_path / "c.cache"), "8.5.2"), memory)
    assert methods["get_batch_size"](None) == 1
    first = methods["get_batch"](None, ["image"])
    second = methods["get_batch"](None, ["image"])
    assert first == second and len(memory.buffers) == 1
    assert methods["get_batch"](None, ["image"]) is None
    assert methods["read_calibration_cache"](None) is None


def test_wrong_input_names_are_refused(demo_bundle, photos, tmp_path):
    bundle = open_bundle(demo_bundle, verify=False)
    batches = EncoderBatches(bundle, photos, count=1, shape=(1, 3, 416, 416), progress=None)
    methods = calibrator_methods(batches, CachePolicy(str(tmp_path / "c.cache"), "8.5.2"), HostMemory())
    with pytest.raises(EngineError):
        methods["get_batch"](None, ["latent_hat"])
    with pytest.raises(EngineError):
        EncoderBatches(bundle, photos, count=1, shape=(2, 3, 416, 416), progress=None)


def test_existing_cache_is_reused_under_the_running_version(tmp_path):
    path = str(tmp_path / "encoder.int8.calibration.cache")
    cache.write_cache(path, {"image": 0.02, "/encoder/encoder.0/Conv_output_0": 0.5}, "8.5")
    policy = CachePolicy(path, "8.5.2.2")
    data_read = policy.read()
    version, algorithm, scales = cache.parse_cache(data_read)
    assert version == 8502 and algorithm == "EntropyCalibration2" and len(scales) == 2
    written = cache.format_cache({"image": 0.03}, "8.5.2")
    policy.write(written)
    assert open(path, "rb").read() == written
    with pytest.raises(cache.CacheError):
        policy.write(b"not a cache")
