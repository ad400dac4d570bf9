"""The edge subset (what a Jetson runs) stays Python 3.6-clean and never imports torch."""
import ast
import os
import shutil
import subprocess
import sys

import pytest

import ladon_deploy

PACKAGE = os.path.dirname(ladon_deploy.__file__)
EDGE_PATHS = ["__init__.py", "errors.py", "cli_support.py", "atomic.py", "bundle.py", "compare.py", "gmac.py", "device",
              "engines", "link", "runtime", "bench/__init__.py", "bench/cli.py", "bench/device_bench.py",
              "bench/device_process.py", "bench/identity.py", "bench/live.py", "bench/memory.py", "bench/power.py",
              "calibration/__init__.py", "calibration/data.py", "calibration/cache.py",
              "calibration/trt_calibrator.py"]
FORBIDDEN = ("torch", "torchvision", "compressai", "sc2bench", "timm")


def _edge_files():
    for relative in EDGE_PATHS:
        path = os.path.join(PACKAGE, relative)
        if os.path.isdir(path):
            for root, _, names in os.walk(path):
                for name in sorted(names):
                    if name.endswith(".py"):
                        yield os.path.join(root, name)
        else:
            yield path


def test_edge_files_import_no_torch_at_module_level():
    offenders = []
    for path in _edge_files():
        tree = ast.parse(open(path).read(), path)
        for node in tree.body:
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += ["%s: %s" % (os.path.relpath(path, PACKAGE), n) for n in names
                          if n.split(".")[0] in FORBIDDEN]
    assert offenders == []


def test_edge_subset_is_python36_clean():
    vermin = shutil.which("vermin") or os.path.join(os.path.dirname(sys.executable), "vermin")
    if not os.path.exists(vermin):
        pytest.fail("vermin is not installed (it is in the test extra)")
    files = list(_edge_files())
    result = subprocess.run([vermin, "--no-tips", "--violations", "--target=3.6-"] + files,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_python36_idioms_stay_in_the_edge_subset():
    """Type comments and `(object)` bases exist for Python 3.6; code that never runs there uses annotations."""
    edge = set(_edge_files())
    offenders = []
    for root, _, names in os.walk(PACKAGE):
        for name in sorted(names):
            path = os.path.join(root, name)
            if not name.endswith(".py") or path in edge:
                continue
            for number, line in enumerate(open(path).read().splitlines(), 1):
                code = line.split("#", 1)[0]
                if ("# type:" in line and "# type: ignore" not in line) or code.rstrip().endswith("(object):"):
                    offenders.append("%s:%d: %s" % (os.path.relpath(path, PACKAGE), number, line.strip()))
    assert offenders == []
