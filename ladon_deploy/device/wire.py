"""The payload wire format: one entropy-coded latent plus what the server needs to run the heads on it.

Byte layout (all integers little-endian, fixed offsets; 31 bytes of overhead around the rANS body):

    offset  size  field
         0     3  magic b"LDN"
         3     1  format version, u8 (currently 1)
         4     4  bundle id: the first 8 hex digits of the manifest's bundle_id, as 4 raw bytes
         8     2  latent channels C, u16
        10     2  latent height H, u16
        12     2  latent width W, u16
        14     2  original image height, u16
        16     2  original image width, u16
        18     2  resized (unpadded) image height, u16
        20     2  resized (unpadded) image width, u16
        22     1  task bitmask, u8: bit 0 cls, bit 1 det, bit 2 seg (other bits must be 0)
        23     4  body length L, u32
        27     L  body: the rANS stream of the C x H x W symbols, byte-identical to EntropyBottleneck.compress
    27 + L     4  CRC-32 (zlib.crc32) of bytes [0, 27 + L), u32

`unpack` trusts nothing it has not checked, in this order: minimum size, magic, version, declared body length
against the limit and against the actual size (truncated / trailing bytes), CRC over exactly the declared span,
bundle id, latent shape (non-zero, C*H*W <= max_symbols), image sizes (non-zero), resized size against the latent
(see `MAX_PAD`), task bits, body structure (whole 32-bit words, at least 8 bytes). Every rejection raises
PayloadError with a one-line message.

Resized size vs latent: Ladon's encoder (conv k5 s2 p2, conv k5 s2 p2, conv k2 s1 p0) maps a padded input of
P pixels to ceil(P / 4) - 1 latent rows, so the padded input is at most 4 * H + 4 pixels; the resized image fits in
it: resized_h <= 4 * H + 4 and resized_w <= 4 * W + 4.

Edge subset: Python 3.6-clean, standard library only (the body is decoded by ladon_deploy.device.entropy).
"""
import collections
import struct
import zlib
from typing import Any, Iterable, Optional, Sequence, Tuple

from ladon_deploy.errors import PayloadError

MAGIC = b"LDN"
VERSION = 1
HEADER = struct.Struct("<3sB4s7HBI")
HEADER_SIZE = HEADER.size  # 27
CRC = struct.Struct("<I")
OVERHEAD = HEADER_SIZE + CRC.size  # 31

TASK_BITS = (("cls", 1), ("det", 2), ("seg", 4))
TASK_NAMES = tuple(name for name, _ in TASK_BITS)
_KNOWN_BITS = 7

MAX_PAD = 4
"""Resized image sides may exceed 4x the latent side by at most this many pixels (see the module docstring)."""

DEFAULT_MAX_BODY = 1 << 26
"""Largest body (64 MiB) unpack accepts unless told otherwise; Ladon bodies are a few to ~120 KB."""

DEFAULT_MAX_SYMBOLS = 1 << 26
"""Largest C*H*W unpack accepts unless told otherwise (matches entropy.MAX_SYMBOLS). A server should pass the
bound its model supports: decoding time and memory grow with the declared shape, not with the body length."""

_U16 = 0xFFFF

Payload = collections.namedtuple(
    "Payload", ["bundle_id", "latent_shape", "original_size", "resized_size", "tasks", "body"])
Payload.__doc__ = """One decoded payload.

bundle_id: str, 8 lowercase hex digits; latent_shape: (C, H, W); original_size: (H, W) of the image as read;
resized_size: (H, W) after resizing, before padding; tasks: tuple of 'cls', 'det', 'seg' in that order;
body: bytes, the rANS stream.
"""


def _short_id(bundle_id: Any, what: str) -> str:
    if not isinstance(bundle_id, str) or len(bundle_id) < 8:
        raise PayloadError("%s must be a string of at least 8 hex digits, got %r" % (what, bundle_id))
    short = bundle_id[:8].lower()
    try:
        bytes.fromhex(short)
    except ValueError:
        raise PayloadError("%s must start with 8 hex digits, got %r" % (what, bundle_id))
    return short


def task_mask(tasks: Iterable[str]) -> int:
    """Bitmask of task names ('cls', 'det', 'seg')."""
    bits = dict(TASK_BITS)
    mask = 0
    for task in tasks:
        if task not in bits:
            raise PayloadError("unknown task %r (known: %s)" % (task, ", ".join(TASK_NAMES)))
        mask |= bits[task]
    return mask


def tasks_from_mask(mask: int) -> Tuple[str, ...]:
    return tuple(name for name, bit in TASK_BITS if mask & bit)


def _pair(value: Any, what: str) -> Tuple[int, int]:
    try:
        first, second = (int(item) for item in value)
    except (TypeError, ValueError):
        raise PayloadError("%s must be (height, width), got %r" % (what, value))
    return first, second


def _check_fields(latent_shape: Sequence[int], original_size: Sequence[int], resized_size: Sequence[int],
                  mask: int, body_length: int, max_symbols: int) -> None:
    """The checks pack and unpack share, so that pack never writes what unpack refuses."""
    channels, height, width = latent_shape
    if channels < 1 or height < 1 or width < 1:
        raise PayloadError("payload declares an empty latent %dx%dx%d" % (channels, height, width))
    count = channels * height * width
    if count > max_symbols:
        raise PayloadError("payload declares a %dx%dx%d latent (%d symbols), over the limit of %d"
                           % (channels, height, width, count, max_symbols))
    for what, (rows, cols) in (("original", original_size), ("resized", resized_size)):
        if rows < 1 or cols < 1:
            raise PayloadError("payload declares an empty %s image size %dx%d" % (what, rows, cols))
    rows, cols = resized_size
    if rows > 4 * height + MAX_PAD or cols > 4 * width + MAX_PAD:
        raise PayloadError("payload's resized image %dx%d does not fit its %dx%d latent (at most %dx%d)"
                           % (rows, cols, height, width, 4 * height + MAX_PAD, 4 * width + MAX_PAD))
    if mask == 0:
        raise PayloadError("payload requests no task")
    if mask & ~_KNOWN_BITS:
        raise PayloadError("payload requests unknown tasks (bitmask 0x%02x)" % mask)
    if body_length < 8 or body_length % 4:
        raise PayloadError("payload body has %d bytes; a rANS stream is whole 32-bit words, at least 8 bytes"
                           % body_length)


def pack(payload: Payload) -> bytes:
    """Serializes a Payload; raises PayloadError for fields the format cannot carry or unpack would refuse."""
    short = _short_id(payload.bundle_id, "bundle id")
    try:
        latent = tuple(int(value) for value in payload.latent_shape)
    except (TypeError, ValueError):
        latent = ()
    if len(latent) != 3:
        raise PayloadError("latent shape must be (C, H, W), got %r" % (payload.latent_shape,))
    original = _pair(payload.original_size, "original size")
    resized = _pair(payload.resized_size, "resized size")
    if isinstance(payload.tasks, str):
        raise PayloadError("tasks must be a sequence of task names, got the string %r" % payload.tasks)
    mask = task_mask(payload.tasks)
    body = bytes(payload.body)
    for value in latent + original + resized:
        if value > _U16:
            raise PayloadError("payload sizes must fit in 16 bits, got %r" % ((latent, original, resized),))
    if len(body) > 0xFFFFFFFF:
        raise PayloadError("payload body of %d bytes does not fit a 32-bit length" % len(body))
    _check_fields(latent, original, resized, mask, len(body), DEFAULT_MAX_SYMBOLS)
    header = HEADER.pack(MAGIC, VERSION, bytes.fromhex(short), latent[0], latent[1], latent[2], original[0],
                         original[1], resized[0], resized[1], mask, len(body))
    framed = header + body
    return framed + CRC.pack(zlib.crc32(framed) & 0xFFFFFFFF)


def _declared_body_length(header: bytes, max_body: int) -> int:
    fields = HEADER.unpack(header)
    if fields[0] != MAGIC:
        raise PayloadError("not a Ladon payload: magic %r, expected %r" % (fields[0], MAGIC))
    if fields[1] != VERSION:
        raise PayloadError("payload format version %d is not supported (this toolkit reads %d)"
                           % (fields[1], VERSION))
    body_length = fields[-1]
    if body_length > max_body:
        raise PayloadError("payload declares a %d-byte body, over the limit of %d" % (body_length, max_body))
    return body_length


def bundle_id_of(data: Any) -> Optional[str]:
    """The 8 hex digits of the bundle a payload names, read from its header without validating the rest (a server
    of several bundles routes by it; the chosen bundle's unpack then checks everything); None when the bytes do not
    start like a payload."""
    if not isinstance(data, (bytes, bytearray, memoryview)) or len(data) < HEADER_SIZE:
        return None
    data = bytes(data[:HEADER_SIZE])
    if data[:3] != MAGIC:
        return None
    return data[4:8].hex()


def unpack(data: bytes, expected_bundle_id: Optional[str] = None, max_body: int = DEFAULT_MAX_BODY,
           max_symbols: int = DEFAULT_MAX_SYMBOLS) -> Payload:
    """Parses and validates a payload; raises PayloadError (one line) on anything malformed.

    expected_bundle_id: the receiving bundle's id (8 or more hex digits); a payload made for another bundle is
    refused. max_body / max_symbols bound the declared body length and latent size.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise PayloadError("payload must be bytes, got %s" % type(data).__name__)
    data = bytes(data)
    size = len(data)
    if size < OVERHEAD:
        raise PayloadError("payload is truncated: %d bytes, a payload has at least %d" % (size, OVERHEAD))
    body_length = _declared_body_length(data[:HEADER_SIZE], max_body)
    expected_size = OVERHEAD + body_length
    if size < expected_size:
        raise PayloadError("payload is truncated: %d bytes, its header declares %d" % (size, expected_size))
    if size > expected_size:
        raise PayloadError("payload has %d unexpected bytes after its checksum (%d bytes, header declares %d)"
                           % (size - expected_size, size, expected_size))
    span = HEADER_SIZE + body_length
    (crc,) = CRC.unpack_from(data, span)
    if zlib.crc32(data[:span]) & 0xFFFFFFFF != crc:
        raise PayloadError("payload CRC mismatch: corrupted in transit")
    (_, _, raw_id, channels, height, width, original_h, original_w, resized_h, resized_w, mask,
     _) = HEADER.unpack_from(data, 0)
    bundle_id = raw_id.hex()
    if expected_bundle_id is not None:
        expected = _short_id(expected_bundle_id, "expected bundle id")
        if bundle_id != expected:
            raise PayloadError("payload was produced for bundle %s, this bundle is %s" % (bundle_id, expected))
    latent = (channels, height, width)
    original = (original_h, original_w)
    resized = (resized_h, resized_w)
    _check_fields(latent, original, resized, mask, body_length, max_symbols)
    return Payload(bundle_id, latent, original, resized, tasks_from_mask(mask), data[HEADER_SIZE:span])
