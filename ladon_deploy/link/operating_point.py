"""Choosing the operating point from the link: of several bundles of one architecture (trained at several betas), the
most accurate one whose payload reaches the server within a time budget.

The budget covers the time from the image to the last frame on air: the device's compute, the frames' time on air
(the data frames and the repair frames sent with them) and, unless the duty cycle is switched off, the off-time the
region imposes between frames. Bundles are tried from the most accurate down (accuracy from `ladon-eval` results
where given, else the smaller beta first: a smaller rate weight keeps more bits and more accuracy) and the first
that fits is sent; encoding stops there, so a generous budget costs one encoding.

Edge subset: Python 3.6-clean, standard library only.
"""
import math
from typing import Callable, List, NamedTuple, Optional, Sequence, Tuple

from ladon_deploy.errors import LadonError
from ladon_deploy.link.plan import duty_cycle_wall, frame_times, plan_frames
from ladon_deploy.link.profiles import LinkProfile
from ladon_deploy.link.regions import Region

Candidate = NamedTuple("Candidate", [
    ("name", str),                  # what the user gave (the bundle directory)
    ("bundle_id", str),
    ("beta", Optional[float]),
    ("accuracy", Optional[float]),  # from a ladon-eval result of this bundle, when given
])

Attempt = NamedTuple("Attempt", [
    ("candidate", Candidate), ("payload_bytes", int), ("compute_s", float), ("link_s", float), ("total_s", float),
    ("fits", bool)])


class BudgetError(LadonError):
    """No bundle's payload reaches the server within the budget."""


def order_candidates(candidates: Sequence[Candidate]) -> List[Candidate]:
    """Most accurate first: by accuracy where every bundle has one, else by beta (smaller first); the order given
    breaks ties and stands where neither is known."""
    if all(c.accuracy is not None for c in candidates):
        return sorted(candidates, key=lambda c: -c.accuracy)
    if all(c.beta is not None for c in candidates):
        return sorted(candidates, key=lambda c: c.beta)
    return list(candidates)


def ordering_reason(candidates: Sequence[Candidate]) -> str:
    if all(c.accuracy is not None for c in candidates):
        return "by accuracy from ladon-eval"
    if all(c.beta is not None for c in candidates):
        return "by beta, smallest first (no ladon-eval result for every bundle)"
    return "in the order given (neither accuracy nor beta known for every bundle)"


def transfer_seconds(profile: LinkProfile, region: Region, payload_bytes: int, repair_ratio: float,
                     duty_cycle: bool, authenticated: bool = False) -> float:
    """From the first frame on air to the end of the last one, the repair frames sent with the data included (each
    as large as the first data frame)."""
    times = frame_times(profile, region, payload_bytes, authenticated)
    if profile.max_frame_payload is not None and repair_ratio > 0:
        first_frame = plan_frames(profile, region, payload_bytes, authenticated).frame_payload_bytes[0]
        times = times + [profile.time_on_air(first_frame)] * int(math.ceil(len(times) * repair_ratio))
    if not duty_cycle:
        return sum(times)
    return duty_cycle_wall(times[:-1], region) + times[-1]


def choose(candidates: Sequence[Candidate], encode: Callable[[Candidate], Tuple[bytes, float]],
           profile: LinkProfile, region: Region, budget_s: float, repair_ratio: float = 0.0,
           duty_cycle: bool = True, authenticated: bool = False) -> Tuple[Candidate, bytes, List[Attempt]]:
    """Encodes with each candidate in turn (most accurate first) until one fits; returns it, its payload and every
    attempt. Raises BudgetError when none fits."""
    attempts = []  # type: List[Attempt]
    for candidate in order_candidates(candidates):
        payload, compute = encode(candidate)
        link_s = transfer_seconds(profile, region, len(payload), repair_ratio, duty_cycle, authenticated)
        fits = compute + link_s <= budget_s
        attempts.append(Attempt(candidate, len(payload), compute, link_s, compute + link_s, fits))
        if fits:
            return candidate, payload, attempts
    smallest = min(attempts, key=lambda a: a.total_s)
    raise BudgetError("no bundle fits the %g s budget on %s: the fastest, %s (%d bytes), needs %.2f s "
                      "(compute %.2f s + link %.2f s)" % (budget_s, profile.name, smallest.candidate.name,
                                                          smallest.payload_bytes, smallest.total_s,
                                                          smallest.compute_s, smallest.link_s))


def describe_choice(chosen: Candidate, attempts: Sequence[Attempt], budget_s: float,
                    candidates: Sequence[Candidate]) -> str:
    tried = "; ".join("%s: %d B, %.2f s%s" % (a.candidate.name, a.payload_bytes, a.total_s,
                                              " fits" if a.fits else " > budget") for a in attempts)
    return "chose %s (budget %g s; tried %s: %s)" % (chosen.name, budget_s, ordering_reason(candidates), tried)
