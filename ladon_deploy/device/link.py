"""The link between the device and the server: rate parsing and the simulated transfer time.

Transfer time = payload bytes * 8 / rate + round-trip time, the arithmetic of the Ladon paper's latency figures.
Edge subset: Python 3.6-clean, standard library only.
"""
import re

from ladon_deploy.errors import LadonError

# A rate's unit is a decimal prefix and either bits or bytes per second. The prefix is read in either case (users
# write kbps and Kbps alike); the b/B is not: "MBps" is megabytes, eight times "Mbps".
_PREFIXES = {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9}
_BITS = ("bps", "bit/s", "b/s", "bit")
_BYTES = ("Bps", "B/s")
_RATE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([kKmMgG]?)(\S*)\s*$")
_RATE_EXAMPLES = "examples: 37.5kbps, 100kbps, 1.5Mbps, 9600bps, 125kBps = 1Mbps"
_DURATION_UNITS = {"h": 3600.0, "min": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6}
_DURATION = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*(\S*)\s*$")


def parse_rate(text: str) -> float:
    """'37.5kbps' -> 37500.0 bits/s. The unit is required: bps, kbps, Mbps, Gbps (or bit/s) for bits per second,
    Bps, kBps, MBps, GBps (or B/s) for bytes per second (1MBps = 8 Mbps); a bare number is refused."""
    match = _RATE.match(str(text))
    if not match:
        raise LadonError("cannot parse rate %r (%s)" % (text, _RATE_EXAMPLES))
    value, prefix, unit = match.groups()
    if not unit and not prefix:
        raise LadonError("rate %r has no unit: write bits per second (e.g. %sbps, %skbps) or bytes per second "
                         "(e.g. %sBps)" % (text, value, value, value))
    if unit in _BITS:
        bits_per_unit = 1.0
    elif unit in _BYTES:
        bits_per_unit = 8.0
    else:
        raise LadonError("cannot parse rate %r: unknown unit %r (%s)" % (text, prefix + unit, _RATE_EXAMPLES))
    rate = float(value) * _PREFIXES[prefix.lower()] * bits_per_unit
    if rate <= 0:
        raise LadonError("rate must be positive, got %r" % text)
    return rate


def parse_duration(text: str) -> float:
    """'20ms' -> 0.02 seconds. The unit is required (s, ms, us), except for a plain zero."""
    match = _DURATION.match(str(text))
    if not match:
        raise LadonError("cannot parse duration %r (examples: 0, 20ms, 0.1s, 500us)" % text)
    value, unit = float(match.group(1)), match.group(2)
    if not unit:
        if value == 0:
            return 0.0
        raise LadonError("duration %r has no unit: write %sms or %ss (s, ms, us)" % (text, match.group(1),
                                                                                     match.group(1)))
    if unit not in _DURATION_UNITS:
        raise LadonError("cannot parse duration %r: unknown unit %r (use h, min, s, ms or us)" % (text, unit))
    return value * _DURATION_UNITS[unit]


def format_rate(bits_per_second: float) -> str:
    for unit, scale in (("Mbps", 1e6), ("kbps", 1e3)):
        if bits_per_second >= scale:
            return "%g %s" % (bits_per_second / scale, unit)
    return "%g bps" % bits_per_second


def transfer_seconds(payload_bytes: int, bits_per_second: float, rtt_seconds: float = 0.0) -> float:
    return payload_bytes * 8.0 / bits_per_second + rtt_seconds
