"""The TensorRT layer without TensorRT: version dispatch, the per-generation refusals, dtypes, buffer shapes, the
machine's identity, the install refusals; and a check that each TensorRT call sits behind the dispatch flag that
keeps it inside the releases whose binding sources have it (tables extracted per release: api_check)."""
import os
import subprocess
import sys
import tempfile

import numpy as np
import pytest

from ladon_deploy.engines import tensorrt_api, tensorrt_runner
from ladon_deploy.engines.tensorrt_api import Generation, TensorSpec
from ladon_deploy.errors import EngineError


@pytest.mark.parametrize("version, name, pool, explicit_batch, weak", [
    ("8.2.1.8", "bindings", False, True, True),      # JetPack 4.6
    ("8.4.3.1", "bindings", True, True, True),
    ("8.5.2.2", "named-tensors", True, True, True),  # JetPack 5.1
    ("8.6.1.6", "named-tensors", True, True, True),
    ("10.0.1.6", "named-tensors", True, False, True),
    ("10.13.3.9", "named-tensors", True, False, True),
    ("11.1.0", "strongly-typed", True, False, False),
])
def test_generation_per_release(version, name, pool, explicit_batch, weak):
    generation = Generation(version)
    assert (generation.name, generation.memory_pool_limit, generation.explicit_batch_flag, generation.weak_typing) \
        == (name, pool, explicit_batch, weak)
    assert generation.named_tensors == (name != "bindings")


@pytest.mark.parametrize("version, message", [("7.1.3", "older than 8.2"), ("8.0.1.6", "JetPack 4.6.1 or later"),
                                              ("12.0.0", "newer than this toolkit"),
                                              ("trt", "not a TensorRT version")])
def test_unknown_generations_are_refused(version, message):
    with pytest.raises(EngineError, match=message):
        Generation(version)


def test_precision_refusals_per_generation():
    Generation("10.0.1").check_precision("fp16")
    with pytest.raises(EngineError, match="strongly typed.*modelopt"):
        Generation("11.0.0").check_precision("fp16")
    with pytest.raises(EngineError, match="Q/DQ"):
        Generation("11.0.0").check_precision("int8")
    Generation("11.0.0").check_precision("fp32")
    with pytest.raises(EngineError, match="DLA cores run fp16 or int8"):
        Generation("8.5.2").check_precision("fp32", dla_core=0)


def test_version_ranges():
    assert tensorrt_api.version_in_range("8.5.2.2", ("8.5", "8.5"))
    assert not tensorrt_api.version_in_range("8.6.1", ("8.5", "8.5"))
    assert tensorrt_api.version_in_range("10.13.3", ("8.5", "11.99"))
    assert not tensorrt_api.version_in_range("8.2.1", None)


def test_dtypes():
    assert tensorrt_api.numpy_dtype("DataType.FLOAT") == np.float32
    assert tensorrt_api.numpy_dtype("DataType.HALF") == np.float16
    assert tensorrt_api.numpy_dtype("DataType.INT64") == np.int64
    with pytest.raises(EngineError, match="BF16 has no numpy"):
        tensorrt_api.numpy_dtype("DataType.BF16")


def test_feeds_are_converted_and_checked_against_engine_and_profile():
    image = TensorSpec("image", True, np.float32, (1, 3, -1, -1))
    profile = {"image": {"min": [1, 3, 32, 32], "opt": [1, 3, 416, 416], "max": [1, 3, 416, 416]}}
    tensorrt_runner.check_shape("image", (1, 3, 320, 416), image, profile)
    with pytest.raises(EngineError, match="outside the engine's optimization profile"):
        tensorrt_runner.check_shape("image", (1, 3, 448, 416), image, profile)
    with pytest.raises(EngineError, match="dimension 1 must be 3"):
        tensorrt_runner.check_shape("image", (1, 4, 320, 416), image, profile)
    with pytest.raises(EngineError, match="4 dimensions"):
        tensorrt_runner.check_shape("image", (3, 320, 416), image, profile)
    # TensorRT 8.x's parser makes int64 inputs int32: values are converted, and refused where they do not fit.
    size = TensorSpec("image_size", True, np.int32, (2,))
    converted = tensorrt_runner.coerce_feed(size, np.asarray([352, 416], np.int64))
    assert converted.dtype == np.int32 and converted.tolist() == [352, 416]
    with pytest.raises(EngineError, match="outside int32"):
        tensorrt_runner.coerce_feed(size, np.asarray([1 << 40, 1], np.int64))
    with pytest.raises(EngineError, match="must be integer"):
        tensorrt_runner.coerce_feed(size, np.asarray([1.5, 2.0]))
    half = tensorrt_runner.coerce_feed(TensorSpec("x", True, np.float16, (2, 2)), np.ones((2, 2), np.float64).T)
    assert half.dtype == np.float16 and half.flags["C_CONTIGUOUS"]


def test_output_buffers_follow_the_context_shapes():
    specs = [TensorSpec("image", True, np.float32, (1, 3, -1, -1)),
             TensorSpec("latent", False, np.float16, (1, 24, -1, -1))]
    buffers = tensorrt_runner.output_buffers(specs, {"latent": (1, 24, 103, 79)})
    assert list(buffers) == ["latent"]
    assert buffers["latent"].shape == (1, 24, 103, 79) and buffers["latent"].dtype == np.float16
    assert buffers["latent"].nbytes == 24 * 103 * 79 * 2
    with pytest.raises(EngineError, match="data-dependent shape.*ONNX Runtime"):
        tensorrt_runner.output_buffers(specs, {"latent": (-1, 4)})


def test_which_target_this_machine_is():
    assert tensorrt_api.this_target("aarch64", "NVIDIA Jetson Nano Developer Kit") == "jetson-nano"
    assert tensorrt_api.this_target("aarch64", "NVIDIA Jetson Xavier NX Developer Kit") == "xavier-nx"
    assert tensorrt_api.this_target("x86_64") == "server"
    with pytest.raises(EngineError, match="AGX Orin.*not a Jetson this toolkit has a target for"):
        tensorrt_api.this_target("aarch64", "NVIDIA Jetson AGX Orin Developer Kit")


def _missing(module):
    try:
        __import__(module)
        return False
    except ImportError:
        return True


@pytest.mark.skipif(not _missing("tensorrt"), reason="tensorrt is installed here")
def test_missing_tensorrt_says_what_to_install_per_jetpack():
    with pytest.raises(EngineError, match="not installed .*JetPack 4.6.1-4.6.x .*Python 3.6 .*R32.6.1, has 8.0.1"):
        tensorrt_api.import_tensorrt("jetson-nano")
    with pytest.raises(EngineError, match="TensorRT 8.5 ships with JetPack 5.1 .*Python 3.8"):
        tensorrt_api.import_tensorrt("xavier-nx")


def _no_cuda_binding():
    return _missing("pycuda.driver") and _missing("cuda.bindings.runtime") and _missing("cuda.cudart")


@pytest.mark.skipif(not _no_cuda_binding(), reason="a CUDA binding is installed")
def test_missing_cuda_binding_says_what_to_install():
    with pytest.raises(EngineError, match="neither pycuda nor cuda-python.*pip3 install pycuda on JetPack 4.6"):
        tensorrt_api.find_cuda_binding("jetson-nano")
    with pytest.raises(EngineError, match="pip install cuda-python"):
        tensorrt_api.open_cuda("server")


def test_each_generation_reaches_the_calls_its_tables_have():
    """The per-generation dispatch, checked against NVIDIA's binding sources of each release (api_check's strict
    stand-ins, generated from engines/api_tables/): 8.2 reaches the bindings calls only, 10.x the named-tensor calls
    only, 11.x neither FP16/INT8 flags nor a calibrator. (This replaces a hand-written list of 25 calls.)"""
    from ladon_deploy.engines import api_check

    binding = api_check.cuda_bindings()[0]
    reached = {}
    with tempfile.TemporaryDirectory() as scratch:
        onnx_path = os.path.join(scratch, "stage.onnx")
        with open(onnx_path, "wb") as handle:
            handle.write(b"read as bytes only")
        for version in ("8.2.1", "10.16", "11.1"):
            result = api_check.drive_tensorrt(api_check.load_table("tensorrt-%s.json" % version), binding, onnx_path)
            assert result.errors == [], result.errors
            reached[version] = {name for _, name in result.sites}
    assert {"ICudaEngine.num_bindings", "IExecutionContext.execute_async_v2",
            "IBuilderConfig.max_workspace_size"} <= reached["8.2.1"]
    assert not {n for n in reached["8.2.1"] if "tensor" in n.split(".")[-1] or n.endswith("_v3")}
    assert {"ICudaEngine.num_io_tensors", "IExecutionContext.execute_async_v3",
            "IBuilderConfig.set_memory_pool_limit", "IBuilderConfig.int8_calibrator"} <= reached["10.16"]
    assert not {n for n in reached["10.16"] if "binding" in n or n.endswith("_v2") or "workspace" in n}
    assert not {n for n in reached["11.1"] if "calibrat" in n or "EXPLICIT_BATCH" in n or n.endswith(("FP16", "INT8"))}


BLOCK_TORCH = (
    "import sys\n"
    "class Block(object):\n"
    "    def find_spec(self, name, path=None, target=None):\n"
    "        if name.split('.')[0] in ('torch', 'torchvision', 'compressai', 'sc2bench'):\n"
    "            raise ImportError('blocked: ' + name)\n"
    "sys.meta_path.insert(0, Block())\n"
    "import ladon_deploy.engines.build, ladon_deploy.engines.registry, ladon_deploy.engines.tensorrt_runner\n"
    "import ladon_deploy.engines.sidecar, ladon_deploy.engines.parity, ladon_deploy.engines.tensorrt_api\n"
    "print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))\n"
)


def test_builder_and_runner_import_without_torch():
    result = subprocess.run([sys.executable, "-c", BLOCK_TORCH], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_cuda_python_without_a_gpu_is_one_line():
    """torch's CUDA wheels bring cuda-bindings along: where it is here, its real calls run up to the missing driver."""
    if _missing("cuda.bindings.runtime") and _missing("cuda.cudart"):
        pytest.skip("cuda-python is not installed")
    if not _missing("pycuda.driver"):
        pytest.skip("pycuda is installed and would be chosen first")
    assert tensorrt_api.find_cuda_binding("server") is tensorrt_api.CudaPythonBinding
    try:
        binding = tensorrt_api.open_cuda("server")
    except EngineError as exc:
        assert str(exc).startswith("cuda-python cannot open GPU 0: CUDA runtime error cuda") and "\n" not in str(exc)
    else:  # a machine with a GPU
        name, capability = binding.gpu()
        binding.close()
        assert name and capability.count(".") == 1
