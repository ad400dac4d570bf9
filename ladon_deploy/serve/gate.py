"""The bounded HTTP front of ladon-serve: refuses oversized requests before reading them, relays the rest to Triton.

Triton 2.51 (the one nvidia-pytriton 0.7.0 bundles) has no bound on an HTTP request body: it buffers whatever a
client declares (a 100 MB body reached the model, a declared 2 GB one was waited for). The gate listens on the
public port, reads a request's head (bounded by http.server: 64 KiB lines, 100 headers), and refuses with 413 any
request whose Content-Length is over the limit, or 411 one without a length, before reading a byte of its body;
slow senders are cut by a socket timeout. Everything else is relayed unchanged to Triton's HTTP endpoint on loopback,
one upstream connection per client connection, so KServe v2 clients see Triton's own answers, with one exception:
an inference answer whose every `result` row is an error document (a payload the model refused: PyTriton can fail
only whole batches, so the model answers a bad payload inside `result`) becomes HTTP 400 with that error, the
per-request status KServe clients expect and the one Triton gives on a model-repository server. Triton's admin
endpoints stay restricted by Triton itself (PyTriton's access token).

With a token (`ladon-serve --token-file`), every request but the health checks needs `Authorization: Bearer
<token>` (compared in constant time) or gets 401 before its body is read. TLS is a reverse proxy's job.
"""
import hmac
import http.client
import http.server
import json
import re
import socket
import struct
import sys
import threading
from typing import Optional, Tuple

from ladon_deploy.device.client import output_elements
from ladon_deploy.errors import LadonError

_DRAIN_LIMIT = 1 << 20
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection",
               "expect"}
_INFER_PATH = re.compile(r"^/v2/models/[^/?]+(/versions/[^/?]+)?/infer(\?.*)?$")
OPEN_PATHS = ("/v2/health/live", "/v2/health/ready")
"""What a load balancer's health check reads: open without the token (they tell nothing but up or down)."""
RESULT_OUTPUT = "result"
HEADER_LENGTH = "Inference-Header-Content-Length"


def refused_payload_error(header_length: Optional[str], body: bytes) -> Optional[str]:
    """The error of an inference answer whose every `result` row is an error document, else None."""
    try:
        split = int(header_length) if header_length else len(body)
        rows = output_elements(json.loads(body[:split].decode("utf-8")), body[split:]).get(RESULT_OUTPUT, [])
        documents = [json.loads(row.decode("utf-8")) for row in rows]
    except (ValueError, UnicodeDecodeError, struct.error, AttributeError, TypeError):
        return None  # not a document this gate understands: relayed as it is
    if documents and all(isinstance(d, dict) and isinstance(d.get("error"), str) for d in documents):
        return documents[0]["error"]
    return None


class _GateHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "ladon-serve"
    sys_version = ""

    def log_message(self, *_format_and_args) -> None:
        pass  # Triton keeps the request log; the gate adds none

    def setup(self) -> None:
        self.timeout = self.server.read_timeout_s
        super().setup()
        self._upstream: Optional[http.client.HTTPConnection] = None

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            if self._upstream is not None:
                self._upstream.close()

    def _refuse(self, status: int, message: str) -> None:
        body = json.dumps({"error": message}).encode("utf-8")
        self.send_response(status)
        if status == 401:
            self.send_header("WWW-Authenticate", 'Bearer realm="ladon-serve"')
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()
        self.close_connection = True
        # Closing with the client's unread body queued makes the kernel send a reset, which can destroy the answer
        # before the client reads it: half-close, then discard what keeps arriving for a bounded time and size.
        try:
            self.connection.shutdown(socket.SHUT_WR)
            self.connection.settimeout(0.5)
            discarded = 0
            while discarded < _DRAIN_LIMIT:
                chunk = self.connection.recv(65536)
                if not chunk:
                    break
                discarded += len(chunk)
        except OSError:
            pass

    def _authorized(self) -> bool:
        token = self.server.token
        if token is None or self.path.split("?", 1)[0] in OPEN_PATHS:
            return True
        given = self.headers.get("Authorization", "").encode("latin-1", "replace")
        return hmac.compare_digest(given, b"Bearer " + token)

    def handle_expect_100(self) -> bool:
        # curl asks before sending bodies over 1 MB: an oversized or unauthorized one is refused instead of invited.
        if not self._authorized():
            self._refuse(401, "this server needs 'Authorization: Bearer <token>'")
            return False
        try:
            declared = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            declared = 0
        if declared > self.server.max_request_bytes:
            self._refuse(413, "request of %d bytes is over this server's limit of %d bytes"
                         % (declared, self.server.max_request_bytes))
            return False
        return super().handle_expect_100()

    def _relay(self) -> None:
        if not self._authorized():
            return self._refuse(401, "this server needs 'Authorization: Bearer <token>'")
        length_text = self.headers.get("Content-Length")
        if self.headers.get("Transfer-Encoding"):
            return self._refuse(411, "chunked requests are not accepted; send a Content-Length")
        if length_text is None:
            length = 0
            if self.command in ("POST", "PUT"):
                return self._refuse(411, "request has no Content-Length")
        else:
            try:
                length = int(length_text)
            except ValueError:
                length = -1
            if length < 0:
                return self._refuse(400, "bad Content-Length %r" % length_text)
        if length > self.server.max_request_bytes:
            return self._refuse(413, "request of %d bytes is over this server's limit of %d bytes"
                                % (length, self.server.max_request_bytes))
        body = self.rfile.read(length) if length else b""
        if len(body) != length:
            self.close_connection = True
            return
        headers = {name: value for name, value in self.headers.items() if name.lower() not in _HOP_BY_HOP}
        for attempt in (0, 1):
            if self._upstream is None:
                self._upstream = http.client.HTTPConnection(self.server.upstream[0], self.server.upstream[1],
                                                            timeout=self.server.upstream_timeout_s)
            try:
                self._upstream.request(self.command, self.path, body=body, headers=headers)
                response = self._upstream.getresponse()
                data = response.read()
                break
            except (http.client.HTTPException, OSError):
                self._upstream.close()
                self._upstream = None
                if attempt:
                    return self._refuse(503, "the inference server behind ladon-serve is not answering")
        if response.status == 200 and self.command == "POST" and _INFER_PATH.match(self.path):
            refused = refused_payload_error(response.getheader(HEADER_LENGTH), data)
            if refused is not None:
                return self._answer_error(400, refused)
        self.send_response(response.status, response.reason)
        for name, value in response.getheaders():
            if name.lower() not in _HOP_BY_HOP and name.lower() != "content-length":
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _answer_error(self, status: int, message: str) -> None:
        """A KServe v2 error answer ({"error": ...}) on a connection that stays open (the body was read)."""
        body = json.dumps({"error": message}).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_HEAD = do_DELETE = _relay


class Gate(http.server.ThreadingHTTPServer):
    """A threaded HTTP server that applies the limits above and relays to `upstream` (host, port)."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: Tuple[str, int], upstream: Tuple[str, int], max_request_bytes: int,
                 read_timeout_s: float = 30.0, upstream_timeout_s: float = 60.0, token: Optional[bytes] = None) -> None:
        self.upstream = upstream
        self.token = token
        self.max_request_bytes = int(max_request_bytes)
        self.read_timeout_s = float(read_timeout_s)
        self.upstream_timeout_s = float(upstream_timeout_s)
        super().__init__(address, _GateHandler)

    def handle_error(self, request, client_address) -> None:
        # A client that went away or stalled past the timeout is not the server's error; anything else is one line.
        error = sys.exc_info()[1]
        if isinstance(error, (ConnectionError, socket.timeout)):
            return
        sys.stderr.write("ladon-serve: gate: %s from %s: %s\n" % (type(error).__name__, client_address[0], error))

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self.serve_forever, name="ladon-serve-gate", daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


def open_gate(host: str, port: int, max_request_bytes: int, read_timeout_s: float, upstream_timeout_s: float,
              token: Optional[bytes] = None) -> Gate:
    """A Gate listening on host:port (its upstream set once Triton is up); a port it cannot take is one line."""
    try:
        return Gate((host, port), ("127.0.0.1", 0), max_request_bytes, read_timeout_s, upstream_timeout_s, token)
    except OSError as exc:
        raise LadonError("cannot listen on %s:%d for HTTP (--port): %s" % (host, port, exc.strerror or exc))


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now (the kernel's choice); the caller binds it right after."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])
