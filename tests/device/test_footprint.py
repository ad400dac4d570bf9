"""What `ladon-run mobile` leaves out of its process to keep its peak memory down (ladon_deploy/device/footprint.py:
OpenSSL and numpy's unused subpackages; the lazy imports of device/cli.py), and the copy fast path of the banded
preprocessing.

Each check runs in a fresh interpreter: what a process has imported cannot be undone in this one.
"""
import hashlib
import hmac
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

from ladon_deploy.bundle import open_bundle
from ladon_deploy.device import preprocess
from ladon_deploy.device.footprint import DEFERRED_NUMPY_MODULES
from ladon_deploy.device.stage import DeviceStage
from images import make_image

# Modules only `--server` (HTTP) or `--server udp://` (frames) needs; a plain `ladon-run mobile` must not load them.
NETWORK_MODULES = ("http.client", "ssl", "email.parser", "ladon_deploy.device.client", "ladon_deploy.link.transport",
                   "ladon_deploy.link.operating_point", "ladon_deploy.link.frames", "ladon_deploy.link.erasure")

REPORT = """
def report():
    import json, sys
    maps = open("/proc/self/maps").read()
    # type(), not isinstance(): reading a deferred module's __class__ would run it
    return json.dumps({"libcrypto": "libcrypto" in maps,
                       "hashlib_backend": repr(sys.modules.get("_hashlib", "absent")),
                       "modules": sorted(m for m in sys.modules if sys.modules[m] is not None),
                       "deferred": sorted(m for m in sys.modules if type(sys.modules[m]).__name__ == "_LazyModule")})
"""


def _child(body):
    result = subprocess.run([sys.executable, "-c", REPORT + textwrap.dedent(body)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, universal_newlines=True, timeout=240)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_builtin_hashes_give_openssls_digests_without_libcrypto():
    key, message = b"k" * 16, b"ladon payload frame"
    found = _child("""
        from ladon_deploy.device.footprint import use_builtin_hashes
        took = use_builtin_hashes()
        import hashlib, hmac, json
        import numpy  # what loaded OpenSSL before (numpy.random -> secrets -> hmac -> _hashlib)
        state = json.loads(report())
        state.update(took=took, sha256=hashlib.sha256(b"ladon payload frame").hexdigest(),
                     hmac=hmac.new(b"k" * 16, b"ladon payload frame", hashlib.sha256).hexdigest(),
                     same=hmac.compare_digest(b"a", b"a"))
        print(json.dumps(state))
    """)
    assert found["took"] is True
    assert found["libcrypto"] is False and found["hashlib_backend"] == "None"
    assert found["sha256"] == hashlib.sha256(message).hexdigest()  # this process: OpenSSL's
    assert found["hmac"] == hmac.new(key, message, hashlib.sha256).hexdigest()
    assert found["same"] is True


def test_builtin_hashes_are_refused_once_hashlib_is_loaded():
    found = _child("""
        import hashlib, json
        from ladon_deploy.device.footprint import use_builtin_hashes
        took = use_builtin_hashes()
        state = json.loads(report())
        state.update(took=took, sha256=hashlib.sha256(b"x").hexdigest())
        print(json.dumps(state))
    """)
    assert found["took"] is False
    assert found["libcrypto"] is True and found["hashlib_backend"] != "None"
    assert found["sha256"] == hashlib.sha256(b"x").hexdigest()


def test_numpy_subpackages_are_deferred_until_first_use_and_then_complete():
    found = _child("""
        from ladon_deploy.device.footprint import defer_unused_numpy_modules
        took = defer_unused_numpy_modules()
        import json
        import numpy
        before = json.loads(report())
        draws = numpy.random.RandomState(7).randint(0, 1000, 5).tolist()
        masked = float(numpy.ma.masked_array([1.0, 2.0, 4.0], mask=[0, 1, 0]).sum())
        value = float(numpy.polynomial.Polynomial([1.0, 2.0, 3.0])(2.0))
        import numpy.random as again  # an import statement after the fact gets the same, now loaded, module
        after = json.loads(report())
        print(json.dumps({"took": took, "before": before, "after": after, "draws": draws, "masked": masked,
                          "value": value, "same": again is numpy.random, "again": again.rand.__name__}))
    """)
    assert found["took"] is True
    assert found["before"]["deferred"] == sorted(DEFERRED_NUMPY_MODULES)
    assert "secrets" not in found["before"]["modules"]  # numpy.random's own imports waited too
    assert found["after"]["deferred"] == []
    assert found["draws"] == np.random.RandomState(7).randint(0, 1000, 5).tolist()
    assert found["masked"] == 5.0 and found["value"] == 17.0
    assert found["same"] is True and found["again"] == "rand"


def test_numpy_deferral_is_refused_once_numpy_is_loaded():
    found = _child("""
        import json
        import numpy
        from ladon_deploy.device.footprint import defer_unused_numpy_modules
        took = defer_unused_numpy_modules()
        state = json.loads(report())
        state["took"] = took
        print(json.dumps(state))
    """)
    assert found["took"] is False and found["deferred"] == []
    assert "numpy.random" in found["modules"]


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    return make_image(tmp_path_factory.mktemp("footprint") / "photo.jpg", 240, 320, 5)


def test_mobile_leaves_out_openssl_numpy_extras_and_network_modules_and_keeps_its_payload(demo_bundle, photo,
                                                                                         tmp_path):
    out = str(tmp_path / "x.ldn")
    found = _child("""
        import json
        from ladon_deploy.runtime import run
        code = run(["mobile", "--bundle", %r, "--image", %r, "--out", %r, "--threads", "1"])
        state = json.loads(report())
        state["code"] = code
        print(json.dumps(state))
    """ % (demo_bundle, photo, out))
    assert found["code"] == 0
    assert found["libcrypto"] is False and found["hashlib_backend"] == "None"
    assert not [m for m in NETWORK_MODULES if m in found["modules"]]
    assert found["deferred"] == sorted(DEFERRED_NUMPY_MODULES)  # nothing on the device path read from them
    assert "numpy" in found["modules"] and "ladon_deploy.device.stage" in found["modules"]  # the report sees imports
    stage = DeviceStage(open_bundle(demo_bundle, verify=False), threads=1)
    try:
        expected = stage.run(photo, tuple(stage.bundle.tasks)).payload
    finally:
        stage.close()
    with open(out, "rb") as handle:
        assert handle.read() == expected


def test_other_commands_keep_openssl():
    """Only `mobile` takes the built-in hashes: a server hashes hundreds of MB of heads, 5x faster with OpenSSL."""
    found = _child("""
        import contextlib, io, json
        from ladon_deploy.runtime import run
        with contextlib.redirect_stdout(io.StringIO()):
            code = run(["link", "--list"])
        state = json.loads(report())
        state["code"] = code
        print(json.dumps(state))
    """)
    assert found["code"] == 0
    assert found["hashlib_backend"] != "None"
    assert found["deferred"] == []


@pytest.mark.parametrize("indices,expected", [
    ([3, 4, 5], slice(3, 6, 1)),
    ([7], slice(7, 8)),
    ([5, 4, 3], slice(5, 2, -1)),
    ([2, 1, 0], slice(2, None, -1)),  # a descending run down to row 0: stop None, not -1 (which would be empty)
    ([0, 2, 4], None),
    ([1, 2, 4], None),
    ([4, 3, 5], None),
    ([], None),
])
def test_as_slice_selects_exactly_the_indices(indices, expected):
    found = preprocess._as_slice(np.asarray(indices, dtype=np.int64))
    assert found == expected
    if found is not None:
        assert list(np.arange(10)[found]) == indices


@pytest.mark.parametrize("rows,cols", [
    (np.arange(0, 37), np.arange(0, 53)),              # an identity resize: every row and column
    (np.arange(36, -1, -1), np.arange(52, -1, -1)),    # the same read for EXIF flips
    (np.arange(5, 30), np.arange(52, 10, -1)),
    (np.array([0, 1, 2, 9, 10, 30]), np.arange(0, 53)),  # runs broken between bands: the gather path
    (np.arange(0, 37), np.array([0, 3, 4, 50])),
])
def test_copy_path_reads_the_same_pixels_as_the_gather(monkeypatch, rows, cols):
    rgb = np.random.RandomState(3).randint(0, 256, (37, 53, 3)).astype(np.uint8)
    image = Image.fromarray(rgb)
    monkeypatch.setattr(preprocess, "BAND_BYTES", 4 * 53 * 7)  # 7-row bands: runs cross band edges
    fast = preprocess._read_pixels(image, rows, cols, "rgb", False)
    assert np.array_equal(fast, rgb[np.ix_(rows, cols)])
    monkeypatch.setattr(preprocess, "_as_slice", lambda indices: None)
    assert np.array_equal(preprocess._read_pixels(image, rows, cols, "rgb", False), fast)
