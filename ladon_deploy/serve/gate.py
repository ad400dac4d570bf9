"""The bounded HTTP front of ladon-serve: refuses oversized requests before reading them, relays the rest to Triton.

Triton 2.51 (the one nvidia-pytriton 0.7.0 bundles) has no bound on an HTTP request body: it buffers whatever a
client declares (a 100 MB body reached the model, a declared 2 GB one was waited for). The gate listens on the
public port, reads a request's head (bounded by http.server: 64 KiB lines, 100 headers), and refuses with 413 any
request whose Content-Length is over the limit, or 411 one without a length, before reading a byte of its body;
slow senders are cut by a socket timeout. Everything else is relayed unchanged to Triton's HTTP endpoint on loopback,
one upstream connection per client connection, so KServe v2 clients see Triton's own answers. Triton's admin
endpoints stay restricted by Triton itself (PyTriton's access token).
"""
import http.client
import http.server
import json
import socket
import sys
import threading
from typing import Optional, Tuple

_DRAIN_LIMIT = 1 << 20
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection",
               "expect"}


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

    def handle_expect_100(self) -> bool:
        # curl asks before sending bodies over 1 MB: an oversized one is refused instead of invited.
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
        self.send_response(response.status, response.reason)
        for name, value in response.getheaders():
            if name.lower() not in _HOP_BY_HOP and name.lower() != "content-length":
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_HEAD = do_DELETE = _relay


class Gate(http.server.ThreadingHTTPServer):
    """A threaded HTTP server that applies the limits above and relays to `upstream` (host, port)."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: Tuple[str, int], upstream: Tuple[str, int], max_request_bytes: int,
                 read_timeout_s: float = 30.0, upstream_timeout_s: float = 60.0) -> None:
        self.upstream = upstream
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


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now (the kernel's choice); the caller binds it right after."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])
