"""The device half executed on aarch64 (a Jetson's Cortex-A57, emulated by QEMU user mode; scripts/aarch64.sh).

On the demo bundle and two images (one non-square), against this x86-64 machine: the preprocessed input tensors
are bit-identical, the coder writes the same bytes for the same symbols, the encoder's symbols agree (the
agreement is reported; the payloads are identical when it is complete) and the aarch64 payload decodes here to the
same results; the native coder, cross-compiled, round-trips and treats fuzzed payloads exactly as the x86-64 one;
torch cannot be imported there. Without qemu-user-static, debootstrap and gcc-aarch64-linux-gnu the tests skip,
unless LADON_REQUIRE_AARCH64 is set (CI): then they fail.
"""
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

import edge_install
from device_probe import fuzz_outcomes, split_cases
from images import make_image
from ladon_deploy.bundle import open_bundle
from ladon_deploy.cli_support import run_command
from ladon_deploy.device import wire
from ladon_deploy.device.entropy import EntropyCoder
from ladon_deploy.device.stage import DeviceStage
from ladon_deploy.runtime.cli import PROG, main

sys.path.insert(0, os.path.join(edge_install.ROOT, "tests", "device"))
sys.path.insert(0, os.path.join(edge_install.ROOT, "scripts", "aarch64"))

import environment  # noqa: E402  (scripts/aarch64/environment.py)
import test_fuzz  # noqa: E402  (its payload mutations, first cases of its seed)

SCRIPT = os.path.join(edge_install.ROOT, "scripts", "aarch64.sh")

PROBE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "device_probe.py")
IMAGES = ((416, 416, 41), (333, 500, 42))  # (height, width, seed): the bundle's input size, and a non-square one
FUZZ_CASES = 400  # emulation is slow; the full fuzz (20,000 cases) runs on x86-64 in tests/device/test_fuzz.py
AGREEMENT_FLOOR = 0.999  # the encoder's kernels differ between instruction sets: a few symbols may round apart


def symbol_agreement(aarch64_symbols, x86_symbols):
    """(fraction of equal symbols, positions that differ); refuses a fraction under AGREEMENT_FLOOR."""
    assert aarch64_symbols.shape == x86_symbols.shape, (aarch64_symbols.shape, x86_symbols.shape)
    differ = np.argwhere(aarch64_symbols != x86_symbols)
    fraction = 1.0 - len(differ) / float(x86_symbols.size)
    assert fraction >= AGREEMENT_FLOOR, "only %.4f%% of the encoder's symbols agree with x86-64's (%d differ)" % (
        100 * fraction, len(differ))
    return fraction, [tuple(int(i) for i in position) for position in differ]


def test_agreement_floor_both_sides():
    x86 = np.zeros((4, 50, 50), np.int32)  # 10,000 symbols
    near = x86.copy()
    near.flat[[7, 4321]] = 1
    assert symbol_agreement(near, x86) == (0.9998, [(0, 0, 7), (1, 36, 21)])
    far = x86.copy()
    far.flat[:11] = -1
    with pytest.raises(AssertionError, match=r"99\.8900% of .*\(11 differ\)"):
        symbol_agreement(far, x86)


def required():
    """CI sets LADON_REQUIRE_AARCH64=1 (.ci/run): there a missing emulator is a failure, not a skip."""
    return bool(os.environ.get("LADON_REQUIRE_AARCH64"))


def unavailable(reason):
    if required():
        pytest.fail("%s, and LADON_REQUIRE_AARCH64 is set" % reason)
    pytest.skip(reason)


def test_missing_emulation_skips_here_and_fails_in_ci(monkeypatch):
    monkeypatch.delenv("LADON_REQUIRE_AARCH64", raising=False)
    with pytest.raises(pytest.skip.Exception, match="no qemu"):
        unavailable("no qemu")
    monkeypatch.setenv("LADON_REQUIRE_AARCH64", "1")
    with pytest.raises(pytest.fail.Exception, match="no qemu, and LADON_REQUIRE_AARCH64 is set"):
        unavailable("no qemu")


def test_a_missing_tool_is_one_line_naming_the_install(tmp_path):
    """Without the emulator, debootstrap, the cross compiler, dpkg-deb and tar on PATH: one line, exit 2."""
    for tool in ("bash", "dirname"):
        os.symlink(shutil.which(tool), str(tmp_path / tool))
    result = subprocess.run([str(tmp_path / "bash"), SCRIPT, "--", "python", "-c", "pass"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, universal_newlines=True, timeout=60,
                            env=dict(os.environ, PATH=str(tmp_path), LADON_HOST_PYTHON=sys.executable))
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "`apt-get install -y qemu-user-static debootstrap gcc-aarch64-linux-gnu dpkg tar` (as root)" in \
        result.stderr


def test_the_debian_mirror_is_read_from_apt_sources(tmp_path):
    deb822 = tmp_path / "debian.sources"
    deb822.write_text("Types: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\n\n"
                      "Types: deb\nURIs: http://mirror.example/debian/\nSuites: bookworm bookworm-updates\n")
    one_line = tmp_path / "sources.list"
    one_line.write_text("# deb http://commented.example/debian bookworm main\n"
                        "deb [arch=amd64] https://other.example/debian bookworm main\n")
    nodesource = tmp_path / "nodesource.list"
    nodesource.write_text("deb https://deb.nodesource.com/node_20.x nodistro main\n")
    assert environment.mirror_in_sources([str(nodesource), str(deb822)]) == "http://mirror.example/debian"
    assert environment.mirror_in_sources([str(one_line), str(deb822)]) == "https://other.example/debian"
    assert environment.mirror_in_sources([str(nodesource)]) is None


@pytest.fixture(scope="session")
def aarch64(aarch64_report):
    """scripts/aarch64.sh's environment, built here if it is not cached yet (the build is timed and reported)."""
    missing = environment.missing_tools()
    if missing:
        unavailable("no aarch64 emulation here: `%s` installs it" % environment.install_hint(missing))
    started = time.perf_counter()
    built = subprocess.run([SCRIPT, "--build"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           universal_newlines=True, timeout=900)
    if built.returncode != 0 and "needs root" in built.stderr:
        unavailable(built.stderr.strip())
    assert built.returncode == 0, built.stderr
    if "already built" not in built.stdout:
        aarch64_report.append("aarch64 environment built in %.1f s (%s)" % (
            time.perf_counter() - started, ", ".join(" ".join(line.split()) for line in built.stdout.splitlines()[1:])))


def _fuzz_cases():
    """The first FUZZ_CASES mutated payloads of tests/device/test_fuzz.py's sequence (same seed, tables, latent)."""
    rng = np.random.default_rng(test_fuzz.SEED)
    tables = test_fuzz.synthetic_tables(rng, test_fuzz.CHANNELS)
    coder = EntropyCoder.from_tables(tables, backend="native")
    y = (rng.standard_normal(test_fuzz.SHAPE) * 2.5 + coder.medians.reshape(-1, 1, 1)).astype(np.float32)[None]
    body = coder.compress(y)
    data = wire.pack(wire.Payload(test_fuzz.BUNDLE, test_fuzz.SHAPE, (48, 60), (64, 64), ("cls", "det", "seg"), body))
    fields = test_fuzz.HEADER.unpack(data[:wire.HEADER_SIZE])
    cases = [data] + [test_fuzz.mutate(rng, data, fields, body)[1] for _ in range(FUZZ_CASES - 1)]
    return tables, coder, cases


@pytest.fixture(scope="module")
def runs(aarch64, aarch64_report, demo_bundle, tmp_path_factory):
    """Both machines on the same inputs: x86-64 here, aarch64 in one emulated process (device_probe.py)."""
    work = tmp_path_factory.mktemp("aarch64")
    images = [make_image(work / ("image-%dx%d.png" % (h, w)), h, w, seed) for h, w, seed in IMAGES]
    stage = DeviceStage(open_bundle(demo_bundle))
    x86 = {"payloads": [], "tensors": [], "symbols": []}
    for index, image in enumerate(images):
        out = str(work / ("x86-%d.ldn" % index))
        assert run_command(PROG, main, ["mobile", "--bundle", demo_bundle, "--image", image, "--out", out]) == 0
        with open(out, "rb") as handle:
            x86["payloads"].append(handle.read())
        payload = wire.unpack(x86["payloads"][-1], expected_bundle_id=stage.bundle.bundle_id)
        x86["symbols"].append(stage.coder.decode(payload.body, payload.latent_shape))
        x86["tensors"].append(stage.preprocess(image).tensor)
    np.savez(str(work / "x86-symbols.npz"), **{"symbols%d" % i: s for i, s in enumerate(x86["symbols"])})
    tables, fuzz_coder, cases = _fuzz_cases()
    offsets = np.cumsum([0] + [len(case) for case in cases])
    np.savez(str(work / "fuzz.npz"), fuzz_data=np.frombuffer(b"".join(cases), np.uint8), fuzz_offsets=offsets,
             bundle_id=np.array(test_fuzz.BUNDLE), **tables)
    x86["fuzz"] = fuzz_outcomes(fuzz_coder, split_cases(np.load(str(work / "fuzz.npz"))), test_fuzz.BUNDLE)

    started = time.perf_counter()
    result = subprocess.run([SCRIPT, "--", "python", PROBE, demo_bundle, str(work)] + images, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, universal_newlines=True, timeout=600, cwd=str(work))
    seconds = time.perf_counter() - started
    assert result.returncode == 0, result.stderr[-3000:]
    with open(str(work / "aarch64.json")) as handle:
        arm = json.load(handle)
    arrays = np.load(str(work / "aarch64.npz"))
    arm["tensors"] = [arrays["tensor%d" % i] for i in range(len(images))]
    arm["symbols"] = [arrays["symbols%d" % i] for i in range(len(images))]
    arm["payloads"], arm["coded"] = [], []
    for index in range(len(images)):
        with open(str(work / ("aarch64-%d.ldn" % index)), "rb") as handle:
            arm["payloads"].append(handle.read())
        with open(str(work / ("coded-%d.bin" % index)), "rb") as handle:
            arm["coded"].append(handle.read())
    for (height, width, _), timings, cpu in zip(IMAGES, arm["timings_ms"], arm["cpu_seconds"]):
        aarch64_report.append("device stage (ladon-run mobile) on a %dx%d image: %.2f s [%s]; %.1f s of CPU" % (
            width, height, sum(timings.values()) / 1000.0,
            ", ".join("%s %.0f ms" % item for item in timings.items()), cpu))
    aarch64_report.append("the whole emulated probe (start, imports, 2 images, coder, %d fuzz cases): %.1f s"
                          % (FUZZ_CASES, seconds))
    return {"aarch64": arm, "x86": x86, "stage": stage, "images": images}


@pytest.mark.slow
def test_it_is_aarch64_with_the_pinned_stack_and_no_torch(runs):
    arm = runs["aarch64"]
    assert arm["machine"] == "aarch64"
    pins = edge_install.pinned(environment.REQUIREMENTS)
    assert arm["versions"] == {"python": arm["versions"]["python"], "numpy": pins["numpy"], "pillow": pins["pillow"],
                               "onnxruntime": pins["onnxruntime"], "coder": "native"}
    assert arm["versions"]["python"].startswith("3.11.")
    assert arm["torch_spec"] == "None" and arm["torch_import"].startswith("ModuleNotFoundError")
    # Nothing of this machine's Python got in: sys.path is the edge subset, the wheels and the root's standard
    # library, all in the cache, and every module came from there.
    cache = environment.cache_directory() + os.sep
    edge, site = arm["sys_path"][:2]
    assert os.path.basename(edge).startswith("edge-") and os.path.basename(site).startswith("site-")
    assert [path for path in arm["sys_path"] if not path.startswith(cache)] == []
    places = tuple(os.path.realpath(path) + os.sep for path in arm["sys_path"])
    assert len(arm["module_files"]) > 50 and [f for f in arm["module_files"] if not f.startswith(places)] == []
    # ... and of the package only what Dockerfile.jetson copies: the server half is not there.
    assert not any("/ladon_deploy/server/" in f or "/ladon_deploy/export/" in f for f in arm["module_files"])
    assert not os.path.exists(os.path.join(edge, "ladon_deploy", "server"))


@pytest.mark.slow
def test_preprocessed_tensors_are_bit_identical(runs):
    for arm, x86 in zip(runs["aarch64"]["tensors"], runs["x86"]["tensors"]):
        assert arm.dtype == x86.dtype == np.float32 and arm.shape == x86.shape
        assert arm.tobytes() == x86.tobytes()
    assert runs["x86"]["tensors"][1].shape != runs["x86"]["tensors"][0].shape  # the non-square image is padded


@pytest.mark.slow
def test_coder_writes_the_same_bytes_for_the_same_symbols(runs):
    for index, coded in enumerate(runs["aarch64"]["coded"]):
        x86_body = wire.unpack(runs["x86"]["payloads"][index]).body
        assert len(coded) > 100 and coded == x86_body


@pytest.mark.slow
def test_encoder_symbols_agree_and_payloads_decode_to_the_same_results(runs, aarch64_report):
    stage = runs["stage"]
    from ladon_deploy.server.stage import ServerStage

    server = ServerStage(stage.bundle)
    for index, (height, width, _) in enumerate(IMAGES):
        arm_payload, x86_payload = runs["aarch64"]["payloads"][index], runs["x86"]["payloads"][index]
        fraction, differ = symbol_agreement(runs["aarch64"]["symbols"][index], runs["x86"]["symbols"][index])
        aarch64_report.append("%dx%d: %.4f%% of %d encoder symbols agree with x86-64's%s; payload %s" % (
            width, height, 100 * fraction, runs["x86"]["symbols"][index].size,
            " (differ at %s)" % differ[:10] if differ else "",
            "byte-identical" if arm_payload == x86_payload else "differs"))
        if not differ:
            assert arm_payload == x86_payload
        arm_result, x86_result = server.run(arm_payload), server.run(x86_payload)
        assert arm_result.to_json() == x86_result.to_json()
        if not differ:
            for task, outputs in x86_result.outputs.items():
                for name, value in outputs.items():
                    assert np.array_equal(arm_result.outputs[task][name], value), (task, name)


@pytest.mark.slow
def test_native_coder_round_trips_and_refuses_fuzzed_payloads_as_here(runs):
    arm = runs["aarch64"]
    assert arm["roundtrip"] == [True, True]
    assert arm["fuzz_backend"] == "native"
    assert len(arm["fuzz"]) == FUZZ_CASES and arm["fuzz"] == runs["x86"]["fuzz"]
    outcomes = arm["fuzz"]
    # The cases reach every outcome: refused by the frame checks, refused by the decoder, decoded.
    assert outcomes.count("unpack") >= 100 and outcomes.count("decode") >= 20
    assert len(outcomes) - outcomes.count("unpack") - outcomes.count("decode") >= 5
    assert outcomes[0] not in ("unpack", "decode")  # the unmutated payload decodes


@pytest.mark.slow
def test_the_script_runs_what_users_type(aarch64):
    machine = subprocess.run([SCRIPT, "--", "python", "-c", "import platform; print(platform.machine())"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, timeout=120)
    assert (machine.returncode, machine.stdout) == (0, "aarch64\n"), machine.stderr
    # The exit status comes through, and a non-Python command is refused in one line.
    failing = subprocess.run([SCRIPT, "--", "python", "-c", "raise SystemExit(3)"], timeout=120)
    assert failing.returncode == 3
    refused = subprocess.run([SCRIPT, "--", "ls"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             universal_newlines=True, timeout=60)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1 and "only Python" in refused.stderr
