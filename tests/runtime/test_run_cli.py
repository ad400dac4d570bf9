"""ladon-run from the command line: the three subcommands, and one line + exit code 2 for every bad input."""
import json
import os
import shutil
import subprocess
import sys

import pytest

from cli_helpers import command_runner
from ladon_deploy.cli_support import run_command
from ladon_deploy.runtime.cli import PROG, main
from images import make_image


_run, _one_line_error = command_runner(PROG, main)


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
    assert document["classification"]["k"] == 5
    top5 = document["classification"]["top_k"]
    assert len(top5) == 5 and all(isinstance(name, str) for _, _, name in top5)
    assert all(top5[i][1] >= top5[i + 1][1] for i in range(4))
    assert document["original_size"] == {"height": 333, "width": 500}
    assert document["resized_size"] == {"height": 277, "width": 416}
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
    # End-to-end is measured on its own clock: the stages' laps plus the link, and a little glue between them.
    stages = sum(document["timings_ms"]["device"].values()) + sum(document["timings_ms"]["server"].values())
    glue = document["timings_ms"]["end_to_end"] - stages - link["transfer_ms"]
    assert -0.01 <= glue <= 50.0
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
    _one_line_error(code, err, "the tensorrt Python package is not installed")


# --- what a new user runs into (issue 8, item 7) ---------------------------------------------------------------


def test_top_k_key_is_stable(demo_bundle, payload, capsys):
    code, stdout, err = _run(["server", "--bundle", demo_bundle, "--payload", payload, "--json", "--tasks", "cls",
                              "--top-k", "3"], capsys)
    assert code == 0, err
    classification = json.loads(stdout)["classification"]
    assert set(classification) == {"k", "top_k"} and classification["k"] == 3 and len(classification["top_k"]) == 3
    code, stdout, err = _run(["server", "--bundle", demo_bundle, "--payload", payload, "--tasks", "cls",
                              "--top-k", "2"], capsys)
    assert code == 0 and "classification (top-2):" in stdout, err


def test_usage_errors_are_refused_up_front(demo_bundle, image, payload, tmp_path, capsys, monkeypatch):
    # Nothing may be loaded for these: the runner registry fails the test if anything opens an engine.
    from ladon_deploy.device import stage as device_stage

    def no_engine(*args, **kwargs):
        raise AssertionError("an engine was opened before the command line was checked")

    monkeypatch.setattr(device_stage, "open_stage_runner", no_engine)
    monkeypatch.setattr("ladon_deploy.server.stage.open_stage_runner", no_engine)
    split = ["split", "--bundle", demo_bundle, "--image", image]
    server = ["server", "--bundle", demo_bundle, "--payload", payload]
    for argv, message in [
        (server + ["--top-k", "0"], "--top-k must be at least 1"),
        (split + ["--top-k", "-1"], "--top-k must be at least 1"),
        (["mobile", "--bundle", demo_bundle, "--image", image, "--out", str(tmp_path)], "is a directory"),
        (server + ["--mask-out", str(tmp_path / "missing" / "mask.png")], "does not exist"),
        (server + ["--mask-out", str(tmp_path)], "is a directory"),
        (split + ["--mask-out", str(tmp_path / "m.png"), "--tasks", "cls,det"], "needs the seg task"),
        (server + ["--payload", str(tmp_path)], "is a directory, not a payload file"),
        (split + ["--rate", "100"], "has no unit"),
        (split + ["--rtt", "20"], "has no unit"),
        (split + ["--max-megapixels", "0"], "must be positive"),
        (split + ["--mask-out", str(tmp_path / "mask.jpg")], "writes a PNG file: give a name ending in .png"),
        (server + ["--mask-out", str(tmp_path / "mask")], "writes a PNG file: give a name ending in .png"),
        (["mobile", "--bundle", demo_bundle, "--image", image, "--out", str(tmp_path / "p.ldn"), "--mask-out",
          str(tmp_path / "m.png")], "--mask-out needs --server URL"),
        (["mobile", "--bundle", demo_bundle, "--images", str(tmp_path), "--server", "http://127.0.0.1:9",
          "--mask-out", str(tmp_path / "m.png")], "use it with --image FILE, not --images DIR"),
    ]:
        code, _, err = _run(argv, capsys)
        _one_line_error(code, err, message)


def test_mask_out_without_segmentation_in_bundle_or_payload(demo_bundle, image, tmp_path, capsys):
    cls_only = str(tmp_path / "cls.ldn")
    code, _, err = _run(["mobile", "--bundle", demo_bundle, "--image", image, "--out", cls_only, "--tasks", "cls"],
                        capsys)
    assert code == 0, err
    # The payload asks for cls only; without --tasks the server would run just that and drop the mask silently.
    code, _, err = _run(["server", "--bundle", demo_bundle, "--payload", cls_only, "--mask-out",
                         str(tmp_path / "m.png")], capsys)
    _one_line_error(code, err, "needs the seg task, and this run has only cls")
    assert not (tmp_path / "m.png").exists()


def _rotated_photo(tmp_path):
    from PIL import Image

    source = make_image(tmp_path / "plain.png", 120, 200, 4)
    exif = Image.Exif()
    exif[0x0112] = 6
    path = str(tmp_path / "phone.jpg")
    Image.open(source).save(path, exif=exif.tobytes(), quality=95)
    return path


def test_exif_orientation_applied_and_said(demo_bundle, tmp_path, capsys):
    photo = _rotated_photo(tmp_path)
    code, stdout, err = _run(["split", "--bundle", demo_bundle, "--image", photo, "--json", "--tasks", "cls"],
                             capsys)
    assert code == 0, err
    document = json.loads(stdout)
    assert document["original_size"] == {"height": 200, "width": 120}
    assert document["image_notes"] == ["EXIF orientation 6 applied: rotated 90 degrees clockwise to the frame "
                                       "viewers show"]
    code, stdout, err = _run(["split", "--bundle", demo_bundle, "--image", photo, "--json", "--tasks", "cls",
                              "--no-exif-transpose"], capsys)
    assert code == 0, err
    assert json.loads(stdout)["original_size"] == {"height": 120, "width": 200}
    code, stdout, err = _run(["mobile", "--bundle", demo_bundle, "--image", photo, "--out", str(tmp_path / "p.ldn")],
                             capsys)
    assert code == 0 and "image: EXIF orientation 6 applied" in stdout, err


def test_max_megapixels_override(demo_bundle, tmp_path, capsys):
    from PIL import Image

    wide = str(tmp_path / "wide.png")
    Image.new("RGB", (3000, 2000), (90, 120, 150)).save(wide)  # 6 MP
    argv = ["mobile", "--bundle", demo_bundle, "--image", wide, "--out", str(tmp_path / "w.ldn")]
    code, _, err = _run(argv + ["--max-megapixels", "5"], capsys)
    _one_line_error(code, err, "6.0 MP, too large to decode safely under the limit of 5.0 MP")
    code, _, err = _run(argv + ["--max-megapixels", "6.5"], capsys)
    assert code == 0, err


def test_version_and_help(capsys):
    from ladon_deploy import __version__

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0 and capsys.readouterr().out.strip() == "ladon-run " + __version__
    for command, expected in [("mobile", ["--image FILE", "EXIF orientation", "(default: 89.5)",
                                          "(default: onnxruntime)"]),
                              ("server", ["--payload FILE", "--top-k K", "(default: 5)", "needs the seg task"]),
                              ("split", ["(default: 100kbps)", "(default: 0)", "125kBps"])]:
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        for fragment in expected:
            assert fragment in text, (command, fragment)


def test_a_folder_goes_on_past_each_failure_and_exits_2(demo_bundle, image, tmp_path, capsys):
    # No server listens on the port: every good photo fails at the request, the text file at decoding; each is named
    # on its own line, the run goes on to the end, and the summary says so (tests/serve/test_serve.py has the answered
    # case against a real server).
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        url = "http://127.0.0.1:%d" % probe.getsockname()[1]
    shutil.copy(image, str(tmp_path / "a.png"))
    shutil.copy(image, str(tmp_path / "b.png"))
    (tmp_path / "notes.jpg").write_text("a text file, renamed")
    argv = ["mobile", "--bundle", demo_bundle, "--images", str(tmp_path), "--server", url, "--timeout", "5s"]
    code, out, err = _run(argv, capsys)
    assert code == 2
    assert "0 images answered, 3 failed" in out
    lines = err.splitlines()
    assert [line.split(":")[0] for line in lines] == ["a.png", "b.png", "notes.jpg", "ladon-run"]
    assert "cannot connect to %s" % url in lines[0] and "not a readable image file" in lines[2]
    assert lines[3] == "ladon-run: error: 3 of 3 images failed: a.png, b.png, notes.jpg"
    code, out, err = _run(argv + ["--json"], capsys)
    document = json.loads(out)
    assert code == 2 and document["images"] == [] and document["summary_ms"] == {}
    assert [f["image"] for f in document["failed"]] == [str(tmp_path / n) for n in ("a.png", "b.png", "notes.jpg")]
