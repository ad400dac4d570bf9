"""`ladon-doctor` on this machine (no GPU, no TensorRT): the stack recorded, ONNX Runtime CPU measured and held to
parity, every TensorRT and CUDA path reported absent with its reason; the same under Python 3.6 from the file set
Dockerfile.jetson installs; a path that misses parity fails it; bad input, the timeout and the watchdog.

The TensorRT paths (build, load, run) and the CUDA/TensorRT execution providers are never executed here.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from ladon_deploy.cli_support import run_command
from ladon_deploy.engines import doctor
from ladon_deploy.engines.doctor_cli import PROG, main
from edge_install import copy_edge_files
from tiny_bundle import make_tiny_bundle, write_encoder

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PYTHON36 = os.path.join(ROOT, ".venv36", "bin", "python")


def _run_doctor(python, package_root, tmp_path, *args):
    """`python -m ladon_deploy.engines.doctor_cli --json r.json ARGS` from an empty directory; (result, report)."""
    out = tmp_path / "report.json"
    env = dict(os.environ, PYTHONPATH=str(package_root))
    result = subprocess.run([python, "-m", "ladon_deploy.engines.doctor_cli", "--json", str(out), "--quiet"]
                            + list(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True,
                            env=env, cwd=str(tmp_path), timeout=300)
    return result, (json.loads(out.read_text()) if out.exists() else None)


def _check_report_of_a_machine_without_gpu(result, report):
    assert result.returncode == 0, result.stderr
    stack = report["stack"]
    assert stack["python"] and stack["platform"] and stack["machine"]
    assert "CPUExecutionProvider" in stack["onnxruntime"]["providers"]
    paths = dict((path["path"], path) for path in report["paths"])
    cpu = paths["onnxruntime"]
    assert cpu["status"] == "ok" and list(cpu["stages"]) == report["bundle"]["stages"]
    for figures in cpu["stages"].values():
        assert figures["parity"]["passed"] and figures["parity"]["tolerance"] == {"rel_l2": 1e-4}
        # The reference runs the graph as written: ONNX Runtime's fused CPU graph differs from it by float rounding.
        assert 0 < figures["parity"]["rel_l2"] < 1e-4
        assert figures["median_ms"] > 0 and figures["runs"] == 5
    for engine, provider in (("onnxruntime-cuda", "CUDAExecutionProvider"),
                             ("onnxruntime-tensorrt", "TensorrtExecutionProvider")):
        if provider not in stack["onnxruntime"]["providers"]:
            assert paths[engine]["status"] == "absent"
            assert paths[engine]["reason"].startswith("onnxruntime has no execution provider %s" % provider)
    if stack["tensorrt"]["status"] == "absent":
        assert "tensorrt Python package is not installed" in stack["tensorrt"]["reason"]
        for name in ("tensorrt fp32", "tensorrt fp16"):
            assert paths[name]["status"] == "absent" and paths[name]["reason"] == stack["tensorrt"]["reason"]
    assert stack["cuda_binding"]["status"] == "absent"
    assert ("neither pycuda nor cuda-python is installed" in stack["cuda_binding"]["reason"]
            or stack["cuda_binding"]["reason"].startswith("no usable GPU"))
    assert report["summary"]["ok"] == ["onnxruntime"] and report["summary"]["failed"] == []
    assert "onnxruntime            ok" in result.stdout and "written: " in result.stdout


def test_doctor_on_this_machine_from_any_checkout(tmp_path):
    result, report = _run_doctor(sys.executable, ROOT, tmp_path)
    _check_report_of_a_machine_without_gpu(result, report)
    assert report["bundle"]["source"] == "built-in tiny bundle"
    assert report["stack"]["python"] == "%d.%d.%d" % sys.version_info[:3]


@pytest.mark.skipif(not os.path.exists(PYTHON36), reason="no .venv36 (setup.sh found no Python 3.6 interpreter)")
def test_doctor_on_python36_from_the_jetson_file_set(tmp_path):
    edge = tmp_path / "edge"
    copy_edge_files(str(edge))  # what Dockerfile.jetson copies, data files included
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    result, report = _run_doctor(PYTHON36, edge, run_dir)
    _check_report_of_a_machine_without_gpu(result, report)
    assert report["stack"]["python"].startswith("3.6.")
    assert report["stack"]["onnxruntime"]["version"] == "1.10.0"


def test_a_path_that_misses_parity_fails_the_run_and_the_given_bundle_is_untouched(tmp_path, monkeypatch):
    bundle = make_tiny_bundle(tmp_path / "tiny")
    engines = os.path.join(bundle, "engines", "server")
    os.makedirs(engines)
    with open(os.path.join(engines, "keep.json"), "w") as handle:
        handle.write("{}")
    # ONNX Runtime CPU given an encoder with other weights: what a broken engine looks like to the doctor.
    wrong_encoder = str(tmp_path / "wrong_encoder.onnx")
    write_encoder(wrong_encoder, scale=1.5)
    from ladon_deploy.engines import registry

    real_open_runner = registry.open_runner

    def open_runner(path, engine="onnxruntime", *args, **kwargs):
        if engine == "onnxruntime" and os.path.basename(path) == "encoder.onnx":
            path = wrong_encoder
        return real_open_runner(path, engine, *args, **kwargs)

    monkeypatch.setattr(registry, "open_runner", open_runner)
    out = str(tmp_path / "r.json")
    assert run_command(PROG, main, ["--bundle", bundle, "--json", out, "--quiet", "--repeats", "2"]) == 1
    report = json.load(open(out))
    cpu = report["paths"][0]
    assert cpu["status"] == "failed" and cpu["reason"].startswith("the encoder engine misses parity at 416x416: "
                                                                  "latent relative L2")
    assert cpu["stages"]["encoder"]["status"] == "failed" and cpu["stages"]["body"]["status"] == "ok"
    assert report["summary"]["failed"] == ["onnxruntime"]
    assert report["bundle"]["source"] == os.path.abspath(bundle)
    assert sorted(os.listdir(os.path.join(bundle, "engines"))) == ["server"]
    assert os.listdir(engines) == ["keep.json"]


def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    for argv, message in ((["--bundle", str(tmp_path / "missing")], "missing"),
                          (["--timeout", "0"], "--timeout must be a positive"),
                          (["--repeats", "0"], "--repeats must be at least 1"),
                          (["--json", str(tmp_path / "no" / "r.json")], "does not exist"),
                          (["--json", str(tmp_path)], "is a directory")):
        assert run_command(PROG, main, argv) == 2, argv
        error = capsys.readouterr().err
        assert error.count("\n") == 1 and message in error, (argv, error)
    assert not os.path.exists(str(tmp_path / "r.json"))


def test_no_step_starts_after_the_timeout(tmp_path):
    out = str(tmp_path / "r.json")
    assert run_command(PROG, main, ["--json", out, "--quiet", "--timeout", "0.001"]) == 0
    paths = dict((path["path"], path) for path in json.load(open(out))["paths"])
    assert paths["onnxruntime"]["status"] == "skipped"
    assert paths["onnxruntime"]["reason"] == "not started: the --timeout of 0 s was reached"
    assert all(stage["status"] == "skipped" for stage in paths["onnxruntime"]["stages"].values())


def test_the_watchdog_writes_what_there_is_and_exits_124(tmp_path):
    out = str(tmp_path / "r.json")
    code = ("import time; from ladon_deploy.engines import doctor; report = {'stack': {'python': 'x'}}; "
            "doctor.start_watchdog(0.2, %r, report); time.sleep(30)" % out)
    result = subprocess.run([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            universal_newlines=True, env=dict(os.environ, PYTHONPATH=ROOT), timeout=60)
    assert result.returncode == 124 and "ran past --timeout" in result.stderr
    written = json.load(open(out))
    assert written["stack"] == {"python": "x"} and written["stopped"].startswith("ran past --timeout")


def test_parse_l4t_release():
    assert doctor.parse_l4t_release("# R32 (release), REVISION: 7.1, GCID: 29818004, BOARD: t210ref, EABI: aarch64, "
                                    "DATE: Sat Feb 19 17:05:08 UTC 2022\n") == "R32.7.1"
    assert doctor.parse_l4t_release("# R35 (release), REVISION: 2.1, GCID: 32413640, BOARD: t186ref\n") == "R35.2.1"
    assert doctor.parse_l4t_release("# R36 (release)\n") == "R36"
    assert doctor.parse_l4t_release("") is None
    assert doctor.parse_l4t_release("garbage, REVISION: 1") is None


def test_the_builtin_bundle_is_the_engine_tests_tiny_bundle(tmp_path):
    fresh = make_tiny_bundle(tmp_path / "tiny")
    for name in ("encoder.onnx", "body.onnx", "head_cls.onnx"):
        with open(os.path.join(fresh, name), "rb") as a, open(os.path.join(doctor.BUILTIN_BUNDLE, name), "rb") as b:
            assert a.read() == b.read(), name
    shipped, made = np.load(os.path.join(doctor.BUILTIN_BUNDLE, "entropy.npz")), np.load(os.path.join(fresh,
                                                                                                       "entropy.npz"))
    assert sorted(shipped.files) == sorted(made.files)
    assert all(np.array_equal(shipped[key], made[key]) for key in made.files)
    manifests = [json.load(open(os.path.join(d, "manifest.json"))) for d in (fresh, doctor.BUILTIN_BUNDLE)]
    for manifest in manifests:
        manifest.pop("bundle_id")
        manifest["stages"]["entropy"].pop("sha256")  # np.savez stamps the time into the archive
    assert manifests[0] == manifests[1]


def test_the_console_script_is_declared():
    import tomllib  # (the tests run on the build machine's Python 3.11)

    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as handle:
        project = tomllib.load(handle)
    assert project["project"]["scripts"]["ladon-doctor"] == "ladon_deploy.engines.doctor_cli:entry_point"
    assert "doctor_bundle/*" in project["tool"]["setuptools"]["package-data"]["ladon_deploy.engines"]
    assert "onnx_trt_operators.json" in project["tool"]["setuptools"]["package-data"]["ladon_deploy.engines"]
