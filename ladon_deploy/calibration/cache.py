"""TensorRT's calibration cache, as TensorRT itself writes it for IInt8EntropyCalibrator2.

The file is text: a header line `TRT-<version>-EntropyCalibration2`, then one `<tensor name>: <scale>` line per
tensor, where <scale> is the hex of the float32 scale (amax / 127) in big-endian byte order (0x3c010204 ~ 1/127 for an
input in [-1, 1]). <version> is TensorRT's NV_TENSORRT_VERSION: major*1000 + minor*100 + patch up to 9.x (8.5.2 ->
8502), major*10000 + minor*100 + patch from 10.0 (10.3.0 -> 100300). TensorRT ignores a cache whose header names
another version or algorithm and calibrates again.

Edge subset: Python 3.6-clean, standard library only.
"""
import math
import re
import struct
from collections import OrderedDict
from typing import Dict, Mapping, Tuple

from ladon_deploy.atomic import write_bytes_atomically
from ladon_deploy.errors import LadonError

ALGORITHM = "EntropyCalibration2"
_HEADER = re.compile(r"^TRT-(\d+)-(\w+)$")
_LINE = re.compile(r"^(.+): ([0-9a-fA-F]{8})$")


class CacheError(LadonError):
    """A calibration cache that cannot be read as TensorRT's format."""


def version_number(version: str) -> int:
    """TensorRT's NV_TENSORRT_VERSION for a version string such as '8.5.2.2', '8.5' or '10.3.0'."""
    parts = version.split(".")
    try:
        numbers = [int(p) for p in parts[:3]] + [0] * (3 - len(parts[:3]))
    except ValueError:
        raise CacheError("not a TensorRT version: %r" % version)
    major, minor, patch = numbers
    if major >= 10:
        return major * 10000 + minor * 100 + patch
    return major * 1000 + minor * 100 + patch


def header_for(version: str) -> str:
    return "TRT-%d-%s" % (version_number(version), ALGORITHM)


def scale_to_hex(scale: float) -> str:
    return struct.pack(">f", scale).hex()


def hex_to_scale(text: str) -> float:
    return struct.unpack(">f", bytes.fromhex(text))[0]


def format_cache(scales: Mapping[str, float], version: str) -> bytes:
    """The cache bytes for per-tensor scales (amax / 127), in the given order."""
    lines = [header_for(version)]
    for name, scale in scales.items():
        if "\n" in name or not name:
            raise CacheError("tensor name %r cannot be written to a calibration cache" % name)
        if not (scale > 0 and math.isfinite(scale)):
            raise CacheError("tensor %s has scale %r: scales must be positive and finite" % (name, scale))
        lines.append("%s: %s" % (name, scale_to_hex(float(scale))))
    return ("\n".join(lines) + "\n").encode("ascii")


def parse_cache(data: bytes) -> Tuple[int, str, Dict[str, float]]:
    """(version number, algorithm, scales by tensor name) of a cache; CacheError on anything else."""
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise CacheError("calibration cache is not ASCII text")
    lines = text.splitlines()
    if not lines:
        raise CacheError("calibration cache is empty")
    header = _HEADER.match(lines[0])
    if header is None:
        raise CacheError("calibration cache header %r is not TRT-<version>-<algorithm>" % lines[0][:80])
    scales = OrderedDict()  # type: Dict[str, float]
    for number, line in enumerate(lines[1:], 2):
        match = _LINE.match(line)
        if match is None:
            raise CacheError("calibration cache line %d is not '<tensor>: <8 hex digits>': %r" % (number, line[:80]))
        name, value = match.group(1), hex_to_scale(match.group(2))
        if name in scales:
            raise CacheError("calibration cache names tensor %s twice" % name)
        if not (value > 0 and math.isfinite(value)):
            raise CacheError("calibration cache gives tensor %s the scale %r" % (name, value))
        scales[name] = value
    return int(header.group(1)), header.group(2), scales


def retag(data: bytes, version: str) -> bytes:
    """The same cache under the header of another TensorRT version.

    Only for caches whose scales did not come from TensorRT's own calibration (ours come from the ONNX Runtime
    calibration that also made the QDQ models): TensorRT binds a cache to its version because its calibration
    algorithm may change between releases, which does not apply to scales it never computed.
    """
    _, algorithm, scales = parse_cache(data)
    if algorithm != ALGORITHM:
        raise CacheError("calibration cache is for %s, not %s" % (algorithm, ALGORITHM))
    return format_cache(scales, version)


def write_cache(path: str, scales: Mapping[str, float], version: str) -> None:
    write_bytes_atomically(path, format_cache(scales, version))


def read_cache(path: str) -> Tuple[int, str, Dict[str, float]]:
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        raise CacheError("cannot read calibration cache %s: %s" % (path, exc.strerror or exc))
    return parse_cache(data)
