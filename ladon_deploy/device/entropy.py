"""The entropy coder: CompressAI's rANS over the bundle's tables, without importing torch.

Both ends code the latent exactly as `EntropyBottleneck.compress` / `decompress` do (factorized prior, one CDF per
channel, 16-bit precision, out-of-range values escaped), so a body written here is byte-identical to the string
CompressAI returns for the same latent and tables, and either side can be swapped for CompressAI itself.

Two backends do the coding (`EntropyCoder.backend`):

- "native": `ladon_deploy.device._rans`, our C port of CompressAI's rANS coder (built with the package). It takes
  the int32 arrays as they are, bounds-checks every read, and raises ValueError (a PayloadError here) on a stream
  that is too short or invalid. It is the default whenever it imports.
- "compressai": CompressAI's compiled extension (`compressai/ans*.so`, needs only libstdc++), the fallback for an
  install built without a compiler. Its pybind11 calls take Python lists, whose conversion costs most of its time.
  Importing it as `compressai.ans` would run compressai's `__init__` (torch, torchvision, torch_geometric, pandas:
  seconds and ~1 GB), so `load_rans` loads the shared object directly from the installed package directory instead.

Both backends write the same bytes and decode valid streams to the same symbols. On garbage they differ: the
native decoder refuses a stream that runs out (or escapes with more than 7 nibbles, which no encoder writes), where
CompressAI's decodes the padding below as if it were stream.

Guards around CompressAI's extension (it checks nothing itself; see `EntropyCoder.decode` and `EntropyCoder.encode`):

- decode: the stream must be whole 32-bit words, at least the 8-byte final state, and that state must lie in
  [2**31, 2**63) as every rANS64 encoder leaves it. The decoder still reads past the end of a garbage stream (it
  is never told the stream length): unpadded, garbage bodies crash the process (measured: SIGSEGV for 0- and
  8-byte bodies at 24x103x103, and for 100-byte bodies at 24x1000x1000). So the stream is handed over followed by
  zero padding sized to what a decode of that shape can consume (see `_padding`).
- encode: |symbol| <= 2**26, so the escape code stays below 2**28 (from 2**28 on, CompressAI's encoder loops
  forever: measured), and at least 4 symbols (fewer overflow its output buffer).

The structure checks on the body (whole words, size limits, initial state) and the symbol limits on encode apply to
both backends, so what is accepted does not depend on the backend.

Edge subset: Python 3.6 and numpy 1.19 compatible, never imports torch.
"""
import collections
import importlib
import importlib.machinery
import importlib.util
import os
import sys
import threading
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from ladon_deploy.bundle import ENTROPY_ARRAYS
from ladon_deploy.errors import BundleError, LadonError, PayloadError



def _import_native() -> Any:
    try:
        return importlib.import_module("ladon_deploy.device._rans")
    except ImportError:  # installed without a C compiler: CompressAI's extension does the coding
        return None


_native = _import_native()

PRECISION = 16
"""CompressAI's entropy coder precision: every CDF ends at 2**PRECISION."""

MAX_SYMBOLS = 1 << 26
"""The most symbols one latent may have (64 Mi); Ladon at 416x416 has 254,616."""

SYMBOL_LIMIT = 1 << 26
"""Largest |symbol| encode accepts; keeps the escape code below 2**28 for any table offset below OFFSET_LIMIT."""

OFFSET_LIMIT = 1 << 20

MIN_SYMBOLS = 4


BACKENDS = ("native", "compressai")

# Symbols in [-128, 127] cross the pybind boundary as 0..255 with offsets shifted by the same amount: the extension
# only ever uses symbol - offset, so the bytes are identical, and building/reading small non-negative ints is about
# twice as fast (list(bytes) to build, bytearray(list) to read back; CPython caches ints 0..256).
_SHIFT = 128

_RANS_STATE_LOW = 1 << 31
_RANS_STATE_HIGH = 1 << 63
_INDEX_CACHE_SIZE = 4
_INDEX_CACHE_MAX_SYMBOLS = 1 << 22  # a forged huge shape must not pin gigabytes of lists


class RansUnavailableError(LadonError):
    """CompressAI's compiled rANS extension (compressai.ans) cannot be found or loaded."""


class CodingError(LadonError):
    """A latent or symbol array cannot be entropy-coded (wrong shape, NaN/inf, values out of range)."""


def native_available() -> bool:
    """Whether the native coder (ladon_deploy.device._rans) was built and imports."""
    return _native is not None


def default_backend() -> str:
    return "native" if _native is not None else "compressai"


_rans_module = None  # type: Any
_rans_lock = threading.Lock()
_fallback_noted = []  # type: List[bool]


def _note_fallback_once() -> None:
    # A server silently decoding with the weaker fallback (no bounds checks, slower) is what this line prevents.
    with _rans_lock:
        if _fallback_noted:
            return
        _fallback_noted.append(True)
    sys.stderr.write("ladon: note: the native rANS coder (ladon_deploy.device._rans) is not built; coding with "
                     "CompressAI's extension instead (same bytes; slower, and its decoder needs padded input)\n")
    sys.stderr.flush()


def find_rans_extension() -> Optional[str]:
    """Path of compressai's compiled `ans` extension for this interpreter, found without importing compressai."""
    try:
        spec = importlib.util.find_spec("compressai")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for directory in spec.submodule_search_locations:
        for suffix in importlib.machinery.EXTENSION_SUFFIXES:
            path = os.path.join(directory, "ans" + suffix)
            if os.path.isfile(path):
                return path
    return None


def _check_api(module: Any, where: str) -> Any:
    # Early releases called them RangeEncoder/RangeDecoder and sized the encoder's output buffer one word per
    # symbol, which escapes overflow: the guards here assume the buffered encoder of later releases.
    if not (hasattr(module, "RansEncoder") and hasattr(module, "RansDecoder")):
        raise RansUnavailableError("%s has no RansEncoder/RansDecoder: this compressai is too old (1.2.x works)"
                                   % where)
    return module


def _load_rans_uncached() -> Any:
    existing = sys.modules.get("compressai.ans")
    if existing is not None:
        # A second PyInit of the same pybind11 module fails ("type already registered"): reuse the loaded one.
        return _check_api(existing, "compressai.ans")
    path = find_rans_extension()
    if path is not None:
        loader = importlib.machinery.ExtensionFileLoader("compressai.ans", path)
        spec = importlib.util.spec_from_file_location("compressai.ans", path, loader=loader)
        try:
            module = importlib.util.module_from_spec(spec)
            loader.exec_module(module)
        except (ImportError, OSError) as exc:
            raise RansUnavailableError("cannot load CompressAI's rANS extension %s: %s" % (path, exc))
        # Registered so that a later `from compressai import ans` (server processes that also import compressai)
        # reuses this instance instead of initialising the pybind11 module twice. compressai itself stays unloaded.
        sys.modules["compressai.ans"] = module
        return _check_api(module, path)
    try:
        # Only for installs laid out differently (e.g. a Jetson source build): this path imports torch.
        from compressai import ans  # type: ignore
    except Exception as exc:  # compressai's __init__ can fail in many ways when torch is missing or broken
        raise RansUnavailableError(
            "CompressAI's rANS extension is not available (%s: %s); install compressai (pip install compressai, or "
            "build it from source on a Jetson)" % (type(exc).__name__, exc))
    return _check_api(ans, "compressai.ans")


def load_rans() -> Any:
    """Loads (once per process) and returns CompressAI's `ans` extension module without running compressai's
    `__init__`, so neither torch nor the compressai package is imported."""
    global _rans_module
    if _rans_module is None:
        with _rans_lock:
            if _rans_module is None:
                _rans_module = _load_rans_uncached()
    return _rans_module


def _longest_ones_run(body: bytes) -> int:
    """Length of the longest run of 0xFFFFFFFF words in a body of whole 32-bit words."""
    ones = np.frombuffer(body, dtype="<u4") == 0xFFFFFFFF
    if not ones.any():
        return 0
    edges = np.diff(np.concatenate(([0], ones.astype(np.int8), [0])))
    return int((np.flatnonzero(edges == -1) - np.flatnonzero(edges == 1)).max())


def _padding(count: int, body: bytes) -> int:
    """Zero bytes to append to a body of `count` symbols so that decoding garbage stays inside the buffer.

    The decoder does not know where the stream ends, so a garbage body makes it read past it. With the initial
    state in [2**31, 2**63) the state stays in [2**31, 2**64), so each 32-bit word read pays for 32 bits of
    consumption: at most 16 bits per ordinary symbol (every CDF interval has frequency >= 1) and 4 per escape
    nibble. Zero words keep that at the 16-bit cap: right after a zero word the decoder takes the first interval
    (never the escape), and a zero nibble ends an escape-length run. Measured with an exact model of the decoder
    over random bodies and tables from nearly-all-escape to uniform: at most 2.0 bytes read per symbol past the
    body; 4 are given. The one thing that reads far more is an escape length run (each 0xF nibble adds 15 nibbles
    to read), which needs a run of 0xFFFFFFFF words in the body (or 16 nibbles of state): at most 60 bytes per
    such word (plus 180), 72 are given.
    """
    return 4 * count + 72 * _longest_ones_run(body) + 4096


def _as_int32(name: str, array: Any) -> np.ndarray:
    array = np.asarray(array)
    if array.dtype.kind != "i" or array.dtype.itemsize != 4:
        raise BundleError("entropy table %r must be int32, got %s" % (name, array.dtype))
    return np.ascontiguousarray(array, dtype=np.int32)


class EntropyCoder(object):
    """Quantizes and rANS-codes one latent with a bundle's entropy tables, exactly like CompressAI's
    `EntropyBottleneck.compress` / `decompress`.

    Tables: quantized_cdf int32 (C, Lmax), cdf_length int32 (C,), offset int32 (C,), medians float32 (C,), i.e.
    `_quantized_cdf`, `_cdf_length`, `_offset` and `quantiles[:, 0, 1]` of an updated EntropyBottleneck.

    backend: None (the native coder when it is built, else CompressAI's extension), "native" or "compressai";
    `self.backend` says which one codes.
    """

    def __init__(self, quantized_cdf: np.ndarray, cdf_length: np.ndarray, offset: np.ndarray,
                 medians: np.ndarray, backend: Optional[str] = None) -> None:
        if backend is None:
            backend = default_backend()
        if backend not in BACKENDS:
            raise ValueError("backend must be None, 'native' or 'compressai', got %r" % (backend,))
        if backend == "native" and _native is None:
            raise RansUnavailableError("the native rANS coder (ladon_deploy.device._rans) is not built: reinstall "
                                       "ladon-deploy with a C compiler, or use backend='compressai'")
        if backend == "compressai" and _native is None:
            _note_fallback_once()
        self.backend = backend  # type: str
        cdf = _as_int32("quantized_cdf", quantized_cdf)
        lengths = _as_int32("cdf_length", cdf_length)
        offsets = _as_int32("offset", offset)
        medians = np.asarray(medians)
        if cdf.size == 0 or lengths.size == 0 or offsets.size == 0 or medians.size == 0:
            raise BundleError("entropy tables are empty: the EntropyBottleneck was never updated; call "
                              "entropy_bottleneck.update(force=True) before exporting its tables")
        if cdf.ndim != 2:
            raise BundleError("quantized_cdf must be 2-D (channels, Lmax), got shape %s" % (cdf.shape,))
        channels, lmax = cdf.shape
        for name, array in (("cdf_length", lengths), ("offset", offsets), ("medians", medians)):
            if array.shape != (channels,):
                raise BundleError("entropy table %r has shape %s, expected (%d,)" % (name, array.shape, channels))
        if medians.dtype.kind != "f" or medians.dtype.itemsize != 4:
            raise BundleError("entropy table 'medians' must be float32, got %s" % medians.dtype)
        medians = np.ascontiguousarray(medians, dtype=np.float32)
        if not np.all(np.isfinite(medians)) or np.abs(medians).max() > OFFSET_LIMIT:
            raise BundleError("entropy table 'medians' holds non-finite or implausibly large values")
        if np.abs(offsets.astype(np.int64)).max() > OFFSET_LIMIT:
            raise BundleError("entropy table 'offset' holds values beyond +-%d" % OFFSET_LIMIT)
        for c in range(channels):
            length = int(lengths[c])
            # The extension trusts these without checking (its asserts are compiled out): a zero-width interval
            # divides by zero when encoding, a short or unterminated row is read out of bounds.
            if length < 3 or length > lmax:
                raise BundleError("cdf_length[%d] = %d is outside [3, %d]" % (c, length, lmax))
            row = cdf[c, :length].astype(np.int64)
            if row[0] != 0 or row[-1] != (1 << PRECISION) or np.any(np.diff(row) <= 0):
                raise BundleError("quantized_cdf row %d is not a strictly increasing CDF from 0 to %d"
                                  % (c, 1 << PRECISION))
        self.channels = channels
        self.quantized_cdf = cdf
        self.cdf_length = lengths
        self.offset = offsets
        self.medians = medians
        self._medians_chw = medians.reshape(channels, 1, 1)
        if backend == "compressai":
            # The pybind11 calls take Python lists; converting the tables once per coder keeps that off the hot
            # path. (The native coder takes the int32 arrays above as they are.)
            self._cdf_lists = cdf.tolist()  # type: List[List[int]]
            self._length_list = lengths.tolist()  # type: List[int]
            self._offset_list = offsets.tolist()  # type: List[int]
            self._shifted_offset_list = [value + _SHIFT for value in self._offset_list]  # type: List[int]
        # Per latent shape: the channel index of every symbol, an int32 array (native) or a list (compressai).
        self._indexes = collections.OrderedDict()  # type: Dict[Tuple[int, int, int], Any]
        self._indexes_lock = threading.Lock()

    @classmethod
    def from_tables(cls, tables: Mapping[str, Any], backend: Optional[str] = None) -> "EntropyCoder":
        missing = [key for key in ENTROPY_ARRAYS if key not in tables]
        if missing:
            raise BundleError("entropy tables lack %s" % ", ".join(missing))
        return cls(tables["quantized_cdf"], tables["cdf_length"], tables["offset"], tables["medians"],
                   backend=backend)

    def to_tables(self) -> Dict[str, np.ndarray]:
        return {"quantized_cdf": self.quantized_cdf, "cdf_length": self.cdf_length, "offset": self.offset,
                "medians": self.medians}

    # -- shapes ------------------------------------------------------------------------------------------------------

    def _chw(self, array: np.ndarray, what: str) -> np.ndarray:
        if array.ndim == 4:
            if array.shape[0] != 1:
                raise CodingError("%s has batch size %d; one latent per payload" % (what, array.shape[0]))
            array = array[0]
        if array.ndim != 3 or array.shape[0] != self.channels:
            raise CodingError("%s has shape %s, expected (1, %d, H, W) or (%d, H, W)"
                              % (what, array.shape, self.channels, self.channels))
        if array.size == 0:
            raise CodingError("%s is empty: shape %s" % (what, array.shape))
        return array

    def check_shape(self, shape: Sequence[int]) -> Tuple[int, int, int]:
        """Validates a declared latent shape (C, H, W) against the tables and the size limits."""
        try:
            channels, height, width = (int(value) for value in shape)
        except (TypeError, ValueError):
            raise PayloadError("latent shape must be (C, H, W), got %r" % (shape,))
        if channels != self.channels:
            raise PayloadError("latent has %d channels, the entropy tables have %d" % (channels, self.channels))
        if height < 1 or width < 1:
            raise PayloadError("latent shape %dx%dx%d is empty" % (channels, height, width))
        count = channels * height * width
        if count > MAX_SYMBOLS:
            raise PayloadError("latent shape %dx%dx%d has %d symbols, more than the limit of %d"
                               % (channels, height, width, count, MAX_SYMBOLS))
        return channels, height, width

    def _index_list(self, shape: Tuple[int, int, int]) -> Any:
        # The channel index of every element in C-order, as EntropyBottleneck._build_indexes builds it: a read-only
        # int32 array for the native coder, a list for CompressAI's. Cached because building (and, for the list,
        # re-converting) 250 k of them costs milliseconds.
        with self._indexes_lock:
            indexes = self._indexes.get(shape)
            if indexes is not None:
                self._indexes.move_to_end(shape)
                return indexes
        channels, height, width = shape
        indexes = np.repeat(np.arange(channels, dtype=np.int32), height * width)
        if self.backend == "native":
            indexes.setflags(write=False)
        else:
            indexes = indexes.tolist()
        if len(indexes) > _INDEX_CACHE_MAX_SYMBOLS:
            return indexes
        with self._indexes_lock:
            self._indexes[shape] = indexes
            while len(self._indexes) > _INDEX_CACHE_SIZE:
                self._indexes.popitem(last=False)
        return indexes

    # -- quantization ------------------------------------------------------------------------------------------------

    def quantize(self, y: np.ndarray) -> np.ndarray:
        """round(y - medians) per channel as int32 (C, H, W); y is float (1, C, H, W) or (C, H, W).

        Computed in float32 with round-half-to-even, the same arithmetic as torch.round(y - medians).
        """
        latent = self._chw(np.asarray(y, dtype=np.float32), "latent")
        rounded = np.rint(latent - self._medians_chw)
        low, high = rounded.min(), rounded.max()
        # Written so that NaN (which compares false) is refused too.
        if not (low >= -SYMBOL_LIMIT and high <= SYMBOL_LIMIT):
            raise CodingError("latent holds NaN/inf or values beyond +-%d after centering (min %s, max %s): the "
                              "encoder output is invalid" % (SYMBOL_LIMIT, low, high))
        return rounded.astype(np.int32)

    def dequantize(self, symbols: np.ndarray) -> np.ndarray:
        """symbols + medians as float32 (1, C, H, W), the body's input; symbols are (1, C, H, W) or (C, H, W)."""
        array = self._chw(np.asarray(symbols), "symbols")
        return (array.astype(np.float32) + self._medians_chw)[None]

    # -- rANS --------------------------------------------------------------------------------------------------------

    def encode(self, symbols: np.ndarray) -> bytes:
        """rANS-codes int32 symbols (1, C, H, W) or (C, H, W); byte-identical to EntropyBottleneck.compress."""
        array = self._chw(np.asarray(symbols), "symbols")
        if array.dtype.kind not in "iu":
            raise CodingError("symbols must be integers, got %s" % array.dtype)
        shape = (int(array.shape[0]), int(array.shape[1]), int(array.shape[2]))
        if array.size > MAX_SYMBOLS:
            raise CodingError("latent has %d symbols, more than the limit of %d" % (array.size, MAX_SYMBOLS))
        if array.size < MIN_SYMBOLS:
            raise CodingError("latent has %d symbols; rANS coding needs at least %d" % (array.size, MIN_SYMBOLS))
        low, high = int(array.min()), int(array.max())
        if low < -SYMBOL_LIMIT or high > SYMBOL_LIMIT:
            raise CodingError("symbols range over [%d, %d], beyond +-%d" % (low, high, SYMBOL_LIMIT))
        flat = np.ascontiguousarray(array.reshape(-1), dtype=np.int32)
        if self.backend == "native":
            try:
                return _native.encode(flat, self._index_list(shape), self.quantized_cdf, self.cdf_length,
                                      self.offset)
            except ValueError as exc:  # cannot happen for symbols within the limits checked above
                raise CodingError("cannot rANS-code the symbols: %s" % exc)
        if low >= -_SHIFT and high < 256 - _SHIFT:
            values = list((flat + _SHIFT).astype(np.uint8).tobytes())
            offsets = self._shifted_offset_list
        else:
            values = flat.tolist()
            offsets = self._offset_list
        encoder = load_rans().RansEncoder()
        return encoder.encode_with_indexes(values, self._index_list(shape), self._cdf_lists, self._length_list,
                                           offsets)

    def decode(self, data: Union[bytes, bytearray, memoryview], shape: Sequence[int]) -> np.ndarray:
        """Decodes a rANS body into int32 symbols of `shape` (C, H, W).

        Call it only on bodies that passed the wire-format checks (CRC, lengths): a body that is valid rANS but
        not what was encoded decodes to wrong symbols. Structurally impossible bodies raise PayloadError.
        """
        shape = self.check_shape(shape)
        count = shape[0] * shape[1] * shape[2]
        body = bytes(data)
        size = len(body)
        if size < 8 or size % 4:
            raise PayloadError("payload body is not a rANS stream: %d bytes, expected a multiple of 4 and at least 8"
                               % size)
        # A body CompressAI can write for `count` symbols holds at most 16 bits per symbol plus, for an escape, one
        # length nibble and at most 7 value nibbles (8 make its encoder loop forever): 6 bytes a symbol, plus the
        # 8-byte final state. 7 a symbol leaves room to spare.
        if size > 7 * count + 16:
            raise PayloadError("payload body has %d bytes, more than %d symbols can take" % (size, count))
        state = int.from_bytes(body[:8], "little")
        if not _RANS_STATE_LOW <= state < _RANS_STATE_HIGH:
            raise PayloadError("payload body is not a rANS stream: its initial state is out of range")
        if self.backend == "native":
            symbols = np.empty(count, dtype=np.int32)
            try:
                # Bounds-checked: a stream that runs out or is invalid raises ValueError, nothing is read past it.
                _native.decode(body, self._index_list(shape), self.quantized_cdf, self.cdf_length, self.offset,
                               symbols)
            except ValueError as exc:
                raise PayloadError("payload body is not a valid rANS stream for a %dx%dx%d latent: %s"
                                   % (shape + (exc,)))
            return symbols.reshape(shape)
        padded = body + bytes(_padding(count, body))
        decoder = load_rans().RansDecoder()
        values = decoder.decode_with_indexes(padded, self._index_list(shape), self._cdf_lists, self._length_list,
                                             self._shifted_offset_list)
        try:
            symbols = np.frombuffer(bytearray(values), dtype=np.uint8).astype(np.int32)
            symbols -= _SHIFT
        except ValueError:
            # Some symbol left [-128, 127] (a large escape, or garbage): the slow exact path.
            symbols = (np.array(values, dtype=np.int64) - _SHIFT).astype(np.int32)
        if symbols.size != count:
            raise PayloadError("rANS decoder returned %d symbols, expected %d" % (symbols.size, count))
        return symbols.reshape(shape)

    # -- conveniences ------------------------------------------------------------------------------------------------

    def compress(self, y: np.ndarray) -> bytes:
        """quantize + encode: float latent (1, C, H, W) or (C, H, W) -> rANS body."""
        return self.encode(self.quantize(y))

    def decompress(self, data: Union[bytes, bytearray, memoryview], shape: Sequence[int]) -> np.ndarray:
        """decode + dequantize: rANS body and (C, H, W) -> y_hat float32 (1, C, H, W)."""
        return self.dequantize(self.decode(data, shape))
