"""TensorRT's EntropyCalibration2 cache: format, version numbers, round trip, refusals."""
import struct

import pytest

from ladon_deploy.calibration import cache


def test_version_numbers_follow_nv_tensorrt_version():
    assert cache.version_number("8.2.1.8") == 8201
    assert cache.version_number("8.5.2.2") == 8502
    assert cache.version_number("8.6") == 8600
    assert cache.version_number("10.3.0.26") == 100300
    assert cache.header_for("8.5.2") == "TRT-8502-EntropyCalibration2"
    with pytest.raises(cache.CacheError):
        cache.version_number("eight")


def test_scales_are_big_endian_float32_hex():
    # 1/127 is the scale of a tensor in [-1, 1]; TensorRT writes it as 3c010204.
    assert cache.scale_to_hex(1.0 / 127) == "3c010204"
    assert cache.hex_to_scale("3f800000") == 1.0
    assert cache.scale_to_hex(2.0) == struct.pack(">f", 2.0).hex() == "40000000"


def test_round_trip_keeps_order_names_and_float32_values(tmp_path):
    scales = {"image": 0.0208, "/encoder/encoder.0/Conv_output_0": 0.031, "x: y": 1e-5}
    path = str(tmp_path / "encoder.int8.calibration.cache")
    cache.write_cache(path, scales, "8.5.2")
    text = open(path).read()
    assert text.splitlines()[0] == "TRT-8502-EntropyCalibration2"
    assert text.endswith("\n")
    version, algorithm, parsed = cache.read_cache(path)
    assert (version, algorithm) == (8502, "EntropyCalibration2")
    assert list(parsed) == list(scales)
    for name, value in scales.items():
        assert parsed[name] == struct.unpack(">f", struct.pack(">f", value))[0]


def test_retag_moves_a_cache_to_another_version():
    data = cache.format_cache({"image": 0.5}, "8.5")
    moved = cache.retag(data, "10.3.0")
    assert moved.splitlines()[0] == b"TRT-100300-EntropyCalibration2"
    assert cache.parse_cache(moved)[2] == {"image": 0.5}


@pytest.mark.parametrize("data", [
    b"", b"\xff\xfe", b"TRT-85-\n", b"TRT-8502-EntropyCalibration2\nimage 3c010204\n",
    b"TRT-8502-EntropyCalibration2\nimage: 3c0102\n", b"TRT-8502-EntropyCalibration2\na: 3c010204\na: 3c010204\n",
    b"TRT-8502-EntropyCalibration2\na: 7fc00000\n", b"TRT-8502-EntropyCalibration2\na: bf800000\n"])
def test_malformed_caches_are_refused(data):
    with pytest.raises(cache.CacheError):
        cache.parse_cache(data)


def test_unwritable_scales_are_refused():
    with pytest.raises(cache.CacheError):
        cache.format_cache({"a": 0.0}, "8.5")
    with pytest.raises(cache.CacheError):
        cache.format_cache({"a\nb": 1.0}, "8.5")
