"""The device client: one payload -> one KServe v2 inference request to `ladon-serve` -> the server's JSON document.

The request is the KServe v2 binary tensor extension in its leanest form: `Inference-Header-Content-Length: 0`
says the body is the raw data of the model's single input, so no JSON header travels; the body is the payload
itself. On the wire above the payload there is only the HTTP head (request line, Host, Content-Length and that
header, and `Authorization: Bearer <token>` for a server started with --token-file): about 120 bytes, reported as
`overhead_bytes` (TCP/IP headers are the kernel's and are not counted).
Triton answers in the same binary form (JSON header, then `result` as one length-prefixed BYTES element); a JSON
answer is read as well.

The segmentation mask is opt-in per request (a PNG costs bytes on the link): `infer(payload, mask=True)` sends a
small JSON header that sets the request parameter `mask` and asks for the outputs `result` and `mask` (the paletted
PNG `ladon-run split --mask-out` writes); the payload then travels as one length-prefixed BYTES element.

With a rate and a round-trip time, what the client sends is paced by ladon_deploy.device.pacing and the upload is
measured on this clock. Every failure (no server, refused request, refused payload, lost connection, timeout) is a
ServerError with one line.

Edge subset: Python 3.6-clean, standard library only (no tritonclient, no requests on a Jetson).
"""
import http.client
import json
import socket
import struct
import time
from typing import Any, Dict, List, Optional, Tuple

from ladon_deploy.device.pacing import PacedLink
from ladon_deploy.errors import LadonError

MODEL = "ladon"
INPUT = "payload"
OUTPUT = "result"
MASK_OUTPUT = "mask"
MASK_PARAMETER = "mask"
MAX_RESPONSE_BYTES = 64 << 20
DEFAULT_TIMEOUT_S = 60.0


class ServerError(LadonError):
    """The server could not be reached, refused the request or the payload, or did not answer in time."""


class UnauthorizedError(ServerError):
    """The server wants a token this request did not carry (HTTP 401): every further request would fail alike."""


def parse_server_url(url: str) -> Tuple[str, int]:
    """'http://laptop:8000' -> ('laptop', 8000). Only plain HTTP: the link is the device's, TLS is not offered."""
    text = str(url).strip()
    if "://" in text:
        scheme, text = text.split("://", 1)
        if scheme.lower() != "http":
            raise ServerError("server URL must be http://HOST:PORT, got %r" % url)
    text = text.rstrip("/")
    if not text or "/" in text:
        raise ServerError("server URL must be http://HOST:PORT (no path), got %r" % url)
    host, _, port_text = text.rpartition(":")
    if not host:
        host, port_text = text, "8000"
    host = host.strip("[]")
    try:
        port = int(port_text)
    except ValueError:
        raise ServerError("server URL %r has no valid port" % url)
    if not 0 < port < 65536:
        raise ServerError("server URL %r has no valid port" % url)
    return host, port


def request_head(host: str, port: int, body_length: int, model: str = MODEL, header_length: int = 0,
                 token: Optional[bytes] = None) -> bytes:
    """The HTTP head of one inference request; with a token, the `Authorization: Bearer` line ladon-serve's gate
    checks (`ladon-serve --token-file`)."""
    authorization = b"Authorization: Bearer " + token + b"\r\n" if token else b""
    return ("POST /v2/models/%s/infer HTTP/1.1\r\nHost: %s:%d\r\nContent-Length: %d\r\n"
            "Inference-Header-Content-Length: %d\r\n" % (model, host, port, body_length, header_length)
            ).encode("ascii") + authorization + b"\r\n"


def mask_request_header(payload_length: int) -> bytes:
    """The JSON header of a request that also asks for the mask: the KServe parameter and both outputs, binary."""
    header = {"inputs": [{"name": INPUT, "shape": [1, 1], "datatype": "BYTES",
                          "parameters": {"binary_data_size": 4 + payload_length}}],
              "outputs": [{"name": OUTPUT, "parameters": {"binary_data": True}},
                          {"name": MASK_OUTPUT, "parameters": {"binary_data": True}}],
              "parameters": {MASK_PARAMETER: True}}
    return json.dumps(header, separators=(",", ":")).encode("ascii")


class Reply(object):
    """The server's document and what the request cost, measured on the device's clock."""

    def __init__(self, document: Dict[str, Any], payload_bytes: int, overhead_bytes: int, upload_seconds: float,
                 answer_seconds: float, total_seconds: float, mask_png: Optional[bytes] = None) -> None:
        self.document = document
        self.mask_png = mask_png  # the segmentation mask as PNG bytes, when the request asked for it
        self.payload_bytes = payload_bytes
        self.overhead_bytes = overhead_bytes
        self.upload_seconds = upload_seconds  # paced send + the round trip
        self.answer_seconds = answer_seconds  # last byte sent -> answer read (server queue + compute + download)
        self.total_seconds = total_seconds

    @property
    def request_bytes(self) -> int:
        return self.payload_bytes + self.overhead_bytes


def output_elements(header: Dict[str, Any], rest: bytes) -> Dict[str, List[bytes]]:
    """Every BYTES element of each output of a KServe v2 answer, from the binary section (each element a 4-byte
    little-endian length and its bytes) or from the JSON `data`. The device reads the first; the gate in front of
    Triton reads every row of a batched request."""
    found = {}  # type: Dict[str, List[bytes]]
    offset = 0
    for output in header.get("outputs", []):
        parameters = output.get("parameters", {})
        if "binary_data_size" in parameters:
            size = int(parameters["binary_data_size"])
            chunk, elements, position = rest[offset:offset + size], [], 0
            offset += size
            while position + 4 <= len(chunk):
                (length,) = struct.unpack_from("<I", chunk, position)
                elements.append(chunk[position + 4:position + 4 + length])
                position += 4 + length
        else:
            elements = [value.encode("utf-8") if isinstance(value, str) else bytes(value)
                        for value in output.get("data", [])]
        found[output.get("name")] = elements
    return found


def _outputs(header: Dict[str, Any], rest: bytes) -> Dict[str, bytes]:
    """Each output's first element."""
    return {name: elements[0] for name, elements in output_elements(header, rest).items() if elements}


def parse_outputs(status: int, header_length: Optional[str], body: bytes) -> Tuple[Dict[str, Any], Dict[str, bytes]]:
    """An HTTP answer of the inference endpoint -> (the `result` document, every output's bytes); errors of any
    layer -> ServerError."""
    if status != 200:
        try:
            message = json.loads(body.decode("utf-8"))["error"]
        except (ValueError, KeyError, TypeError, UnicodeDecodeError):
            message = body[:200].decode("utf-8", "replace")
        error = UnauthorizedError if status == 401 else ServerError
        raise error("server refused the request (HTTP %d): %s" % (status, str(message).splitlines()[0]
                                                                 if message else ""))
    try:
        if header_length is not None and int(header_length) > 0:
            split = int(header_length)
            outputs = _outputs(json.loads(body[:split].decode("utf-8")), body[split:])
        else:
            outputs = _outputs(json.loads(body.decode("utf-8")), b"")
        if OUTPUT not in outputs:
            raise ServerError("server's answer has no %r output" % OUTPUT)
        document = json.loads(outputs[OUTPUT].decode("utf-8"))
    except (ValueError, UnicodeDecodeError, struct.error, AttributeError) as exc:
        raise ServerError("server's answer is not a KServe v2 response with a JSON result: %s" % exc)
    if not isinstance(document, dict):
        raise ServerError("server's result is not a JSON object")
    if "error" in document:
        raise ServerError("server refused the payload: %s" % document["error"])
    return document, outputs


def parse_answer(status: int, header_length: Optional[str], body: bytes) -> Dict[str, Any]:
    """An HTTP answer of the inference endpoint -> the `result` document; errors of any layer -> ServerError."""
    return parse_outputs(status, header_length, body)[0]


class InferenceClient(object):
    """Sends payloads to `ladon-serve` over one kept-alive HTTP connection (re-opened when the server closed it)."""

    def __init__(self, url: str, link: Optional[PacedLink] = None, timeout_s: float = DEFAULT_TIMEOUT_S,
                 model: str = MODEL, token: Optional[bytes] = None) -> None:
        self.url = url
        self.token = token  # sent as `Authorization: Bearer <token>` (ladon-serve --token-file)
        self.host, self.port = parse_server_url(url)
        self.link = link or PacedLink()
        self.timeout_s = float(timeout_s)
        self.model = model
        self._connection = None  # type: Optional[socket.socket]

    def _connect(self) -> socket.socket:
        try:
            connection = socket.create_connection((self.host, self.port), timeout=self.timeout_s)
        except socket.timeout:
            raise ServerError("cannot connect to %s: no answer within %g s" % (self.url, self.timeout_s))
        except OSError as exc:
            raise ServerError("cannot connect to %s: %s" % (self.url, exc.strerror or exc))
        # Paced chunks must leave when the bucket releases them, not when Nagle's algorithm decides.
        connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return connection

    def infer(self, payload: bytes, mask: bool = False) -> Reply:
        """One payload -> the server's answer; mask=True also asks for the segmentation mask (Reply.mask_png)."""
        payload = bytes(payload)
        if mask:
            header = mask_request_header(len(payload))
            body = header + struct.pack("<I", len(payload)) + payload
            head = request_head(self.host, self.port, len(body), self.model, len(header), self.token)
        else:
            header, body = b"", payload
            head = request_head(self.host, self.port, len(payload), self.model, token=self.token)
        lost = ServerError("connection to %s closed before any answer (server stopped?)" % self.url)
        reused = self._connection is not None
        try:
            return self._exchange(head, body, len(payload), mask)
        except _StaleConnection:
            if not reused:
                raise lost
        try:
            return self._exchange(head, body, len(payload), mask)
        except _StaleConnection:
            raise lost

    def _exchange(self, head: bytes, body: bytes, payload_length: int, mask: bool) -> Reply:
        if self._connection is None:
            self._connection = self._connect()
        connection = self._connection
        started = time.perf_counter()
        try:
            self.link.wait_half_rtt()
            try:
                self.link.send(connection, head + body)
            except (BrokenPipeError, ConnectionResetError):
                # The server may have refused the request early (413) and closed: its answer is still readable.
                pass
            sent = time.perf_counter()
            response = http.client.HTTPResponse(connection)
            try:
                response.begin()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self.close()
                raise _StaleConnection()
            length = response.getheader("Content-Length")
            if length is not None and int(length) > MAX_RESPONSE_BYTES:
                raise ServerError("server's answer of %s bytes is over the limit of %d" % (length, MAX_RESPONSE_BYTES))
            answer = response.read(MAX_RESPONSE_BYTES + 1)
            if response.getheader("Connection", "").lower() == "close":
                self.close()
            answered = time.perf_counter()
        except socket.timeout:
            self.close()
            raise ServerError("no answer from %s within %g s" % (self.url, self.timeout_s))
        except (http.client.HTTPException, OSError) as exc:
            self.close()
            raise ServerError("connection to %s lost: %s" % (self.url, getattr(exc, "strerror", None) or
                                                             type(exc).__name__))
        document, outputs = parse_outputs(response.status, response.getheader("Inference-Header-Content-Length"),
                                          answer)
        mask_png = None
        if mask:
            mask_png = outputs.get(MASK_OUTPUT)
            if not mask_png:
                raise ServerError("server's answer has no segmentation mask (a server without the %r output, or a "
                                  "payload without the seg task)" % MASK_OUTPUT)
        self.link.wait_half_rtt()
        finished = time.perf_counter()
        # Everything sent besides the payload (HTTP head, and with a mask the JSON header and length prefix) is overhead.
        return Reply(document, payload_length, len(head) + len(body) - payload_length,
                     (sent - started) + (finished - answered), answered - sent, finished - started, mask_png)

    def close(self) -> None:
        if self._connection is not None:
            try:
                self._connection.close()
            finally:
                self._connection = None

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


def percentile(values, q: float) -> float:
    """The q-th percentile (0-100) with linear interpolation between ranks, as numpy's default computes it."""
    ordered = sorted(float(v) for v in values)
    if not ordered:
        raise ValueError("percentile of no values")
    position = (len(ordered) - 1) * q / 100.0
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


class _StaleConnection(Exception):
    """A kept-alive connection the server had closed: the request is sent again on a new one."""
