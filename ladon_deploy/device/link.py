"""The link between the device and the server: rate parsing and the simulated transfer time.

Transfer time = payload bytes * 8 / rate + round-trip time, the arithmetic of the Ladon paper's latency figures.
Edge subset: Python 3.6-clean, standard library only.
"""
import re

from ladon_deploy.errors import LadonError

_UNITS = {"bps": 1.0, "kbps": 1e3, "mbps": 1e6, "gbps": 1e9}
_RATE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([a-zA-Z]*)\s*$")
_DURATION = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*(ms|s|us)?\s*$")


def parse_rate(text: str) -> float:
    """'100kbps' -> 100000.0 bits/s. Units: bps, kbps, Mbps, Gbps (case-insensitive); a bare number is bps."""
    match = _RATE.match(str(text))
    unit = match.group(2).lower() if match else ""
    if not match or (unit and unit not in _UNITS):
        raise LadonError("cannot parse rate %r (examples: 100kbps, 37.5kbps, 1.5Mbps, 9600bps)" % text)
    rate = float(match.group(1)) * _UNITS[unit or "bps"]
    if rate <= 0:
        raise LadonError("rate must be positive, got %r" % text)
    return rate


def parse_duration(text: str) -> float:
    """'20ms' -> 0.02 seconds; a bare number is seconds."""
    match = _DURATION.match(str(text))
    if not match:
        raise LadonError("cannot parse duration %r (examples: 0, 20ms, 0.1s)" % text)
    scale = {"ms": 1e-3, "us": 1e-6, "s": 1.0, None: 1.0}[match.group(2)]
    return float(match.group(1)) * scale


def format_rate(bits_per_second: float) -> str:
    for unit, scale in (("Mbps", 1e6), ("kbps", 1e3)):
        if bits_per_second >= scale:
            return "%g %s" % (bits_per_second / scale, unit)
    return "%g bps" % bits_per_second


def transfer_seconds(payload_bytes: int, bits_per_second: float, rtt_seconds: float = 0.0) -> float:
    return payload_bytes * 8.0 / bits_per_second + rtt_seconds
