"""Load test of ladon-serve on loopback (a benchmark script, not a test).

    python -m ladon_deploy.bench.load --bundle B --clients 8 --requests 20
    python -m ladon_deploy.bench.load --bundle B --server http://127.0.0.1:8000 --clients 8 --requests 20

With no --server it starts its own servers (ladon_deploy.serve.process: own process group, free ports) and runs:
  1. N concurrent device clients x M requests over several images with dynamic batching (--max-batch), every
     answer compared with what `ladon-run server` (ServerStage) gives for the same payload: lost and wrong counted;
     latency p50/p99, throughput, the server's peak RSS (ladon-serve + tritonserver + stub, psutil);
  2. the same load on a server started with --max-batch 1, in the same run: the batching speed-up is the ratio;
  3. N client processes under load, then kill -9 of the server's process group: every client must end with one
     line and a non-zero exit within a bounded time (none hangs); a server restarted on the same port must serve.
With --server only phase 1 runs, against that server (no RSS, no comparison, nothing killed).
"""
import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ladon_deploy.bundle import open_bundle
from ladon_deploy.cli_support import OneLineParser, run_command
from ladon_deploy.device.client import InferenceClient, ServerError, percentile
from ladon_deploy.device.stage import DeviceStage, parse_tasks, select_tasks
from ladon_deploy.errors import LadonError

PROG = "ladon-load"
RESULT_KEYS = ("bundle_id", "original_size", "resized_size", "tasks", "classification", "detection", "segmentation")
KILL_CLIENT_TIMEOUT_S = 120.0


def results_of(document: Dict[str, Any]) -> Dict[str, Any]:
    return {key: document[key] for key in RESULT_KEYS if key in document}


def synthetic_photos(directory: str, count: int) -> List[str]:
    """Photo-like test images in two sizes (two latent shapes), plus matplotlib's sample photo where present."""
    from PIL import Image

    paths = []
    for index in range(count):
        height, width = ((333, 500), (480, 360))[index % 2]
        rng = np.random.default_rng(100 + index)
        rows, cols = np.mgrid[0:height, 0:width]
        base = np.stack([cols * 255.0 / width, rows * 255.0 / height, (rows + cols) * 127.0 / (height + width)], -1)
        blocks = np.kron(rng.integers(0, 120, (height // 24 + 1, width // 24 + 1, 3)), np.ones((24, 24, 1)))
        pixels = base * 0.6 + blocks[:height, :width] + rng.normal(0, 25, (height, width, 3))
        path = os.path.join(directory, "photo%02d.png" % index)
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path)
        paths.append(path)
    return paths


def make_payloads(bundle_dir: str, images: Sequence[str], tasks: Optional[Sequence[str]]
                  ) -> Tuple[List[bytes], List[Dict[str, Any]]]:
    """Payloads of the images and, for each, the reference results of the server half run in this process."""
    from ladon_deploy.server.stage import ServerStage

    bundle = open_bundle(bundle_dir)
    chosen = select_tasks(bundle, tasks)
    device = DeviceStage(bundle)
    payloads = [device.run(path, chosen).payload for path in images]
    device.close()
    server = ServerStage(bundle, tasks=chosen)
    references = [results_of(server.run(data).to_json()) for data in payloads]
    server.close()
    return payloads, references


class RssSampler:
    """Peak resident set of a process and all its descendants, sampled every `period` seconds."""

    def __init__(self, pid: int, period: float = 0.2) -> None:
        self.period = period
        import psutil

        self._root = psutil.Process(pid)
        self._psutil = psutil
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> int:
        total = 0
        try:
            for process in [self._root] + self._root.children(recursive=True):
                try:
                    total += process.memory_info().rss
                except self._psutil.Error:
                    pass
        except self._psutil.Error:
            pass
        return total

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            self.peak = max(self.peak, self._sample())

    def __enter__(self) -> "RssSampler":
        self.peak = self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join(5)


class LoadResult:
    def __init__(self) -> None:
        self.latencies: List[float] = []
        self.batch_sizes: List[int] = []
        self.wrong = 0
        self.lost = 0
        self.errors: List[str] = []
        self.wall = 0.0
        self.peak_rss: Optional[int] = None

    @property
    def answered(self) -> int:
        return len(self.latencies)


def run_load(url: str, payloads: Sequence[bytes], references: Sequence[Dict[str, Any]], clients: int,
             requests: int, timeout_s: float) -> LoadResult:
    """`clients` threads, each with its own connection, send `requests` payloads each, cycling over the images."""
    result = LoadResult()
    lock = threading.Lock()

    def client_loop(index: int) -> None:
        with InferenceClient(url, timeout_s=timeout_s) as client:
            for number in range(requests):
                choice = (index + number) % len(payloads)
                started = time.perf_counter()
                try:
                    reply = client.infer(payloads[choice])
                except ServerError as exc:
                    with lock:
                        result.lost += 1
                        result.errors.append(str(exc))
                    continue
                elapsed = time.perf_counter() - started
                with lock:
                    result.latencies.append(elapsed)
                    result.batch_sizes.append(int(reply.document.get("batch_size") or 1))
                    if results_of(reply.document) != references[choice]:
                        result.wrong += 1

    threads = [threading.Thread(target=client_loop, args=(i,), daemon=True) for i in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout_s * requests + 60)
    result.wall = time.perf_counter() - started
    hung = sum(1 for thread in threads if thread.is_alive())
    if hung:
        result.errors.append("%d client threads did not finish" % hung)
    return result


def _row(name: str, result: LoadResult, total: int, baseline: Optional[LoadResult]) -> str:
    throughput = result.answered / result.wall if result.wall else 0.0
    ratio = ""
    if baseline is not None and baseline.answered and baseline.wall:
        ratio = "%.2fx" % (throughput / (baseline.answered / baseline.wall))
    p50 = percentile(result.latencies, 50) * 1000 if result.latencies else float("nan")
    p99 = percentile(result.latencies, 99) * 1000 if result.latencies else float("nan")
    rss = "%.0f" % (result.peak_rss / 2 ** 20) if result.peak_rss else "-"
    batch = "%.1f/%d" % (float(np.mean(result.batch_sizes)), max(result.batch_sizes)) if result.batch_sizes else "-"
    return "%-22s %5d/%-5d %5d %5d %9.0f %9.0f %8.2f %9s %9s %8s" % (
        name, result.answered - result.wrong, total, result.lost, result.wrong, p50, p99, throughput, ratio, batch,
        rss)


HEADER = "%-22s %11s %5s %5s %9s %9s %8s %9s %9s %8s" % (
    "server", "correct", "lost", "wrong", "p50 ms", "p99 ms", "req/s", "vs batch1", "batch", "RSS MB")

CLIENT_WORKER = """
import sys
from ladon_deploy.cli_support import run_command
from ladon_deploy.device.client import InferenceClient

def main(argv):
    url, count = argv[0], int(argv[1])
    payloads = [open(path, "rb").read() for path in argv[2:]]
    with InferenceClient(url, timeout_s=60) as client:
        for number in range(count):
            client.infer(payloads[number % len(payloads)])
            print("answer %d" % number, flush=True)
    return 0

sys.exit(run_command("load-client", main, sys.argv[1:]))
"""


def kill_under_load(bundle_dir: str, server_args: Sequence[str], payload_files: Sequence[str], clients: int,
                    requests: int, log_dir: str) -> Tuple[List[Tuple[int, List[str]]], float, bool, int]:
    """Client processes load a server, which is killed -9 once answers flow; returns each client's (exit code,
    stderr lines), the slowest client's end after the kill, and whether a restart on the same port served."""
    from ladon_deploy.serve.process import ServeProcess

    server = ServeProcess(bundle_dir, server_args, log_path=os.path.join(log_dir, "kill.log"))
    workers = []
    try:
        server.start()
        workers = [subprocess.Popen([sys.executable, "-c", CLIENT_WORKER, server.url, str(requests * 10)]
                                    + list(payload_files), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    universal_newlines=True) for _ in range(clients)]
        first_answer = workers[0].stdout.readline()  # the load is flowing
        if not first_answer:
            raise LadonError("the first client ended before any answer: %s" % workers[0].stderr.read().strip())
        killed = time.perf_counter()
        server.kill()
        outcomes = []
        for worker in workers:
            try:
                _, err = worker.communicate(timeout=KILL_CLIENT_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                worker.kill()
                _, err = worker.communicate()
                outcomes.append((None, ["HUNG: killed after %g s" % KILL_CLIENT_TIMEOUT_S]))
                continue
            outcomes.append((worker.returncode, [line for line in err.splitlines() if line.strip()]))
        ended = time.perf_counter() - killed
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
        server.kill()
    restarted = ServeProcess(bundle_dir, server_args, port=server.ports[0],
                             log_path=os.path.join(log_dir, "restart.log"))
    served = 0
    with restarted:
        with InferenceClient(restarted.url, timeout_s=120) as client:
            for path in payload_files:
                with open(path, "rb") as handle:
                    if "error" not in client.infer(handle.read()).document:
                        served += 1
        restarted.stop()
    return outcomes, ended, served == len(payload_files), served


def build_parser() -> OneLineParser:
    parser = OneLineParser(prog=PROG, formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                           description="Load test of ladon-serve: correctness, latency, batching speed-up, "
                                       "peak RSS, kill -9 under load.")
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--server", default=None, help="load this running server only (phase 1)")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=20, help="requests per client")
    parser.add_argument("--images", type=int, default=4, help="synthetic photos the clients cycle over")
    parser.add_argument("--tasks", default=None, help="tasks the payloads ask for (default: all the bundle has)")
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--max-queue-delay-ms", type=float, default=5.0)
    parser.add_argument("--timeout-s", type=float, default=300.0, help="per-request client timeout")
    parser.add_argument("--threads", type=int, default=None, help="server engine threads")
    parser.add_argument("--skip-kill", action="store_true", help="leave out phase 3")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    from ladon_deploy.serve.process import ServeProcess

    args = build_parser().parse_args(argv)
    total = args.clients * args.requests
    work = tempfile.mkdtemp(prefix="ladon-load-")
    images = synthetic_photos(work, args.images)
    print("%s: %d clients x %d requests over %d images; preparing payloads and references" % (
        PROG, args.clients, args.requests, len(images)), flush=True)
    payloads, references = make_payloads(args.bundle, images, parse_tasks(args.tasks))
    payload_files = []
    for index, data in enumerate(payloads):
        path = os.path.join(work, "payload%02d.ldn" % index)
        with open(path, "wb") as handle:
            handle.write(data)
        payload_files.append(path)
    print("payloads: %s bytes; tasks %s" % (", ".join(str(len(p)) for p in payloads), references[0]["tasks"]))
    common = ["--max-queue-delay-ms", str(args.max_queue_delay_ms), "--request-timeout-s", str(args.timeout_s)]
    if args.threads:
        common += ["--threads", str(args.threads)]
    if args.tasks:
        common += ["--tasks", args.tasks]
    rows = []
    if args.server:
        result = run_load(args.server, payloads, references, args.clients, args.requests, args.timeout_s)
        rows.append(("given server", result, None))
    else:
        measured = {}
        for name, batch in (("max-batch %d" % args.max_batch, args.max_batch), ("max-batch 1", 1)):
            with ServeProcess(args.bundle, common + ["--max-batch", str(batch)],
                              log_path=os.path.join(work, "batch%d.log" % batch)) as server:
                run_load(server.url, payloads, references, 1, len(payloads), args.timeout_s)  # warm-up
                with RssSampler(server.pid) as sampler:
                    result = run_load(server.url, payloads, references, args.clients, args.requests,
                                      args.timeout_s)
                result.peak_rss = sampler.peak
                server.stop()
            measured[batch] = result
            print("  %s: %d answers in %.1f s" % (name, result.answered, result.wall), flush=True)
        rows.append(("max-batch %d" % args.max_batch, measured[args.max_batch], measured[1]))
        rows.append(("max-batch 1 (baseline)", measured[1], None))
    print()
    print(HEADER)
    for name, result, baseline in rows:
        print(_row(name, result, total, baseline))
    print("(latency: request sent -> answer read, median and 99th percentile; batch: mean/max rows per body run)")
    failures = sum(r.lost + r.wrong for _, r, _ in rows) + sum(1 for _, r, _ in rows if r.answered != total)
    for _, result, _ in rows:
        for error in sorted(set(result.errors))[:5]:
            print("  error: %s" % error)
    if not args.server and not args.skip_kill:
        outcomes, ended, restarted, served = kill_under_load(
            args.bundle, common + ["--max-batch", str(args.max_batch)], payload_files, args.clients,
            args.requests, work)
        print()
        print("kill -9 of the server's process group under load (%d client processes):" % len(outcomes))
        clean = 0
        for index, (code, lines) in enumerate(outcomes):
            one_line = len(lines) == 1
            clean += int(code == 2 and one_line)  # a LadonError line; 1 would be an internal error
            print("  client %d: exit %s, %d stderr line(s): %s" % (index, code, len(lines), lines[-1] if lines
                                                                   else ""))
        print("  %d/%d clients ended with one error line and exit 2; the last %.2f s after the kill" % (
            clean, len(outcomes), ended))
        print("  restarted server on the same port: %d/%d payloads served" % (served, len(payload_files)))
        failures += (len(outcomes) - clean) + (0 if restarted else 1)
    print("%s: %s" % (PROG, "all checks passed" if failures == 0 else "%d check(s) FAILED" % failures))
    return 0 if failures == 0 else 1


if __name__ == "__main__":
    sys.exit(run_command(PROG, main))
