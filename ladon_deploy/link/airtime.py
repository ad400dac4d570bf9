"""Time on air of one frame, per physical layer.

LoRa (chirp spread spectrum), from Semtech's AN1200.13 "LoRa Modem Designer's Guide" and the SX1276 datasheet
(section 4.1.1.7) for SF7-SF12, and the SX1261/2 datasheet (section 6.1.4) as LoRaMac-node implements it for SF5 and
SF6:

    Tsym = 2^SF / BW
    SF7-SF12:  Npay = 8 + max(ceil((8 PL - 4 SF + 28 + 16 CRC - 20 IH) / (4 (SF - 2 DE))) (CR + 4), 0)
               T    = (Npre + 4.25 + Npay) Tsym
    SF5, SF6:  T    = (Npre + 6.25 + 8 + ceil(max(8 PL + 16 CRC - 4 SF + 20 (1 - IH), 0) / (4 SF)) (CR + 4)) Tsym

PL is the PHY payload in bytes (at most 255), CRC 1 when the payload CRC is on, IH 1 for an implicit header, CR 1..4
for coding rates 4/5..4/8, DE 1 when low-data-rate optimisation is on (mandatory when Tsym >= 16 ms).

FSK (LoRaWAN EU868 DR7, IEEE 802.15.4g SUN FSK) and BLE's coded PHY send bits at a fixed rate after a fixed
synchronisation header, so their time on air is the bits they send divided by the bit rate.

Edge subset: Python 3.6-clean, standard library only.
"""
import math

LORA_MAX_PHY_PAYLOAD = 255
LDRO_SYMBOL_SECONDS = 16e-3


def lora_symbol_seconds(spreading_factor: int, bandwidth_hz: float) -> float:
    return float(2 ** spreading_factor) / bandwidth_hz


def lora_low_data_rate_optimise(spreading_factor: int, bandwidth_hz: float) -> bool:
    """Semtech requires low-data-rate optimisation when a symbol lasts 16 ms or more (SF11 and SF12 at 125 kHz,
    SF12 at 250 kHz)."""
    return lora_symbol_seconds(spreading_factor, bandwidth_hz) >= LDRO_SYMBOL_SECONDS


def lora_payload_symbols(payload_bytes: int, spreading_factor: int, coding_rate: int = 1, crc: bool = True,
                         implicit_header: bool = False, low_data_rate: bool = False) -> int:
    """Symbols after the preamble: the 8 header symbols (SF7-SF12) or the sync and header (SF5/SF6) included."""
    crc_bits, ih = (16 if crc else 0), (1 if implicit_header else 0)
    if spreading_factor <= 6:
        bits = max(8 * payload_bytes + crc_bits - 4 * spreading_factor + 20 * (1 - ih), 0)
        return 8 + int(math.ceil(bits / (4.0 * spreading_factor))) * (coding_rate + 4)
    de = 1 if low_data_rate else 0
    numerator = 8 * payload_bytes - 4 * spreading_factor + 28 + crc_bits - 20 * ih
    return 8 + max(int(math.ceil(numerator / (4.0 * (spreading_factor - 2 * de)))) * (coding_rate + 4), 0)


def lora_time_on_air(payload_bytes: int, spreading_factor: int, bandwidth_hz: float, coding_rate: int = 1,
                     preamble_symbols: int = 8, crc: bool = True, implicit_header: bool = False,
                     low_data_rate: bool = None) -> float:
    """Seconds on air of one LoRa frame carrying `payload_bytes` of PHY payload. `low_data_rate` None: as Semtech
    requires (on when a symbol lasts >= 16 ms)."""
    if not 0 <= payload_bytes <= LORA_MAX_PHY_PAYLOAD:
        raise ValueError("a LoRa frame carries 0..255 bytes, not %d" % payload_bytes)
    if low_data_rate is None:
        low_data_rate = lora_low_data_rate_optimise(spreading_factor, bandwidth_hz)
    symbols = lora_payload_symbols(payload_bytes, spreading_factor, coding_rate, crc, implicit_header,
                                   low_data_rate)
    # SF5/SF6 carry two extra sync symbols and a longer sync word than SF7-SF12 (6.25 against 4.25).
    fixed = 6.25 if spreading_factor <= 6 else 4.25
    return (preamble_symbols + fixed + symbols) * lora_symbol_seconds(spreading_factor, bandwidth_hz)


def lora_bit_rate(spreading_factor: int, bandwidth_hz: float, coding_rate: int = 1) -> float:
    """The raw bit rate SF BW / 2^SF * 4 / (4 + CR): 37.5 kbps at SF6, 500 kHz, 4/5."""
    return spreading_factor * bandwidth_hz / 2 ** spreading_factor * 4.0 / (4 + coding_rate)


def fixed_rate_time_on_air(payload_bytes: int, bit_rate: float, overhead_bits: int = 0,
                           fixed_seconds: float = 0.0) -> float:
    """A PHY that sends `overhead_bits` (preamble, sync word, length, CRC) plus the payload at `bit_rate`, after a
    synchronisation header of `fixed_seconds` sent at its own rate (BLE coded PHY's first FEC block)."""
    return fixed_seconds + (overhead_bits + 8 * payload_bytes) / float(bit_rate)
