"""The device half's memory: the peak of `ladon-run mobile` in a process of its own, and the banded encoder.

Peaks are measured by the OS (bench/memory.py: ru_maxrss of a child started by a small launcher), on the demo
bundle, with torch unimportable in the child (bench/device_process.py's `mobile`).
"""
import os
import sys

import numpy as np
import pytest
from PIL import Image

from ladon_deploy.bench import memory
from ladon_deploy.bundle import open_bundle
from ladon_deploy.device.stage import DEFAULT_BAND_ROWS, DeviceStage, EncoderGeometry, run_encoder_in_bands
from ladon_deploy.errors import EngineError, LadonError
from images import make_image

# `ladon-run mobile` on a 416x416 JPEG peaks at 83.1 MB here, 94-96 MB from a fresh clone whose libraries the page
# cache maps in larger pieces (Python 3.11, onnxruntime 1.32; docs/device-performance.md, of which 67 MB are the
# interpreter, numpy, Pillow, onnxruntime and the session before any pixel); 61 MB on the JetPack 4.6 stack
# (.venv36). The target is 100 MB; the bound leaves 19 MB of headroom over the fresh-clone figure for other
# machines' libraries. What the figure is made of is pinned by tests/device/test_footprint.py.
PEAK_BOUND_416_MB = 115.0


def _peak(bundle, image):
    return memory.device_peak(bundle, image, ["--threads", "2"])


@pytest.fixture(scope="module")
def photo_416(tmp_path_factory):
    return make_image(tmp_path_factory.mktemp("memory") / "photo416.jpg", 416, 416, 17)


@pytest.mark.slow
def test_416_peak_is_under_the_bound_and_the_measure_can_see_more(demo_bundle, photo_416, tmp_path):
    peak = _peak(demo_bundle, photo_416)["peak_rss_bytes"] / 1e6
    assert 40.0 < peak <= PEAK_BOUND_416_MB, peak
    # The other side of the bound: the same run holding 48 MB more is seen above it (the measure is not blind).
    hog = memory.measure([sys.executable, "-c", "import sys; from ladon_deploy.bench.device_process import main; "
                          "hold = bytearray(48 << 20); hold[::4096] = b'x' * len(hold[::4096]); sys.exit(main())",
                          "mobile", "--", "--bundle", demo_bundle, "--image", photo_416, "--out",
                          str(tmp_path / "hog.ldn"), "--threads", "2"])
    assert hog.returncode == 0, hog.stderr
    assert hog.peak_rss_mb > PEAK_BOUND_416_MB


@pytest.mark.slow
def test_a_large_photo_costs_its_decoded_size_and_no_more(demo_bundle, photo_416, tmp_path):
    """24 MP: Pillow's decoded image (4 bytes per pixel) is the only full-size buffer, and it is gone before the
    encoder runs, so the peak is below the 416x416 run's plus that buffer. The code before issue 17 (a numpy copy
    of the photo, released after the encoder) measured 416x416 + 1.3x the decoded size at 12 MP, + 2.2x at 48 MP
    (docs/device-performance.md)."""
    width, height = 6000, 4000
    large = str(tmp_path / "large.jpg")
    yy = np.linspace(0, 255, height, dtype=np.float32)[:, None]
    row = np.linspace(0, 255, width, dtype=np.float32)[None, :]
    Image.fromarray(np.dstack([(yy + 0 * row).astype(np.uint8), (row + 0 * yy).astype(np.uint8),
                               np.full((height, width), 90, np.uint8)])).save(large, quality=80)
    decoded_mb = width * height * 4 / 1e6
    small = _peak(demo_bundle, photo_416)["peak_rss_bytes"] / 1e6
    big = _peak(demo_bundle, large)["peak_rss_bytes"] / 1e6
    assert big > small + 0.5 * decoded_mb  # the photo was decoded in full: the measure sees it
    assert big <= small + decoded_mb, (small, big, decoded_mb)


@pytest.fixture(scope="module")
def stage(demo_bundle):
    device = DeviceStage(open_bundle(demo_bundle, verify=False), threads=2, band_rows=0)
    yield device
    device.close()


@pytest.mark.parametrize("height,width", [(416, 416), (288, 416), (416, 320), (32, 64), (36, 44), (100, 30)])
def test_banded_latent_is_bit_identical_to_the_whole_image(stage, height, width):
    image = np.random.RandomState(height + width).randn(1, 3, height, width).astype(np.float32)
    whole = stage.encoder.run({"image": image})["latent"]
    assert whole.shape[2] == EncoderGeometry().output_rows(height)
    for band_rows in (1, 3, 13, 26, 500):
        banded = run_encoder_in_bands(stage.encoder, image, band_rows)
        assert banded.shape == whole.shape
        assert np.array_equal(banded, whole), band_rows


def test_banded_payload_equals_whole_image_payload(demo_bundle, photo_416):
    bundle = open_bundle(demo_bundle, verify=False)
    payloads = []
    for band_rows in (0, None, 7):
        device = DeviceStage(bundle, threads=2, band_rows=band_rows)
        payloads.append(device.run(photo_416, tuple(bundle.tasks)).payload)
        assert device.band_rows == {0: 0, None: DEFAULT_BAND_ROWS, 7: 7}[band_rows]
        device.close()
    assert payloads[0] == payloads[1] == payloads[2]


def test_geometry_of_the_encoder():
    geometry = EncoderGeometry()
    assert (geometry.stride, geometry.reach_up, geometry.reach_down) == (4, 6, 10)
    assert geometry.output_rows(416) == 103 and geometry.output_rows(32) == 7
    bands = geometry.bands(416, 26)
    assert bands == [(0, 111, 0, 26), (96, 215, 26, 52), (200, 319, 52, 78), (304, 416, 78, 103)]
    # Every band starts on the latent grid and covers what its kept rows read (4j-6 .. 4j+10), or the image edge.
    for top, bottom, first, end in geometry.bands(200, 5):
        assert top % 4 == 0
        assert top <= max(0, 4 * first - 6) and bottom >= min(200, 4 * (end - 1) + 11)
    assert [b[2:] for b in geometry.bands(32, 100)] == [(0, 7)]


class _Shrinking(object):
    """An encoder that drops a latent row: what a graph with other convolutions would give."""

    def __init__(self, runner):
        self.runner = runner

    def run(self, feeds, release_memory=False):
        return {"latent": self.runner.run(feeds, release_memory)["latent"][:, :, 1:]}


def test_an_encoder_with_other_geometry_is_refused(stage):
    image = np.zeros((1, 3, 64, 64), np.float32)
    with pytest.raises(EngineError, match="band_rows=0"):
        run_encoder_in_bands(_Shrinking(stage.encoder), image, 4)


def test_negative_band_rows_refused(demo_bundle):
    with pytest.raises(LadonError, match="band rows must be 0"):
        DeviceStage(open_bundle(demo_bundle, verify=False), band_rows=-1)


def test_band_rows_refused_for_an_engine_with_fixed_shapes(demo_bundle):
    with pytest.raises(LadonError, match="band rows apply to onnxruntime only"):
        DeviceStage(open_bundle(demo_bundle, verify=False), engine="tensorrt", band_rows=13)


@pytest.mark.slow
def test_memory_table_command(demo_bundle, photo_416, capsys):
    assert memory.main(["--bundle", demo_bundle, "--image", photo_416]) == 0
    lines = capsys.readouterr().out.splitlines()
    row = [line for line in lines if line.startswith("| photo416.jpg")]
    assert len(row) == 1 and "416x416" in row[0] and "| exact |" in row[0]
    assert os.path.basename(photo_416) in row[0]


def test_fast_decode_flag_of_ladon_run_mobile(demo_bundle, tmp_path, capsys):
    from ladon_deploy.cli_support import run_command
    from ladon_deploy.runtime.cli import PROG, main

    photo = make_image(tmp_path / "photo.jpg", 1300, 1700, 3)
    outputs = {}
    for flag in ([], ["--fast-decode"]):
        out = str(tmp_path / ("fast.ldn" if flag else "exact.ldn"))
        code = run_command(PROG, main, ["mobile", "--bundle", demo_bundle, "--image", photo, "--out", out,
                                        "--threads", "2"] + flag)
        assert code == 0
        outputs[bool(flag)] = (open(out, "rb").read(), capsys.readouterr().out)
    assert "fast decode: the JPEG was decoded at 1/4 scale (425x325)" in outputs[True][1]
    assert "fast decode" not in outputs[False][1]
    assert outputs[True][0] != outputs[False][0]


def test_memory_table_reports_a_failed_device_run_in_one_line(demo_bundle, tmp_path, capsys):
    assert memory.main(["--bundle", demo_bundle, "--image", str(tmp_path / "missing.jpg")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no such file" in err[0]


def test_band_rows_option_of_ladon_run_keeps_the_payload(demo_bundle, photo_416, tmp_path, capsys):
    from ladon_deploy.cli_support import run_command
    from ladon_deploy.runtime.cli import PROG, main

    payloads = []
    for rows in ([], ["--band-rows", "26"], ["--band-rows", "0"]):
        out = str(tmp_path / ("p%d.ldn" % len(payloads)))
        assert run_command(PROG, main, ["mobile", "--bundle", demo_bundle, "--image", photo_416, "--out", out,
                                        "--threads", "2"] + rows) == 0
        payloads.append(open(out, "rb").read())
    assert payloads[0] == payloads[1] == payloads[2]
    capsys.readouterr()
    assert run_command(PROG, main, ["mobile", "--bundle", demo_bundle, "--image", photo_416, "--out",
                                    str(tmp_path / "bad.ldn"), "--band-rows", "-1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["ladon-run: error: band rows must be 0 (whole image) or positive, got -1"]
    assert not os.path.exists(str(tmp_path / "bad.ldn"))


RELEASE_PROBE = """
import json, sys
import numpy as np
from ladon_deploy.bundle import open_bundle
from ladon_deploy.engines.registry import open_stage_runner

def rss_mb():
    with open("/proc/self/status") as status:
        return [int(line.split()[1]) / 1024.0 for line in status if line.startswith("VmRSS")][0]

runner = open_stage_runner(open_bundle(sys.argv[1], verify=False), "encoder", "onnxruntime", 2)
image = np.random.RandomState(0).rand(1, 3, 416, 416).astype(np.float32)
kept = runner.run({"image": image})["latent"]
held = rss_mb()
released = runner.run({"image": image}, release_memory=True)["latent"]
after = rss_mb()
again = runner.run({"image": image})["latent"]
print(json.dumps({"held": held, "after": after, "same": bool(np.array_equal(kept, released)
                                                             and np.array_equal(kept, again))}))
"""


def test_release_memory_hands_the_arena_back_and_changes_no_output(demo_bundle):
    """The whole 416x416 image at once: three 96-channel maps of 208x208 (50 MB) that the arena keeps after a run,
    and that a run with release_memory gives back."""
    import json
    import subprocess

    result = subprocess.run([sys.executable, "-c", RELEASE_PROBE, demo_bundle], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, universal_newlines=True, timeout=240)
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert found["same"] is True
    assert found["held"] - found["after"] > 30.0, found


class _Recording(object):
    """The stage's real encoder runner, noting the release_memory of each run."""

    def __init__(self, runner):
        self.runner = runner
        self.releases = []

    def run(self, feeds, release_memory=False):
        self.releases.append(release_memory)
        return self.runner.run(feeds, release_memory)


@pytest.mark.parametrize("band_rows,runs", [(None, 8), (26, 4), (0, 1)])
def test_only_the_last_image_of_a_run_releases_the_encoder_memory(demo_bundle, photo_416, band_rows, runs):
    """Giving the arena back after every image of a stream fragments the heap (a 416x416 stream peaked at 84-92 MiB
    after 7 images, against 83 MiB when kept): only a run's last image gives it back, on its last band."""
    device = DeviceStage(open_bundle(demo_bundle, verify=False), threads=2, band_rows=band_rows)
    recorder = device.encoder = _Recording(device.encoder)
    try:
        streamed = device.run(photo_416, ("cls",)).payload
        assert recorder.releases == [False] * runs
        recorder.releases.clear()
        last = device.run(photo_416, ("cls",), release_memory=True).payload
        assert recorder.releases == [False] * (runs - 1) + [True]
        assert last == streamed
    finally:
        recorder.runner.close()
