"""Regional rules for sub-GHz radios: duty cycle (EU868) and dwell time (US915).

- EU868 (ETSI EN 300 220-2, ERC Recommendation 70-03 annex 1, as LoRaWAN RP002-1.0.4 and LoRaMac-node apply them):
  a duty cycle per sub-band, 1% in 865-868, 868.0-868.6 and 869.7-870.0 MHz, 0.1% in 863-865 and 868.7-869.2 MHz,
  10% in 869.4-869.65 MHz. A device waits T (1/dc - 1) after a frame of T seconds before it sends again in that
  sub-band; LoRaMac-node also keeps an hourly airtime budget (3600 dc seconds per hour: 36 s at 1%).
  LoRaWAN's default EU868 channels (868.1, 868.3, 868.5 MHz) lie in 868.0-868.6, so `eu868` means that sub-band.
- US915 (FCC part 15.247, LoRaWAN RP002): no duty cycle, but no frame may stay on air more than 400 ms on a channel.

Edge subset: Python 3.6-clean, standard library only.
"""
from collections import OrderedDict
from typing import NamedTuple, Optional

from ladon_deploy.errors import LadonError

Region = NamedTuple("Region", [
    ("name", str),
    ("duty_cycle", Optional[float]),     # fraction of time on air allowed (None: no duty-cycle rule)
    ("dwell_time_s", Optional[float]),   # longest time on air of one frame (None: no dwell-time rule)
    ("description", str),
])

EU868_SUB_BANDS = OrderedDict([
    ("863-865", 0.001),
    ("865-868", 0.01),
    ("868.0-868.6", 0.01),
    ("868.7-869.2", 0.001),
    ("869.4-869.65", 0.1),
    ("869.7-870", 0.01),
])
EU868_DEFAULT_SUB_BANDS = "868.0-868.6"
US915_DWELL_TIME_S = 0.4
NO_RULES = Region("none", None, None, "no regional rule")


def get_region(text: Optional[str]) -> Region:
    """`eu868`, `eu868:<sub-band>` (e.g. eu868:869.4-869.65), `us915` or `none`."""
    if text is None or text == "none":
        return NO_RULES
    name, _, sub_band = text.partition(":")
    if name == "eu868":
        sub_band = sub_band or EU868_DEFAULT_SUB_BANDS
        if sub_band not in EU868_SUB_BANDS:
            raise LadonError("unknown EU868 sub-band %r (one of %s)" % (sub_band, ", ".join(EU868_SUB_BANDS)))
        duty = EU868_SUB_BANDS[sub_band]
        return Region("eu868:" + sub_band, duty, None,
                      "EU868 sub-band %s MHz: %g%% duty cycle" % (sub_band, duty * 100))
    if name == "us915" and not sub_band:
        return Region("us915", None, US915_DWELL_TIME_S, "US915: 400 ms dwell time per frame, no duty cycle")
    raise LadonError("unknown region %r (eu868, eu868:<sub-band>, us915 or none)" % text)
