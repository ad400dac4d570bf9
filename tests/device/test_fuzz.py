"""Fuzzing unpack + decode: a mutated payload must decode to the declared shape or raise a PayloadError (as the
README promises), never crash, hang or raise anything else.

Most mutations break the CRC and stop at unpack; the forged ones carry a recomputed valid CRC, so header checks alone
must stop them, or they reach the rANS decoder with garbage (which, unguarded, crashes CompressAI's decoder). Both
backends are fuzzed; the native decoder's results are also checked against CompressAI's on every body that reaches
it. Torch-free on purpose: the coder runs on synthetic tables, as on an edge device without torch.
"""
import json
import os
import struct
import subprocess
import sys
import textwrap
import time
import zlib

import numpy as np
import pytest

from ladon_deploy.errors import PayloadError
from ladon_deploy.device import entropy
from ladon_deploy.device.entropy import EntropyCoder
from ladon_deploy.device.wire import HEADER_SIZE, Payload, pack, unpack

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SEED = 20250301
CASES = 20000
BUNDLE = "0badc0de"
CHANNELS = 24
SHAPE = (CHANNELS, 16, 16)
MAX_SYMBOLS = 1 << 18  # what a Ladon server would allow: its 416x416 latent has 254,616 symbols
HEADER = struct.Struct("<3sB4s7HBI")


def synthetic_tables(rng, channels):
    """Quantized CDFs of discretized Laplacians with a random tail (escape) mass, CompressAI's table layout."""
    rows = []
    offsets = []
    for _ in range(channels):
        minima, maxima = int(rng.integers(1, 15)), int(rng.integers(1, 15))
        support = np.arange(-minima, maxima + 1)
        pmf = np.exp(-np.abs(support) / rng.uniform(0.3, 3.0))
        tail = rng.uniform(1e-9, 0.05)
        probabilities = np.append(pmf / pmf.sum() * (1 - tail), tail)
        frequencies = np.maximum(1, np.round(probabilities * 65536)).astype(np.int64)
        frequencies[np.argmax(frequencies)] += 65536 - frequencies.sum()
        rows.append(np.concatenate([[0], np.cumsum(frequencies)]))
        offsets.append(-minima)
    lmax = max(len(row) for row in rows)
    cdf = np.zeros((channels, lmax), np.int32)
    for index, row in enumerate(rows):
        cdf[index, :len(row)] = row
    return {"quantized_cdf": cdf, "cdf_length": np.array([len(row) for row in rows], np.int32),
            "offset": np.array(offsets, np.int32), "medians": rng.normal(0, 2, channels).astype(np.float32)}


def reframe(fields, body):
    """A payload from raw header fields and body, with a valid CRC."""
    framed = HEADER.pack(*fields) + body
    return framed + struct.pack("<I", zlib.crc32(framed) & 0xFFFFFFFF)


def valid_state(body):
    state = (int.from_bytes(body[:8], "little") % (1 << 63)) | (1 << 31)
    return state.to_bytes(8, "little") + body[8:]


def random_words(rng, count):
    return rng.integers(0, 256, 4 * count, dtype=np.uint8).tobytes()


def forge_once(rng, fields, body):
    """One change to the header fields (a list, changed in place) and/or the body; returns the body and whether
    the declared body length was set on purpose (otherwise it is made to match)."""
    kind = int(rng.integers(0, 13))
    if kind == 0:  # any header field to any value its width allows
        index = int(rng.integers(1, len(fields)))
        if index == 2:
            fields[2] = rng.integers(0, 256, 4, dtype=np.uint8).tobytes()
        elif index == 1 or index == 10:
            fields[index] = int(rng.integers(0, 256))
        elif index == 11:
            fields[11] = int(rng.integers(0, 1 << 32))
        else:
            fields[index] = int(rng.choice([0, 1, 2, int(rng.integers(0, 65536)), 65535]))
        return body, index == 11
    if kind == 1:  # huge declared body length
        fields[11] = int(rng.choice([len(body) + 4, 1 << 20, (1 << 26) + 1, (1 << 32) - 1]))
        return body, True
    if kind == 2:  # huge shapes
        fields[3:6] = [int(rng.choice([CHANNELS, 65535])), int(rng.integers(100, 65536)),
                       int(rng.integers(100, 65536))]
    elif kind == 3:  # wrong bundle
        fields[2] = bytes.fromhex("5e6f7a8b")
    elif kind == 4:  # zero sizes
        fields[int(rng.integers(3, 10))] = 0
    elif kind == 5:  # unknown or no task bits
        fields[10] = int(rng.choice([0, 8, 0x10, 0x80, 0xFF, 0b1001]))
    elif kind == 6:  # a latent shape that does not match the body (often decodable garbage)
        fields[3] = CHANNELS if rng.random() < 0.8 else int(rng.integers(1, 64))
        fields[4:6] = [int(rng.integers(1, 110)), int(rng.integers(1, 110))]
        fields[7:9] = [fields[4] * 4, fields[5] * 4]
    elif kind == 7:  # random words, the rANS state made plausible half the time
        body = random_words(rng, int(rng.integers(0, 700)))
        if rng.random() < 0.5 and len(body) >= 8:
            body = valid_state(body)
    elif kind == 8:  # the body's bits flipped here and there
        mutable = bytearray(body)
        for _ in range(int(rng.integers(1, 9))):
            mutable[int(rng.integers(0, len(mutable)))] ^= 1 << int(rng.integers(0, 8))
        body = bytes(mutable)
    elif kind == 9:  # all ones (the longest escape-length runs) or all zeros, plausible state
        filler = b"\xff" if rng.random() < 0.5 else b"\x00"
        body = valid_state(filler * (4 * int(rng.integers(2, 7 * int(np.prod(SHAPE)) // 4))))
    elif kind == 10:  # body cut or grown by whole words
        if rng.random() < 0.5:
            body = body[:4 * int(rng.integers(0, len(body) // 4))]
        else:
            body = body + random_words(rng, int(rng.integers(1, 64)))
    elif kind == 11:  # a short body declared as a large latent
        body = valid_state(random_words(rng, int(rng.integers(2, 40))))
        fields[4:6] = [int(rng.integers(50, 105)), int(rng.integers(50, 105))]
        fields[7:9] = [fields[4] * 4, fields[5] * 4]
    else:  # resized size beyond the padded input
        fields[7] = min(65535, fields[4] * 4 + int(rng.integers(5, 1000)))
    return body, False


def forged(rng, fields, body):
    """Header fields and/or body changed (once, or twice), CRC recomputed."""
    fields = list(fields)
    length_set = False
    for _ in range(1 if rng.random() < 0.8 else 2):
        body, changed = forge_once(rng, fields, body)
        length_set = length_set or changed
    if not length_set:
        fields[11] = len(body)
    return reframe(fields, body)


def mutate(rng, data, fields, body):
    kind = int(rng.integers(0, 10))  # half of them forged: those are the ones that reach the decoder
    if kind == 0:  # bit flips anywhere
        mutable = bytearray(data)
        for _ in range(int(rng.integers(1, 9))):
            mutable[int(rng.integers(0, len(mutable)))] ^= 1 << int(rng.integers(0, 8))
        return "flip", bytes(mutable)
    if kind == 1:
        return "truncate", data[:int(rng.integers(0, len(data)))]
    if kind == 2:
        return "extend", data + rng.integers(0, 256, int(rng.integers(1, 64)), dtype=np.uint8).tobytes()
    if kind == 3:
        noise = rng.integers(0, 256, int(rng.integers(0, 300)), dtype=np.uint8).tobytes()
        return "random", (data[:4] + noise) if rng.random() < 0.5 else noise
    if kind == 4:  # a slice overwritten
        start = int(rng.integers(0, len(data)))
        stop = min(len(data), start + int(rng.integers(1, 32)))
        return "splice", data[:start] + rng.integers(0, 256, stop - start, dtype=np.uint8).tobytes() + data[stop:]
    return "forged", forged(rng, fields, body)


def require_native():
    """Skip without the native coder, except in CI (CI or LADON_REQUIRE_NATIVE set, as .ci/run does): there its
    absence is a failure (see tests/device/test_entropy.py)."""
    if entropy.native_available():
        return
    if os.environ.get("LADON_REQUIRE_NATIVE") or os.environ.get("CI"):
        pytest.fail("the native coder ladon_deploy.device._rans is not built, and CI requires it")
    pytest.skip("the native coder ladon_deploy.device._rans is not built")


def _compressai_coder(tables):
    """A coder on CompressAI's extension, or None where compressai is not installed (an edge device)."""
    try:
        entropy.load_rans()
    except entropy.RansUnavailableError:
        return None
    return EntropyCoder.from_tables(tables, backend="compressai")


PER_CASE_SECONDS = 10.0  # one case decodes at most 24x103x103 symbols: milliseconds; beyond this it hangs


def fuzz_payloads(backend, progress_path):
    """The fuzz loop; runs in a child process (see the test). Returns the outcome counts and cross-check figures.

    Before each case its number is written to progress_path and a watchdog armed (faulthandler's, which runs in its
    own thread, so it also ends a decoder spinning in C): a hang ends the process with the case on record.
    """
    import faulthandler

    rng = np.random.default_rng(SEED)
    tables = synthetic_tables(rng, CHANNELS)
    coder = EntropyCoder.from_tables(tables, backend=backend)
    # Every body the native decoder reads is read by CompressAI's too: where the native one decodes, CompressAI's
    # must give the same symbols (it reads the same words); where the native one finds the stream runs out,
    # CompressAI's goes on into its padding.
    cross = _compressai_coder(tables) if backend == "native" else None
    cross_checked = stricter = 0
    y = (rng.standard_normal(SHAPE) * 2.5 + coder.medians.reshape(-1, 1, 1)).astype(np.float32)[None]
    body = coder.compress(y)
    data = pack(Payload(BUNDLE, SHAPE, (48, 60), (64, 64), ("cls", "det", "seg"), body))
    fields = HEADER.unpack(data[:HEADER_SIZE])
    np.testing.assert_array_equal(coder.decompress(unpack(data, BUNDLE).body, SHAPE), coder.dequantize(coder.quantize(y)))

    outcomes = {}
    progress = os.open(progress_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    started = time.perf_counter()
    for case in range(CASES):
        kind, mutated = mutate(rng, data, fields, body)
        os.pwrite(progress, ("case %6d %-9s\n" % (case, kind)).encode(), 0)
        faulthandler.dump_traceback_later(PER_CASE_SECONDS, exit=True)
        try:
            payload = unpack(mutated, expected_bundle_id=BUNDLE, max_symbols=MAX_SYMBOLS)
        except PayloadError:
            outcome = "rejected by unpack"
        else:
            try:
                symbols = coder.decode(payload.body, payload.latent_shape)
            except PayloadError:  # what the README promises; any other exception fails the test
                outcome = "rejected by decode"
                symbols = None
            else:
                assert symbols.shape == payload.latent_shape and symbols.dtype == np.int32
                outcome = "decoded" if payload.body == body and payload.latent_shape == SHAPE else "decoded garbage"
            if cross is not None:
                try:
                    expected = cross.decode(payload.body, payload.latent_shape)
                except PayloadError:
                    expected = None
                if symbols is not None:
                    assert expected is not None and np.array_equal(symbols, expected), "differs from CompressAI"
                    cross_checked += 1
                elif expected is not None:
                    stricter += 1
        faulthandler.cancel_dump_traceback_later()
        key = "%s/%s" % (kind, outcome)
        outcomes[key] = outcomes.get(key, 0) + 1
    os.close(progress)
    return {"outcomes": outcomes, "cross_checked": cross_checked, "stricter": stricter,
            "seconds": time.perf_counter() - started, "cross": cross is not None}


FUZZ_CHILD = """
    import json
    import sys

    sys.path.insert(0, sys.argv[1])
    from test_fuzz import fuzz_payloads

    print("RESULT " + json.dumps(fuzz_payloads(sys.argv[2], sys.argv[3])))
"""


@pytest.mark.slow
@pytest.mark.parametrize("backend", entropy.BACKENDS)
def test_mutated_payloads_decode_or_raise_payload_errors(backend, tmp_path):
    """In a child process, so that a crash (CompressAI's decoder has no bounds checks) or a hang is a failure that
    names the case, and an exception other than PayloadError fails it with its traceback."""
    if backend == "native":
        require_native()
    if backend == "compressai" and _compressai_coder(synthetic_tables(np.random.default_rng(0), 2)) is None:
        pytest.skip("compressai is not installed")
    progress = tmp_path / "progress"
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(FUZZ_CHILD), os.path.dirname(__file__), backend,
                             str(progress)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True,
                            env=env, timeout=900, cwd=REPO)
    last_case = progress.read_text().strip() if progress.exists() else "before the first case"
    assert result.returncode == 0, "fuzz child failed (exit %d) at %s (seed %d, %s): %s" % (
        result.returncode, last_case, SEED, backend, result.stderr[-3000:])
    report = json.loads(result.stdout.split("RESULT ", 1)[1])
    outcomes = report["outcomes"]

    summary = ", ".join("%s: %d" % item for item in sorted(outcomes.items()))
    print("%s: %d cases in %.1f s: %s; %d decodes checked against CompressAI's, %d refused where CompressAI "
          "decoded its padding" % (backend, CASES, report["seconds"], summary, report["cross_checked"],
                                   report["stricter"]))

    def total(kind=None, outcome=None):
        return sum(count for key, count in outcomes.items()
                   if (kind is None or key.split("/")[0] == kind) and (outcome is None or key.split("/")[1] == outcome))

    assert total() == CASES
    # The fuzz must reach the decoder with garbage often, and the checks before it must be doing work too.
    assert total("forged", "decoded garbage") + total("forged", "rejected by decode") >= 2500
    assert total("forged", "rejected by unpack") >= 2000
    if backend == "compressai":
        assert total("forged", "decoded garbage") >= 2000
        assert total("forged", "rejected by decode") >= 200
    else:
        # Most garbage runs out of stream before the latent is complete: the native decoder refuses it.
        assert total("forged", "decoded garbage") >= 200
        assert total("forged", "rejected by decode") >= 2000
        if report["cross"]:
            assert report["cross_checked"] == total("forged", "decoded") + total("forged", "decoded garbage") + \
                total("splice", "decoded")
            assert report["stricter"] >= 1000
    for kind in ("flip", "truncate", "extend", "random", "splice"):
        assert total(kind, "rejected by unpack") >= 0.95 * total(kind)


NATIVE_GARBAGE = """
    import sys
    import time

    import numpy as np
    from ladon_deploy.device import _rans

    sys.path.insert(0, sys.argv[1])
    from test_fuzz import synthetic_tables

    rng = np.random.default_rng(int(sys.argv[2]))
    calls = decoded = refused = 0
    started = time.perf_counter()
    for round_ in range(60):
        channels = int(rng.integers(1, 33))
        tables = synthetic_tables(rng, channels)
        cdf, lengths, offsets = tables["quantized_cdf"], tables["cdf_length"], tables["offset"]
        for _ in range(50):
            count = int(rng.choice([1, 4, 100, 1000, 20000, int(rng.integers(1, 300000))]))
            indexes = rng.integers(0, channels, count).astype(np.int32)
            if rng.random() < 0.05:  # an index outside the tables somewhere
                indexes[int(rng.integers(0, count))] = int(rng.choice([-1, channels, 1 << 30]))
            size = int(rng.choice([0, 1, 4, 7, 8, 12, 16, 64, int(rng.integers(0, 5000)), int(rng.integers(0, 200000))]))
            filler = rng.random()
            if filler < 0.1:
                body = b"\\xff" * size
            elif filler < 0.2:
                body = b"\\x00" * size
            else:
                body = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
            out = np.zeros(count, np.int32)
            calls += 1
            try:
                consumed = _rans.decode(body, indexes, cdf, lengths, offsets, out)
            except ValueError:
                refused += 1
                continue
            assert 8 <= consumed <= len(body) and consumed % 4 == 0, (consumed, len(body))
            decoded += 1
    print("DONE", calls, decoded, refused, "%.1f s" % (time.perf_counter() - started))
"""


@pytest.mark.slow
def test_native_decoder_survives_raw_garbage():
    """Random, all-zero and all-ones bodies of many lengths (0 to 200 kB, whole words or not), up to 300 k symbols,
    some with indexes outside the tables, straight into _rans.decode: every call returns or raises ValueError, and
    none reads past the body (it reports what it consumed). In a child process, so a crash reads as a failure."""
    require_native()
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(NATIVE_GARBAGE), os.path.dirname(__file__),
                             str(SEED)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True,
                            env=env, timeout=300, cwd=REPO)
    assert result.returncode == 0, "native decoder failed (exit %d): %s" % (result.returncode, result.stdout[-3000:])
    assert "DONE 3000" in result.stdout, result.stdout
    print(result.stdout.strip())
