"""The device's calibration modules on the Nano's stack (.venv36: Python 3.6.15, numpy 1.19): they import there
without torch, split a folder exactly as this interpreter does, and write the same cache bytes."""
import json
import os
import subprocess

import pytest

from ladon_deploy.calibration import cache, data

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PYTHON36 = os.path.join(ROOT, ".venv36", "bin", "python")

SCRIPT = """
import json, sys
from ladon_deploy.calibration import cache, data, trt_calibrator
split = data.split_images(sys.argv[1], 5, 7, 3)
print(json.dumps({"calibration": split.calibration, "held_out": split.held_out,
                  "cache": cache.format_cache({"image": 0.0208, "/encoder/encoder.0/Conv_output_0": 0.5},
                                              "8.2.1").decode("ascii"),
                  "torch": any(m.split(".")[0] == "torch" for m in sys.modules)}))
"""


@pytest.mark.skipif(not os.path.exists(PYTHON36), reason="no .venv36 (setup.sh found no Python 3.6 interpreter)")
def test_calibration_edge_modules_run_on_python36(photos):
    result = subprocess.run([PYTHON36, "-c", SCRIPT, photos], capture_output=True, text=True, timeout=120,
                            cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT))
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    split = data.split_images(photos, 5, 7, 3)
    assert document["calibration"] == split.calibration and document["held_out"] == split.held_out
    assert document["cache"].encode("ascii") == cache.format_cache(
        {"image": 0.0208, "/encoder/encoder.0/Conv_output_0": 0.5}, "8.2.1")
    assert document["torch"] is False
