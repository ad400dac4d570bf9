"""The entropy coder against CompressAI's EntropyBottleneck: same symbols, same bytes, same reconstruction."""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from ladon_deploy.errors import BundleError, LadonError, PayloadError
from ladon_deploy.runtime import entropy
from ladon_deploy.runtime.entropy import CodingError, EntropyCoder

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CHANNELS = 24


def _bottleneck(seed):
    """A CompressAI EntropyBottleneck(24) with non-trivial tables: perturbed density, spread quantiles."""
    import torch
    from compressai.entropy_models import EntropyBottleneck

    torch.manual_seed(seed)
    bottleneck = EntropyBottleneck(CHANNELS)
    generator = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for parameter in bottleneck.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.3)
        quantiles = bottleneck.quantiles
        quantiles[:, 0, 1] = torch.randn(CHANNELS, generator=generator) * 2.0
        quantiles[:, 0, 0] = quantiles[:, 0, 1] - (3 + torch.rand(CHANNELS, generator=generator) * 10)
        quantiles[:, 0, 2] = quantiles[:, 0, 1] + (3 + torch.rand(CHANNELS, generator=generator) * 10)
    bottleneck.update(force=True)
    return bottleneck


def _tables(bottleneck):
    return {
        "quantized_cdf": bottleneck._quantized_cdf.numpy().astype(np.int32),
        "cdf_length": bottleneck._cdf_length.numpy().astype(np.int32),
        "offset": bottleneck._offset.numpy().astype(np.int32),
        "medians": bottleneck.quantiles[:, 0, 1].detach().numpy().astype(np.float32),
    }


@pytest.fixture(scope="module")
def reference():
    bottleneck = _bottleneck(seed=0)
    return bottleneck, EntropyCoder.from_tables(_tables(bottleneck))


def _latent(coder, shape, seed, scale=3.0):
    """A latent around the medians with escapes (far outside the tables) and exact .5 ties after centering."""
    rng = np.random.default_rng(seed)
    channels, height, width = shape
    medians = coder.medians.reshape(channels, 1, 1)
    y = (rng.standard_normal(shape) * scale + medians).astype(np.float32)
    flat = y.reshape(channels, -1)
    count = flat.shape[1]
    far = np.array([300.0, -300.0, 5000.0, -5000.0, 1.0e5, -1.0e5, 40.0, -40.0], dtype=np.float32)
    for c in range(channels):
        positions = rng.choice(count, size=len(far) + 16, replace=False)
        flat[c, positions[:len(far)]] = far + coder.medians[c]
        # Ties: y - median == k + 0.5 exactly in float32, for both even and odd k.
        median = np.float32(coder.medians[c])
        for position, k in zip(positions[len(far):], range(-8, 8)):
            candidate = np.float32(median + np.float32(k + 0.5))
            if np.float32(candidate - median) == np.float32(k + 0.5):
                flat[c, position] = candidate
    return y[None]


def _torch_symbols(bottleneck, y):
    import torch

    medians = bottleneck.quantiles[:, 0, 1].detach().reshape(1, -1, 1, 1)
    return bottleneck.quantize(torch.from_numpy(y), "symbols", medians).numpy()


@pytest.mark.parametrize("shape", [(CHANNELS, 103, 103), (CHANNELS, 55, 55)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bytes_identical_to_compressai(reference, shape, seed):
    import torch

    bottleneck, coder = reference
    y = _latent(coder, shape, seed)
    centered = y[0] - coder.medians.reshape(-1, 1, 1)
    ties = centered[np.abs(centered - np.floor(centered) - 0.5) == 0]
    assert len(ties) > CHANNELS and len(set(np.floor(ties).astype(int) % 2)) == 2, "the latent must hold .5 ties"

    symbols = coder.quantize(y)
    np.testing.assert_array_equal(symbols, _torch_symbols(bottleneck, y)[0])
    lows = symbols - coder.offset.reshape(-1, 1, 1)
    assert (lows < 0).any() and (lows >= (coder.cdf_length - 2).reshape(-1, 1, 1)).any(), "escapes expected"

    body = coder.encode(symbols)
    assert body == bottleneck.compress(torch.from_numpy(y))[0]
    assert coder.compress(y) == body


@pytest.mark.parametrize("seed", [3, 4])
def test_decode_and_dequantize_match_compressai(reference, seed):
    bottleneck, coder = reference
    shape = (CHANNELS, 55, 55)
    y = _latent(coder, shape, seed)
    symbols = coder.quantize(y)
    body = coder.encode(symbols)

    decoded = coder.decode(body, shape)
    assert decoded.dtype == np.int32 and decoded.shape == shape
    np.testing.assert_array_equal(decoded, symbols)

    y_hat = coder.decompress(body, shape)
    assert y_hat.dtype == np.float32 and y_hat.shape == (1,) + shape
    expected = bottleneck.decompress([body], shape[1:]).numpy()
    np.testing.assert_array_equal(y_hat, expected)
    np.testing.assert_array_equal(coder.dequantize(symbols), expected)


def test_symbols_at_the_limits_round_trip_and_match(reference):
    """Symbols outside [-128, 127] take the slow conversion paths; up to +-SYMBOL_LIMIT they must stay exact."""
    import torch

    bottleneck, coder = reference
    shape = (CHANNELS, 9, 11)
    symbols = np.random.default_rng(5).integers(-3, 4, size=shape).astype(np.int32)
    symbols[0, 0, :4] = [1 << 20, -(1 << 20), 129, -129]
    body = coder.encode(symbols)
    np.testing.assert_array_equal(coder.decode(body, shape), symbols)
    y = (symbols.astype(np.float32) + coder.medians.reshape(-1, 1, 1))[None]
    np.testing.assert_array_equal(coder.quantize(y), symbols)
    assert bottleneck.compress(torch.from_numpy(y))[0] == body

    symbols[0, 0, :2] = [entropy.SYMBOL_LIMIT, -entropy.SYMBOL_LIMIT]
    np.testing.assert_array_equal(coder.decode(coder.encode(symbols), shape), symbols)


def test_npz_round_trip(reference, tmp_path):
    _, coder = reference
    path = str(tmp_path / "entropy.npz")
    np.savez(path, **coder.to_tables())
    loaded = EntropyCoder.from_npz(path)
    shape = (CHANNELS, 7, 5)
    symbols = np.random.default_rng(6).integers(-20, 20, size=shape).astype(np.int32)
    assert loaded.encode(symbols) == coder.encode(symbols)


def test_quantize_accepts_chw_and_refuses_bad_latents(reference):
    _, coder = reference
    y = _latent(coder, (CHANNELS, 6, 6), seed=7)
    np.testing.assert_array_equal(coder.quantize(y), coder.quantize(y[0]))
    for bad, words in [(np.full((1, CHANNELS, 2, 2), np.nan, np.float32), "NaN"),
                       (np.full((1, CHANNELS, 2, 2), np.inf, np.float32), "NaN/inf"),
                       (np.full((1, CHANNELS, 2, 2), 1e9, np.float32), "beyond"),
                       (np.zeros((2, CHANNELS, 2, 2), np.float32), "batch size 2"),
                       (np.zeros((1, CHANNELS + 1, 2, 2), np.float32), "expected (1, 24, H, W)")]:
        with pytest.raises(CodingError, match=words.replace("(", r"\(").replace(")", r"\)")):
            coder.quantize(bad)


def test_encode_refuses_what_the_extension_cannot_code(reference):
    _, coder = reference
    with pytest.raises(CodingError, match="beyond"):
        coder.encode(np.full((CHANNELS, 2, 2), entropy.SYMBOL_LIMIT + 1, np.int32))
    with pytest.raises(CodingError, match="integers"):
        coder.encode(np.zeros((CHANNELS, 2, 2), np.float32))
    with pytest.raises(CodingError, match="channels|expected"):
        coder.encode(np.zeros((3, 2, 2), np.int32))
    tiny = EntropyCoder.from_tables({key: value[:1] for key, value in coder.to_tables().items()})
    with pytest.raises(CodingError, match="at least 4"):
        tiny.encode(np.zeros((1, 1, 3), np.int32))
    assert isinstance(tiny.encode(np.zeros((1, 2, 2), np.int32)), bytes)


def test_decode_refuses_impossible_bodies_and_shapes(reference):
    _, coder = reference
    shape = (CHANNELS, 8, 8)
    body = coder.encode(np.zeros(shape, np.int32))
    cases = [
        (body, (CHANNELS + 1, 8, 8), "channels"),
        (body, (CHANNELS, 0, 8), "empty"),
        (body, (CHANNELS, 65535, 65535), "more than the limit"),
        (body, (CHANNELS, 8), r"\(C, H, W\)"),
        (body[:-1], shape, "multiple of 4"),
        (body[:4], shape, "at least 8"),
        (b"", shape, "at least 8"),
        (b"\x00" * 8 + body[8:], shape, "initial state"),
        (b"\xff" * 8 + body[8:], shape, "initial state"),
        (body + b"\x00" * (8 * CHANNELS * 64), shape, "more than"),
    ]
    for data, declared, words in cases:
        with pytest.raises(PayloadError, match=words):
            coder.decode(data, declared)


def test_padding_covers_runs_of_ones():
    assert entropy._longest_ones_run(b"\x00" * 16) == 0
    ones = b"\xff\xff\xff\xff"
    assert entropy._longest_ones_run(b"\x01\x00\x00\x80" + ones * 3 + b"\x00" * 4 + ones * 5) == 5
    assert entropy._padding(10, ones * 2) == 40 + 72 * 2 + 4096


def _valid_tables(coder):
    return {key: np.array(value) for key, value in coder.to_tables().items()}


def test_tables_are_validated(reference):
    _, coder = reference
    empty = {key: np.zeros((0,), np.int32 if key != "medians" else np.float32) for key in entropy.ENTROPY_ARRAYS}
    with pytest.raises(BundleError, match=r"update\(force=True\)"):
        EntropyCoder.from_tables(empty)

    def broken(**changes):
        tables = _valid_tables(coder)
        tables.update(changes)
        return tables

    lmax = coder.quantized_cdf.shape[1]
    lengths = coder.cdf_length.copy()
    lengths[3] = lmax + 1
    reversed_cdf = coder.quantized_cdf.copy()
    reversed_cdf[2, 1], reversed_cdf[2, 2] = reversed_cdf[2, 2], reversed_cdf[2, 1]
    unterminated = coder.quantized_cdf.copy()
    unterminated[5, coder.cdf_length[5] - 1] = 65535
    cases = [
        (broken(quantized_cdf=coder.quantized_cdf.astype(np.int64)), "int32"),
        (broken(medians=coder.medians.astype(np.float64)), "float32"),
        (broken(offset=coder.offset[:-1]), "shape"),
        (broken(quantized_cdf=coder.quantized_cdf[0]), "2-D"),
        (broken(cdf_length=lengths), r"outside \[3, %d\]" % lmax),
        (broken(quantized_cdf=reversed_cdf), "strictly increasing"),
        (broken(quantized_cdf=unterminated), "strictly increasing"),
        (broken(medians=np.full(CHANNELS, np.nan, np.float32)), "non-finite"),
        ({"quantized_cdf": coder.quantized_cdf}, "lack"),
    ]
    for tables, words in cases:
        with pytest.raises(BundleError, match=words):
            EntropyCoder.from_tables(tables)


def test_from_npz_reports_unreadable_files(tmp_path):
    path = tmp_path / "entropy.npz"
    path.write_bytes(b"not a zip")
    with pytest.raises(BundleError, match="cannot read entropy tables"):
        EntropyCoder.from_npz(str(path))
    with pytest.raises(BundleError, match="cannot read entropy tables"):
        EntropyCoder.from_npz(str(tmp_path / "missing.npz"))


def _run_python(script, *args, timeout=300):
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-c", textwrap.dedent(script)] + [str(arg) for arg in args],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True, env=env,
                          timeout=timeout, cwd=REPO)


@pytest.fixture(scope="module")
def saved(reference, tmp_path_factory):
    """Tables, a latent and CompressAI's bytes for it, on disk for subprocesses."""
    import torch

    bottleneck, coder = reference
    directory = tmp_path_factory.mktemp("entropy")
    tables = str(directory / "entropy.npz")
    np.savez(tables, **coder.to_tables())
    y = _latent(coder, (CHANNELS, 55, 55), seed=8)
    latent = str(directory / "y.npy")
    np.save(latent, y)
    reference_body = str(directory / "body.bin")
    with open(reference_body, "wb") as handle:
        handle.write(bottleneck.compress(torch.from_numpy(y))[0])
    return tables, latent, reference_body


NO_TORCH = """
    import sys

    class BlockTorch(object):
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                raise ImportError("torch is blocked in this process")
            return None

    sys.meta_path.insert(0, BlockTorch())
"""


def test_extension_loads_without_torch_or_compressai(saved):
    tables, latent, reference_body = saved
    result = _run_python(NO_TORCH + """
    import numpy as np
    from ladon_deploy.runtime.entropy import EntropyCoder, find_rans_extension, load_rans

    module = load_rans()
    assert load_rans() is module
    coder = EntropyCoder.from_npz(sys.argv[1])
    y = np.load(sys.argv[2])
    body = coder.compress(y)
    assert body == open(sys.argv[3], "rb").read(), "bytes differ from CompressAI's"
    assert np.array_equal(coder.decode(body, y.shape[1:]), coder.quantize(y))
    loaded = sorted(name for name in sys.modules if name.split(".")[0] in ("torch", "compressai"))
    print("LOADED", loaded, module.__file__ == find_rans_extension())
    """, tables, latent, reference_body)
    assert result.returncode == 0, result.stdout
    assert "LOADED ['compressai.ans'] True" in result.stdout, result.stdout


def test_compressai_still_works_after_direct_load(saved):
    """A server process may load the coder first and import compressai later: one extension instance serves both."""
    tables, latent, reference_body = saved
    result = _run_python("""
    import sys
    import numpy as np
    from ladon_deploy.runtime.entropy import EntropyCoder, load_rans

    module = load_rans()
    import torch
    from compressai import ans
    from compressai.entropy_models import EntropyBottleneck

    assert ans is module
    coder = EntropyCoder.from_npz(sys.argv[1])
    bottleneck = EntropyBottleneck(coder.channels)
    bottleneck.update(force=True)
    bottleneck._quantized_cdf = torch.from_numpy(coder.quantized_cdf)
    bottleneck._cdf_length = torch.from_numpy(coder.cdf_length)
    bottleneck._offset = torch.from_numpy(coder.offset)
    with torch.no_grad():
        bottleneck.quantiles[:, 0, 1] = torch.from_numpy(coder.medians)
    y = np.load(sys.argv[2])
    assert bottleneck.compress(torch.from_numpy(y))[0] == open(sys.argv[3], "rb").read()
    print("OK")
    """, tables, latent, reference_body)
    assert result.returncode == 0 and "OK" in result.stdout, result.stdout


def test_missing_extension_is_a_clear_error():
    result = _run_python("""
    import importlib.util
    import sys

    from ladon_deploy.errors import LadonError
    from ladon_deploy.runtime import entropy

    real_find_spec = importlib.util.find_spec
    importlib.util.find_spec = lambda name, *args: None if name == "compressai" else real_find_spec(name, *args)

    class BlockCompressAI(object):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("torch", "compressai"):
                raise ImportError("blocked")
            return None

    sys.meta_path.insert(0, BlockCompressAI())
    try:
        entropy.load_rans()
    except entropy.RansUnavailableError as exc:
        assert isinstance(exc, LadonError)
        print("ERROR", exc)
    """)
    assert result.returncode == 0, result.stdout
    assert "ERROR CompressAI's rANS extension is not available" in result.stdout, result.stdout


GARBAGE = """
    import sys
    import numpy as np
    from ladon_deploy.errors import LadonError
    from ladon_deploy.runtime.entropy import EntropyCoder

    coder = EntropyCoder.from_npz(sys.argv[1])
    rng = np.random.default_rng(9)

    def valid_state(body):
        state = (int.from_bytes(body[:8], "little") % (1 << 63)) | (1 << 31)
        return state.to_bytes(8, "little") + body[8:]

    decoded = refused = 0
    for height in (103, 400):
        shape = (coder.channels, height, height)
        bodies = [b"", b"\\x00" * 8, valid_state(b"\\x00" * 8), valid_state(b"\\xff" * 8),
                  valid_state(b"\\xff" * 4096), valid_state(b"\\x00" * 100)]
        bodies += [valid_state(rng.integers(0, 256, 4 * int(rng.integers(2, 3000)), dtype=np.uint8).tobytes())
                   for _ in range(6)]
        for body in bodies:
            try:
                symbols = coder.decode(body, shape)
            except LadonError:
                refused += 1
                continue
            assert symbols.shape == shape and symbols.dtype == np.int32
            decoded += 1
    print("DONE", decoded, refused)
"""


@pytest.mark.slow
def test_garbage_bodies_cannot_crash_the_decoder(saved):
    """Unpadded, these bodies SIGSEGV the extension (measured); run in a child so a crash reads as a failure."""
    tables, _, _ = saved
    result = _run_python(GARBAGE, tables)
    assert result.returncode == 0, "decoder crashed (exit %d): %s" % (result.returncode, result.stdout[-2000:])
    assert "DONE 20 4" in result.stdout, result.stdout


def test_errors_are_ladon_errors():
    assert issubclass(CodingError, LadonError)
    assert issubclass(entropy.RansUnavailableError, LadonError)
