"""Every port ladon-serve listens on, checked before Triton starts, and tritonserver watched while it starts.

tritonserver 2.51 handles a taken port badly: a taken gRPC port makes it exit after a raw gRPC log line while
PyTriton waits two minutes for it to become ready (ignoring SIGTERM meanwhile); a taken metrics port makes it crash
with a C stack. So ladon-serve binds each port itself first, as Triton will (SO_REUSEADDR, no SO_REUSEPORT: a port
another server shares through SO_REUSEPORT counts as taken), and refuses in one line. A check can race with
another program, so start-up is also watched: tritonserver exiting, or a listen failure in its output, ends the wait
at once with one line. TCP listeners of a ladon-serve: the gate (--port), Triton's HTTP endpoint behind it (a free
loopback port), gRPC and metrics. PyTriton's own channels to its model processes are Unix sockets in the work
directory (pytriton/proxy: ipc:// and *.sock), and SageMaker / Vertex AI endpoints stay off, so no other port.
"""
import errno
import socket
import threading
import time
from typing import Callable, List, Optional, Sequence, Tuple

from ladon_deploy.errors import LadonError

Listener = Tuple[str, str, int]
"""(what listens, with the option that sets it: "gRPC (--grpc-port)", address, port)."""

LISTEN_FAILURES = ("Address already in use", "already in use", "Failed to start", "failed to start",
                   "Unable to configure socket", "No address added", "Couldn't bind", "failed to bind")
"""Words of tritonserver's output (its log, gRPC's and libevent's stderr) that mean a listener could not start."""

STARTUP_POLL_S = 0.2


def planned_listeners(host: str, port: int, grpc_port: int, metrics_port: int, internal_http_port: int,
                      side_host: str) -> List[Listener]:
    """Every TCP port a ladon-serve listens on, in the order they are checked; gRPC and metrics on side_host."""
    return [("HTTP (--port)", host, port),
            ("gRPC (--grpc-port)", side_host, grpc_port),
            ("metrics (--metrics-port)", side_host, metrics_port),
            ("Triton's HTTP endpoint behind the gate", "127.0.0.1", internal_http_port)]


def check_listeners(listeners: Sequence[Listener]) -> None:
    """LadonError naming the first port that is repeated or that something else listens on."""
    seen = {}
    for label, host, port in listeners:
        if port in seen:
            raise LadonError("%s and %s are both port %d: give them different ports" % (seen[port], label, port))
        seen[port] = label
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, port))
            except OSError as exc:
                reason = "in use (another server?)" if exc.errno == errno.EADDRINUSE else exc.strerror or str(exc)
                raise LadonError("cannot listen on %s:%d for %s: %s" % (host, port, label, reason))


def listen_failure(output: str) -> Optional[str]:
    """The first line of tritonserver's output that says a listener could not start, reduced to its reason."""
    for line in output.splitlines():
        if any(word in line for word in LISTEN_FAILURES):
            text = line.strip()
            if "os_error:" in text:  # gRPC's nested status: its innermost reason is the useful part
                text = text.split("os_error:", 1)[1].split(",", 1)[0].strip(' "')
            elif "] " in text:
                text = text.split("] ", 1)[1]
            return text.strip(' "')[:200]
    return None


class StartupFailed(LadonError):
    """tritonserver did not come up: it exited, could not listen, or start-up was stopped."""


def wait_until_ready(ready: Callable[[], bool], alive: Callable[[], Optional[bool]], output: Callable[[], str],
                     stop: threading.Event, timeout_s: float, ports_hint: str) -> None:
    """Returns once ready() holds, unless first: `output()` shows a listen failure, `alive()` says tritonserver
    exited (None: not known), `stop` is set (SIGTERM, Ctrl-C: KeyboardInterrupt) or timeout_s passes
    (StartupFailed, one line). The caller stops tritonserver in every case."""
    deadline = time.monotonic() + timeout_s
    while True:
        failure = listen_failure(output())
        if failure:
            raise StartupFailed("tritonserver could not listen (%s): %s" % (ports_hint, failure))
        if alive() is False:
            time.sleep(STARTUP_POLL_S)  # its last lines may still be on their way
            text = output()
            raise StartupFailed("tritonserver exited during start-up: %s"
                                % (listen_failure(text) or last_line(text) or "no reason given"))
        if ready():
            return
        if stop.wait(STARTUP_POLL_S):
            raise KeyboardInterrupt
        if time.monotonic() > deadline:
            raise StartupFailed("tritonserver was not ready within %g s: %s"
                                % (timeout_s, last_line(output()) or "nothing logged"))


def http_ready(port: int) -> bool:
    """Whether Triton's HTTP endpoint on 127.0.0.1:port answers /v2/health/ready with 200."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen("http://127.0.0.1:%d/v2/health/ready" % port, timeout=2) as answer:
            return answer.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def last_line(output: str) -> str:
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    return lines[-1][:200] if lines else ""
