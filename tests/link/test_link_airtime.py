"""Time on air against values computed by hand from the datasheet formulas (the arithmetic is in each comment), and
the profiles' and regions' tables."""
import pytest

from ladon_deploy.errors import LadonError
from ladon_deploy.link import airtime
from ladon_deploy.link.profiles import PROFILES, get_profile
from ladon_deploy.link.regions import get_region

CASES = [
    # SF7/125 kHz, 255 B, CR 4/5: Tsym 1.024 ms; ceil((2040 - 28 + 28 + 16) / 28) = 74 -> 8 + 74 * 5 = 378 symbols;
    # (8 + 4.25 + 378) * 1.024 ms = 399.616 ms
    (dict(payload_bytes=255, spreading_factor=7, bandwidth_hz=125e3), 399.616e-3),
    # SF12/125, 64 B (51-byte LoRaWAN payload + 13), low-data-rate optimised (Tsym 32.768 ms >= 16 ms):
    # ceil((512 - 48 + 28 + 16) / 40) = 13 -> 73 symbols; (8 + 4.25 + 73) * 32.768 ms = 2793.472 ms
    (dict(payload_bytes=64, spreading_factor=12, bandwidth_hz=125e3), 2793.472e-3),
    # SF6/500 (SX126x), 255 B, 12-symbol preamble: ceil((2040 + 16 - 24 + 20) / 24) = 86 -> 8 + 430 = 438;
    # (12 + 6.25 + 438) * 0.128 ms = 58.4 ms
    (dict(payload_bytes=255, spreading_factor=6, bandwidth_hz=500e3, preamble_symbols=12), 58.4e-3),
    # SF5/500, 10 B: ceil((80 + 16 - 20 + 20) / 20) = 5 -> 8 + 25 = 33; (12 + 6.25 + 33) * 0.064 ms = 3.28 ms
    (dict(payload_bytes=10, spreading_factor=5, bandwidth_hz=500e3, preamble_symbols=12), 3.28e-3),
    # SF9/125, CR 4/8, 20 B: ceil((160 - 36 + 28 + 16) / 36) = 5 -> 8 + 40 = 48; (8 + 4.25 + 48) * 4.096 ms
    (dict(payload_bytes=20, spreading_factor=9, bandwidth_hz=125e3, coding_rate=4), 246.784e-3),
    # SF11/125 (Tsym 16.384 ms: optimised), 10 B: ceil((80 - 44 + 28 + 16) / 36) = 3 -> 23; 35.25 * 16.384 ms
    (dict(payload_bytes=10, spreading_factor=11, bandwidth_hz=125e3), 577.536e-3),
    # the same without the optimisation: ceil(80 / 44) = 2 -> 18; 30.25 * 16.384 ms = 495.616 ms
    (dict(payload_bytes=10, spreading_factor=11, bandwidth_hz=125e3, low_data_rate=False), 495.616e-3),
    # implicit header, no CRC, SF8/250: ceil((80 - 32 + 28 - 20) / 32) = 2 -> 18; (8 + 4.25 + 18) * 1.024 ms
    (dict(payload_bytes=10, spreading_factor=8, bandwidth_hz=250e3, crc=False, implicit_header=True), 30.976e-3),
]


@pytest.mark.parametrize("arguments,seconds", CASES)
def test_lora_time_on_air_matches_the_datasheet_formula(arguments, seconds):
    assert airtime.lora_time_on_air(**arguments) == pytest.approx(seconds, rel=1e-9)


def test_low_data_rate_optimisation_starts_at_16_ms_symbols():
    assert airtime.lora_low_data_rate_optimise(11, 125e3)       # 16.384 ms
    assert airtime.lora_low_data_rate_optimise(12, 250e3)       # 16.384 ms
    assert not airtime.lora_low_data_rate_optimise(10, 125e3)   # 8.192 ms
    assert not airtime.lora_low_data_rate_optimise(11, 250e3)   # 8.192 ms


def test_a_lora_frame_carries_at_most_255_bytes():
    airtime.lora_time_on_air(255, 7, 125e3)
    with pytest.raises(ValueError):
        airtime.lora_time_on_air(256, 7, 125e3)


def test_fixed_rate_phys():
    # EU868 DR7 (GFSK 50 kbps): (5 + 3 + 1 + 2 + 255) bytes * 8 / 50 kbps = 42.56 ms
    assert get_profile("eu868-dr7").time_on_air(255) == pytest.approx(42.56e-3)
    # BLE coded S=8: 80 us + 37 bits * 8 us + (16 + 8 * 251 + 24 + 3) bits * 8 us = 16,784 us
    assert get_profile("ble-coded-s8").time_on_air(251) == pytest.approx(16784e-6)
    assert get_profile("ble-coded-s2").time_on_air(251) == pytest.approx(376e-6 + 2051 * 2e-6)
    # IEEE 802.15.4g FSK 100 kbps: (8 + 2 + 2 + 4 + 100) bytes * 8 / 100 kbps = 9.28 ms
    assert get_profile("wisun-fsk100").time_on_air(100) == pytest.approx(9.28e-3)


def test_the_papers_37_5_kbps_is_lora_sf6_500_khz():
    assert get_profile("lora-sf6-bw500").bit_rate == pytest.approx(37500.0)
    assert get_profile("lora-sf5-bw500").bit_rate == pytest.approx(62500.0)
    assert get_profile("ideal:37.5kbps").time_on_air(5900) == pytest.approx(5900 * 8 / 37500.0)


def test_profile_table_covers_what_the_docs_name():
    names = set(PROFILES)
    assert {"ideal:100kbps", "ideal:37.5kbps", "wisun-fsk100", "ble-coded-s8", "ble-coded-s2"} <= names
    assert {"lora-sf%d-bw%d" % (sf, bw) for sf in range(5, 13) for bw in (125, 250, 500)} <= names
    assert {"eu868-dr%d" % dr for dr in range(8)} <= names and {"us915-dr%d" % dr for dr in range(5)} <= names
    # LoRaWAN: the MAC payload limits, the 13-byte header on air and the region each implies
    assert [get_profile("eu868-dr%d" % dr).max_frame_payload for dr in range(8)] == [51, 51, 51, 115, 242, 242,
                                                                                     242, 242]
    assert [get_profile("us915-dr%d" % dr).max_frame_payload for dr in range(5)] == [11, 53, 125, 242, 242]
    assert get_profile("eu868-dr5").mac_header_bytes == 13 and get_profile("eu868-dr5").region == "eu868"
    assert get_profile("lora-sf7-bw125").mac_header_bytes == 0 and get_profile("lora-sf7-bw125").region is None
    assert get_profile("ideal:1Mbps").bit_rate == 1e6


def test_us915_payload_limits_are_the_largest_frames_within_the_dwell_time():
    dwell = get_region("us915").dwell_time_s
    for dr in range(5):
        profile = get_profile("us915-dr%d" % dr)
        largest = profile.mac_header_bytes + profile.max_frame_payload
        assert profile.time_on_air(largest) <= dwell


def test_regions():
    assert get_region("eu868").duty_cycle == 0.01
    assert get_region("eu868:869.4-869.65").duty_cycle == 0.1
    assert get_region("eu868:868.7-869.2").duty_cycle == 0.001
    assert get_region("us915").dwell_time_s == 0.4 and get_region("us915").duty_cycle is None
    assert get_region("none").duty_cycle is None and get_region(None).dwell_time_s is None
    for bad in ("eu433", "eu868:999", "us915:1"):
        with pytest.raises(LadonError):
            get_region(bad)
    with pytest.raises(LadonError):
        get_profile("lora-sf13-bw125")
