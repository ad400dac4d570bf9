"""`ladon-serve --model-repository DIR`: the tritonserver bundled in nvidia-pytriton on a repository written by
ladon_deploy/serve/repository.py (the python variant: that tritonserver has no other backend).

Same behaviour as `ladon-serve --bundle`: the bounded gate (ladon_deploy/serve/gate.py) in front of Triton's HTTP
endpoint, the URLs printed when the `ladon` ensemble is ready, Ctrl-C / SIGTERM stopping tritonserver and its
Python-backend stubs (one process group), one-line errors (Triton's own reason when the repository does not load).
"""
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
import uuid
from typing import Any, Dict, List, Optional

from ladon_deploy.errors import LadonError
from ladon_deploy.serve import listeners
from ladon_deploy.serve.repository import ENSEMBLE_MODEL, read_repository_info


# Lines of a CPU-only machine's log that are not errors of the repository.
_HARMLESS_LOG = ("CudaDriverHelper", "CUDA driver version is insufficient", "NVML", "DCGM", "unable to create stream",
                 "pinned memory", "cuda memory pool")
ADMIN_APIS = "model-repository,shared-memory,logging,trace"


def bundled_tritonserver() -> Dict[str, str]:
    """Where nvidia-pytriton keeps its tritonserver, its backends, the Python-backend stub for this interpreter and
    its shared libraries (found without importing pytriton)."""
    import importlib.util

    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise LadonError("serving a model repository here needs nvidia-pytriton (pip install 'ladon-deploy[serve]')")
    package = list(spec.submodule_search_locations)[0]
    dist = os.path.join(package, "tritonserver")
    version = "%d.%d" % sys.version_info[:2]
    found = {"binary": os.path.join(dist, "bin", "tritonserver"), "backends": os.path.join(dist, "backends"),
             "stub": os.path.join(dist, "python_backend_stubs", version, "triton_python_backend_stub"),
             "libs": os.path.join(os.path.dirname(package), "nvidia_pytriton.libs")}
    if not os.path.isfile(found["binary"]):
        raise LadonError("nvidia-pytriton at %s has no bundled tritonserver (%s)" % (package, found["binary"]))
    if not os.path.isfile(found["stub"]):
        raise LadonError("nvidia-pytriton has no Python-backend stub for Python %s (it ships 3.8 to 3.12/3.13)"
                         % version)
    return found


def check_bundled_server_can_load(directory: str) -> Dict[str, str]:
    """Refuses, before anything starts, a repository whose models need backends the bundled tritonserver lacks."""
    backend = read_repository_info(directory).get("options", {}).get("backend")
    found = bundled_tritonserver()
    available = sorted(name for name in os.listdir(found["backends"])
                       if os.path.isdir(os.path.join(found["backends"], name)))
    if backend != "python":
        raise LadonError("%s runs its body and heads on Triton's %s backend; the tritonserver bundled in "
                         "nvidia-pytriton has only %s: write the repository with --backend python to serve it "
                         "here, or serve this one with NVIDIA's tritonserver container"
                         % (directory, backend, ", ".join(available)))
    return found


def _log_error(log_path: str) -> Optional[str]:
    """The first line of a tritonserver log that names what went wrong, without the log prefix."""
    try:
        with open(log_path, "r", errors="replace") as handle:
            lines = handle.read().splitlines()
    except OSError:
        return None
    picked = None
    for line in lines:
        text = line.strip()
        is_error = (len(text) > 5 and text[0] == "E" and text[1:5].isdigit()) or text.startswith("error:")
        if not is_error or any(noise in text for noise in _HARMLESS_LOG):
            continue
        message = text.split("] ", 1)[1] if "] " in text else text
        # Triton escapes the Python backend's traceback into the line ("...\\n\\nAt:\\n  file(27): initialize"): the
        # reason is what comes before it.
        message = message.split("\\n")[0].strip().strip('"')
        if picked is None or "failed to load" in message or "Invalid argument" in message:
            picked = message
            if "failed to load" in message or "Invalid argument" in message:
                break
    return picked


class RepositoryServer:
    """tritonserver (nvidia-pytriton's) on a model repository, in its own process group, stopped with it.

    Triton's HTTP endpoint listens on 127.0.0.1:http_port (ladon-serve puts its gate in front); gRPC and metrics on
    `host`. Its admin endpoints (model loading, shared memory, logging, trace) need a token nobody is given.
    """

    def __init__(self, repository: str, workdir: str, http_port: int, grpc_port: int, metrics_port: int,
                 host: str = "127.0.0.1", exit_timeout_s: int = 5) -> None:
        self.repository = os.path.abspath(str(repository))
        self.workdir = workdir
        self.http_port = int(http_port)
        self.grpc_port = int(grpc_port)
        self.metrics_port = int(metrics_port)
        self.host = host
        self.exit_timeout_s = int(exit_timeout_s)
        self.log_path = os.path.join(workdir, "tritonserver.log")
        self.process: Optional[subprocess.Popen] = None

    def _backends(self, found: Dict[str, str]) -> str:
        """A backends folder with the Python backend and the stub built for this interpreter's Python version."""
        backends = os.path.join(self.workdir, "backends")
        python = os.path.join(backends, "python")
        os.makedirs(python, exist_ok=True)
        source = os.path.join(found["backends"], "python")
        for name in os.listdir(source):
            if os.path.isfile(os.path.join(source, name)):
                shutil.copy(os.path.join(source, name), os.path.join(python, name))
        shutil.copy(found["stub"], os.path.join(python, "triton_python_backend_stub"))
        return backends

    def command(self, found: Dict[str, str], backends: str, token: str) -> List[str]:
        return [found["binary"], "--model-repository", self.repository, "--backend-directory", backends,
                "--http-address", "127.0.0.1", "--http-port", str(self.http_port),
                "--grpc-address", self.host, "--grpc-port", str(self.grpc_port),
                "--metrics-address", self.host, "--metrics-port", str(self.metrics_port),
                "--exit-timeout-secs", str(self.exit_timeout_s), "--log-verbose", "0",
                "--http-restricted-api", "%s:ladon-admin=%s" % (ADMIN_APIS, token),
                "--grpc-restricted-protocol", "%s:ladon-admin=%s" % (ADMIN_APIS, token)]

    def environment(self, found: Dict[str, str]) -> Dict[str, str]:
        """The stub embeds libpython: LD_LIBRARY_PATH must lead to this interpreter's, and PATH to this Python, whose
        site-packages (the toolkit, numpy, onnxruntime) the steps import from."""
        environment = dict(os.environ)
        libraries = [sysconfig.get_config_var("LIBDIR") or "", found["libs"]]
        libraries += [p for p in environment.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p]
        environment["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in libraries if p)
        environment["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), environment.get("PATH", "")])
        return environment

    def start(self) -> None:
        found = check_bundled_server_can_load(self.repository)
        backends = self._backends(found)
        token = uuid.uuid4().hex
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(self.command(found, backends, token), stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, env=self.environment(found),
                                            start_new_session=True)

    def is_alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def _ready(self, path: str) -> bool:
        import urllib.error
        import urllib.request

        try:
            with urllib.request.urlopen("http://127.0.0.1:%d%s" % (self.http_port, path), timeout=2) as answer:
                return answer.status == 200
        except (urllib.error.URLError, OSError, ValueError):
            return False

    def wait_ready(self, timeout_s: float = 600.0, stop: Any = None) -> None:
        """Returns once Triton and the `ladon` ensemble are ready; LadonError with Triton's reason if it exits."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            failure = listeners.listen_failure(self._log_text())
            if failure:
                raise LadonError("tritonserver could not listen (ports %d, %d, %d): %s"
                                 % (self.http_port, self.grpc_port, self.metrics_port, failure))
            if not self.is_alive():
                reason = _log_error(self.log_path) or "exit code %s" % (self.process.returncode if self.process
                                                                           else "?")
                raise LadonError("tritonserver could not serve %s: %s" % (self.repository, reason))
            if self._ready("/v2/health/ready") and self._ready("/v2/models/%s/ready" % ENSEMBLE_MODEL):
                return
            if stop is not None and stop.wait(0.5):
                raise KeyboardInterrupt
            elif stop is None:
                time.sleep(0.5)
        raise LadonError("tritonserver was not ready within %g s: %s"
                         % (timeout_s, _log_error(self.log_path) or "no error logged"))

    def _log_text(self) -> str:
        try:
            with open(self.log_path, "r", errors="replace") as handle:
                return handle.read()
        except OSError:
            return ""

    def stop(self) -> None:
        """SIGINT to the whole process group (tritonserver and its Python-backend stubs), SIGKILL if it lingers."""
        if self.process is None:
            return
        try:
            if self.process.poll() is None:
                os.killpg(self.process.pid, signal.SIGINT)
                try:
                    self.process.wait(timeout=self.exit_timeout_s + 10)
                except subprocess.TimeoutExpired:
                    pass
        finally:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)  # the stubs too, should any have outlived the server
            except (ProcessLookupError, PermissionError):
                pass
            self.process.wait()


def serve_repository(directory: str, host: str, port: int, grpc_port: int, metrics_port: int,
                     max_request_bytes: int, request_timeout_s: float, stop: Any,
                     say: Any = print, startup_timeout_s: float = 600.0, token: Optional[bytes] = None) -> int:
    """`ladon-serve --model-repository DIR`: Triton on the repository behind ladon-serve's bounded gate, until
    `stop` (a threading.Event) is set; the same port checks, readiness lines, shutdown, token and one-line errors as
    --bundle (with a token, gRPC and metrics listen on loopback only)."""
    import tempfile

    from ladon_deploy.serve.gate import free_port, open_gate

    info = read_repository_info(directory)
    check_bundled_server_can_load(directory)
    side_host = "127.0.0.1" if token else host
    internal_port = free_port()
    listeners.check_listeners(listeners.planned_listeners(host, port, grpc_port, metrics_port, internal_port,
                                                          side_host))
    gate = open_gate(host, port, max_request_bytes, request_timeout_s, request_timeout_s * 2, token)
    gate_running = False
    with tempfile.TemporaryDirectory(prefix="ladon-serve-repository-") as workdir:
        server = RepositoryServer(directory, workdir, internal_port, grpc_port, metrics_port, side_host)
        try:
            server.start()
            try:
                server.wait_ready(startup_timeout_s, stop)
            except KeyboardInterrupt:
                say("ladon-serve: stopped before it was ready")
                return 0
            gate.upstream = ("127.0.0.1", server.http_port)
            gate.start()
            gate_running = True
            shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
            say("ladon-serve: serving Triton model repository %s (bundle %s, %s backend, tasks %s)"
                % (os.path.abspath(directory), info.get("bundle_id"), info.get("options", {}).get("backend"),
                   ",".join(info.get("tasks", []))))
            say("  inference (KServe v2, HTTP): http://%s:%d/v2/models/%s/infer" % (shown, port, ENSEMBLE_MODEL))
            say("  readiness: http://%s:%d/v2/health/ready" % (shown, port))
            side = "127.0.0.1" if token else shown
            say("  gRPC (KServe v2): %s:%d" % (side, grpc_port))
            say("  metrics (Prometheus): http://%s:%d/metrics" % (side, metrics_port))
            say("ladon-serve: ready (Ctrl-C or SIGTERM stops it)")
            sys.stdout.flush()
            while not stop.wait(1.0):
                if not server.is_alive():
                    raise LadonError("tritonserver stopped unexpectedly: %s" % (_log_error(server.log_path)
                                                                                or "no error logged"))
        finally:
            if gate_running:
                gate.stop()
            else:
                gate.server_close()
            server.stop()
    say("ladon-serve: stopped")
    return 0
