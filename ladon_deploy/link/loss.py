"""Frame loss on the way: independent losses, or bursts (Gilbert-Elliott), seeded so that a run can be repeated.

Losses on LoRa are whole frames, and come in bursts when interference or fading lasts longer than a frame; the
Gilbert-Elliott model has a good and a bad state, moves from good to bad with probability p and back with r after
each frame, and loses a frame with probability h in the bad state (1 by default) and k in the good one (0): the
average loss is p / (p + r) h + r / (p + r) k.

Edge subset: Python 3.6-clean, standard library only.
"""
import random
from typing import Optional

from ladon_deploy.errors import LadonError


class FrameLoss(object):
    """Decides, frame after frame, whether the link loses it."""

    description = "no loss"
    rate = 0.0

    def __init__(self, seed: Optional[int] = None) -> None:
        self.random = random.Random(seed)

    def lost(self) -> bool:
        return False


class IndependentLoss(FrameLoss):
    def __init__(self, rate: float, seed: Optional[int] = None) -> None:
        super(IndependentLoss, self).__init__(seed)
        self.rate = rate
        self.description = "independent, %g%%" % (rate * 100)

    def lost(self) -> bool:
        return self.random.random() < self.rate


class GilbertElliottLoss(FrameLoss):
    def __init__(self, to_bad: float, to_good: float, loss_bad: float = 1.0, loss_good: float = 0.0,
                 seed: Optional[int] = None) -> None:
        super(GilbertElliottLoss, self).__init__(seed)
        self.to_bad, self.to_good, self.loss_bad, self.loss_good = to_bad, to_good, loss_bad, loss_good
        bad_share = to_bad / (to_bad + to_good)
        self.rate = bad_share * loss_bad + (1 - bad_share) * loss_good
        self.description = "Gilbert-Elliott p=%g r=%g h=%g k=%g (mean %.3g%%)" % (
            to_bad, to_good, loss_bad, loss_good, self.rate * 100)
        # Start in the stationary distribution, so the first frames are not better off than the rest.
        self.bad = self.random.random() < bad_share

    def lost(self) -> bool:
        lost = self.random.random() < (self.loss_bad if self.bad else self.loss_good)
        self.bad = self.random.random() >= self.to_good if self.bad else self.random.random() < self.to_bad
        return lost


def parse_loss(text: Optional[str], seed: Optional[int] = None) -> FrameLoss:
    """`0.1` (independent), `ge:P,R[,H[,K]]` (Gilbert-Elliott) or None / 0 (no loss)."""
    if text is None:
        return FrameLoss(seed)
    try:
        if text.startswith("ge:"):
            values = [float(v) for v in text[3:].split(",")]
            if not 2 <= len(values) <= 4 or not all(0 <= v <= 1 for v in values) or values[0] + values[1] == 0:
                raise ValueError(text)
            return GilbertElliottLoss(*values, seed=seed)
        rate = float(text)
    except ValueError:
        raise LadonError("cannot parse loss %r: a probability such as 0.1, or ge:P,R[,H,K] for bursts "
                         "(Gilbert-Elliott: P good->bad, R bad->good per frame)" % text)
    if not 0 <= rate < 1:
        raise LadonError("loss must be in [0, 1), got %r" % text)
    return IndependentLoss(rate, seed) if rate else FrameLoss(seed)
