"""ladon-run from the command line: the three subcommands, and one line + exit code 2 for every bad input."""
import json
import os
import shutil
import subprocess
import sys

import pytest

from ladon_deploy.cli_support import run_command
from ladon_deploy.runtime.cli import PROG, main
from images import make_image


def _run(argv, capsys):
    code = run_command(PROG, main, argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _one_line_error(code, err, pattern):
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(PROG + ": error"), err
    assert pattern in lines[0], lines[0]


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    return make_image(tmp_path_factory.mktemp("img") / "street.png", 333, 500, 21)


@pytest.fixture(scope="module")
def payload(demo_bundle, image, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("payload") / "street.ldn")
    assert run_command(PROG, main, ["mobile", "--bundle", demo_bundle, "--image", image, "--out", out]) == 0
    return out


def test_mobile_prints_size_and_stage_timings(demo_bundle, image, tmp_path, capsys):
    out = str(tmp_path / "p.ldn")
    code, stdout, err = _run(["mobile", "--bundle", demo_bundle, "--image", image, "--out", out], capsys)
    assert code == 0, err
    assert "%d bytes" % os.path.getsize(out) in stdout
    for stage in ("preprocess", "encoder", "quantize", "entropy_encode"):
        assert stage in stdout


def test_server_json_document(demo_bundle, payload, tmp_path, capsys):
    mask = str(tmp_path / "mask.png")
    code, stdout, err = _run(["server", "--bundle", demo_bundle, "--payload", payload, "--json", "--mask-out", mask],
                             capsys)
    assert code == 0, err
    document = json.loads(stdout)
    top5 = document["classification"]["top5"]
    assert len(top5) == 5 and all(isinstance(name, str) for _, _, name in top5)
    assert all(top5[i][1] >= top5[i + 1][1] for i in range(4))
    for box in document["detection"]:
        x1, y1, x2, y2 = box["box"]
        assert 0 <= x1 <= x2 <= 500 and 0 <= y1 <= y2 <= 333 and box["name"]
    assert sum(document["segmentation"]["pixel_counts"].values()) == 333 * 500
    from PIL import Image

    with Image.open(mask) as png:
        assert png.mode == "P" and png.size == (500, 333)


def test_split_reports_link_and_end_to_end(demo_bundle, image, capsys):
    code, stdout, err = _run(["split", "--bundle", demo_bundle, "--image", image, "--rate", "37.5kbps", "--rtt",
                              "20ms", "--json", "--tasks", "cls,seg"], capsys)
    assert code == 0, err
    document = json.loads(stdout)
    link = document["link"]
    assert link["transfer_ms"] == pytest.approx(link["payload_bytes"] * 8 / 37500 * 1000 + 20, abs=1e-3)
    stages = sum(document["timings_ms"]["mobile"].values()) + sum(document["timings_ms"]["server"].values())
    assert document["timings_ms"]["end_to_end"] == pytest.approx(stages + link["transfer_ms"], abs=0.01)
    assert "detection" not in document and "segmentation" in document
    code, stdout, err = _run(["split", "--bundle", demo_bundle, "--image", image], capsys)
    assert code == 0 and "end-to-end" in stdout and "transfer" in stdout


def test_unreadable_image(demo_bundle, tmp_path, capsys):
    bad = tmp_path / "photo.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0garbage")
    code, _, err = _run(["mobile", "--bundle", demo_bundle, "--image", str(bad), "--out", str(tmp_path / "o")], capsys)
    _one_line_error(code, err, "photo.jpg")
    assert not (tmp_path / "o").exists()


def test_wrong_bundle(tmp_path, image, capsys):
    code, _, err = _run(["mobile", "--bundle", str(tmp_path), "--image", image, "--out", str(tmp_path / "o")], capsys)
    _one_line_error(code, err, "not a bundle")


def test_payload_from_another_bundle(demo_bundle, payload, tmp_path, capsys):
    other = tmp_path / "other-bundle"
    shutil.copytree(demo_bundle, str(other))
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["bundle_id"] = "0badf00d"
    (other / "manifest.json").write_text(json.dumps(manifest))
    code, _, err = _run(["server", "--bundle", str(other), "--payload", payload], capsys)
    _one_line_error(code, err, "produced for bundle")


def test_corrupted_payload(demo_bundle, payload, tmp_path, capsys):
    data = bytearray(open(payload, "rb").read())
    data[len(data) // 2] ^= 0x10
    corrupted = tmp_path / "corrupted.ldn"
    corrupted.write_bytes(bytes(data))
    code, _, err = _run(["server", "--bundle", demo_bundle, "--payload", str(corrupted)], capsys)
    _one_line_error(code, err, "CRC")
    truncated = tmp_path / "truncated.ldn"
    truncated.write_bytes(bytes(data[:20]))
    code, _, err = _run(["server", "--bundle", demo_bundle, "--payload", str(truncated)], capsys)
    _one_line_error(code, err, "truncated")
    code, _, err = _run(["server", "--bundle", demo_bundle, "--payload", str(tmp_path / "absent.ldn")], capsys)
    _one_line_error(code, err, "not found")


def test_bad_options(demo_bundle, image, capsys):
    code, _, err = _run(["split", "--bundle", demo_bundle, "--image", image, "--rate", "fast"], capsys)
    _one_line_error(code, err, "cannot parse rate")
    code, _, err = _run(["split", "--bundle", demo_bundle, "--image", image, "--tasks", "cls,pose"], capsys)
    _one_line_error(code, err, "cls,det,seg")
    code, _, err = _run(["teleport"], capsys)
    _one_line_error(code, err, "invalid choice")


BLOCK_TORCH = """
import sys
class Block(object):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('torch', 'torchvision'):
            raise ImportError('blocked for this test: ' + name)
        return None
    find_module = None
sys.meta_path.insert(0, Block())
from ladon_deploy.runtime.cli import main
from ladon_deploy.cli_support import run_command
code = run_command('ladon-run', main, sys.argv[1:])
assert not any(m.split('.')[0] in ('torch', 'torchvision') for m in sys.modules), 'torch was imported'
assert 'compressai' not in sys.modules, "compressai's torch-based package was imported"
sys.exit(code)
"""


def test_mobile_process_never_imports_torch(demo_bundle, image, tmp_path):
    out = tmp_path / "p.ldn"
    result = subprocess.run([sys.executable, "-c", BLOCK_TORCH, "mobile", "--bundle", demo_bundle, "--image", image,
                             "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert out.stat().st_size > 31
    # The server half needs no torch either.
    result = subprocess.run([sys.executable, "-c", BLOCK_TORCH, "server", "--bundle", demo_bundle, "--payload",
                             str(out), "--json"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["classification"]


def test_cuda_engine_without_provider_is_one_line(demo_bundle, image, tmp_path, capsys):
    from ladon_deploy.engines.ort_runner import available_providers

    if "CUDAExecutionProvider" in available_providers():
        pytest.skip("this onnxruntime has CUDA")
    code, _, err = _run(["mobile", "--bundle", demo_bundle, "--image", image, "--out", str(tmp_path / "p"),
                         "--engine", "onnxruntime-cuda"], capsys)
    _one_line_error(code, err, "no execution provider CUDAExecutionProvider")
    code, _, err = _run(["mobile", "--bundle", demo_bundle, "--image", image, "--out", str(tmp_path / "p"),
                         "--engine", "tensorrt"], capsys)
    _one_line_error(code, err, "unknown --engine")
