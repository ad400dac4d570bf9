"""Choosing the bundle from the link budget: the order tried, the threshold from both sides, the refusal."""
import pytest

from ladon_deploy.link import operating_point as op
from ladon_deploy.link.plan import duty_cycle_wall, frame_times
from ladon_deploy.link.profiles import get_profile
from ladon_deploy.link.regions import get_region

PROFILE = get_profile("lora-sf6-bw500")
NONE = get_region(None)

SMALL_BETA = op.Candidate("b0.32", "aaaaaaaa", 0.32, None)     # largest payloads, most accurate
MIDDLE = op.Candidate("b1.28", "bbbbbbbb", 1.28, None)
LARGE_BETA = op.Candidate("b5.12", "cccccccc", 5.12, None)
SIZES = {"b0.32": 12000, "b1.28": 6000, "b5.12": 3000}


def _encoder(log):
    def encode(candidate):
        log.append(candidate.name)
        return b"x" * SIZES[candidate.name], 0.05
    return encode


def test_order_by_accuracy_else_beta_else_as_given():
    shuffled = [LARGE_BETA, SMALL_BETA, MIDDLE]
    assert [c.name for c in op.order_candidates(shuffled)] == ["b0.32", "b1.28", "b5.12"]
    accurate = [c._replace(accuracy=a) for c, a in zip(shuffled, (0.9, 0.5, 0.7))]
    assert [c.name for c in op.order_candidates(accurate)] == ["b5.12", "b1.28", "b0.32"]
    unknown = [c._replace(beta=None) for c in shuffled]
    assert [c.name for c in op.order_candidates(unknown)] == ["b5.12", "b0.32", "b1.28"]


def _needed(name):
    return 0.05 + sum(frame_times(PROFILE, NONE, SIZES[name]))


def test_budget_threshold_both_sides():
    middle = _needed("b1.28")
    log = []
    chosen, payload, attempts = op.choose([SMALL_BETA, MIDDLE, LARGE_BETA], _encoder(log), PROFILE, NONE, middle)
    assert chosen == MIDDLE and len(payload) == 6000 and log == ["b0.32", "b1.28"]     # stops at the first fit
    assert [a.fits for a in attempts] == [False, True]
    log = []
    chosen, _, _ = op.choose([SMALL_BETA, MIDDLE, LARGE_BETA], _encoder(log), PROFILE, NONE, middle * (1 - 1e-9))
    assert chosen == LARGE_BETA and log == ["b0.32", "b1.28", "b5.12"]
    chosen, _, attempts = op.choose([SMALL_BETA, MIDDLE], _encoder([]), PROFILE, NONE, 1e6)
    assert chosen == SMALL_BETA and len(attempts) == 1
    text = op.describe_choice(chosen, attempts, 1e6, [SMALL_BETA, MIDDLE])
    assert "chose b0.32" in text and "by beta" in text


def test_nothing_fits():
    with pytest.raises(op.BudgetError, match="b5.12"):
        op.choose([SMALL_BETA, LARGE_BETA], _encoder([]), PROFILE, NONE, _needed("b5.12") * 0.99)


def test_duty_cycle_and_repair_frames_count_against_the_budget():
    eu868 = get_region("eu868")
    times = frame_times(PROFILE, eu868, 3000)
    assert op.transfer_seconds(PROFILE, eu868, 3000, 0.0, True) == pytest.approx(
        duty_cycle_wall(times[:-1], eu868) + times[-1])
    assert op.transfer_seconds(PROFILE, eu868, 3000, 0.0, False) == pytest.approx(sum(times))
    with_repair = op.transfer_seconds(PROFILE, eu868, 3000, 0.5, False)
    assert with_repair > sum(times) * 1.4
