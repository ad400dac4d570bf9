"""The frame format and the erasure code: round trips, recovery from any k frames, refusal of damaged, forged and
inconsistent frames."""
import os
import random

import pytest

from ladon_deploy.link import erasure, frames


def _payload(size, seed=0):
    return bytes(random.Random(seed).getrandbits(8) for _ in range(size))


def test_header_round_trip_and_size():
    frame = frames.Frame(frames.REPAIR, 255, 4095, 4095, frames.MAX_LENGTH, b"abc")
    assert len(frames.encode(frame)) == frames.HEADER_BYTES + 3
    assert frames.decode(frames.encode(frame)) == frame
    assert len(frames.encode(frame, b"key")) == frames.HEADER_BYTES + 3 + frames.TAG_BYTES
    assert frames.decode(frames.encode(frame, b"key"), b"key") == frame
    with pytest.raises(frames.FrameError):
        frames.encode(frame._replace(index=4096))


def test_damaged_forged_and_truncated_frames_are_refused():
    datagram = frames.encode(frames.Frame(frames.DATA, 1, 0, 1, 3, b"abc"), b"key")
    for position in range(len(datagram)):
        mutated = bytearray(datagram)
        mutated[position] ^= 0x01
        with pytest.raises(frames.FrameError):
            frames.decode(bytes(mutated), b"key")
    with pytest.raises(frames.FrameError, match="authentication"):
        frames.decode(frames.encode(frames.Frame(frames.DATA, 1, 0, 1, 3, b"abc"), b"other"), b"key")
    with pytest.raises(frames.FrameError):
        frames.decode(datagram[:9], b"key")
    unkeyed = frames.encode(frames.Frame(frames.DATA, 1, 0, 1, 3, b"abc"))
    with pytest.raises(frames.FrameError):
        frames.decode(unkeyed, b"key")       # a frame without a tag does not pass a receiver that wants one


def test_gf256_tables():
    a, b, c = 0x53, 0xCA, 0x1F
    assert erasure.MUL[a, erasure.INV[a]] == 1
    assert erasure.MUL[a, b] == erasure.MUL[b, a]
    assert erasure.MUL[a, b ^ c] == erasure.MUL[a, b] ^ erasure.MUL[a, c]     # distributive over XOR
    assert erasure.MUL[0x02, 0x80] == 0x1D                                   # x * x^7 = x^8 = x^4+x^3+x^2+1
    assert not erasure.MUL[0].any() and not erasure.MUL[:, 0].any()


@pytest.mark.parametrize("size,lost", [(1, 0), (2000, 1), (2000, 3), (5900, 5), (255, 0)])
def test_any_lost_data_frames_come_back_from_as_many_repair_frames(size, lost):
    payload = _payload(size, size)
    data = frames.split(payload, 9, 100)
    repairs = frames.repair_frames(payload, 9, len(data), len(data), lost + 1)
    rng = random.Random(size)
    gone = set(rng.sample(range(len(data)), min(lost, len(data))))
    assembly = frames.Reassembly(9, len(data), size)
    for frame in data + repairs:
        if frame.index not in gone:
            assembly.add(frame)
    assert assembly.payload() == payload
    assert assembly.repaired() == len(gone)


def test_too_few_frames_give_nothing_and_say_how_many_are_missing():
    payload = _payload(1000)
    data = frames.split(payload, 3, 100)
    assembly = frames.Reassembly(3, len(data), len(payload))
    for frame in data[2:]:
        assembly.add(frame)
    assert assembly.payload() is None and assembly.deficit() == 2 and assembly.missing_data() == [0, 1]
    for frame in frames.repair_frames(payload, 3, len(data), 50, 1):
        assembly.add(frame)
    assert assembly.payload() is None and assembly.deficit() == 1
    assembly.add(data[0])
    assembly.add(data[0])                  # a duplicate is counted, not stored twice
    assert assembly.duplicates == 1 and assembly.payload() == payload


def test_inconsistent_frames_are_refused():
    payload = _payload(1000)
    data = frames.split(payload, 3, 100)
    assembly = frames.Reassembly(3, len(data), len(payload))
    with pytest.raises(frames.FrameError):
        assembly.add(data[0]._replace(body=data[0].body[:-1]))          # wrong size for its index
    with pytest.raises(frames.FrameError):
        assembly.add(data[0]._replace(kind=frames.REPAIR))               # a repair frame with a data index
    with pytest.raises(frames.FrameError):
        frames.Reassembly(3, 11, 10)                                      # more frames than bytes
    with pytest.raises(frames.FrameError):
        frames.Reassembly(3, 0, 10)                                       # no frames at all
    with pytest.raises(frames.FrameError):
        frames.Reassembly(3, 6, 10)                                       # 6 slices of 2 bytes: the last is empty


def test_repair_frames_are_independent_of_each_other_and_of_order():
    payload = _payload(3000, 7)
    data = frames.split(payload, 77, 200)
    repairs = frames.repair_frames(payload, 77, len(data), len(data), len(data))
    # only repair frames, in shuffled order: the square system over GF(256) is solved
    shuffled = list(repairs)
    random.Random(1).shuffle(shuffled)
    assembly = frames.Reassembly(77, len(data), len(payload))
    for frame in shuffled:
        assembly.add(frame)
    assert assembly.payload() == payload


def test_split_refuses_what_the_format_cannot_number():
    with pytest.raises(frames.FrameError):
        frames.split(b"", 0, 100)
    with pytest.raises(frames.FrameError):
        frames.split(os.urandom(4096), 0, 1)
