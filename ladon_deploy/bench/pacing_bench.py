"""How closely the paced link holds the formula, on the wall clock: the tight figure the tests do not assert.

    python -m ladon_deploy.bench.pacing_bench [--repeats 5] [--rtt 20ms]

For each rate and payload size, the device client's PacedLink sends the bytes over a local socket pair (a reader
thread drains it) with half the rtt waited before and after, as it does around a real request; the table gives the
median and worst of measured / (bytes * 8 / rate + rtt). The pacer never finishes early (its token bucket starts
empty), so the ratio is >= 1 and what exceeds 1 is scheduling: on a loaded machine it grows, which is why the tests
only assert the lower bound. Against a real server, `ladon-bench live` measures the whole request the same way.
"""
import argparse
import os
import socket
import statistics
import threading
import time
from typing import List, Optional, Sequence

from ladon_deploy.device import link
from ladon_deploy.device.pacing import PacedLink

RATES = ("37.5kbps", "100kbps", "1Mbps")
SIZES = (1000, 5000, 12000)


def measure_once(rate_bps: float, rtt_s: float, size: int) -> float:
    """measured / formula for one paced send of `size` random bytes over a socket pair."""
    sender, receiver = socket.socketpair()
    reader = threading.Thread(target=lambda: list(iter(lambda: receiver.recv(65536), b"")), daemon=True)
    reader.start()
    paced = PacedLink(rate_bps, rtt_s)
    data = os.urandom(size)
    try:
        started = time.perf_counter()
        paced.wait_half_rtt()
        paced.send(sender, data)
        paced.wait_half_rtt()
        elapsed = time.perf_counter() - started
    finally:
        sender.close()
        reader.join(10)
        receiver.close()
    return elapsed / paced.expected_upload_seconds(size)


def run(rates: Sequence[str], sizes: Sequence[int], rtt_s: float, repeats: int) -> List[str]:
    lines = ["%-10s %8s %12s %14s %12s" % ("rate", "bytes", "formula ms", "median ratio", "worst ratio")]
    for rate_text in rates:
        rate = link.parse_rate(rate_text)
        for size in sizes:
            ratios = [measure_once(rate, rtt_s, size) for _ in range(repeats)]
            formula_ms = (size * 8.0 / rate + rtt_s) * 1e3
            lines.append("%-10s %8d %12.1f %14.4f %12.4f" % (rate_text, size, formula_ms, statistics.median(ratios),
                                                              max(ratios)))
    return lines


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ladon_deploy.bench.pacing_bench",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rtt", default="20ms")
    args = parser.parse_args(argv)
    for line in run(RATES, SIZES, link.parse_duration(args.rtt), max(1, args.repeats)):
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
