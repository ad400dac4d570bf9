"""The frame transport over UDP: the device sends a payload frame by frame, paced as the radio would send it; the
server's receiver puts it back together, runs the server stage and answers.

One exchange, as on a LoRa link with a gateway that can answer:

    device                                   server
    DATA 0..k-1, REPAIR k..k+m-1   ---->     (some are lost on the way)
    POLL (what is still missing?)  ---->
                                   <----     NACK d, [missing data indices]   d > 0: d frames short
    the missing DATA frames named, then new REPAIR frames for the rest of d, POLL again (at most --rounds rounds)
                                   <----     NACK 0: complete, the result follows
                                   <----     RESULT {...}  (out of band: a LoRa downlink could not carry it)
    or REFUSED "reason" when the payload cannot be decoded; ABORT from the device when it gives up.

Frames are paced by their time on air and, where the region has one, the duty cycle's off-time; the seeded loss
model drops uplink frames (DATA, REPAIR, POLL, ABORT) on the device side, so a run can be repeated exactly. The
downlinks (NACKs) are small, counted with their time on air under the same profile, and not dropped: a lost NACK
would only cost another POLL, which the device sends when no answer comes.

Edge subset: Python 3.6-clean, standard library and numpy.
"""
import collections
import json
import socket
import struct
import sys
import threading
import time
import zlib
from typing import Any, Callable, Dict, List, Optional, Tuple

from ladon_deploy.errors import LadonError, PayloadError
from ladon_deploy.link import frames
from ladon_deploy.link.loss import FrameLoss
from ladon_deploy.link.plan import duty_cycle_wait, plan_frames
from ladon_deploy.link.profiles import LinkProfile
from ladon_deploy.link.regions import Region

MAX_DATAGRAM = 65507



class LinkError(LadonError):
    """A payload could not be delivered over the frame link (unrecoverable loss, no answer, refused)."""


def parse_frame_url(url: str) -> Tuple[str, int]:
    """udp://HOST:PORT -> (host, port); IPv6 hosts in brackets: udp://[::1]:8600."""
    rest = url[len("udp://"):]
    host, _, port = rest.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        number = int(port)
    except ValueError:
        number = -1
    if not host or not 0 < number < 65536:
        raise LadonError("cannot parse frame server %r: write udp://HOST:PORT (e.g. udp://laptop:8600)" % url)
    return host, number


def bind_frame_socket(host: str, port: int) -> socket.socket:
    """The receiver's UDP socket; a port in use or an address this machine lacks is one LadonError line."""
    if not 0 <= port < 65536:
        raise LadonError("frame port %d is not a port number" % port)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        raise LadonError("cannot receive frames on udp://%s:%d: %s" % (host, port, error.strerror or error))
    return sock


class TransferReport(object):
    """What one payload cost on the link: counters, modelled time on air and the wall time measured."""

    def __init__(self, profile: LinkProfile, region: Region, loss: FrameLoss) -> None:
        self.profile, self.region, self.loss = profile, region, loss
        self.data_frames = self.repair_frames = self.retransmitted = self.polls = 0
        self.frames_sent = self.frames_lost = self.rounds = 0
        self.airtime_s = self.model_wall_s = self.downlink_airtime_s = self.wall_s = 0.0
        self.downlinks = 0
        self.server = {}  # type: Dict[str, Any]

    def as_dict(self) -> "collections.OrderedDict[str, Any]":
        return collections.OrderedDict([
            ("profile", self.profile.name), ("region", self.region.name), ("loss_model", self.loss.description),
            ("data_frames", self.data_frames), ("repair_frames", self.repair_frames),
            ("retransmitted", self.retransmitted), ("polls", self.polls), ("frames_sent", self.frames_sent),
            ("frames_lost", self.frames_lost), ("frames_repaired", self.server.get("repaired", 0)),
            ("rounds", self.rounds), ("airtime_s", self.airtime_s), ("model_wall_s", self.model_wall_s),
            ("downlinks", self.downlinks), ("downlink_airtime_s", self.downlink_airtime_s),
            ("wall_s", self.wall_s)])


class _Radio(object):
    """Sends frames as the radio would: each one leaves after its time on air, then the off-time is waited out."""

    def __init__(self, sock: socket.socket, address: Tuple[str, int], profile: LinkProfile, region: Region,
                 loss: FrameLoss, report: TransferReport, key: Optional[bytes], duty_cycle: bool, pace: bool) -> None:
        self.sock, self.address, self.profile, self.region = sock, address, profile, region
        self.loss, self.report, self.key, self.duty_cycle, self.pace = loss, report, key, duty_cycle, pace
        self.free_at = time.monotonic()

    def send(self, frame: frames.Frame) -> None:
        datagram = frames.encode(frame, self.key)
        on_air = self.profile.time_on_air(self.profile.mac_header_bytes + len(datagram))
        off = duty_cycle_wait(on_air, self.region) if self.duty_cycle else 0.0
        start = max(self.free_at, time.monotonic()) if self.pace else time.monotonic()
        if self.pace:
            _sleep_until(start + on_air)
        self.free_at = start + on_air + off
        self.report.airtime_s += on_air
        self.report.model_wall_s += on_air + off
        self.report.frames_sent += 1
        if self.loss.lost():
            self.report.frames_lost += 1
            return
        self.sock.sendto(datagram, self.address)

    def downlink(self, datagram_bytes: int) -> None:
        self.report.downlinks += 1
        self.report.downlink_airtime_s += self.profile.time_on_air(self.profile.mac_header_bytes + datagram_bytes)


def _sleep_until(deadline: float) -> None:
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return
        time.sleep(remaining)


def send_payload(payload: bytes, address: Tuple[str, int], profile: LinkProfile, region: Region, loss: FrameLoss,
                 payload_id: int = 0, repair_ratio: float = 0.1, rounds: int = 3, key: Optional[bytes] = None,
                 duty_cycle: bool = True, pace: bool = True, timeout: float = 60.0,
                 poll_wait: float = 1.0) -> Tuple[Dict[str, Any], TransferReport]:
    """Sends one payload and returns the server's result document and what the transfer cost. Raises LinkError when
    the payload cannot be delivered in `rounds` rounds or no answer comes within `timeout` seconds."""
    plan = plan_frames(profile, region, len(payload), authenticated=key is not None)
    data = frames.split(payload, payload_id, plan.capacity)
    count = len(data)
    report = TransferReport(profile, region, loss)
    family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
    started = time.monotonic()
    deadline = started + timeout
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        radio = _Radio(sock, address, profile, region, loss, report, key, duty_cycle, pace)
        next_repair = count
        pending = list(data)
        repair_first = int(-(-count * repair_ratio // 1))
        pending += frames.repair_frames(payload, payload_id, count, next_repair, repair_first)
        next_repair += repair_first
        report.data_frames, report.repair_frames = count, repair_first
        poll = frames.Frame(frames.POLL, payload_id, 0, count, len(payload),
                            struct.pack(">HI", plan.capacity, zlib.crc32(payload) & 0xFFFFFFFF))
        while True:
            report.rounds += 1
            for frame in pending:
                radio.send(frame)
            answer = _poll(sock, radio, poll, key, deadline, poll_wait, payload_id, report)
            if answer.kind == frames.RESULT:
                result = json.loads(answer.body.decode("utf-8"))
                report.server = result.pop("link", {})
                report.wall_s = time.monotonic() - started
                return result, report
            deficit, missing = _read_nack(answer.body)
            if report.rounds >= rounds:
                radio.send(frames.Frame(frames.ABORT, payload_id, 0, count, len(payload), b""))
                raise LinkError("payload not delivered: %d of %d frames still missing after %d round%s (%d frames "
                                "sent, %d lost; raise --rounds or --repair)" % (
                                    deficit, count, report.rounds, "" if report.rounds == 1 else "s",
                                    report.frames_sent, report.frames_lost))
            resend = [data[i] for i in missing[:deficit] if i < count]
            fresh = deficit - len(resend)
            pending = resend + frames.repair_frames(payload, payload_id, count, next_repair, fresh)
            next_repair += fresh
            report.retransmitted += len(resend)
            report.repair_frames += fresh
    finally:
        sock.close()


def _poll(sock: socket.socket, radio: _Radio, poll: frames.Frame, key: Optional[bytes], deadline: float,
          poll_wait: float, payload_id: int, report: TransferReport) -> frames.Frame:
    """POLL until the server answers with a NACK that asks for frames or a RESULT; REFUSED is raised. A POLL can be
    lost like any uplink, so one is sent again every `poll_wait` seconds until the deadline."""
    complete = False
    while True:
        if not complete:
            report.polls += 1
            radio.send(poll)
        wait_until = deadline if complete else min(deadline, time.monotonic() + poll_wait)
        answer = _receive(sock, key, wait_until, payload_id, radio)
        if answer is None:
            if time.monotonic() >= deadline:
                raise LinkError("no %s from the frame receiver at %s:%d within the timeout (%d polls sent)" % (
                    "result" if complete else "answer", radio.address[0], radio.address[1], report.polls))
            continue
        if answer.kind == frames.REFUSED:
            raise LinkError("the server refused the payload: %s" % answer.body.decode("utf-8", "replace"))
        if answer.kind == frames.RESULT:
            return answer
        deficit, _ = _read_nack(answer.body)
        if deficit:
            return answer
        complete = True  # NACK 0: everything arrived, the result follows


def _receive(sock: socket.socket, key: Optional[bytes], until: float, payload_id: int,
             radio: _Radio) -> Optional[frames.Frame]:
    while True:
        remaining = until - time.monotonic()
        if remaining <= 0:
            return None
        sock.settimeout(remaining)
        try:
            datagram, sender = sock.recvfrom(MAX_DATAGRAM)
        except socket.timeout:
            return None
        if sender[:2] != radio.address[:2]:
            continue
        try:
            frame = frames.decode(datagram, key)
        except frames.FrameError:
            continue
        if frame.payload_id != payload_id or frame.kind not in (frames.NACK, frames.RESULT, frames.REFUSED):
            continue
        if frame.kind == frames.NACK:
            radio.downlink(len(datagram))
        return frame


def _read_nack(body: bytes) -> Tuple[int, List[int]]:
    if len(body) < 2 or len(body) % 2:
        raise LinkError("malformed NACK from the server")
    values = struct.unpack(">%dH" % (len(body) // 2), body)
    return values[0], list(values[1:])


class FrameReceiver(object):
    """The server side: reassembles payloads from frames, hands each complete one to `handle` (payload bytes ->
    result document) on a worker thread, and answers. State is bounded: at most `max_bytes` of frames held for
    incomplete payloads, `max_payloads_per_sender` at a time per sender, each dropped after `idle_timeout` seconds
    without a frame; answers to the last `remember` payloads are kept so a repeated POLL is answered again without
    decoding twice."""

    def __init__(self, handle: Callable[[bytes], Dict[str, Any]], key: Optional[bytes] = None,
                 max_bytes: int = 256 << 20, max_payloads_per_sender: int = 4, idle_timeout: float = 3600.0,
                 remember: int = 256, log: Optional[Callable[[str], None]] = None) -> None:
        self.handle, self.key = handle, key
        self.max_bytes, self.max_payloads_per_sender = max_bytes, max_payloads_per_sender
        self.idle_timeout, self.remember = idle_timeout, remember
        self.log = log or (lambda line: print(line, file=sys.stderr))
        self.pending = collections.OrderedDict()  # type: collections.OrderedDict
        self.answers = collections.OrderedDict()  # type: collections.OrderedDict
        self.decoding = set()  # type: set
        self.counters = collections.Counter()  # type: collections.Counter
        self.work = collections.deque()  # type: collections.deque
        self.lock = threading.Lock()
        self.wake = threading.Event()
        self.sock = None  # type: Optional[socket.socket]
        self.delivered = 0

    # -- the receive loop ----------------------------------------------------------------------------------------
    def serve(self, sock: socket.socket, stop: threading.Event, max_payloads: Optional[int] = None) -> None:
        """Receives until `stop` is set (or `max_payloads` have been answered)."""
        self.sock = sock
        worker = threading.Thread(target=self._work, args=(stop,), name="ladon-frames-decode")
        worker.daemon = True
        worker.start()
        sock.settimeout(0.2)
        try:
            while not stop.is_set():
                if max_payloads is not None and self.delivered >= max_payloads:
                    break
                try:
                    datagram, sender = sock.recvfrom(MAX_DATAGRAM)
                except socket.timeout:
                    self.expire()
                    continue
                except OSError:
                    continue
                self.datagram(datagram, sender)
        finally:
            stop.set()
            self.wake.set()
            worker.join(timeout=5)

    def datagram(self, datagram: bytes, sender: Tuple[Any, ...]) -> None:
        try:
            frame = frames.decode(datagram, self.key)
        except frames.FrameError:
            self.counters["rejected"] += 1
            return
        key = (sender[:2], frame.payload_id)
        with self.lock:
            if frame.kind in (frames.DATA, frames.REPAIR):
                self._add(key, frame)
            elif frame.kind == frames.POLL:
                self._poll(key, sender, frame)
            elif frame.kind == frames.ABORT:
                self._abort(key)
            else:
                self.counters["rejected"] += 1

    def _add(self, key: Tuple[Any, ...], frame: frames.Frame) -> None:
        if key in self.decoding:
            self.counters["late"] += 1
            return
        state = self.pending.get(key)
        if state is not None and not state[0].matches(frame):
            del self.pending[key]  # the sender reused the id for a new payload
            state = None
        if state is None:
            try:
                assembly = frames.Reassembly(frame.payload_id, frame.data_frames, frame.length)
            except frames.FrameError:
                self.counters["rejected"] += 1
                return
            self._make_room(key[0])
            state = [assembly, time.monotonic()]
            self.pending[key] = state
        if self._held_bytes() + state[0].size > self.max_bytes:
            self.counters["over_memory"] += 1
            return
        try:
            state[0].add(frame)
        except frames.FrameError:
            self.counters["rejected"] += 1
            return
        state[1] = time.monotonic()
        self.pending.move_to_end(key)

    def _poll(self, key: Tuple[Any, ...], sender: Tuple[Any, ...], poll: frames.Frame) -> None:
        if len(poll.body) != 6:
            self.counters["rejected"] += 1
            return
        room, checksum = struct.unpack(">HI", poll.body)
        identity = (poll.data_frames, poll.length, checksum)
        answered = self.answers.get(key)
        if answered is not None and answered[0] == identity:
            # A repeated POLL of a payload already answered (its answer was lost, or late frames came after it).
            self.pending.pop(key, None)
            self._send(answered[1], sender)
            return
        if key in self.decoding:
            self._send_nack(key, sender, 0, [], poll)
            return
        state = self.pending.get(key)
        if state is None or not state[0].matches(poll):
            try:
                assembly = frames.Reassembly(poll.payload_id, poll.data_frames, poll.length)
            except frames.FrameError:
                self.counters["rejected"] += 1
                return
            self.pending.pop(key, None)
            self._make_room(key[0])
            state = [assembly, time.monotonic()]
            self.pending[key] = state
        assembly = state[0]
        payload = assembly.payload()
        if payload is None:
            listed = max(0, min(room, 1024) - 2) // 2
            self._send_nack(key, sender, max(1, assembly.deficit()), assembly.missing_data()[:listed], poll)
            return
        del self.pending[key]
        if zlib.crc32(payload) & 0xFFFFFFFF != checksum:
            self.counters["mixed"] += 1
            self._send(frames.encode(frames.Frame(frames.REFUSED, key[1], 0, poll.data_frames, poll.length,
                                                  b"reassembled payload fails its checksum (frames of two payloads "
                                                  b"mixed); send it again"), self.key), sender)
            return
        self.decoding.add(key)
        self._send_nack(key, sender, 0, [], poll)
        stats = {"frames_received": len(assembly.frames), "repaired": assembly.repaired(),
                 "duplicates": assembly.duplicates}
        self.work.append((key, sender, payload, stats, identity))
        self.wake.set()

    def _abort(self, key: Tuple[Any, ...]) -> None:
        state = self.pending.pop(key, None)
        if state is not None:
            self.log("frames: payload %d from %s abandoned by the sender (%d of %d frames received); not decoded" % (
                key[1], _host(key[0]), len(state[0].frames), state[0].data_frames))
            self.counters["abandoned"] += 1

    def _send_nack(self, key: Tuple[Any, ...], sender: Tuple[Any, ...], deficit: int, missing: List[int],
                   poll: frames.Frame) -> None:
        body = struct.pack(">%dH" % (1 + len(missing)), deficit, *missing)
        self._send(frames.encode(frames.Frame(frames.NACK, key[1], 0, poll.data_frames, poll.length, body),
                                 self.key), sender)

    def _send(self, datagram: bytes, sender: Tuple[Any, ...]) -> None:
        try:
            self.sock.sendto(datagram, sender)
        except OSError as error:
            self.log("frames: cannot answer %s: %s" % (_host(sender), error))

    # -- bounded state -------------------------------------------------------------------------------------------
    def _held_bytes(self) -> int:
        return sum(state[0].stored_bytes for state in self.pending.values())

    def _make_room(self, sender: Tuple[Any, ...]) -> None:
        mine = [key for key in self.pending if key[0] == sender]
        while len(mine) >= self.max_payloads_per_sender:
            oldest = mine.pop(0)
            state = self.pending.pop(oldest)
            self.counters["evicted"] += 1
            self.log("frames: payload %d from %s dropped incomplete (%d of %d frames): too many at once" % (
                oldest[1], _host(sender), len(state[0].frames), state[0].data_frames))

    def expire(self) -> None:
        now = time.monotonic()
        with self.lock:
            for key in [key for key, state in self.pending.items() if now - state[1] > self.idle_timeout]:
                state = self.pending.pop(key)
                self.counters["expired"] += 1
                self.log("frames: payload %d from %s not recoverable: %d of %d frames after %.0f s without one" % (
                    key[1], _host(key[0]), len(state[0].frames), state[0].data_frames, self.idle_timeout))

    # -- decoding ------------------------------------------------------------------------------------------------
    def _work(self, stop: threading.Event) -> None:
        while not stop.is_set():
            self.wake.wait(0.2)
            self.wake.clear()
            while self.work:
                key, sender, payload, stats, identity = self.work.popleft()
                try:
                    document = dict(self.handle(payload))
                    document["link"] = stats
                    body = json.dumps(document).encode("utf-8")
                    kind = frames.RESULT
                    if len(body) + frames.HEADER_BYTES + frames.TAG_BYTES > MAX_DATAGRAM:
                        kind, body = frames.REFUSED, b"result too large for one datagram"
                except PayloadError as error:
                    kind, body = frames.REFUSED, str(error).encode("utf-8")
                except Exception as error:  # a bug must not stop the receiver; the sender still gets an answer
                    kind, body = frames.REFUSED, ("internal error: %s" % type(error).__name__).encode("utf-8")
                    self.log("frames: internal error on payload %d from %s: %r" % (key[1], _host(key[0]), error))
                datagram = frames.encode(frames.Frame(kind, key[1], 0, identity[0], identity[1], body), self.key)
                with self.lock:
                    self.decoding.discard(key)
                    self.answers[key] = (identity, datagram)
                    while len(self.answers) > self.remember:
                        self.answers.popitem(last=False)
                    self.delivered += 1
                if kind == frames.REFUSED:
                    self.log("frames: payload %d from %s refused: %s" % (key[1], _host(key[0]),
                                                                        body.decode("utf-8", "replace")))
                self._send(datagram, sender)


def _host(address: Tuple[Any, ...]) -> str:
    return "%s:%s" % (address[0], address[1])
