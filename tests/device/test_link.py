"""Rates and durations on the command line: units are required, and bytes are not bits."""
import pytest

from ladon_deploy.device import link
from ladon_deploy.errors import LadonError


@pytest.mark.parametrize("text, bits_per_second", [
    ("37.5kbps", 37500.0), ("100kbps", 1e5), ("100 kbps", 1e5), ("1.5Mbps", 1.5e6), ("1mbps", 1e6),
    ("9600bps", 9600.0), ("1Gbps", 1e9), ("64kbit", 64000.0), ("2Mbit/s", 2e6), ("1e3bps", 1000.0),
    # bytes per second: eight bits each
    ("1MBps", 8e6), ("125kBps", 1e6), ("125KB/s", 1e6), ("10B/s", 80.0), ("1GBps", 8e9),
])
def test_rates_with_units(text, bits_per_second):
    assert link.parse_rate(text) == pytest.approx(bits_per_second)


def test_megabytes_are_eight_megabits():
    assert link.parse_rate("1MBps") == 8 * link.parse_rate("1Mbps")


@pytest.mark.parametrize("text, message", [
    ("100", "has no unit"), ("37.5", "has no unit"), ("fast", "cannot parse rate"), ("100kB", "unknown unit"),
    ("100kbs", "unknown unit"), ("100MBPS", "unknown unit"), ("0kbps", "positive"), ("-5kbps", "cannot parse"),
    ("", "cannot parse"),
])
def test_rates_refused(text, message):
    with pytest.raises(LadonError, match=message):
        link.parse_rate(text)


@pytest.mark.parametrize("text, seconds", [
    ("20ms", 0.02), ("0.1s", 0.1), ("500us", 5e-4), ("2 s", 2.0), ("0", 0.0), ("0.0", 0.0), ("0ms", 0.0),
    ("20min", 1200.0), ("1.5h", 5400.0),
])
def test_durations_with_units(text, seconds):
    assert link.parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text, message", [
    ("20", "has no unit"), ("0.5", "has no unit"), ("20m", "unknown unit"), ("soon", "cannot parse"),
    ("-20ms", "cannot parse"),
])
def test_durations_refused(text, message):
    with pytest.raises(LadonError, match=message):
        link.parse_duration(text)


def test_transfer_time_formula():
    assert link.transfer_seconds(4688, link.parse_rate("37.5kbps"), link.parse_duration("20ms")) == \
        pytest.approx(4688 * 8 / 37500.0 + 0.02)
