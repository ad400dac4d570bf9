"""`ladon-bench live`: real end-to-end requests through `ladon-serve`, each next to the analytic figure.

Per image and repeat, on the device's clock: the device stage (preprocess, encoder, quantize, rANS encode, frame),
then one request through the device client (ladon_deploy/device/client.py) whose sends are paced to --rate with
--rtt waited around them. Measured end-to-end = device stage + the request's total time. Analytic end-to-end for
the same bytes = the same device stage + request bytes (payload + HTTP head) x 8 / rate + rtt + the server compute
the server reported for that request (`server_compute_ms`). Their difference is what the formula leaves out:
Python and HTTP handling, the answer's download, pacing granularity.

Runs on the device: Python 3.6-clean, no torch.
"""
import os
import statistics
import tempfile
import time
from typing import Any, Dict, List, Optional

from ladon_deploy.errors import LadonError

KIND = "ladon-bench live"


def run_live(bundle_dir: str, images: List[str], server_url: str, rate_text: str, rtt: float, engine: str = "cpu",
             repeats: int = 3, timeout_s: float = 120.0, threads: Optional[int] = None,
             token: Optional[bytes] = None) -> Dict[str, Any]:
    from ladon_deploy.bench.device_bench import registry_engine
    from ladon_deploy.bench.identity import machine_identity
    from ladon_deploy.bundle import open_bundle
    from ladon_deploy.device import link
    from ladon_deploy.device.client import InferenceClient
    from ladon_deploy.device.pacing import PacedLink
    from ladon_deploy.device.stage import DeviceStage

    rate = link.parse_rate(rate_text)
    bundle = open_bundle(bundle_dir)
    stage = DeviceStage(bundle, engine=registry_engine(engine), threads=threads)
    client = InferenceClient(server_url, PacedLink(rate, rtt), timeout_s=timeout_s, token=token)
    tasks = tuple(bundle.tasks)
    requests = []  # type: List[Dict[str, Any]]
    try:
        for image in images:
            for repeat in range(repeats):
                started = time.perf_counter()
                sent = stage.run(image, tasks)
                device_s = time.perf_counter() - started
                reply = client.infer(sent.payload)
                measured_s = time.perf_counter() - started
                server_ms = reply.document.get("server_compute_ms")
                if server_ms is None:
                    raise LadonError("%s did not report server_compute_ms: is it ladon-serve?" % server_url)
                analytic_s = device_s + link.transfer_seconds(reply.request_bytes, rate, rtt) + server_ms / 1e3
                requests.append({
                    "image": os.path.basename(image), "repeat": repeat, "payload_bytes": reply.payload_bytes,
                    "request_bytes": reply.request_bytes, "device_ms": device_s * 1e3,
                    "upload_ms": reply.upload_seconds * 1e3, "answer_ms": reply.answer_seconds * 1e3,
                    "server_compute_ms": float(server_ms), "measured_ms": measured_s * 1e3,
                    "analytic_ms": analytic_s * 1e3, "measured_over_analytic": measured_s / analytic_s})
    finally:
        client.close()
        stage.close()
    ratios = [r["measured_over_analytic"] for r in requests]
    return {"kind": KIND, "toolkit_version": machine_identity(probe_nvpmodel=False)["toolkit_version"],
            "bundle_id": bundle.bundle_id, "identity": machine_identity(), "server": server_url, "rate": rate_text,
            "rate_bps": rate, "rtt_s": rtt, "engine": engine, "repeats": repeats, "requests": requests,
            "median_measured_over_analytic": float(statistics.median(ratios))}


def markdown(result: Dict[str, Any]) -> str:
    lines = ["| image | repeat | payload B | request B | device ms | server ms | measured ms | analytic ms | ratio |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in result["requests"]:
        lines.append("| %s | %d | %d | %d | %.1f | %.1f | %.1f | %.1f | %.3f |" % (
            r["image"], r["repeat"], r["payload_bytes"], r["request_bytes"], r["device_ms"], r["server_compute_ms"],
            r["measured_ms"], r["analytic_ms"], r["measured_over_analytic"]))
    lines.append("")
    lines.append("Live through %s at %s + %.0f ms rtt: measured / analytic end-to-end = %.3f (median of %d requests)."
                 % (result["server"], result["rate"], result["rtt_s"] * 1e3, result["median_measured_over_analytic"],
                    len(result["requests"])))
    return "\n".join(lines)


def main(args: Any) -> int:
    """The `ladon-bench live` handler (arguments parsed by bench/cli.py)."""
    import json
    import shutil

    from ladon_deploy.atomic import check_writable_file, write_text_atomically
    from ladon_deploy.bench.cli import find_images
    from ladon_deploy.bench.device_bench import check_engine_available, generated_images
    from ladon_deploy.cli_support import read_token
    from ladon_deploy.device import link

    if args.repeats < 1 or args.timeout <= 0:
        raise LadonError("--repeats must be >= 1 and --timeout > 0")
    link.parse_rate(args.rate)
    rtt = link.parse_duration(args.rtt)
    check_engine_available(args.engine)
    check_writable_file(args.out)
    token = read_token(args.token_file)
    scratch = tempfile.mkdtemp(prefix="ladon-bench-live-")
    try:
        images = find_images(args.images) if args.images else generated_images(scratch)
        result = run_live(args.bundle, images, args.server, args.rate, rtt, args.engine, args.repeats, args.timeout,
                          token=token)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    write_text_atomically(args.out, json.dumps(result, indent=1) + "\n")
    print(markdown(result))
    return 0
