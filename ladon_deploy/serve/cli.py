"""`ladon-serve`: the server half of the split on Triton Inference Server (nvidia-pytriton's tritonserver).

    ladon-serve --bundle B --port 8000 [--engine onnxruntime] [--max-batch 8] [--max-queue-delay-ms 5]
    ladon-serve --bundle B1 --bundle B2 --port 8000 --frames-port 8600    # several betas; radio frames over UDP too

Every port is checked before Triton starts and start-up is watched, so a taken port is one line and exit 2 within
seconds (ladon_deploy/serve/listeners.py). Prints its URLs when ready; Ctrl-C or SIGTERM, also during start-up,
stops Triton (no tritonserver is left running) and exits 0.
"""
import logging
import warnings
import os
import shutil
import signal
import sys
import sysconfig
import tempfile
import threading
from typing import List, Optional, Sequence

from ladon_deploy.cli_support import OneLineParser, UsageError, add_version_option, read_token, run_command
from ladon_deploy.device.cli import open_bundle_stages
from ladon_deploy.device.stage import parse_tasks, select_tasks
from ladon_deploy.engines.registry import ENGINES
from ladon_deploy.errors import LadonError
from ladon_deploy.serve import listeners

PROG = "ladon-serve"
WORKDIR_PREFIX = "ladon-serve-bundle-"
OWNER_FILE = "owner.pid"
HEALTH_PERIOD_S = 1.0
STARTUP_TIMEOUT_S = 600.0


def build_parser() -> OneLineParser:
    parser = OneLineParser(prog=PROG, description="Serve a Ladon bundle's server half (decode, body, heads) on Triton "
                                       "Inference Server: model 'ladon', BYTES 'payload' in, JSON 'result' out.")
    parser.add_argument("--bundle", dest="bundles", action="append", default=None,
                        help="bundle directory written by ladon-export; repeat it to serve bundles of one "
                             "architecture at several betas (each payload names its bundle)")
    parser.add_argument("--model-repository", default=None, metavar="DIR",
                        help="instead of --bundle: a Triton model repository written by ladon-build --target triton "
                             "(--backend python here), served by the tritonserver bundled in nvidia-pytriton")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1; 0.0.0.0 for every interface)")
    parser.add_argument("--port", type=int, default=8000, help="HTTP port, KServe v2 (default 8000)")
    parser.add_argument("--grpc-port", type=int, default=None, help="gRPC port (default: --port + 1)")
    parser.add_argument("--metrics-port", type=int, default=None, help="Prometheus metrics port (default: --port + 2)")
    parser.add_argument("--engine", default="onnxruntime", help="engine: %s" % ", ".join(ENGINES))
    parser.add_argument("--threads", type=int, default=None, help="engine threads (default: one per core)")
    parser.add_argument("--tasks", default=None, help="comma-separated subset of cls,det,seg (default: all)")
    parser.add_argument("--max-batch", type=int, default=8,
                        help="largest dynamic batch (default 8; 1 disables batching)")
    parser.add_argument("--max-queue-delay-ms", type=float, default=5.0,
                        help="how long Triton may hold a request to fill a batch (default 5)")
    parser.add_argument("--max-request-bytes", type=int, default=4 << 20,
                        help="larger HTTP requests are refused before their body is read "
                             "(default 4194304)")
    parser.add_argument("--request-timeout-s", type=float, default=120.0,
                        help="a request still queued in Triton after this long is refused, HTTP 503 "
                             "(default 120)")
    parser.add_argument("--idle-timeout-s", type=float, default=30.0,
                        help="a connection that sends nothing for this long (mid-request or between) is "
                             "closed (default 30)")
    parser.add_argument("--token-file", default=None, metavar="FILE",
                        help="require 'Authorization: Bearer <token>' on every HTTP request but the health checks "
                             "(401 without it), the token being this file's content; gRPC and metrics then listen "
                             "on 127.0.0.1 only. TLS: put a reverse proxy in front (see docs/serve.md)")
    parser.add_argument("--frames-port", type=int, default=None, metavar="PORT",
                        help="also receive payloads as radio frames on this UDP port (ladon-run mobile --server "
                             "udp://HOST:PORT --link PROFILE), on --host")
    parser.add_argument("--key-file", default=None, metavar="FILE",
                        help="with --frames-port: shared key that authenticates every frame (HMAC-SHA256)")
    add_version_option(parser)
    return parser


def quiet_pytriton() -> None:
    """PyTriton's own log lines ("Triton Inference Server exited with failure. Please wait.") and warnings (a
    workspace it could not clean after a failed start: ladon-serve's work directory removes it) repeat what
    ladon-serve reports in one line; they would reach stderr through logging's last-resort handler."""
    logging.getLogger("pytriton").addHandler(logging.NullHandler())
    warnings.filterwarnings("ignore", module="pytriton")


class PyTritonWatch:
    """Starts PyTriton 0.7.0's tritonserver and watches it come up (the package is pinned to that release).

    PyTriton's own start (Triton.run) waits up to 120 s for a tritonserver that has already exited, holding the lock
    its stop() needs, so neither SIGTERM nor a failure could end it. So, called back by start_triton before it
    binds the model, this makes PyTriton's private tritonserver handle (`_initialize_server`), stops it echoing
    tritonserver's stdout and stderr to ours (on a CPU machine "Error: Failed to initialize NVML", gRPC's raw bind
    errors: everything stays readable through logs()), starts it (`_run_server`, in this thread: PyTriton sets
    PR_SET_PDEATHSIG, so tritonserver gets SIGTERM when the thread that started it ends) and waits for its HTTP
    endpoint with listeners.wait_until_ready. Triton.run() then finds it ready and only loads the model.
    """

    def __init__(self, log_path: str, http_port: int, stop: threading.Event, ports_hint: str) -> None:
        self.log_path = log_path
        self.http_port = http_port
        self.stop = stop
        self.ports_hint = ports_hint
        self.server = None
        self.exit_codes: List[int] = []

    def created(self, triton) -> None:
        triton._initialize_server()
        self.server = triton._triton_server
        self.server._verbose = False
        self.server.register_on_exit(lambda _success, code: self.exit_codes.append(code))
        try:
            triton._run_server()
            listeners.wait_until_ready(lambda: listeners.http_ready(self.http_port), self.alive, self.output,
                                       self.stop, STARTUP_TIMEOUT_S, self.ports_hint)
        except BaseException:
            triton.stop()  # here, not in the atexit hook PyTriton registered, which runs too late to clean up
            raise

    def alive(self) -> Optional[bool]:
        return False if self.exit_codes else None

    def output(self) -> str:
        echoed = self.server.logs() if self.server is not None else ""
        try:
            with open(self.log_path, "r", errors="replace") as handle:
                return echoed + "\n" + handle.read()
        except OSError:
            return echoed

    def reason(self) -> str:
        text = self.output()
        return listeners.listen_failure(text) or listeners.last_line(text) or "no reason logged"


def check_serving_stack() -> None:
    """PyTriton's requirements, checked before anything slow: numpy < 2, the package, its libpython lookup.

    The Python-backend stub that tritonserver starts links against libpython and finds it through LD_LIBRARY_PATH;
    PyTriton hands tritonserver a copy of this process's environment, so setting it here reaches the stub (this
    interpreter has its libpython loaded already and needs no re-exec).
    """
    import numpy

    if int(numpy.__version__.split(".")[0]) >= 2:
        raise LadonError("nvidia-pytriton 0.7 needs numpy < 2, this environment has numpy %s "
                         "(pip install 'numpy<2')" % numpy.__version__)
    try:
        import pytriton  # noqa: F401
    except ImportError:
        raise LadonError("ladon-serve needs nvidia-pytriton (pip install 'ladon-deploy[serve]')")
    libdir = sysconfig.get_config_var("LIBDIR")
    paths = [p for p in os.environ.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p]
    if libdir and libdir not in paths:
        os.environ["LD_LIBRARY_PATH"] = os.pathsep.join([libdir] + paths)


def _validate(args) -> None:
    if (args.bundles is None) == (args.model_repository is None):
        raise UsageError("give one of --bundle B or --model-repository DIR")
    if args.model_repository is not None and (args.frames_port is not None or args.key_file is not None):
        raise UsageError("--frames-port and --key-file serve bundles (--bundle), not a model repository")
    if args.key_file is not None and args.frames_port is None:
        raise UsageError("--key-file authenticates frames: it needs --frames-port")
    if args.frames_port is not None and not 0 < args.frames_port < 65536:
        raise UsageError("--frames-port must be a UDP port (1-65535), got %d" % args.frames_port)
    if args.engine not in ENGINES:
        raise UsageError("unknown --engine %r (known: %s)" % (args.engine, ", ".join(ENGINES)))
    for name in ("port", "grpc_port", "metrics_port"):
        value = getattr(args, name)
        if value is not None and not 0 < value < 65536:
            raise UsageError("--%s must be a TCP port (1-65535), got %d" % (name.replace("_", "-"), value))
    if args.max_batch < 1:
        raise UsageError("--max-batch must be at least 1")
    if args.max_queue_delay_ms < 0:
        raise UsageError("--max-queue-delay-ms must not be negative")
    if args.max_request_bytes < 1024:
        raise UsageError("--max-request-bytes must be at least 1024")
    if args.request_timeout_s <= 0 or args.idle_timeout_s <= 0:
        raise UsageError("--request-timeout-s and --idle-timeout-s must be positive")
    if args.threads is not None and args.threads < 1:
        raise UsageError("--threads must be at least 1")
    ports = [args.port, args.grpc_port or args.port + 1, args.metrics_port or args.port + 2]
    if max(ports) > 65535:
        raise UsageError("--port %d leaves no room for the default gRPC and metrics ports (port+1, port+2): give "
                         "--grpc-port and --metrics-port" % args.port)


def _shown_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "") else host


def _urls(args, grpc_port: int, metrics_port: int) -> List[str]:
    shown = _shown_host(args.host)
    side = "127.0.0.1" if args.token_file else shown
    base = "http://%s:%d" % (shown, args.port)
    return ["inference (KServe v2, HTTP): %s/v2/models/ladon/infer%s" % (base, " (token required)" if
                                                                        args.token_file else ""),
            "readiness: %s/v2/health/ready" % base,
            "gRPC (KServe v2): %s:%d" % (side, grpc_port),
            "metrics (Prometheus): http://%s:%d/metrics" % (side, metrics_port)]


def remove_stale_workdirs() -> None:
    """Removes the work directories (batch-capable ONNX copies, PyTriton's tritonserver copy: ~200 MB) of servers
    that were killed (kill -9, OOM) before they could clean up: those whose owner process no longer exists."""
    root = tempfile.gettempdir()
    for name in os.listdir(root):
        path = os.path.join(root, name)
        if not name.startswith(WORKDIR_PREFIX) or not os.path.isdir(path):
            continue
        try:
            with open(os.path.join(path, OWNER_FILE)) as handle:
                owner = int(handle.read().strip())
            os.kill(owner, 0)
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
        except (OSError, ValueError):
            continue  # not ours to judge: unreadable, another user's, or still being set up


class StartupStopped(Exception):
    """SIGTERM or Ctrl-C arrived before the server was ready."""


def serve(args, stop: threading.Event) -> int:
    from ladon_deploy.serve.gate import free_port, open_gate
    from ladon_deploy.serve.server import BatchedServerStage, BundleDispatch, ServeSettings, start_triton

    check_serving_stack()
    quiet_pytriton()
    token = read_token(args.token_file)
    grpc_port = args.grpc_port or args.port + 1
    metrics_port = args.metrics_port or args.port + 2
    side_host = "127.0.0.1" if token else args.host
    bundles = []
    for directory in args.bundles:
        bundle = open_bundle_stages(directory, ["entropy", "body"])
        tasks = select_tasks(bundle, parse_tasks(args.tasks))
        bundle.verify(["head_" + t for t in tasks])
        bundles.append((bundle, tasks))
    triton_port = free_port()
    planned = listeners.planned_listeners(args.host, args.port, grpc_port, metrics_port, triton_port, side_host)
    listeners.check_listeners(planned)
    frames_socket = None
    if args.frames_port is not None:
        from ladon_deploy.link import transport

        frame_key = read_token(args.key_file, "--key-file")
        frames_socket = transport.bind_frame_socket(args.host, args.frames_port)
    gate = open_gate(args.host, args.port, args.max_request_bytes, args.idle_timeout_s, args.request_timeout_s + 60.0,
                     token)
    triton = stage = receiver_thread = None
    receiver_stop = threading.Event()
    gate_running = False
    remove_stale_workdirs()
    with tempfile.TemporaryDirectory(prefix=WORKDIR_PREFIX) as workdir:
        with open(os.path.join(workdir, OWNER_FILE), "w") as handle:
            handle.write(str(os.getpid()))
        log_path = os.path.join(workdir, "tritonserver.log")
        watch = PyTritonWatch(log_path, triton_port, stop,
                              "ports %s" % ", ".join(str(port) for _, _, port in planned[1:]))
        try:
            stage = BundleDispatch([BatchedServerStage(
                bundle, engine=args.engine, threads=args.threads, tasks=tasks,
                workdir=os.path.join(workdir, "batched", bundle.bundle_id[:8]),
                max_payload_bytes=args.max_request_bytes) for bundle, tasks in bundles])
            if stop.is_set():
                raise StartupStopped()
            settings = ServeSettings(side_host, triton_port, grpc_port, metrics_port, args.max_batch,
                                     args.max_queue_delay_ms, args.request_timeout_s)
            try:
                # On any failure start_triton stops what it started before the exception reaches here.
                triton = start_triton(stage, settings, os.path.join(workdir, "pytriton"), log_path, watch.created)
            except KeyboardInterrupt:
                raise StartupStopped()
            gate.upstream = ("127.0.0.1", triton_port)
            gate.start()
            gate_running = True
            if frames_socket is not None:
                receiver = transport.FrameReceiver(stage.answer, key=frame_key,
                                                   log=lambda line: print("%s: %s" % (PROG, line), flush=True))
                receiver_thread = threading.Thread(target=receiver.serve, args=(frames_socket, receiver_stop),
                                                   name="ladon-serve-frames")
                receiver_thread.daemon = True
                receiver_thread.start()
            for bundle, tasks in bundles:
                print("%s: serving bundle %s (%s) with %s, max batch %d" % (
                    PROG, bundle.bundle_id, ",".join(tasks), args.engine, args.max_batch))
            for line in _urls(args, grpc_port, metrics_port):
                print("  " + line)
            if frames_socket is not None:
                print("  radio frames (UDP%s): udp://%s:%d" % (", authenticated" if frame_key else "",
                                                              _shown_host(args.host), args.frames_port))
            print("%s: ready (Ctrl-C or SIGTERM stops it)" % PROG, flush=True)
            while not stop.wait(HEALTH_PERIOD_S):
                if not triton.is_alive():
                    raise LadonError("tritonserver stopped unexpectedly: %s" % watch.reason())
        except StartupStopped:
            print("%s: stopped before it was ready" % PROG, flush=True)
            return 0
        finally:
            receiver_stop.set()
            if receiver_thread is not None:
                receiver_thread.join(timeout=10)
            if frames_socket is not None:
                frames_socket.close()
            if gate_running:
                gate.stop()
            else:
                gate.server_close()
            if triton is not None:
                triton.stop()
            if stage is not None:
                stage.close()
    print("%s: stopped" % PROG, flush=True)
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    _validate(args)
    stop = threading.Event()

    def request_stop(*_signal_and_frame) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        if args.model_repository is not None:
            from ladon_deploy.serve.repository_server import serve_repository

            check_serving_stack()
            return serve_repository(args.model_repository, args.host, args.port, args.grpc_port or args.port + 1,
                                    args.metrics_port or args.port + 2, args.max_request_bytes,
                                    args.request_timeout_s, stop, token=read_token(args.token_file))
        return serve(args, stop)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def entry_point() -> None:
    sys.exit(run_command(PROG, main))


if __name__ == "__main__":
    entry_point()
