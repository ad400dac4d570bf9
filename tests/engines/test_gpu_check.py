"""scripts/gpu_check.sh on a machine without a GPU: it runs from the working tree, records what is missing as one
line per step, still times the cpu engine, and writes one JSON document."""
import json
import os
import subprocess

import pytest

from tiny_bundle import make_tiny_bundle

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.slow  # imports torch to record its CUDA: ~15 s on 2 busy cores
def test_gpu_check_records_each_step(tmp_path):
    bundle = make_tiny_bundle(tmp_path / "tiny")
    out = str(tmp_path / "check.json")
    result = subprocess.run([os.path.join(ROOT, "scripts", "gpu_check.sh"), out, "--bundle", bundle,
                             "--repeats", "3", "--budget", "120"], capture_output=True, text=True, timeout=200)
    assert result.returncode == 0, result.stderr
    steps = json.load(open(out))["steps"]
    environment = steps["environment"]["result"]
    assert set(environment) >= {"nvidia_smi", "tensorrt", "onnxruntime", "pycuda", "cuda_binding", "torch"}
    assert "CPUExecutionProvider" in environment["onnxruntime"]["providers"]
    if "missing" in environment["tensorrt"]:
        assert "tensorrt Python package is not installed" in steps["build_server_fp16"]["error"]
    rows = steps["engine_timings"]["result"]
    cpu = [row for row in rows if row["engine"] == "onnxruntime"]
    assert [row["stage"] for row in cpu] == ["body", "head_cls"]
    assert all(row["median_ms"] > 0 and row["ratio_vs_onnxruntime_cpu"] == 1.0 for row in cpu)
    for row in rows:
        assert ("median_ms" in row) != ("not_available" in row)
    assert "torch_cuda_server_half" not in steps  # a given bundle has no torch model to compare with
    assert not os.path.exists(os.path.join(bundle, "engines"))  # the script works on a copy
