"""Link profiles: the one table of the radios and pipes a payload can cross.

A profile says how a payload crosses the link: the bit rate, the largest frame the PHY (or the MAC on top of it)
carries, the bytes every frame spends on headers the toolkit does not control, and each frame's time on air.
Sources:
- Ideal pipes: the Ladon paper's latency figures (transfer = bytes * 8 / rate, no frames).
- Raw LoRa: Semtech AN1200.13 and the SX1276 datasheet (SF7-SF12), the SX1261/2 datasheet (SF5, SF6, whose
  preamble is at least 12 symbols); explicit header, payload CRC on, coding rate 4/5 and an 8-symbol preamble
  unless the name says otherwise (`lora-sf9-bw125-cr4/8`).
- LoRaWAN: RP002-1.0.4 Regional Parameters, EU868 DR0-DR7 and US915 uplink DR0-DR4 with their maximum MAC payloads
  (N) and the 13 bytes every LoRaWAN uplink adds (MHDR 1, DevAddr 4, FCtrl 1, FCnt 2, FPort 1, MIC 4); EU868 DR7 is
  FSK at 50 kbps (preamble 5 bytes, sync word 3, length 1, CRC 2).
- IEEE 802.15.4g SUN FSK at 100 kbps (Wi-SUN FAN operating mode 2a/2b): SHR of an 8-byte preamble and 2-byte SFD,
  2-byte PHR, 4-byte FCS, PSDU up to 2,047 bytes.
- Bluetooth LE coded PHY (Core 5.0, Vol 6 Part B 2.2): 80 us preamble, then access address, coding indicator and
  TERM1 at S=8 (296 us), then PDU header (2 bytes), payload (up to 251 bytes), CRC (3 bytes) and TERM2 (3 bits) at
  S=8 (125 kbps) or S=2 (500 kbps).

Edge subset: Python 3.6-clean, standard library only.
"""
import re
from collections import OrderedDict
from typing import Callable, Dict, List, NamedTuple, Optional

from ladon_deploy.device.link import format_rate, parse_rate
from ladon_deploy.errors import LadonError
from ladon_deploy.link import airtime

LORAWAN_HEADER_BYTES = 13
CODING_RATES = {1: "4/5", 2: "4/6", 3: "4/7", 4: "4/8"}

LinkProfile = NamedTuple("LinkProfile", [
    ("name", str),
    ("kind", str),                      # ideal, lora, lorawan, fsk, ble
    ("bit_rate", float),                # bits per second of the PHY (LoRa: SF BW / 2^SF * 4 / (4 + CR))
    ("max_frame_payload", Optional[int]),  # bytes the toolkit may put in one frame (None: an ideal pipe, no frames)
    ("mac_header_bytes", int),          # bytes every frame carries on air for the MAC (LoRaWAN: 13)
    ("region", Optional[str]),          # the region rules the profile implies (LoRaWAN), else None
    ("radio", Dict[str, object]),       # the PHY's parameters, as `ladon-run link --json` prints them
    ("time_on_air", Callable[[int], float]),  # seconds on air for a frame of this many PHY payload bytes
    ("description", str),
])


def _lora(name: str, sf: int, bw_khz: float, cr: int = 1, max_payload: int = airtime.LORA_MAX_PHY_PAYLOAD,
          mac_header: int = 0, region: Optional[str] = None, description: str = "") -> LinkProfile:
    bandwidth = bw_khz * 1e3
    preamble = 12 if sf <= 6 else 8
    ldro = airtime.lora_low_data_rate_optimise(sf, bandwidth)
    radio = OrderedDict([("modulation", "LoRa"), ("spreading_factor", sf), ("bandwidth_hz", int(bandwidth)),
                         ("coding_rate", CODING_RATES[cr]), ("preamble_symbols", preamble), ("crc", True),
                         ("implicit_header", False), ("low_data_rate_optimise", ldro)])

    def time_on_air(phy_payload_bytes: int) -> float:
        return airtime.lora_time_on_air(phy_payload_bytes, sf, bandwidth, cr, preamble, True, False, ldro)

    rate = airtime.lora_bit_rate(sf, bandwidth, cr)
    return LinkProfile(name, "lorawan" if mac_header else "lora", rate, max_payload - mac_header, mac_header, region,
                       radio, time_on_air, description or "LoRa SF%d, %g kHz, CR %s, %s" % (
                           sf, bw_khz, CODING_RATES[cr], format_rate(rate)))


def _fixed_rate(name: str, kind: str, bit_rate: float, max_payload: int, overhead_bits: int,
                fixed_seconds: float = 0.0, mac_header: int = 0, region: Optional[str] = None,
                radio: Optional[Dict[str, object]] = None, description: str = "") -> LinkProfile:
    def time_on_air(phy_payload_bytes: int) -> float:
        return airtime.fixed_rate_time_on_air(phy_payload_bytes, bit_rate, overhead_bits, fixed_seconds)

    return LinkProfile(name, kind, bit_rate, max_payload - mac_header, mac_header, region,
                       OrderedDict(radio or {}), time_on_air, description)


def _ideal(rate_text: str) -> LinkProfile:
    rate = parse_rate(rate_text)
    name = "ideal:" + rate_text

    def time_on_air(payload_bytes: int) -> float:
        return payload_bytes * 8.0 / rate

    return LinkProfile(name, "ideal", rate, None, 0, None, OrderedDict([("modulation", "none")]), time_on_air,
                       "a continuous pipe at %s, as the paper's figures assume (no frames, no overheads)"
                       % format_rate(rate))


def _build_table() -> "OrderedDict[str, LinkProfile]":
    table = OrderedDict()  # type: OrderedDict[str, LinkProfile]
    for rate in ("100kbps", "37.5kbps"):
        profile = _ideal(rate)
        table[profile.name] = profile
    for sf in range(5, 13):
        for bw in (125, 250, 500):
            name = "lora-sf%d-bw%d" % (sf, bw)
            table[name] = _lora(name, sf, bw)
    # LoRaWAN EU868 (RP002-1.0.4 table 2-2-2 and 2-2-6): DR0-DR5 SF12-SF7 at 125 kHz, DR6 SF7 at 250 kHz.
    eu868_payload = (51, 51, 51, 115, 242, 242, 242)
    for dr, (sf, bw) in enumerate([(12, 125), (11, 125), (10, 125), (9, 125), (8, 125), (7, 125), (7, 250)]):
        name = "eu868-dr%d" % dr
        table[name] = _lora(name, sf, bw, max_payload=eu868_payload[dr] + LORAWAN_HEADER_BYTES,
                            mac_header=LORAWAN_HEADER_BYTES, region="eu868",
                            description="LoRaWAN EU868 DR%d: SF%d, %d kHz, %d-byte MAC payload" % (
                                dr, sf, bw, eu868_payload[dr]))
    # EU868 DR7: GFSK 50 kbps; preamble 5 bytes, sync word 3, length 1, CRC 2 around the PHY payload.
    table["eu868-dr7"] = _fixed_rate(
        "eu868-dr7", "fsk", 50e3, 242 + LORAWAN_HEADER_BYTES, (5 + 3 + 1 + 2) * 8,
        mac_header=LORAWAN_HEADER_BYTES, region="eu868",
        radio=OrderedDict([("modulation", "GFSK"), ("bit_rate", 50000), ("preamble_bytes", 5),
                           ("sync_word_bytes", 3), ("crc", True)]),
        description="LoRaWAN EU868 DR7: GFSK 50 kbps, 242-byte MAC payload")
    # US915 uplink (RP002-1.0.4 table 2-5-2 and 2-5-6): the payloads are the largest under the 400 ms dwell time.
    us915 = [(10, 125, 11), (9, 125, 53), (8, 125, 125), (7, 125, 242), (8, 500, 242)]
    for dr, (sf, bw, payload) in enumerate(us915):
        name = "us915-dr%d" % dr
        table[name] = _lora(name, sf, bw, max_payload=payload + LORAWAN_HEADER_BYTES,
                            mac_header=LORAWAN_HEADER_BYTES, region="us915",
                            description="LoRaWAN US915 DR%d: SF%d, %d kHz, %d-byte MAC payload" % (
                                dr, sf, bw, payload))
    # IEEE 802.15.4g SUN FSK 100 kbps: SHR 8 + 2 bytes, PHR 2 bytes, FCS 4 bytes; PSDU <= 2047 bytes incl. FCS.
    table["wisun-fsk100"] = _fixed_rate(
        "wisun-fsk100", "fsk", 100e3, 2047 - 4, (8 + 2 + 2 + 4) * 8,
        radio=OrderedDict([("modulation", "2-FSK"), ("bit_rate", 100000), ("preamble_bytes", 8), ("sfd_bytes", 2),
                           ("phr_bytes", 2), ("fcs_bytes", 4)]),
        description="IEEE 802.15.4g SUN FSK 100 kbps (Wi-SUN), frames up to 2,043 bytes")
    # BLE coded PHY: 80 us preamble at 1 Msym/s, access address (32 bits), CI (2) and TERM1 (3) at S=8 (296 us); then
    # the PDU header (16 bits), payload, CRC (24 bits) and TERM2 (3 bits) at S symbols per bit.
    for coding, rate in ((8, 125e3), (2, 500e3)):
        name = "ble-coded-s%d" % coding
        table[name] = _fixed_rate(
            name, "ble", rate, 251, 16 + 24 + 3, fixed_seconds=80e-6 + (32 + 2 + 3) * 8e-6,
            radio=OrderedDict([("modulation", "LE Coded"), ("coding", "S=%d" % coding), ("bit_rate", int(rate))]),
            description="Bluetooth LE coded PHY S=%d (%s), 251-byte link-layer payloads" % (
                coding, format_rate(rate)))
    return table


PROFILES = _build_table()
_IDEAL = re.compile(r"^ideal:(.+)$")


def get_profile(name: str) -> LinkProfile:
    """A profile by name; `ideal:<rate>` takes any rate ladon-run accepts (ideal:1Mbps), and so does a bare rate."""
    if name in PROFILES:
        return PROFILES[name]
    match = _IDEAL.match(name)
    if match:
        return _ideal(match.group(1))
    if name[:1].isdigit():
        try:
            return _ideal(name)  # a bare rate (37.5kbps) is the ideal pipe the paper assumes
        except LadonError:
            pass
    raise LadonError("unknown link profile %r (ladon-run link --list shows them; e.g. lora-sf6-bw500, eu868-dr5, "
                     "ideal:37.5kbps)" % name)


def profile_names() -> List[str]:
    return list(PROFILES)
