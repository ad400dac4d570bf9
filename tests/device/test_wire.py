"""The payload wire format: exact layout, round trip, and one test per rejection."""
import struct
import zlib

import pytest

from ladon_deploy.errors import LadonError, PayloadError
from ladon_deploy.device import wire
from ladon_deploy.device.wire import Payload, pack, unpack

BUNDLE = "1a2b3c4d"
BODY = bytes(range(40)) + b"\x00\x00\x00\x80" * 3  # 52 bytes: whole words


def _payload(**changes):
    fields = dict(bundle_id=BUNDLE + "e5f6", latent_shape=(24, 103, 103), original_size=(480, 640),
                  resized_size=(312, 416), tasks=("seg", "cls"), body=BODY)
    fields.update(changes)
    return Payload(**fields)


def forge(magic=b"LDN", version=1, bundle=BUNDLE, latent=(24, 103, 103), original=(480, 640), resized=(312, 416),
          mask=0b101, body=BODY, length=None, crc=None):
    """A payload built field by field, bypassing pack's checks, with a valid CRC unless told otherwise."""
    header = struct.pack("<3sB4s7HBI", magic, version, bytes.fromhex(bundle), latent[0], latent[1], latent[2],
                         original[0], original[1], resized[0], resized[1], mask,
                         len(body) if length is None else length)
    framed = header + body
    return framed + struct.pack("<I", zlib.crc32(framed) & 0xFFFFFFFF if crc is None else crc)


def test_layout_is_exactly_as_documented():
    data = pack(_payload())
    assert len(data) == len(BODY) + 31 == len(BODY) + wire.OVERHEAD
    assert data[0:3] == b"LDN" and data[3] == 1
    assert data[4:8] == b"\x1a\x2b\x3c\x4d"
    assert struct.unpack("<7H", data[8:22]) == (24, 103, 103, 480, 640, 312, 416)
    assert data[22] == 0b101
    assert struct.unpack("<I", data[23:27]) == (len(BODY),)
    assert data[27:27 + len(BODY)] == BODY
    assert struct.unpack("<I", data[-4:]) == (zlib.crc32(data[:-4]),)
    assert data == forge()


def test_round_trip():
    data = pack(_payload())
    payload = unpack(data, expected_bundle_id=BUNDLE + "ffff")
    assert payload == Payload(BUNDLE, (24, 103, 103), (480, 640), (312, 416), ("cls", "seg"), BODY)
    assert unpack(bytearray(data)) == payload
    assert unpack(memoryview(data), expected_bundle_id=BUNDLE.upper()) == payload


@pytest.mark.parametrize("tasks,mask", [(("cls",), 1), (("det",), 2), (("seg",), 4), (("det", "cls", "seg"), 7)])
def test_task_bits(tasks, mask):
    data = pack(_payload(tasks=tasks))
    assert data[22] == mask
    assert unpack(data).tasks == tuple(name for name in ("cls", "det", "seg") if name in tasks)


def test_largest_resized_size_fits():
    resized = (4 * 103 + 4, 4 * 103 + 4)
    assert unpack(pack(_payload(resized_size=resized))).resized_size == resized


REJECTIONS = [
    (lambda: forge()[:17], "payload is truncated: 17 bytes, a payload has at least 31"),
    (lambda: b"", "payload is truncated: 0 bytes"),
    (lambda: forge()[:-1], r"payload is truncated: 82 bytes, its header declares 83"),
    (lambda: forge() + b"\x00", "1 unexpected bytes after its checksum"),
    (lambda: forge(magic=b"LDX"), "not a Ladon payload"),
    (lambda: forge(version=2), "version 2 is not supported"),
    (lambda: forge(crc=0), "CRC mismatch"),
    (lambda: forge(length=0xFFFFFFFF), "declares a 4294967295-byte body, over the limit"),
    (lambda: forge(length=len(BODY) + 4), "truncated"),
    (lambda: forge(length=len(BODY) - 4), "truncated|CRC mismatch|unexpected"),
    (lambda: forge(bundle="5e6f7a8b"), "payload was produced for bundle 5e6f7a8b, this bundle is 1a2b3c4d"),
    (lambda: forge(latent=(0, 103, 103)), "empty latent 0x103x103"),
    (lambda: forge(latent=(24, 103, 0)), "empty latent"),
    (lambda: forge(latent=(65535, 65535, 65535)), "over the limit"),
    (lambda: forge(original=(0, 640)), "empty original image size"),
    (lambda: forge(resized=(312, 0)), "empty resized image size"),
    (lambda: forge(resized=(4 * 103 + 5, 416)), "does not fit its 103x103 latent"),
    (lambda: forge(resized=(416, 4 * 103 + 5)), "does not fit"),
    (lambda: forge(mask=0), "requests no task"),
    (lambda: forge(mask=0b1001), "unknown tasks"),
    (lambda: forge(mask=0x80), "unknown tasks"),
    (lambda: forge(body=b""), "whole 32-bit words"),
    (lambda: forge(body=BODY[:-1]), "whole 32-bit words"),
    (lambda: forge(body=BODY[:4]), "at least 8 bytes"),
]


@pytest.mark.parametrize("make,message", REJECTIONS)
def test_rejections(make, message):
    with pytest.raises(PayloadError, match=message) as info:
        unpack(make(), expected_bundle_id=BUNDLE)
    assert "\n" not in str(info.value)


def test_checks_run_in_a_safe_order():
    # A corrupted payload is reported as corrupted, not as one for another bundle or with a bad shape.
    data = bytearray(forge(bundle="5e6f7a8b", latent=(0, 0, 0)))
    data[30] ^= 1
    with pytest.raises(PayloadError, match="CRC"):
        unpack(bytes(data), expected_bundle_id=BUNDLE)
    with pytest.raises(PayloadError, match="produced for bundle"):
        unpack(forge(bundle="5e6f7a8b", latent=(0, 0, 0)), expected_bundle_id=BUNDLE)


def test_limits_are_parameters():
    data = forge()
    with pytest.raises(PayloadError, match="over the limit of 51"):
        unpack(data, max_body=51)
    assert unpack(data, max_body=52).body == BODY
    with pytest.raises(PayloadError, match="over the limit of 1000"):
        unpack(data, max_symbols=1000)
    assert unpack(data, max_symbols=24 * 103 * 103).latent_shape == (24, 103, 103)


def test_unpack_refuses_non_bytes():
    with pytest.raises(PayloadError, match="must be bytes"):
        unpack("LDN")


@pytest.mark.parametrize("changes,message", [
    (dict(bundle_id="xyz"), "at least 8 hex digits"),
    (dict(bundle_id="zz2b3c4d"), "start with 8 hex digits"),
    (dict(bundle_id=None), "at least 8 hex digits"),
    (dict(tasks=("cls", "depth")), "unknown task 'depth'"),
    (dict(tasks=()), "requests no task"),
    (dict(tasks="cls"), "sequence of task names"),
    (dict(latent_shape=(24, 103)), r"\(C, H, W\)"),
    (dict(latent_shape=(24, 0, 103)), "empty latent"),
    (dict(original_size=(70000, 640)), "16 bits"),
    (dict(original_size=(480,)), r"\(height, width\)"),
    (dict(resized_size=(500, 416)), "does not fit"),
    (dict(body=b"\x00" * 6), "whole 32-bit words"),
])
def test_pack_refuses_what_unpack_would(changes, message):
    with pytest.raises(PayloadError, match=message):
        pack(_payload(**changes))


def test_errors_are_ladon_errors():
    assert issubclass(PayloadError, LadonError)
