"""The device path on the device's own stack: Python 3.6.15, numpy 1.19.5, Pillow 8.4.0, onnxruntime 1.10.0.

JetPack 4.6 (the Nano's last) ships Python 3.6, and onnxruntime's last cp36 wheel is 1.10.0. setup.sh builds
.venv36 with exactly those where a Python 3.6 interpreter exists; this test copies the package, compiles the native
coder with gcc the way Dockerfile.jetson does, and runs `ladon-run mobile` and `server` there. The payload must be
byte-identical to the one this interpreter produces. (x86_64 here; the Jetson's aarch64 build is not executed.)
"""
import os
import shutil
import subprocess

import pytest

from ladon_deploy.cli_support import run_command
from ladon_deploy.runtime.cli import PROG, main
from images import make_image

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PYTHON36 = os.path.join(ROOT, ".venv36", "bin", "python")


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists(PYTHON36), reason="no .venv36 (setup.sh found no Python 3.6 interpreter)")
def test_mobile_runs_on_python36_with_identical_payload(demo_bundle, tmp_path):
    package = tmp_path / "edge"
    shutil.copytree(os.path.join(ROOT, "ladon_deploy"), str(package / "ladon_deploy"),
                    ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    config = subprocess.run([PYTHON36, "-c", "import sysconfig; print(sysconfig.get_config_var('INCLUDEPY')); "
                                             "print(sysconfig.get_config_var('EXT_SUFFIX'))"],
                            capture_output=True, text=True, check=True).stdout.split()
    include, suffix = config
    device = package / "ladon_deploy" / "device"
    subprocess.run(["gcc", "-O3", "-shared", "-fPIC", "-I" + include, str(device / "_rans.c"), "-o",
                    str(device / ("_rans" + suffix))], check=True, capture_output=True)
    image = make_image(tmp_path / "street.png", 333, 500, 36)
    # Run from the copy, so that the repository's own package (built for this interpreter) is not on the path.
    env = dict(os.environ, PYTHONPATH=str(package))
    edge = {"capture_output": True, "text": True, "env": env, "cwd": str(tmp_path), "timeout": 300}
    edge_payload = tmp_path / "edge.ldn"
    mobile = subprocess.run([PYTHON36, "-m", "ladon_deploy.runtime.cli", "mobile", "--bundle", demo_bundle,
                             "--image", image, "--out", str(edge_payload)], **edge)
    assert mobile.returncode == 0, mobile.stderr
    version = subprocess.run([PYTHON36, "-c", "import sys, numpy, onnxruntime; "
                                              "from ladon_deploy.device.entropy import default_backend; "
                                              "print(sys.version_info[:2], numpy.__version__, onnxruntime.__version__,"
                                              " default_backend())"],
                             check=True, **edge).stdout
    assert version.strip() == "(3, 6) 1.19.5 1.10.0 native"

    here_payload = tmp_path / "here.ldn"
    assert run_command(PROG, main, ["mobile", "--bundle", demo_bundle, "--image", image, "--out",
                                    str(here_payload)]) == 0
    assert edge_payload.read_bytes() == here_payload.read_bytes()

    # The server half need not run on Python 3.6; the payload the 3.6 device wrote is served here.
    assert run_command(PROG, main, ["server", "--bundle", demo_bundle, "--payload", str(edge_payload),
                                    "--json"]) == 0
