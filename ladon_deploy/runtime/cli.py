"""`ladon-run`: the split deployment from the command line.

    ladon-run mobile --bundle B --image street.jpg --out street.ldn        # on the device
    ladon-run server --bundle B --payload street.ldn --json                # on the server
    ladon-run split  --bundle B --image street.jpg --rate 37.5kbps         # both halves, link simulated

Edge subset (mobile runs on a Jetson): Python 3.6-clean, never imports torch.
"""
import json
import os
import sys
from typing import Any, Dict, List, Optional, Sequence

from ladon_deploy.bundle import TASK_HEADS, open_bundle
from ladon_deploy.cli_support import OneLineParser, UsageError, run_command
from ladon_deploy.device import link
from ladon_deploy.device.cli import open_bundle_stages, print_timings, run_mobile, timings_ms
from ladon_deploy.device.stage import DeviceStage, parse_tasks, select_tasks
from ladon_deploy.engines.registry import ENGINES
from ladon_deploy.errors import PayloadError

PROG = "ladon-run"
MAX_PAYLOAD_FILE = 64 << 20


def build_parser() -> OneLineParser:
    parser = OneLineParser(prog=PROG, description="Run Ladon split: mobile (image -> payload), server (payload -> "
                                                  "results) or both with a simulated link.")
    commands = parser.add_subparsers(dest="command", metavar="{mobile,server,split}")
    commands.required = True

    def common(sub: OneLineParser) -> None:
        sub.add_argument("--bundle", required=True, help="bundle directory written by ladon-export")
        sub.add_argument("--tasks", default=None, help="comma-separated subset of cls,det,seg (default: all)")
        sub.add_argument("--threads", type=int, default=None, help="engine threads (default: one per core)")
        sub.add_argument("--engine", default="onnxruntime", help="engine: %s" % ", ".join(ENGINES))
        sub.add_argument("--json", action="store_true", help="print one JSON document instead of text")

    mobile = commands.add_parser("mobile", help="image -> payload file")
    common(mobile)
    mobile.add_argument("--image", required=True)
    mobile.add_argument("--out", required=True, help="payload file to write")

    server = commands.add_parser("server", help="payload file -> results")
    common(server)
    server.add_argument("--payload", required=True)
    server.add_argument("--mask-out", default=None, help="write the segmentation mask as a paletted PNG")
    server.add_argument("--top-k", type=int, default=5)

    split = commands.add_parser("split", help="both halves in one process, link simulated")
    common(split)
    split.add_argument("--image", required=True)
    split.add_argument("--rate", default="100kbps", help="link rate, e.g. 100kbps, 37.5kbps, 1Mbps")
    split.add_argument("--rtt", default="0", help="round-trip time added to the transfer, e.g. 20ms")
    split.add_argument("--mask-out", default=None, help="write the segmentation mask as a paletted PNG")
    split.add_argument("--top-k", type=int, default=5)
    return parser


def _read_payload(path: str) -> bytes:
    if not os.path.isfile(path):
        raise PayloadError("payload file not found: %s" % path)
    if os.path.getsize(path) > MAX_PAYLOAD_FILE:
        raise PayloadError("payload file %s is larger than any payload (%d bytes)" % (path, os.path.getsize(path)))
    with open(path, "rb") as handle:
        return handle.read()


def _stage_table(rows: List[Any]) -> str:
    lines = ["%-8s %-16s %10s" % ("side", "stage", "ms")]
    for side, name, seconds in rows:
        lines.append("%-8s %-16s %10.2f" % (side, name, seconds * 1000.0))
    return "\n".join(lines)


def _print_results(document: Dict[str, Any]) -> None:
    if "classification" in document:
        print("classification (top-%d):" % len(next(iter(document["classification"].values()))))
        for class_id, probability, name in next(iter(document["classification"].values())):
            print("  %4d  %.5f  %s" % (class_id, probability, name))
    if "detection" in document:
        print("detection: %d boxes (original-image pixels)" % len(document["detection"]))
        for item in document["detection"][:10]:
            print("  %-14s %.3f  [%s]" % (item["name"], item["score"], ", ".join("%.1f" % v for v in item["box"])))
        if len(document["detection"]) > 10:
            print("  ... %d more (use --json for all)" % (len(document["detection"]) - 10))
    if "segmentation" in document:
        segmentation = document["segmentation"]
        print("segmentation: %dx%d mask, pixels per class:" % tuple(segmentation["size"]))
        for name, count in segmentation["pixel_counts"].items():
            print("  %-14s %d" % (name, count))
        if "mask_png" in segmentation:
            print("  mask written to %s" % segmentation["mask_png"])


def _server(args, tasks):
    from ladon_deploy.server.stage import ServerStage

    bundle = open_bundle_stages(args.bundle, ["entropy", "body"] + [TASK_HEADS[t] for t in tasks])
    return ServerStage(bundle, engine=args.engine, threads=args.threads, tasks=tasks)


def run_server(args) -> int:
    bundle = open_bundle(args.bundle, verify=False)
    tasks = select_tasks(bundle, parse_tasks(args.tasks))
    data = _read_payload(args.payload)
    stage = _server(args, tasks)
    result = stage.run(data, tasks if args.tasks else None)
    document = result.to_json(args.mask_out, args.top_k)
    document["timings_ms"] = timings_ms(result.timings)
    if args.json:
        print(json.dumps(document))
    else:
        _print_results(document)
        print_timings(result.timings)
    return 0


def run_split(args) -> int:
    rate = link.parse_rate(args.rate)
    rtt = link.parse_duration(args.rtt)
    bundle = open_bundle(args.bundle)
    tasks = select_tasks(bundle, parse_tasks(args.tasks))
    mobile = DeviceStage(bundle, engine=args.engine, threads=args.threads)
    from ladon_deploy.server.stage import ServerStage

    server = ServerStage(bundle, engine=args.engine, threads=args.threads, tasks=tasks)
    sent = mobile.run(args.image, tasks)
    transfer = link.transfer_seconds(len(sent.payload), rate, rtt)
    result = server.run(sent.payload)
    rows = [("mobile", name, seconds) for name, seconds in sent.timings.items()]
    rows.append(("link", "transfer", transfer))
    rows += [("server", name, seconds) for name, seconds in result.timings.items()]
    end_to_end = sum(seconds for _, _, seconds in rows)
    document = result.to_json(args.mask_out, args.top_k)
    document["link"] = {"payload_bytes": len(sent.payload), "rate_bps": rate, "rtt_s": rtt,
                        "transfer_ms": round(transfer * 1000.0, 3)}
    document["timings_ms"] = {"mobile": timings_ms(sent.timings), "server": timings_ms(result.timings),
                              "end_to_end": round(end_to_end * 1000.0, 3)}
    if args.json:
        print(json.dumps(document))
        return 0
    _print_results(document)
    print("link: %d bytes at %s%s -> %.2f ms" % (len(sent.payload), link.format_rate(rate),
                                                 " + %.1f ms rtt" % (rtt * 1000) if rtt else "", transfer * 1000.0))
    print(_stage_table(rows))
    print("end-to-end: %.2f ms" % (end_to_end * 1000.0))
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.engine not in ENGINES:
        raise UsageError("unknown --engine %r (known: %s)" % (args.engine, ", ".join(ENGINES)))
    if args.threads is not None and args.threads < 1:
        raise UsageError("--threads must be at least 1")
    return {"mobile": run_mobile, "server": run_server, "split": run_split}[args.command](args)


def entry_point() -> None:
    sys.exit(run_command(PROG, main))


if __name__ == "__main__":
    entry_point()
