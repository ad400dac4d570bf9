"""Frames, duty cycle, dwell time and the hourly budget of `ladon-run link`, each threshold from both sides."""
import json
import math

import pytest

from ladon_deploy.cli_support import UsageError
from ladon_deploy.errors import LadonError
from ladon_deploy.link import frames, plan
from ladon_deploy.link.profiles import get_profile
from ladon_deploy.link.regions import get_region
from ladon_deploy.runtime.cli import main


def test_sf6_500_payload_under_eu868(capsys):
    assert main(["link", "--profile", "lora-sf6-bw500", "--bytes", "5900", "--region", "eu868", "--json"]) == 0
    cost = json.loads(capsys.readouterr().out)
    profile = get_profile("lora-sf6-bw500")
    capacity = 255 - frames.HEADER_BYTES
    count = math.ceil(5900 / capacity)
    assert cost["frames"] == count == len(cost["frame_payload_bytes"])
    assert sum(cost["frame_payload_bytes"]) == 5900 + count * frames.HEADER_BYTES
    assert max(cost["frame_payload_bytes"]) <= 255
    airtime = sum(profile.time_on_air(size) for size in cost["frame_payload_bytes"])
    assert cost["airtime_s"] == pytest.approx(airtime)
    assert cost["duty_cycle_wall_s"] == pytest.approx(airtime / 0.01)        # every frame waits T (1/dc - 1)
    assert cost["payloads_per_hour"] == math.floor(36.0 / airtime)
    for key, value in (("spreading_factor", 6), ("bandwidth_hz", 500000), ("coding_rate", "4/5"),
                       ("preamble_symbols", 12), ("crc", True), ("implicit_header", False)):
        assert cost[key] == value


def test_frames_are_balanced_and_only_as_many_as_needed():
    profile, region = get_profile("lora-sf7-bw125"), get_region(None)
    capacity = plan.frame_capacity(profile, region)
    assert plan.plan_frames(profile, region, capacity).frame_payload_bytes == [255]          # exactly one frame
    two = plan.plan_frames(profile, region, capacity + 1).frame_payload_bytes               # one byte more: two
    assert len(two) == 2 and abs(two[0] - two[1]) <= 1
    authenticated = plan.plan_frames(profile, region, capacity, authenticated=True)
    assert len(authenticated.frame_payload_bytes) == 2                                       # the tag takes room


def test_lorawan_header_is_counted_on_air():
    profile = get_profile("eu868-dr5")
    cost = plan.link_cost(profile, 1000, plan.implied_region(profile, None))
    assert cost["region"] == "eu868:868.0-868.6"
    assert cost["frame_overhead_bytes"] == 13 + frames.HEADER_BYTES
    assert max(cost["frame_payload_bytes"]) <= 242 + 13


def test_us915_dwell_time_shrinks_frames_on_both_sides_of_400_ms():
    profile, us915 = get_profile("lora-sf10-bw125"), get_region("us915")
    capacity = plan.frame_capacity(profile, us915)
    overhead = frames.HEADER_BYTES
    assert profile.time_on_air(overhead + capacity) <= 0.4 < profile.time_on_air(overhead + capacity + 1)
    assert plan.frame_capacity(profile, get_region(None)) == 255 - overhead
    with pytest.raises(LadonError, match="dwell"):
        plan.frame_capacity(get_profile("lora-sf12-bw125"), us915)     # SF12: not even a header fits in 400 ms


def test_duty_cycle_wait_and_hourly_budget_thresholds():
    region = get_region("eu868")
    assert plan.duty_cycle_wait(1.0, region) == pytest.approx(99.0)
    assert plan.duty_cycle_wait(1.0, get_region("eu868:869.4-869.65")) == pytest.approx(9.0)
    assert plan.duty_cycle_wait(1.0, get_region("none")) == 0.0
    ideal = get_profile("ideal:8kbps")                    # 1,000 bytes take exactly one second
    assert plan.link_cost(ideal, 1000, region)["payloads_per_hour"] == 36       # 36 s budget / 1 s: exactly 36
    assert plan.link_cost(ideal, 1001, region)["payloads_per_hour"] == 35       # a byte more: one fewer


def test_expected_frames_under_loss():
    assert plan.expected_frames(25, 3, 0.0) == 28
    # pure retransmission: k / (1 - q) frames on average
    assert plan.expected_frames(25, 0, 0.1) == pytest.approx(25 / 0.9, rel=1e-6)
    # repair frames sent up front cost frames even when nothing is lost, and save rounds when they are
    assert 28 <= plan.expected_frames(25, 3, 0.1) < 28 + 25 / 0.9 - 25
    assert plan.recovered_at_once_probability(25, 3, 0.0) == pytest.approx(1.0)
    assert plan.recovered_at_once_probability(1, 0, 0.1) == pytest.approx(0.9)


def test_too_many_frames_and_bad_sizes_are_refused(capsys):
    with pytest.raises(LadonError, match="4095"):
        plan.plan_frames(get_profile("us915-dr0"), get_region("us915"), 100000)
    for bad in ("-5", "12kB", "0"):
        with pytest.raises(UsageError):
            main(["link", "--profile", "lora-sf6-bw500", "--bytes", bad])
    with pytest.raises(LadonError, match="unknown link profile"):
        main(["link", "--profile", "lora-sf4-bw500", "--bytes", "100"])


def test_cli_text_list_and_table(capsys):
    assert main(["link", "--list"]) == 0
    assert "lora-sf12-bw125" in capsys.readouterr().out
    assert main(["link", "--profile", "ideal:37.5kbps", "--profile", "eu868-dr5", "--bytes", "4000,120000"]) == 0
    table = capsys.readouterr().out
    assert table.count("\n| ") == 4 and "eu868:868.0-868.6" in table
    assert main(["link", "--profile", "lora-sf6-bw500", "--bytes", "5900", "--loss", "0.1"]) == 0
    assert "with 10% loss" in capsys.readouterr().out
