"""The Python API (`from ladon_deploy import Device, Server`), driven by the example in docs/python-api.md as written.

The doc's ```python blocks are extracted and run, so the documented example cannot drift from the code: on this
interpreter, and (the device block) on the Jetson stack's Python 3.6 from the Dockerfile's file set, where the
server half does not exist.
"""
import io
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import edge_install
from ladon_deploy.cli_support import run_command
from ladon_deploy.errors import FrameError, ImageError, LadonError
from ladon_deploy.runtime.cli import PROG, main
from images import make_image

DOC = os.path.join(edge_install.ROOT, "docs", "python-api.md")
README = os.path.join(edge_install.ROOT, "README.md")
PYTHON36 = os.path.join(edge_install.ROOT, ".venv36", "bin", "python")


def doc_blocks(path=DOC):
    with open(path) as handle:
        return re.findall(r"^```python\n(.*?)^```", handle.read(), re.S | re.M)


def run_blocks(blocks, path, workdir):
    """The blocks run in order in one namespace, in the example's folder, as a reader would paste them."""
    namespace = {}
    here = os.getcwd()
    os.chdir(str(workdir))
    try:
        for block in blocks:
            exec(compile(block, path, "exec"), namespace)
    finally:
        os.chdir(here)
    return namespace


@pytest.fixture(scope="module")
def workdir(demo_bundle, tmp_path_factory):
    """A folder as the doc's example expects it: demo-bundle/ and street.png."""
    directory = tmp_path_factory.mktemp("api")
    os.symlink(demo_bundle, str(directory / "demo-bundle"))
    make_image(directory / "street.png", 333, 500, 61)
    return directory


@pytest.fixture(scope="module")
def example(workdir):
    """The doc's blocks run in order in one namespace, in the example's folder."""
    blocks = doc_blocks()
    assert len(blocks) == 2, "docs/python-api.md should hold the device block and the server block"
    return run_blocks(blocks, DOC, workdir)


def test_the_doc_example_gives_equal_payloads_for_a_frame_and_a_file(example, workdir):
    assert isinstance(example["payload"], bytes) and len(example["payload"]) > 100
    assert example["from_frame"].payload == example["from_file"].payload
    assert example["device"].tasks == ("cls", "seg")
    # Independent of the example's own assert: the file's payload is what `ladon-run mobile` writes for it.
    out = str(workdir / "cli.ldn")
    assert run_command(PROG, main, ["mobile", "--bundle", str(workdir / "demo-bundle"), "--image",
                                    str(workdir / "street.png"), "--tasks", "cls,seg", "--out", out]) == 0
    with open(out, "rb") as handle:
        assert handle.read() == example["payload"]


def test_the_readme_example_runs_as_written_with_the_same_payload(example, workdir):
    blocks = [block for block in doc_blocks(README) if "from ladon_deploy import" in block]
    assert blocks, "README.md should show the Python API example"
    namespace = run_blocks(blocks, README, workdir)
    assert namespace["payload"] == example["payload"]  # a numpy frame there, a file here: the same bytes
    assert namespace["document"]["classification"] == example["document"]["classification"]


def test_server_run_returns_the_ladon_run_server_document(example, workdir, capsys):
    path = str(workdir / "example.ldn")
    with open(path, "wb") as handle:
        handle.write(example["payload"])
    capsys.readouterr()
    assert run_command(PROG, main, ["server", "--bundle", str(workdir / "demo-bundle"), "--payload", path,
                                    "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    document = example["document"]
    assert set(document) == set(printed)
    assert all(document[key] == printed[key] for key in printed if key != "timings_ms")
    assert set(document["timings_ms"]) == set(printed["timings_ms"])


def test_every_input_kind_gives_the_same_payload(example, workdir):
    device = example["device"]
    path = str(workdir / "street.png")
    frame = example["frame"]
    with open(path, "rb") as handle:
        encoded = handle.read()
    expected = example["payload"]
    with Image.open(path) as image:
        assert device.run(image).payload == expected
    assert device.run(encoded).payload == expected
    assert device.run(io.BytesIO(encoded)).payload == expected
    with open(path, "rb") as handle:
        assert device.run(handle).payload == expected
    bgr = np.ascontiguousarray(frame[:, :, ::-1])
    assert device.run(bgr, channel_order="BGR").payload == expected
    # The channel order matters: the same array read as RGB is another image.
    assert device.run(bgr).payload != expected
    # A strided view (a crop of a bigger frame) is read by value, not by its memory layout.
    padded = np.zeros((frame.shape[0] + 2, frame.shape[1] + 4, 3), np.uint8)
    padded[1:-1, 2:-2] = frame
    assert device.run(padded[1:-1, 2:-2]).payload == expected


@pytest.mark.parametrize("frame,expected", [
    (np.zeros((8, 8, 3), np.float32), "must be uint8"),
    (np.zeros((8, 8, 3), np.uint16), "must be uint8"),
    (np.zeros((8, 8), np.uint8), "H x W x 3"),
    (np.zeros((8, 8, 4), np.uint8), "H x W x 3"),
    (np.zeros((0, 8, 3), np.uint8), "must have pixels"),
])
def test_wrong_frames_are_value_errors_with_one_line(example, frame, expected):
    with pytest.raises(FrameError, match=expected) as refused:
        example["device"].run(frame)
    assert isinstance(refused.value, ValueError) and isinstance(refused.value, LadonError)
    assert "\n" not in str(refused.value)


def test_channel_order_and_file_mode_are_checked(example, workdir):
    device = example["device"]
    with pytest.raises(FrameError, match="channel_order must be one of RGB, BGR"):
        device.run(example["frame"], channel_order="bgr")
    with pytest.raises(FrameError, match="applies to numpy frames"):
        device.run(str(workdir / "street.png"), channel_order="BGR")
    with pytest.raises(ImageError, match="binary mode"):
        device.run(io.StringIO("not bytes"))


def test_tasks_as_a_string_or_a_list(workdir):
    from ladon_deploy import Device

    bundle = str(workdir / "demo-bundle")
    assert Device(bundle, tasks="cls").tasks == ("cls",)
    assert Device(bundle, tasks=" seg , cls ").tasks == ("cls", "seg")
    assert Device(bundle, tasks=["seg"]).tasks == ("seg",)
    with pytest.raises(LadonError, match="non-empty subset of cls,det,seg"):
        Device(bundle, tasks="cls,depth")


def test_the_server_stage_takes_tasks_as_a_string_too(workdir):
    from ladon_deploy import Device
    from ladon_deploy.bundle import open_bundle
    from ladon_deploy.server.stage import ServerStage

    bundle = str(workdir / "demo-bundle")
    payload = Device(bundle, tasks="cls,seg").run(str(workdir / "street.png")).payload
    stage = ServerStage(open_bundle(bundle), tasks=("cls", "seg"))
    assert set(stage.run(payload, "cls").outputs) == {"cls"}          # one task, not the letters c, l, s
    assert set(stage.run(payload, ["seg"]).outputs) == {"seg"}


IMPORT_CHECK = """
import sys
import ladon_deploy
from ladon_deploy import Device, Server
loaded = sorted(m for m in sys.modules if m.startswith("ladon_deploy."))
heavy = sorted(m for m in ("numpy", "PIL", "onnxruntime", "torch") if m in sys.modules)
print(loaded, heavy)
"""


def test_importing_the_package_imports_neither_half():
    result = subprocess.run([sys.executable, "-c", IMPORT_CHECK], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            universal_newlines=True, timeout=60, cwd=edge_install.ROOT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[] []"


DEVICE_ON_EDGE = """
import sys
exec(compile(open(sys.argv[1]).read(), "device block", "exec"))
assert not [m for m in sys.modules if m.startswith("ladon_deploy.server") or m.split(".")[0] == "torch"]
from ladon_deploy import Server
try:
    Server("demo-bundle")
except ImportError as exc:
    print(exc)
open("edge.ldn", "wb").write(payload)
"""


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists(PYTHON36), reason="no .venv36 (setup.sh found no Python 3.6 interpreter)")
def test_the_device_block_runs_on_the_jetson_python36_install(example, workdir, tmp_path):
    package = edge_install.install_edge(tmp_path / "edge", PYTHON36)
    assert not os.path.exists(os.path.join(package, "ladon_deploy", "server"))
    block = workdir / "device_block.py"
    block.write_text(doc_blocks()[0])
    result = subprocess.run([PYTHON36, "-c", DEVICE_ON_EDGE, str(block)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, universal_newlines=True, timeout=300, cwd=str(workdir),
                            env=dict(os.environ, PYTHONPATH=package))
    assert result.returncode == 0, result.stderr
    assert "needs the server half" in result.stdout
    assert (workdir / "edge.ldn").read_bytes() == example["payload"]
