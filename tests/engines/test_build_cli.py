"""ladon-build from the command line: --check documents and tables, and one line + exit 2 for every bad input."""
import json
import os
import subprocess
import sys

import onnx
import pytest
from onnx import TensorProto, helper

from ladon_deploy import __version__
from cli_helpers import command_runner
from ladon_deploy.engines.cli import PROG, main


_run, _one_line_error = command_runner(PROG, main)


@pytest.fixture(scope="module")
def nonzero_onnx(tmp_path_factory):
    graph = helper.make_graph([helper.make_node("NonZero", ["x"], ["y"], name="nz")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                              [helper.make_tensor_value_info("y", TensorProto.INT64, [1, None])])
    path = str(tmp_path_factory.mktemp("onnx") / "boxes_filter.onnx")
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    return path


def test_version(capsys):
    code, out, _ = _run(["--version"], capsys)
    assert code == 0 and out.strip() == "%s %s" % (PROG, __version__)


def test_check_onnx_json_document_per_version(nonzero_onnx, capsys):
    code, out, err = _run(["--target", "jetson-nano", "--check", "--onnx", nonzero_onnx, "--json"], capsys)
    assert code == 0, err
    document = json.loads(out)
    assert document["target"] == "jetson-nano" and document["trt"] == "8.2"
    (stage,) = document["stages"]
    assert stage["stage"] == "boxes_filter" and stage["file"] == nonzero_onnx and stage["verdict"] == "onnxruntime"
    assert [(f["op"], f["node"]) for f in stage["unsupported"]] == [("NonZero", "nz")]

    code, out, err = _run(["--target", "jetson-nano", "--trt", "8.5", "--check", "--onnx", nonzero_onnx, "--json"],
                          capsys)
    assert code == 0 and json.loads(out)["stages"][0]["verdict"] == "tensorrt", err


def test_check_table(nonzero_onnx, capsys):
    code, out, err = _run(["--target", "xavier-nx", "--trt", "8.4", "--check", "--onnx", nonzero_onnx], capsys)
    assert code == 0, err
    assert "TensorRT 8.4" in out and "8.4-GA" in out
    row = [line for line in out.splitlines() if line.startswith("boxes_filter ")][0]
    assert row.split()[1:3] == ["onnxruntime", "1"]
    assert "NonZero x1 (nz)" in out


@pytest.mark.parametrize("argv, pattern", [
    (["--check", "--onnx", "x.onnx"], "--target is required"),
    (["--target", "jetson-tx2", "--check", "--onnx", "x.onnx"], "unknown target"),
    (["--target", "jetson-nano", "--check"], "--check needs --bundle DIR or --onnx FILE"),
    (["--target", "jetson-nano", "--check", "--onnx", "/nonexistent/model.onnx"], "ONNX file not found"),
    (["--target", "jetson-nano", "--check", "--bundle", "/nonexistent/bundle"], "bundle directory not found"),
    (["--target", "jetson-nano", "--bundle", "/nonexistent/bundle"], "bundle directory not found"),
    (["--target", "server", "--check", "--trt", "7.1", "--onnx", "x.onnx"], "8.2 and later"),
    (["--target", "server", "--check", "--trt", "latest", "--onnx", "x.onnx"], "TensorRT version"),
    (["--target", "cpu", "--check", "--onnx", "x.onnx"], "--trt VERSION"),
    (["--target", "server", "--precision", "bf16"], "invalid choice"),
    (["--target", "server", "--onnx", "x.onnx"], "go with --check"),
])
def test_refusals_are_one_line(argv, pattern, capsys):
    code, _, err = _run(argv, capsys)
    _one_line_error(code, err, pattern)


def test_build_refusals_before_anything_is_built(tmp_path, capsys):
    bundle = str(tmp_path)  # refusals come before the bundle is read
    code, _, err = _run(["--target", "jetson-nano", "--bundle", bundle, "--precision", "int8"], capsys)
    _one_line_error(code, err, "--precision fp16")
    code, _, err = _run(["--target", "jetson-nano", "--bundle", bundle, "--dla", "0"], capsys)
    _one_line_error(code, err, "has no DLA cores")
    code, _, err = _run(["--target", "xavier-nx", "--bundle", bundle, "--dla", "2"], capsys)
    _one_line_error(code, err, "DLA cores 0,1, not 2")
    code, _, err = _run(["--target", "server", "--bundle", bundle, "--workspace-mb", "0"], capsys)
    _one_line_error(code, err, "--workspace-mb")
    code, _, err = _run(["--target", "xavier-nx", "--bundle", bundle, "--precision", "int8", "--calib-count", "0"],
                        capsys)
    _one_line_error(code, err, "--calib-count")
    code, _, err = _run(["--target", "xavier-nx", "--bundle", bundle, "--precision", "int8", "--calib-images",
                         str(tmp_path / "no-such-dir")], capsys)
    _one_line_error(code, err, "calibration image directory not found")
    code, _, err = _run(["--target", "server", "--bundle", bundle, "--calib-images", bundle], capsys)
    _one_line_error(code, err, "--precision int8")
    code, _, err = _run(["--target", "server", "--bundle", bundle, "--trt", "8.6"], capsys)
    _one_line_error(code, err, "--trt is for --check")


def test_unreadable_onnx_is_one_line(tmp_path, capsys):
    path = tmp_path / "broken.onnx"
    path.write_bytes(b"\x08\x07not a protobuf at all" * 10)
    code, _, err = _run(["--target", "server", "--check", "--onnx", str(path)], capsys)
    _one_line_error(code, err, "cannot read ONNX file")


def test_missing_onnx_package_is_one_line(nonzero_onnx, monkeypatch, capsys):
    for name in [name for name in sys.modules if name == "onnx" or name.startswith("onnx.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "onnx", None)
    code, _, err = _run(["--target", "server", "--check", "--onnx", nonzero_onnx], capsys)
    _one_line_error(code, err, "pip install onnx")


def test_check_runs_with_torch_unimportable(nonzero_onnx):
    code = ("import sys; sys.modules['torch'] = None\n"
            "from ladon_deploy.cli_support import run_command\n"
            "from ladon_deploy.engines.cli import PROG, main\n"
            "sys.exit(run_command(PROG, main, ['--target', 'xavier-nx', '--check', '--json', '--onnx', %r]))\n"
            % nonzero_onnx)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["stages"][0]["verdict"] == "tensorrt"


def _tiny_bundle_with_reciprocal(directory):
    """The miniature bundle, its encoder ending in Reciprocal (absent from TensorRT 8.2's parser)."""
    from tiny_bundle import make_tiny_bundle, write_manifest

    bundle = make_tiny_bundle(directory)
    path = os.path.join(bundle, "encoder.onnx")
    model = onnx.load(path)
    latent = model.graph.output[0].name
    for node in model.graph.node:
        node.output[:] = [name + "_pre" if name == latent else name for name in node.output]
    model.graph.node.append(helper.make_node("Reciprocal", [latent + "_pre"], [latent], name="inverse"))
    onnx.save(model, path)
    write_manifest(bundle)
    return bundle


def test_check_bundle_stages_per_target(tmp_path, capsys):
    bundle = _tiny_bundle_with_reciprocal(tmp_path / "tiny")
    code, out, err = _run(["--target", "jetson-nano", "--check", "--bundle", bundle, "--json"], capsys)
    assert code == 0, err
    (encoder,) = json.loads(out)["stages"]
    assert encoder["stage"] == "encoder" and encoder["verdict"] == "onnxruntime"
    assert encoder["file"] == os.path.join(bundle, "encoder.onnx")
    assert [(f["op"], f["node"]) for f in encoder["unsupported"]] == [("Reciprocal", "inverse")]

    code, out, err = _run(["--target", "xavier-nx", "--check", "--bundle", bundle, "--json"], capsys)
    assert code == 0 and json.loads(out)["stages"][0]["verdict"] == "tensorrt", err
    # The server target runs body and heads; this bundle has only the classification head.
    code, out, err = _run(["--target", "server", "--check", "--bundle", bundle, "--json"], capsys)
    assert code == 0, err
    assert [(s["stage"], s["verdict"]) for s in json.loads(out)["stages"]] == [("body", "tensorrt"),
                                                                              ("head_cls", "tensorrt")]

    with open(os.path.join(bundle, "body.onnx"), "ab") as handle:
        handle.write(b"tampered")
    code, _, err = _run(["--target", "server", "--check", "--bundle", bundle], capsys)
    _one_line_error(code, err, "does not match its sha256")


@pytest.mark.slow
def test_check_demo_bundle_every_target(demo_bundle, capsys):
    for target, extra, stages in (("jetson-nano", [], ["encoder"]), ("xavier-nx", [], ["encoder"]),
                                  ("server", [], ["body", "head_cls", "head_det", "head_seg"]),
                                  ("cpu", ["--trt", "10.0"], ["encoder", "body", "head_cls", "head_det", "head_seg"])):
        code, out, err = _run(["--target", target, "--check", "--bundle", demo_bundle, "--json"] + extra, capsys)
        assert code == 0, err
        document = json.loads(out)
        assert [stage["stage"] for stage in document["stages"]] == stages
        for stage in document["stages"]:
            assert stage["verdict"] == ("onnxruntime" if stage["unsupported"] else "tensorrt")
            assert os.path.isfile(stage["file"])


@pytest.mark.slow
def test_build_without_tensorrt_is_one_line(demo_bundle, capsys):
    code, _, err = _run(["--target", "server", "--bundle", demo_bundle, "--precision", "fp16"], capsys)
    _one_line_error(code, err, "tensorrt")
