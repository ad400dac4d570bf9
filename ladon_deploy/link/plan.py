"""What sending a payload over a link costs: frames, time on air, the wall time the regional rules impose, how many
payloads an hour sustains, and the expected cost under frame loss.

Edge subset: Python 3.6-clean, standard library only.
"""
import math
from collections import OrderedDict
from typing import Dict, List, NamedTuple, Optional

from ladon_deploy.errors import LadonError
from ladon_deploy.link import frames
from ladon_deploy.link.profiles import LinkProfile
from ladon_deploy.link.regions import Region, get_region

SECONDS_PER_HOUR = 3600.0
_MAX_TRIALS = 1 << 20

FramePlan = NamedTuple("FramePlan", [
    ("capacity", int),           # payload bytes one frame carries (after every header)
    ("overhead_bytes", int),     # bytes every frame spends on headers: the MAC's, the transport's and the tag
    ("frame_payload_bytes", List[int]),  # PHY payload bytes of each data frame, all headers included
])


def implied_region(profile: LinkProfile, region_text: Optional[str]) -> Region:
    """The region rules: the ones asked for, else those the profile implies (LoRaWAN profiles imply theirs)."""
    if region_text is not None:
        return get_region(region_text)
    return get_region(profile.region)


def frame_capacity(profile: LinkProfile, region: Region, authenticated: bool = False) -> int:
    """Payload bytes per frame: the profile's largest frame less the transport header (and tag), shrunk until one
    frame fits the region's dwell time."""
    if profile.max_frame_payload is None:
        raise LadonError("%s is an ideal pipe with no frames" % profile.name)
    overhead = frames.HEADER_BYTES + (frames.TAG_BYTES if authenticated else 0)
    capacity = profile.max_frame_payload - overhead
    if region.dwell_time_s is not None:
        while capacity > 0 and profile.time_on_air(profile.mac_header_bytes + overhead + capacity) \
                > region.dwell_time_s:
            capacity -= 1
    if capacity <= 0:
        raise LadonError("%s cannot carry a %d-byte frame header%s" % (
            profile.name, overhead, " within %s's %g ms dwell time" % (region.name, region.dwell_time_s * 1e3)
            if region.dwell_time_s is not None else ""))
    return capacity


def plan_frames(profile: LinkProfile, region: Region, payload_bytes: int, authenticated: bool = False) -> FramePlan:
    capacity = frame_capacity(profile, region, authenticated)
    count = frames.data_frame_count(payload_bytes, capacity)
    if count > frames.MAX_DATA_FRAMES:
        raise LadonError("a %d-byte payload needs %d frames of %d bytes on %s; the frame format numbers at most %d"
                         % (payload_bytes, count, capacity, profile.name, frames.MAX_DATA_FRAMES))
    size = frames.slice_size(payload_bytes, count)
    overhead = profile.mac_header_bytes + frames.HEADER_BYTES + (frames.TAG_BYTES if authenticated else 0)
    sizes = [size] * (count - 1) + [payload_bytes - (count - 1) * size]
    return FramePlan(capacity, overhead, [overhead + s for s in sizes])


def duty_cycle_wait(time_on_air: float, region: Region) -> float:
    """The off-time after a frame: T (1/dc - 1)."""
    if region.duty_cycle is None:
        return 0.0
    return time_on_air * (1.0 / region.duty_cycle - 1.0)


def expected_frames(data_frames: int, repair_frames: int, loss: float) -> float:
    """Frames sent, on average, until the receiver holds `data_frames` of them, when `data_frames + repair_frames`
    go first and each lost one is made up for by one more (selective retransmission or new repair frames), each
    frame lost independently with probability `loss`: E[max(k + m, S_k)], S_k the trials to the k-th success."""
    if loss <= 0:
        return float(data_frames + repair_frames)
    first, expected, covered, trials = data_frames + repair_frames, 0.0, 0.0, data_frames
    while covered < 1.0 - 1e-12 and trials < _MAX_TRIALS:
        probability = _negative_binomial_pmf(data_frames, trials, 1.0 - loss)
        expected += max(first, trials) * probability
        covered += probability
        trials += 1
    return expected


def _negative_binomial_pmf(successes: int, trials: int, success: float) -> float:
    """P(the k-th success happens at trial n)."""
    if trials < successes:
        return 0.0
    log_p = (math.lgamma(trials) - math.lgamma(successes) - math.lgamma(trials - successes + 1)
             + successes * math.log(success) + (trials - successes) * math.log(1.0 - success))
    return math.exp(log_p)


def recovered_at_once_probability(data_frames: int, repair_frames: int, loss: float) -> float:
    """P(no more than `repair_frames` of the first k + m frames are lost): the payload needs no second round."""
    total = data_frames + repair_frames
    return sum(math.exp(math.lgamma(total + 1) - math.lgamma(lost + 1) - math.lgamma(total - lost + 1))
               * loss ** lost * (1 - loss) ** (total - lost) for lost in range(0, repair_frames + 1))


def frame_times(profile: LinkProfile, region: Region, payload_bytes: int, authenticated: bool = False) \
        -> List[float]:
    """Seconds on air of each frame of a payload (one continuous transfer on an ideal pipe)."""
    if profile.max_frame_payload is None:
        return [profile.time_on_air(payload_bytes)]
    sizes = plan_frames(profile, region, payload_bytes, authenticated).frame_payload_bytes
    return [profile.time_on_air(size) for size in sizes]


def duty_cycle_wall(times: List[float], region: Region) -> float:
    """Wall time of sending frames whose times on air are `times` when each waits out its off-time."""
    return sum(times) + sum(duty_cycle_wait(t, region) for t in times)


def link_cost(profile: LinkProfile, payload_bytes: int, region: Region, loss: float = 0.0,
              repair_ratio: float = 0.0, authenticated: bool = False) -> "OrderedDict[str, object]":
    """The document `ladon-run link --json` prints."""
    if payload_bytes <= 0:
        raise LadonError("--bytes must be positive, got %d" % payload_bytes)
    if not 0.0 <= loss < 1.0:
        raise LadonError("--loss must be in [0, 1), got %g" % loss)
    report = OrderedDict()  # type: OrderedDict[str, object]
    report["profile"] = profile.name
    report["description"] = profile.description
    report["region"] = region.name
    report["payload_bytes"] = payload_bytes
    report["bit_rate"] = profile.bit_rate
    report.update(profile.radio)
    times = frame_times(profile, region, payload_bytes, authenticated)
    if profile.max_frame_payload is None:
        report.update([("frames", 0), ("frame_payload_bytes", []), ("airtime_s", times[0])])
    else:
        plan = plan_frames(profile, region, payload_bytes, authenticated)
        report.update([("frames", len(times)), ("frame_payload_bytes", plan.frame_payload_bytes),
                       ("frame_overhead_bytes", plan.overhead_bytes), ("airtime_s", sum(times)),
                       ("longest_frame_s", max(times))])
    airtime = sum(times)
    report["duty_cycle"] = region.duty_cycle
    report["dwell_time_s"] = region.dwell_time_s
    # Each frame waits out its off-time, the last one included (the radio is not free before that).
    report["duty_cycle_wall_s"] = duty_cycle_wall(times, region)
    report["delivered_after_s"] = duty_cycle_wall(times[:-1], region) + times[-1]
    budget = SECONDS_PER_HOUR * (region.duty_cycle if region.duty_cycle is not None else 1.0)
    report["hourly_airtime_budget_s"] = budget
    report["payloads_per_hour"] = int(math.floor(budget / airtime))
    if profile.max_frame_payload is not None:
        data_frames = len(times)
        repair = int(math.ceil(data_frames * repair_ratio))
        mean_frame = airtime / data_frames
        expected = expected_frames(data_frames, repair, loss)
        report["loss"] = loss
        report["repair_frames"] = repair
        report["expected_frames"] = expected
        report["expected_airtime_s"] = expected * mean_frame
        report["recovered_without_retransmission"] = recovered_at_once_probability(data_frames, repair, loss)
    return report


def cost_table(profiles: List[LinkProfile], payload_sizes: List[int], region_text: Optional[str] = None) \
        -> List[Dict[str, object]]:
    """One row per profile and payload size: airtime and duty-cycle wall time (the docs' and the bench's table)."""
    rows = []
    for profile in profiles:
        region = implied_region(profile, region_text)
        for size in payload_sizes:
            cost = link_cost(profile, size, region)
            rows.append(OrderedDict([("profile", profile.name), ("region", region.name), ("payload_bytes", size),
                                     ("frames", cost["frames"]), ("airtime_s", cost["airtime_s"]),
                                     ("duty_cycle_wall_s", cost["duty_cycle_wall_s"]),
                                     ("payloads_per_hour", cost["payloads_per_hour"])]))
    return rows
