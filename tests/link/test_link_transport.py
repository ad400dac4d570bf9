"""The frame transport over loopback UDP: delivery under seeded loss, unrecoverable loss reported on both sides,
pacing never faster than the airtime model, and a receiver that survives garbage, mutations and forgeries."""
import hashlib
import os
import random
import socket
import threading

import pytest

from ladon_deploy.link import frames, transport
from ladon_deploy.link.loss import parse_loss
from ladon_deploy.link.profiles import get_profile
from ladon_deploy.link.regions import get_region

PROFILE = get_profile("lora-sf5-bw500")      # 62.5 kbps: a 1.5 kB payload is 7 frames and ~0.25 s on air
KEY = b"shared secret"


def _digest(payload):
    return {"sha256": hashlib.sha256(payload).hexdigest(), "bytes": len(payload)}


@pytest.fixture
def receiver():
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    log = []
    rx = transport.FrameReceiver(_digest, key=KEY, log=log.append)
    stop = threading.Event()
    thread = threading.Thread(target=rx.serve, args=(sock, stop))
    thread.start()
    yield rx, sock.getsockname(), log
    stop.set()
    thread.join(timeout=10)
    sock.close()
    assert not thread.is_alive()


def _send(address, payload, loss, seed, **options):
    options.setdefault("timeout", 20.0)
    options.setdefault("key", KEY)
    return transport.send_payload(payload, address, PROFILE, get_region(None), parse_loss(loss, seed),
                                  payload_id=seed % 256, **options)


@pytest.mark.parametrize("loss,seed", [(None, 0), ("0.1", 1), ("0.1", 2), ("0.3", 3), ("ge:0.2,0.4", 4)])
def test_payload_arrives_whole_under_seeded_loss(receiver, loss, seed):
    _, address, _ = receiver
    payload = os.urandom(1500)
    result, report = _send(address, payload, loss, seed, rounds=8)
    assert result == _digest(payload)
    counts = report.as_dict()
    assert counts["frames_sent"] == (counts["data_frames"] + counts["repair_frames"] + counts["retransmitted"]
                                     + counts["polls"])
    assert counts["wall_s"] >= counts["airtime_s"]          # paced: never faster than the radio
    if loss is None:
        assert counts["frames_lost"] == 0 and counts["rounds"] == 1


def test_the_same_seed_loses_the_same_frames(receiver):
    _, address, _ = receiver
    payload = os.urandom(1500)
    first = _send(address, payload, "0.3", 5, pace=False)[1].as_dict()
    second = _send(address, payload, "0.3", 5, pace=False)[1].as_dict()
    assert [first[k] for k in ("frames_sent", "frames_lost", "rounds")] == \
        [second[k] for k in ("frames_sent", "frames_lost", "rounds")]


def test_unrecoverable_loss_is_reported_on_both_sides(receiver):
    _, address, log = receiver
    payload = os.urandom(1500)
    with pytest.raises(transport.LinkError, match="not delivered"):
        _send(address, payload, "0.6", 10, rounds=1, repair_ratio=0.0, pace=False)
    # the sender's ABORT is an uplink and can be lost like any other: seed 10 lets it through (a lost ABORT leaves
    # the payload to the idle timeout, tested below)
    for _ in range(200):
        if any("abandoned" in line for line in log):
            break
        threading.Event().wait(0.01)
    assert any("abandoned" in line and "not decoded" in line for line in log)


def test_duty_cycle_pacing_follows_the_model(receiver):
    _, address, _ = receiver
    payload = os.urandom(300)                                 # two frames of ~3 ms; 10% duty: ~30 ms of off-time
    result, report = transport.send_payload(payload, address, PROFILE, get_region("eu868:869.4-869.65"),
                                            parse_loss(None), payload_id=9, key=KEY, timeout=20.0)
    counts = report.as_dict()
    assert result == _digest(payload)
    assert counts["model_wall_s"] == pytest.approx(counts["airtime_s"] * 10)
    assert counts["wall_s"] >= counts["model_wall_s"] - report.airtime_s / counts["frames_sent"] * 9


def test_receiver_survives_garbage_mutations_and_forgeries(receiver):
    rx, address, _ = receiver
    rng = random.Random(11)
    payload = os.urandom(800)
    genuine = [frames.encode(f, KEY) for f in frames.split(payload, 33, 200)]
    forger = [frames.encode(f, b"wrong key") for f in frames.split(payload, 34, 200)]
    unkeyed = [frames.encode(f) for f in frames.split(payload, 35, 200)]
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for _ in range(300):
            choice = rng.random()
            if choice < 0.3:
                datagram = bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 300)))
            elif choice < 0.7:
                mutated = bytearray(rng.choice(genuine))
                for _ in range(rng.randint(1, 4)):
                    mutated[rng.randrange(len(mutated))] = rng.getrandbits(8)
                datagram = bytes(mutated[:rng.randint(0, len(mutated))] if rng.random() < 0.3 else mutated)
            else:
                datagram = rng.choice(forger + unkeyed)
            sock.sendto(datagram, address)
    finally:
        sock.close()
    result, _ = _send(address, payload, None, 12)              # and it still serves
    assert result == _digest(payload)
    assert not [key for key in rx.pending if key[1] in (34, 35)]     # forged and unkeyed frames kept nothing
    assert rx.counters["rejected"] > 0


def test_receiver_state_is_bounded():
    log = []
    rx = transport.FrameReceiver(_digest, max_bytes=1000, max_payloads_per_sender=2, idle_timeout=0.0,
                                 log=log.append)
    sender = ("127.0.0.1", 5000)
    for payload_id in range(4):                                 # four payloads started, two kept per sender
        rx.datagram(frames.encode(frames.split(os.urandom(400), payload_id, 100)[0]), sender)
    assert len(rx.pending) == 2 and rx.counters["evicted"] == 2
    big = frames.split(os.urandom(5000), 9, 500)
    for frame in big:                                           # memory cap: frames beyond 1000 bytes are dropped
        rx.datagram(frames.encode(frame), ("127.0.0.1", 5001))
    assert sum(state[0].stored_bytes for state in rx.pending.values()) <= 1000
    assert rx.counters["over_memory"] > 0
    rx.expire()                                                 # idle timeout 0: everything incomplete expires
    assert not rx.pending and any("not recoverable" in line for line in log)
