"""Erasure coding of frames: a systematic random linear code over GF(2^8).

The k data frames go first, unchanged. Repair frame number j (j = k, k+1, ...) is the GF(256) sum of c_ij * D_i over
all data frames, its coefficients c_ij in 1..255 drawn from a generator seeded by (payload id, j), so the receiver
knows them without receiving them. Any k frames whose coefficient rows are independent give back every data frame;
over GF(256) a random square system is singular with probability about 1/255, so one repair frame more than the
losses almost always suffices. The code is rateless: when the receiver still lacks d frames it asks for d more and
any new repair index helps, which is what lets forward erasure coding and retransmission share one mechanism.
(LoRaWAN's TS004 fragmentation uses XORs of pseudo-random subsets, the GF(2) cousin of this code.)

Edge subset: Python 3.6-clean, numpy only.
"""
from typing import Dict, List, Optional

import numpy

_PRIMITIVE = 0x11D  # x^8 + x^4 + x^3 + x^2 + 1, the usual GF(256) polynomial


def _tables():
    exp = numpy.zeros(512, dtype=numpy.int32)
    log = numpy.zeros(256, dtype=numpy.int32)
    value = 1
    for power in range(255):
        exp[power] = value
        log[value] = power
        value <<= 1
        if value & 0x100:
            value ^= _PRIMITIVE
    exp[255:510] = exp[0:255]
    products = numpy.zeros((256, 256), dtype=numpy.uint8)
    nonzero = numpy.arange(1, 256)
    products[1:, 1:] = exp[(log[nonzero][:, None] + log[nonzero][None, :])]
    inverse = numpy.zeros(256, dtype=numpy.uint8)
    inverse[1:] = exp[(255 - log[nonzero]) % 255]
    return products, inverse


MUL, INV = _tables()


def coefficients(payload_id: int, index: int, data_frames: int) -> numpy.ndarray:
    """The coefficients of repair frame `index` over the data frames, each in 1..255."""
    generator = numpy.random.RandomState((payload_id << 16) ^ index ^ 0x5EED)
    return generator.randint(1, 256, size=data_frames).astype(numpy.uint8)


def repair_frame(data: numpy.ndarray, payload_id: int, index: int) -> numpy.ndarray:
    """Repair frame `index` (>= k) of the k x S matrix of data frames (the last one zero-padded)."""
    rows = MUL[coefficients(payload_id, index, data.shape[0])[:, None], data]
    return numpy.bitwise_xor.reduce(rows, axis=0)


def recover(frame_size: int, data_frames: int, payload_id: int, received: Dict[int, bytes]) -> Optional[List[bytes]]:
    """The k data frames (zero-padded to frame_size) from any received frames, data or repair, or None when the
    received ones do not determine them yet."""
    known = {i: numpy.frombuffer(received[i].ljust(frame_size, b"\0"), dtype=numpy.uint8)
             for i in received if i < data_frames}
    missing = [i for i in range(data_frames) if i not in known]
    if missing:
        repairs = sorted(i for i in received if i >= data_frames)
        if len(repairs) < len(missing):
            return None
        solved = _solve(frame_size, data_frames, payload_id, known, missing,
                        {j: numpy.frombuffer(received[j], dtype=numpy.uint8) for j in repairs})
        if solved is None:
            return None
        known.update(solved)
    return [known[i].tobytes() for i in range(data_frames)]


def _solve(frame_size: int, data_frames: int, payload_id: int, known: Dict[int, numpy.ndarray], missing: List[int],
           repairs: Dict[int, numpy.ndarray]) -> Optional[Dict[int, numpy.ndarray]]:
    """Gaussian elimination over GF(256) for the missing data frames, on the repair frames less what the known data
    frames contribute to them."""
    known_indices = sorted(known)
    known_frames = numpy.array([known[i] for i in known_indices], dtype=numpy.uint8).reshape(-1, frame_size)
    rows, right = [], []
    for index, repair in sorted(repairs.items()):
        coefficient = coefficients(payload_id, index, data_frames)
        contribution = MUL[coefficient[known_indices][:, None], known_frames]
        rows.append(coefficient[missing])
        right.append(repair ^ numpy.bitwise_xor.reduce(contribution, axis=0) if known_indices else repair)
    matrix = numpy.array(rows, dtype=numpy.uint8)
    values = numpy.array(right, dtype=numpy.uint8).reshape(len(rows), frame_size)
    unknowns = len(missing)
    for column in range(unknowns):
        pivots = numpy.nonzero(matrix[column:, column])[0]
        if pivots.size == 0:
            return None
        pivot = column + int(pivots[0])
        if pivot != column:
            matrix[[column, pivot]] = matrix[[pivot, column]]
            values[[column, pivot]] = values[[pivot, column]]
        scale = INV[matrix[column, column]]
        matrix[column] = MUL[scale, matrix[column]]
        values[column] = MUL[scale, values[column]]
        for other in numpy.nonzero(matrix[:, column])[0]:
            if other != column:
                factor = matrix[other, column]
                matrix[other] ^= MUL[factor, matrix[column]]
                values[other] ^= MUL[factor, values[column]]
    return {index: values[position] for position, index in enumerate(missing)}
