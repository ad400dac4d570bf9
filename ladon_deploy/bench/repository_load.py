"""Load benchmark of the Triton model repository's python variant on the tritonserver bundled in nvidia-pytriton.

    python -m ladon_deploy.bench.repository_load --bundle B [--clients 8] [--requests 50] [--max-batch 8]
           [--tasks cls,seg] [--image-size 30x400] [--shapes 2]

Writes the python variant twice, with dynamic batching (--max-batch N) and with --max-batch 1, serves each in turn,
and sends the same payloads from N concurrent device clients (bench.load's client loop; together they send every
payload at least once): every answer is compared
with ServerStage on the same payload (what `ladon-run server --json` prints, timings aside). Prints one table:
throughput, latency medians and p90, the mean batch the body ran (Triton's statistics: inferences / executions), and
the throughput ratio against --max-batch 1 measured in the same run. A benchmark, not a test.
"""
import argparse
import json
import os
import sys
import tempfile
import urllib.request
from typing import Any, Dict, List, Sequence, Tuple

from ladon_deploy.bench import load
from ladon_deploy.bundle import open_bundle
from ladon_deploy.device.client import InferenceClient, percentile
from ladon_deploy.device.stage import DeviceStage, parse_tasks
from ladon_deploy.serve.gate import free_port
from ladon_deploy.serve.repository import RepositoryOptions, write_repository
from ladon_deploy.serve.repository_server import RepositoryServer
from ladon_deploy.server.stage import ServerStage


def _size(text: str) -> Tuple[int, int]:
    height, _, width = text.lower().partition("x")
    return int(height), int(width)


def make_payloads(bundle_dir: str, count: int, tasks: Sequence[str], size: Tuple[int, int], shapes: int,
                  workdir: str) -> List[bytes]:
    """`count` payloads of synthetic photos; `shapes` image sizes (so latents of `shapes` shapes) in turn."""
    import numpy as np
    from PIL import Image

    device = DeviceStage(open_bundle(bundle_dir))
    payloads = []
    for index in range(count):
        height, width = size[0] + 8 * (index % shapes), size[1]
        rng = np.random.default_rng(index)
        pixels = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
        path = os.path.join(workdir, "%d.png" % index)
        Image.fromarray(pixels).save(path)
        payloads.append(device.run(path, tuple(tasks)).payload)
    device.close()
    return payloads


def _body_batch(port: int) -> float:
    with urllib.request.urlopen("http://127.0.0.1:%d/v2/models/ladon_body/stats" % port, timeout=10) as answer:
        stats = json.loads(answer.read().decode("utf-8"))["model_stats"][0]
    return stats["inference_count"] / max(1, stats["execution_count"])


def run_load(repository: str, payloads: List[bytes], expected: List[Dict[str, Any]], clients: int,
             workdir: str) -> Dict[str, Any]:
    """Serves `repository` and runs bench.load's client loop over it: together the clients send every payload."""
    server = RepositoryServer(repository, workdir, free_port(), free_port(), free_port())
    server.start()
    try:
        server.wait_ready()
        url = "http://127.0.0.1:%d" % server.http_port
        with InferenceClient(url, timeout_s=600) as warm:
            warm.infer(payloads[0])
        per_client = -(-len(payloads) // clients)
        result = load.run_load(url, payloads, expected, clients, per_client, timeout_s=600)
        latencies = result.latencies
        return {"answers": result.answered, "wrong": result.wrong, "errors": result.lost + len(result.errors),
                "wall_s": result.wall, "throughput": result.answered / result.wall,
                "p50_ms": 1000 * percentile(latencies, 50) if latencies else float("nan"),
                "p90_ms": 1000 * percentile(latencies, 90) if latencies else float("nan"),
                "body_batch": _body_batch(server.http_port),
                "first_error": result.errors[0] if result.errors else None}
    finally:
        server.stop()


def main(argv: Sequence[str] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--max-queue-delay-ms", type=float, default=5.0)
    parser.add_argument("--tasks", default="cls,seg")
    parser.add_argument("--image-size", default="30x400", help="HxW of the synthetic images (default: a wide strip, "
                                                              "a 7x103 latent)")
    parser.add_argument("--shapes", type=int, default=2, help="distinct image heights, so latent shapes")
    args = parser.parse_args(argv)
    tasks = parse_tasks(args.tasks)
    with tempfile.TemporaryDirectory(prefix="ladon-repository-load-") as workdir:
        payloads = make_payloads(args.bundle, args.requests, tasks, _size(args.image_size), args.shapes, workdir)
        stage = ServerStage(open_bundle(args.bundle))
        expected = [load.results_of(stage.run(data).to_json()) for data in payloads]
        stage.close()
        rows = []
        for max_batch in (1, args.max_batch):
            repository = os.path.join(workdir, "repo-batch%d" % max_batch)
            write_repository(args.bundle, repository, RepositoryOptions("python", max_batch=max_batch,
                                                                        max_queue_delay_ms=args.max_queue_delay_ms))
            serve_dir = os.path.join(workdir, "serve-batch%d" % max_batch)
            os.makedirs(serve_dir)
            rows.append((max_batch, run_load(repository, payloads, expected, args.clients, serve_dir)))
    baseline = rows[0][1]["throughput"]
    print("python variant, %d clients x %d requests (%s, %s images, %d latent shapes), 2-core CPU"
          % (args.clients, args.requests, ",".join(tasks), args.image_size, args.shapes))
    print("| --max-batch | answers | wrong | errors | req/s | p50 ms | p90 ms | mean body batch | vs --max-batch 1 |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for max_batch, row in rows:
        print("| %d | %d | %d | %d | %.2f | %.0f | %.0f | %.2f | %.2fx |"
              % (max_batch, row["answers"], row["wrong"], row["errors"], row["throughput"], row["p50_ms"],
                 row["p90_ms"], row["body_batch"], row["throughput"] / baseline))
        if row["first_error"]:
            print("  first error: %s" % row["first_error"])
    return 0 if all(r["wrong"] == 0 and r["errors"] == 0 for _, r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
