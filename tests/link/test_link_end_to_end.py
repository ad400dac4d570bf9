"""A photo over a frame link, end to end: `ladon-run mobile --server udp://...` against `ladon-run server
--frames-port` (its own process group), under seeded loss, gives the results `ladon-run split` gives; several
bundles with --budget choose per image."""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

from cli_helpers import command_runner
from images import make_image
from ladon_deploy.runtime.cli import PROG, main

run, one_line_error = command_runner(PROG, main)
RESULT_KEYS = ("bundle_id", "original_size", "resized_size", "tasks", "classification", "detection", "segmentation")
LINK = ["--link", "lora-sf5-bw500"]


def _free_udp_port():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class FrameServer(object):
    """`ladon-run server --frames-port` in its own process group, stopped by its id."""

    def __init__(self, bundle, extra=()):
        self.port = _free_udp_port()
        command = [sys.executable, "-m", "ladon_deploy.runtime", "server", "--bundle", bundle, "--frames-port",
                   str(self.port), "--json", "--wait", "120s"] + list(extra)
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        start_new_session=True, universal_newlines=True)

    def result(self, timeout=120):
        try:
            out, err = self.process.communicate(timeout=timeout)
        finally:
            self.stop()
        return self.process.returncode, out, err

    def stop(self):
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    path = tmp_path_factory.mktemp("frames") / "street.png"
    make_image(str(path), 240, 320, seed=5)
    return str(path)


@pytest.fixture(scope="module")
def split_result(demo_bundle, photo):
    return run_command_json(["split", "--bundle", demo_bundle, "--image", photo, "--json"])


def run_command_json(argv):
    output = subprocess.run([sys.executable, "-m", "ladon_deploy.runtime"] + argv, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, universal_newlines=True, timeout=300)
    assert output.returncode == 0, output.stderr
    return json.loads(output.stdout)


def _wait_until_listening(server):
    # The receiver binds before it loads its stage; a frame sent earlier would be lost like a radio frame, which the
    # protocol survives, but waiting keeps the test's loss exactly the seeded one.
    time.sleep(0.5)
    for _ in range(600):
        if server.process.poll() is not None:
            return
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            try:
                probe.bind(("127.0.0.1", server.port))
            except OSError:
                return
        time.sleep(0.1)


@pytest.mark.slow
# Seeds whose loss draws drop at least one of the first frames of this 7-frame payload (the loss is seeded, so the
# frames lost are the same on every run).
@pytest.mark.parametrize("loss,seed", [("0", "1"), ("0.1", "5"), ("0.3", "1")])
def test_photo_over_a_lossy_frame_link_equals_split(demo_bundle, photo, split_result, loss, seed, capsys):
    server = FrameServer(demo_bundle)
    _wait_until_listening(server)
    code, out, err = run(["mobile", "--bundle", demo_bundle, "--image", photo, "--server",
                          "udp://127.0.0.1:%d" % server.port, "--loss", loss, "--seed", seed, "--rounds", "8",
                          "--json"] + LINK, capsys)
    server_code, server_out, server_err = server.result()
    assert code == 0, err
    assert server_code == 0, server_err
    device = json.loads(out)
    for key in RESULT_KEYS:
        if key in split_result:
            assert device[key] == split_result[key], key
            assert json.loads(server_out)[key] == split_result[key], key
    sent = device["link"]
    assert sent["payload_bytes"] == split_result["link"]["payload_bytes"]
    assert sent["wall_s"] >= sent["airtime_s"] >= sent["model_airtime_s"]
    if loss == "0":
        assert sent["frames_lost"] == 0 and sent["rounds"] == 1
    else:
        assert sent["frames_lost"] > 0


@pytest.mark.slow
def test_unrecoverable_payload_is_one_line_on_the_device(demo_bundle, photo, capsys):
    server = FrameServer(demo_bundle, ["--wait", "20s"])
    _wait_until_listening(server)
    code, out, err = run(["mobile", "--bundle", demo_bundle, "--image", photo, "--server",
                          "udp://127.0.0.1:%d" % server.port, "--loss", "0.7", "--seed", "2", "--rounds", "1",
                          "--repair", "0", "--timeout", "20s"] + LINK, capsys)
    one_line_error(code, err, "payload not delivered")
    server_code, _, server_err = server.result()
    assert server_code == 2 and len(server_err.strip().splitlines()) == 1


@pytest.mark.slow
def test_budget_chooses_the_bundle_per_image(demo_bundle, photo, tmp_path, capsys):
    """Two bundles of one architecture (the demo bundle and a copy, so payload sizes are equal): the first given
    fits a generous budget; a budget below every payload's time on air is refused with the fastest named."""
    server = FrameServer(demo_bundle)
    _wait_until_listening(server)
    code, out, err = run(["mobile", "--bundle", demo_bundle, "--bundle", demo_bundle, "--image", photo,
                          "--server", "udp://127.0.0.1:%d" % server.port, "--budget", "1h", "--json"] + LINK, capsys)
    server.result()
    assert code == 0, err
    document = json.loads(out)
    assert document["bundle"]["directory"] == demo_bundle and "chose" in document["operating_point"]
    code, out, err = run(["mobile", "--bundle", demo_bundle, "--bundle", demo_bundle, "--image", photo,
                          "--server", "udp://127.0.0.1:%d" % _free_udp_port(), "--budget", "1ms"] + LINK, capsys)
    one_line_error(code, err, "no bundle fits the 0.001 s budget")


def test_frame_options_are_checked_up_front(demo_bundle, photo, capsys):
    for argv, message in (
            (["--server", "udp://127.0.0.1:9"], "needs --link"),
            (["--server", "udp://127.0.0.1:9", "--link", "ideal:37.5kbps"], "ideal pipe"),
            (["--server", "udp://nowhere"] + LINK, "udp://HOST:PORT"),
            (["--server", "http://127.0.0.1:9"] + LINK, "--link needs --server udp://"),
            (["--out", "x.ldn", "--loss", "0.1"], "--loss needs --server udp://"),
            (["--server", "udp://127.0.0.1:9", "--rate", "1kbps"] + LINK, "--rate does not apply"),
            (["--server", "udp://127.0.0.1:9", "--loss", "2"] + LINK, "loss must be in [0, 1)"),
            (["--server", "udp://127.0.0.1:9", "--key-file", "/nonexistent"] + LINK, "cannot read --key-file"),
            (["--bundle", demo_bundle, "--server", "udp://127.0.0.1:9"] + LINK, "need --budget")):
        code, out, err = run(["mobile", "--bundle", demo_bundle, "--image", photo] + argv, capsys)
        one_line_error(code, err, message)
    code, out, err = run(["server", "--bundle", demo_bundle], capsys)
    one_line_error(code, err, "one of --payload FILE or --frames-port PORT")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        code, out, err = run(["server", "--bundle", demo_bundle, "--frames-port", str(taken.getsockname()[1])],
                             capsys)
        one_line_error(code, err, "cannot receive frames")


@pytest.mark.slow
def test_a_bad_file_in_a_folder_is_named_and_the_frames_go_on(demo_bundle, photo, split_result, tmp_path, capsys):
    folder = tmp_path / "stream"
    folder.mkdir()
    (folder / "a-broken.jpg").write_text("not an image")
    shutil.copy(photo, str(folder / "b-street.png"))
    server = FrameServer(demo_bundle)
    _wait_until_listening(server)
    code, out, err = run(["mobile", "--bundle", demo_bundle, "--images", str(folder), "--server",
                          "udp://127.0.0.1:%d" % server.port, "--json"] + LINK, capsys)
    server.result()
    assert code == 2
    document = json.loads(out)
    assert [os.path.basename(d["image"]) for d in document["images"]] == ["b-street.png"]
    assert document["images"][0]["classification"] == split_result["classification"]
    assert [os.path.basename(f["image"]) for f in document["failed"]] == ["a-broken.jpg"]
    assert "a-broken.jpg: error: not a readable image" in err and "1 of 2 images failed" in err
