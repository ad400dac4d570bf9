"""ladon-serve as a child process: started in its own process group on free loopback ports, stopped by group.

The load benchmark and the tests drive real servers this way: readiness is polled with a bounded loop, and
whatever happens the whole group (ladon-serve, tritonserver, the Python-backend stub) is signalled, so no
tritonserver outlives its test.
"""
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from typing import List, Optional, Sequence

from ladon_deploy.errors import LadonError
from ladon_deploy.serve.gate import free_port

READY_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 30.0


def _distinct_free_ports(count: int) -> List[int]:
    ports: List[int] = []
    while len(ports) < count:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


class ServeProcess:
    """One `ladon-serve` child. Use as a context manager, or call start() and stop()."""

    def __init__(self, bundle: str, args: Sequence[str] = (), port: Optional[int] = None,
                 log_path: Optional[str] = None) -> None:
        self.bundle = bundle
        self.args = list(args)
        self.ports = [port] + _distinct_free_ports(2) if port else _distinct_free_ports(3)
        self.log_path = log_path
        self.process: Optional[subprocess.Popen] = None
        self._log = None

    @property
    def url(self) -> str:
        return "http://127.0.0.1:%d" % self.ports[0]

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def command(self) -> List[str]:
        return [sys.executable, "-m", "ladon_deploy.serve.cli", "--bundle", self.bundle, "--host", "127.0.0.1",
                "--port", str(self.ports[0]), "--grpc-port", str(self.ports[1]),
                "--metrics-port", str(self.ports[2])] + self.args

    def start(self, timeout_s: float = READY_TIMEOUT_S) -> "ServeProcess":
        self._log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        self.process = subprocess.Popen(self.command(), stdout=self._log, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise LadonError("ladon-serve exited with code %d before it was ready%s"
                                 % (self.process.returncode, " (log: %s)" % self.log_path if self.log_path else ""))
            if self.ready():
                return self
            time.sleep(0.5)
        self.kill()
        raise LadonError("ladon-serve was not ready within %g s" % timeout_s)

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/v2/health/ready", timeout=2) as answer:
                return answer.status == 200
        except (urllib.error.URLError, OSError, ValueError):
            return False

    def metadata(self) -> dict:
        with urllib.request.urlopen(self.url + "/v2/models/ladon", timeout=5) as answer:
            return json.loads(answer.read().decode("utf-8"))

    def group_alive(self) -> bool:
        """Whether any process of the server's group (tritonserver included) still exists."""
        try:
            os.killpg(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> int:
        """SIGTERM (what Ctrl-C or a service manager sends); the group is killed if it outlives the timeout."""
        if self.process is None:
            return 0
        if self.process.poll() is None:
            os.killpg(self.pid, signal.SIGTERM)
        try:
            code = self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            code = self.process.returncode
        self._wait_group_gone(timeout_s)
        return code

    def kill(self) -> None:
        """kill -9 of the whole group, as a crash or an OOM kill would end it."""
        if self.process is None:
            return
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(STOP_TIMEOUT_S)
        self._wait_group_gone(STOP_TIMEOUT_S)

    def _wait_group_gone(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while self.group_alive() and time.monotonic() < deadline:
            time.sleep(0.1)
        if self.group_alive():
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self._log not in (None, subprocess.DEVNULL):
            self._log.close()
            self._log = None

    def __enter__(self) -> "ServeProcess":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        if self.process is not None and self.process.poll() is None:
            self.kill()
        elif self.process is not None:
            self._wait_group_gone(5.0)
