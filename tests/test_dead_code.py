"""Nothing in the package is dead: vulture (min confidence 80) reports no unused code."""
import os
import shutil
import subprocess
import sys

import pytest

import ladon_deploy

PACKAGE = os.path.dirname(ladon_deploy.__file__)


def test_vulture_finds_no_dead_code():
    vulture = shutil.which("vulture") or os.path.join(os.path.dirname(sys.executable), "vulture")
    if not os.path.exists(vulture):
        pytest.fail("vulture is not installed (it is in the test extra)")
    result = subprocess.run([vulture, PACKAGE, "--min-confidence", "80"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
