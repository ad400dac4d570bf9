"""The frame format: a payload cut into frames that fit a link, and put back together from whatever arrives.

Every frame starts with a 10-byte header (big-endian):

    byte 0      version (high 4 bits, 1) and kind (low 4 bits): DATA, REPAIR, POLL, NACK, RESULT, REFUSED, ABORT
    byte 1      payload id: the sender's counter, so that frames of two payloads never mix
    bytes 2-4   frame index (12 bits) and the payload's number of data frames k (12 bits)
    bytes 5-7   the payload's length in bytes (24 bits)
    bytes 8-9   CRC-16/CCITT of bytes 0-7, the body and the tag

then the body, then, when the two ends share a key, an 8-byte tag: HMAC-SHA256(key, header bytes 0-7 + body)
truncated to 64 bits, which keeps forged frames out (the CRC only catches damage). Data frames 0..k-1 carry the
payload in balanced slices of S = ceil(length / k) bytes (the last one shorter); repair frames (index >= k, see
erasure.py) carry S bytes. So k, the length and the index give every frame's size, and a frame of any other size is
refused.

Edge subset: Python 3.6-clean, standard library and numpy.
"""
import binascii
import hashlib
import hmac
import math
import struct
from typing import Dict, List, NamedTuple, Optional

import numpy

from ladon_deploy.link import erasure

VERSION = 1
HEADER_BYTES = 10
TAG_BYTES = 8
MAX_INDEX = (1 << 12) - 1
MAX_DATA_FRAMES = MAX_INDEX
MAX_LENGTH = (1 << 24) - 1

DATA, REPAIR, POLL, NACK, RESULT, REFUSED, ABORT = range(7)
KIND_NAMES = ("data", "repair", "poll", "nack", "result", "refused", "abort")

Frame = NamedTuple("Frame", [("kind", int), ("payload_id", int), ("index", int), ("data_frames", int),
                             ("length", int), ("body", bytes)])


class FrameError(ValueError):
    """A datagram that is not a valid frame (damaged, forged, truncated or inconsistent)."""


def slice_size(length: int, data_frames: int) -> int:
    return int(math.ceil(length / float(data_frames)))


def data_frame_count(length: int, capacity: int) -> int:
    """How many data frames a payload of `length` bytes takes when a frame carries at most `capacity` bytes."""
    return max(1, int(math.ceil(length / float(capacity))))


def encode(frame: Frame, key: Optional[bytes] = None) -> bytes:
    if not (0 <= frame.index <= MAX_INDEX and 0 <= frame.data_frames <= MAX_DATA_FRAMES
            and 0 <= frame.length <= MAX_LENGTH and 0 <= frame.payload_id <= 255):
        raise FrameError("frame fields out of range: %r" % (frame[:5],))
    head = (struct.pack(">BB", (VERSION << 4) | frame.kind, frame.payload_id)
            + (frame.index << 12 | frame.data_frames).to_bytes(3, "big") + frame.length.to_bytes(3, "big"))
    tag = hmac.new(key, head + frame.body, hashlib.sha256).digest()[:TAG_BYTES] if key else b""
    crc = binascii.crc_hqx(head + frame.body + tag, 0xFFFF)
    return head + struct.pack(">H", crc) + frame.body + tag


def decode(datagram: bytes, key: Optional[bytes] = None) -> Frame:
    """The frame a datagram holds; FrameError when it is damaged, forged or not a frame of this version."""
    tag_bytes = TAG_BYTES if key else 0
    if len(datagram) < HEADER_BYTES + tag_bytes:
        raise FrameError("datagram of %d bytes is shorter than a frame header" % len(datagram))
    head, (crc,) = datagram[:8], struct.unpack(">H", datagram[8:10])
    body = datagram[HEADER_BYTES:len(datagram) - tag_bytes]
    tag = datagram[len(datagram) - tag_bytes:]
    if binascii.crc_hqx(head + body + tag, 0xFFFF) != crc:
        raise FrameError("frame checksum mismatch")
    if key and not hmac.compare_digest(hmac.new(key, head + body, hashlib.sha256).digest()[:TAG_BYTES], tag):
        raise FrameError("frame authentication tag mismatch (wrong key or forged frame)")
    version, kind = head[0] >> 4, head[0] & 0x0F
    if version != VERSION or kind >= len(KIND_NAMES):
        raise FrameError("unknown frame version %d or kind %d" % (version, kind))
    fields, length = int.from_bytes(head[2:5], "big"), int.from_bytes(head[5:8], "big")
    return Frame(kind, head[1], fields >> 12, fields & 0xFFF, length, bytes(body))


def split(payload: bytes, payload_id: int, capacity: int) -> List[Frame]:
    """The data frames of a payload, each carrying at most `capacity` bytes."""
    if not payload:
        raise FrameError("an empty payload has no frames")
    if len(payload) > MAX_LENGTH:
        raise FrameError("payload of %d bytes exceeds the frame format's %d" % (len(payload), MAX_LENGTH))
    count = data_frame_count(len(payload), capacity)
    if count > MAX_DATA_FRAMES:
        raise FrameError("payload of %d bytes needs %d frames of %d bytes; the format allows %d"
                         % (len(payload), count, capacity, MAX_DATA_FRAMES))
    size = slice_size(len(payload), count)
    return [Frame(DATA, payload_id, i, count, len(payload), payload[i * size:(i + 1) * size]) for i in range(count)]


def repair_frames(payload: bytes, payload_id: int, data_frames: int, first_index: int, count: int) -> List[Frame]:
    """`count` repair frames numbered from `first_index` (>= data_frames)."""
    size = slice_size(len(payload), data_frames)
    matrix = _data_matrix(payload, data_frames, size)
    frames = []
    for index in range(first_index, first_index + count):
        if index > MAX_INDEX:
            raise FrameError("no repair frame index left (the format numbers frames up to %d)" % MAX_INDEX)
        frames.append(Frame(REPAIR, payload_id, index, data_frames, len(payload),
                            erasure.repair_frame(matrix, payload_id, index).tobytes()))
    return frames


def _data_matrix(payload: bytes, data_frames: int, size: int) -> numpy.ndarray:
    padded = payload.ljust(data_frames * size, b"\0")
    return numpy.frombuffer(padded, dtype=numpy.uint8).reshape(data_frames, size)


class Reassembly(object):
    """The frames received so far of one payload, and whether they determine it."""

    def __init__(self, payload_id: int, data_frames: int, length: int) -> None:
        if not (1 <= data_frames <= MAX_DATA_FRAMES and data_frames <= length):
            raise FrameError("inconsistent frame header: %d data frames for %d bytes" % (data_frames, length))
        self.payload_id, self.data_frames, self.length = payload_id, data_frames, length
        self.size = slice_size(length, data_frames)
        if (data_frames - 1) * self.size >= length:
            raise FrameError("inconsistent frame header: %d data frames for %d bytes" % (data_frames, length))
        self.frames = {}  # type: Dict[int, bytes]
        self.duplicates = 0

    def matches(self, frame: Frame) -> bool:
        return (frame.payload_id, frame.data_frames, frame.length) == (self.payload_id, self.data_frames,
                                                                       self.length)

    def expected_size(self, index: int) -> int:
        if index == self.data_frames - 1:
            return self.length - index * self.size
        return self.size

    def add(self, frame: Frame) -> None:
        if frame.kind not in (DATA, REPAIR) or (frame.kind == DATA) != (frame.index < self.data_frames):
            raise FrameError("frame kind %s does not fit index %d" % (KIND_NAMES[frame.kind], frame.index))
        if len(frame.body) != self.expected_size(frame.index):
            raise FrameError("frame %d carries %d bytes, its header says %d" % (
                frame.index, len(frame.body), self.expected_size(frame.index)))
        if frame.index in self.frames:
            self.duplicates += 1
            return
        self.frames[frame.index] = frame.body

    @property
    def stored_bytes(self) -> int:
        return len(self.frames) * self.size

    def missing_data(self) -> List[int]:
        return [i for i in range(self.data_frames) if i not in self.frames]

    def deficit(self) -> int:
        """How many more independent frames the payload needs (0: try to recover it)."""
        return max(0, self.data_frames - len(self.frames))

    def payload(self) -> Optional[bytes]:
        """The payload when the frames received determine it, else None."""
        if self.deficit():
            return None
        slices = erasure.recover(self.size, self.data_frames, self.payload_id, self.frames)
        if slices is None:
            return None
        return b"".join(slices)[:self.length]

    def repaired(self) -> int:
        """Data frames that never arrived and were rebuilt from repair frames."""
        return len(self.missing_data())
