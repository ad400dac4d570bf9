"""Link emulation on a real socket: a token bucket paces what the device sends, and the round trip is waited.

A link of `rate` bits/s delivers the last byte of n bytes n * 8 / rate seconds after the first left; the bucket
starts empty and releases each chunk once its bits have accrued, so the last chunk leaves at exactly that time
(never earlier: the measured upload is bounded below by the formula, and above by the sleep granularity). Half the
round trip is waited before the first byte (the request's way out) and half after the answer (its way back), so
the device's end-to-end clock sees what a real link adds: bytes * 8 / rate + rtt around the server's compute.

This shapes only what this process sends. To shape a whole interface (other programs, both directions), use the
kernel: `tc qdisc add dev eth0 root netem rate 37500bit delay 10ms` (netem's delay is one way: give half the rtt;
`tc qdisc del dev eth0 root` removes it).

Edge subset: Python 3.6-clean, standard library only.
"""
import socket
import time
from typing import Callable, Optional

MIN_CHUNK = 64
MAX_CHUNK = 1400
CHUNK_SECONDS = 0.005
"""Chunks carry about 5 ms of the link's time, so the pacing error per chunk stays far below the 5% allowed."""


def chunk_bytes(bits_per_second: float) -> int:
    return int(max(MIN_CHUNK, min(MAX_CHUNK, bits_per_second / 8.0 * CHUNK_SECONDS)))


class TokenBucket(object):
    """Bytes may leave once rate has accrued their bits since the bucket started (it starts empty, no burst)."""

    def __init__(self, bits_per_second: float, clock: Callable[[], float] = time.perf_counter,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if bits_per_second <= 0:
            raise ValueError("rate must be positive")
        self.bytes_per_second = bits_per_second / 8.0
        self._clock = clock
        self._sleep = sleep
        self.started = clock()
        self.released = 0

    def wait_for(self, size: int) -> None:
        """Blocks until `size` more bytes fit the rate since the start."""
        self.released += size
        due = self.started + self.released / self.bytes_per_second
        while True:
            remaining = due - self._clock()
            if remaining <= 0:
                return
            self._sleep(remaining)


class PacedLink(object):
    """What the client asks of the link: a rate (None: unpaced) and a round-trip time, both measured when used."""

    def __init__(self, bits_per_second: Optional[float] = None, rtt_seconds: float = 0.0) -> None:
        self.bits_per_second = bits_per_second
        self.rtt_seconds = float(rtt_seconds)

    @property
    def shaped(self) -> bool:
        return bool(self.bits_per_second) or self.rtt_seconds > 0

    def wait_half_rtt(self) -> None:
        if self.rtt_seconds > 0:
            time.sleep(self.rtt_seconds / 2.0)

    def send(self, connection: socket.socket, data: bytes) -> None:
        """Sends all of `data`, paced to the rate when one is set."""
        if not self.bits_per_second:
            connection.sendall(data)
            return
        view = memoryview(data)
        step = chunk_bytes(self.bits_per_second)
        bucket = TokenBucket(self.bits_per_second)
        for offset in range(0, len(view), step):
            chunk = view[offset:offset + step]
            bucket.wait_for(len(chunk))
            connection.sendall(chunk)

    def expected_upload_seconds(self, size: int) -> float:
        """The formula the measured upload is held to: size * 8 / rate + rtt."""
        return (size * 8.0 / self.bits_per_second if self.bits_per_second else 0.0) + self.rtt_seconds
