"""`ladon-run`: the split deployment from the command line.

    ladon-run mobile --bundle B --image street.jpg --out street.ldn        # on the device
    ladon-run server --bundle B --payload street.ldn --json                # on the server
    ladon-run split  --bundle B --image street.jpg --rate 37.5kbps         # both halves, link simulated

Edge subset (mobile runs on a Jetson): Python 3.6-clean, never imports torch.
"""
import json
import os
import sys
import time
from typing import Any, Dict, List, Optional, Sequence

from ladon_deploy import __version__
from ladon_deploy.atomic import check_writable_file
from ladon_deploy.bundle import TASK_HEADS, open_bundle
from ladon_deploy.cli_support import OneLineParser, UsageError, run_command
from ladon_deploy.device import link, preprocess, wire
from ladon_deploy.device.cli import (image_settings, open_bundle_stages, print_notes, print_results, print_timings,
                                     run_mobile, timings_ms)
from ladon_deploy.device.stage import DeviceStage, parse_tasks, select_tasks
from ladon_deploy.engines.registry import ENGINES
from ladon_deploy.errors import PayloadError

PROG = "ladon-run"
MAX_PAYLOAD_FILE = 64 << 20
PRECISIONS = ("fp32", "fp16", "int8")


def build_parser() -> OneLineParser:
    parser = OneLineParser(prog=PROG, description="Run Ladon split: mobile (image -> payload), server (payload -> "
                                                  "results) or both with a simulated link.")
    parser.add_argument("--version", action="version", version="%(prog)s " + __version__)
    commands = parser.add_subparsers(dest="command", metavar="{mobile,server,split}")
    commands.required = True

    def common(sub: OneLineParser) -> None:
        sub.add_argument("--bundle", required=True, help="bundle directory written by ladon-export")
        sub.add_argument("--tasks", default=None, help="comma-separated subset of cls,det,seg (default: all the "
                                                       "bundle has)")
        sub.add_argument("--threads", type=int, default=None, help="engine threads (default: one per core)")
        sub.add_argument("--engine", default="onnxruntime",
                         help="engine: %s (tensorrt: the bundle's ladon-build engines for this machine, ONNX Runtime "
                              "for the other stages)" % ", ".join(ENGINES))
        sub.add_argument("--precision", choices=PRECISIONS, default=None,
                         help="int8: the bundle's INT8 models (ladon-build --target cpu --precision int8) on ONNX "
                              "Runtime; with --engine tensorrt, which engine of the bundle (default: fp16, else fp32)")
        sub.add_argument("--json", action="store_true", help="print one JSON document instead of text")

    def image_options(sub: OneLineParser, required: bool = True) -> None:
        sub.add_argument("--image", required=required, metavar="FILE",
                         help="image file (JPEG, PNG, ...; any size: it is resized to the bundle's input size)")
        sub.add_argument("--no-exif-transpose", dest="exif_transpose", action="store_false",
                         help="ignore the EXIF orientation (by default the image is turned as viewers show it)")
        sub.add_argument("--max-megapixels", type=float, default=preprocess.DEFAULT_MAX_MEGAPIXELS, metavar="MP",
                         help="refuse larger images before decoding them (Pillow's decompression-bomb limit; "
                              "phones take up to 108 MP)")

    def result_options(sub: OneLineParser) -> None:
        sub.add_argument("--mask-out", default=None, metavar="PNG",
                         help="write the segmentation mask as a paletted PNG (needs the seg task)")
        sub.add_argument("--top-k", type=int, default=5, metavar="K",
                         help="number of classes listed for classification, most probable first")

    mobile = commands.add_parser("mobile", help="image -> payload file")
    common(mobile)
    image_options(mobile, required=False)
    mobile.add_argument("--out", default=None, metavar="FILE", help="payload file to write (needed without --server)")
    mobile.add_argument("--images", default=None, metavar="DIR",
                        help="with --server: send every image of a folder in turn and print a summary")
    mobile.add_argument("--server", default=None, metavar="URL",
                        help="send the payload to ladon-serve (http://HOST:PORT) and print its results")
    mobile.add_argument("--rate", default=None,
                        help="with --server: pace the upload to this link rate (37.5kbps, 100kbps, 1Mbps)")
    mobile.add_argument("--rtt", default="0", help="with --server: round-trip time the link adds: 20ms, 0.1s, 0")
    mobile.add_argument("--timeout", default="60s", help="with --server: give up on an answer after this long")

    server = commands.add_parser("server", help="payload file -> results")
    common(server)
    server.add_argument("--payload", required=True, metavar="FILE",
                        help="payload file written by `ladon-run mobile` for this bundle")
    result_options(server)

    split = commands.add_parser("split", help="both halves in one process, link simulated")
    common(split)
    image_options(split)
    split.add_argument("--rate", default="100kbps",
                       help="link rate with its unit: 100kbps, 37.5kbps, 1Mbps (bits/s) or 125kBps (bytes/s)")
    split.add_argument("--rtt", default="0", help="round-trip time added to the transfer: 20ms, 0.1s, 0")
    result_options(split)
    return parser


def check_options(args) -> None:
    """Refuses, before any work, what would otherwise fail (or be ignored) only after the run."""
    if args.engine not in ENGINES:
        raise UsageError("unknown --engine %r (known: %s)" % (args.engine, ", ".join(ENGINES)))
    if args.threads is not None and args.threads < 1:
        raise UsageError("--threads must be at least 1")
    if getattr(args, "top_k", 1) < 1:
        raise UsageError("--top-k must be at least 1 (got %d)" % args.top_k)
    max_megapixels = getattr(args, "max_megapixels", None)
    if max_megapixels is not None and not max_megapixels > 0:
        raise UsageError("--max-megapixels must be positive (got %g)" % max_megapixels)
    if getattr(args, "out", None):
        check_writable_file(args.out)
    if getattr(args, "mask_out", None):
        requested = parse_tasks(args.tasks)
        if requested is not None and "seg" not in requested:
            raise UsageError("--mask-out needs the seg task, and --tasks %s has none" % args.tasks)
        check_writable_file(args.mask_out)


def _check_mask_task(args, tasks: Sequence[str]) -> None:
    if args.mask_out and "seg" not in tasks:
        raise UsageError("--mask-out needs the seg task, and this run has only %s" % ",".join(tasks))




def _read_payload(path: str) -> bytes:
    if os.path.isdir(path):
        raise PayloadError("%s is a directory, not a payload file" % path)
    if not os.path.isfile(path):
        raise PayloadError("payload file not found: %s" % path)
    if os.path.getsize(path) > MAX_PAYLOAD_FILE:
        raise PayloadError("payload file %s is larger than any payload (%d bytes)" % (path, os.path.getsize(path)))
    with open(path, "rb") as handle:
        return handle.read()


def _stage_table(rows: List[Any], engines: Optional[Dict[str, str]] = None) -> str:
    lines = ["%-8s %-16s %10s  %s" % ("side", "stage", "ms", "engine")]
    for side, name, seconds in rows:
        lines.append("%-8s %-16s %10.2f  %s" % (side, name, seconds * 1000.0, (engines or {}).get(name, "")))
    return "\n".join(lines)


def _server_stage_class():
    # The server half is imported only by the commands that need it; an edge install (Dockerfile.jetson) lacks it.
    try:
        from ladon_deploy.server.stage import ServerStage
    except ImportError as exc:
        if not exc.name or not exc.name.startswith("ladon_deploy.server"):
            raise
        raise UsageError("`%s server` and `%s split` need the server half (ladon_deploy.server), which this "
                         "device install does not have; run them on the server" % (PROG, PROG))
    return ServerStage


def _server(args, tasks):
    ServerStage = _server_stage_class()
    bundle = open_bundle_stages(args.bundle, ["entropy", "body"] + [TASK_HEADS[t] for t in tasks])
    return ServerStage(bundle, engine=args.engine, threads=args.threads, tasks=tasks, precision=args.precision)


def run_server(args) -> int:
    bundle = open_bundle(args.bundle, verify=False)
    tasks = select_tasks(bundle, parse_tasks(args.tasks))
    data = _read_payload(args.payload)
    # The payload names the tasks it was made for; without --tasks those run, so read them before any work.
    _check_mask_task(args, tasks if args.tasks else wire.unpack(data, expected_bundle_id=bundle.bundle_id).tasks)
    stage = _server(args, tasks)
    result = stage.run(data, tasks if args.tasks else None)
    document = result.to_json(args.mask_out, args.top_k)
    document["timings_ms"] = timings_ms(result.timings)
    if args.json:
        print(json.dumps(document))
    else:
        print_results(document)
        print_timings(result.timings, result.engines)
    return 0


def run_split(args) -> int:
    rate = link.parse_rate(args.rate)
    rtt = link.parse_duration(args.rtt)
    bundle = open_bundle(args.bundle)
    tasks = select_tasks(bundle, parse_tasks(args.tasks))
    _check_mask_task(args, tasks)
    mobile = DeviceStage(bundle, engine=args.engine, threads=args.threads, precision=args.precision,
                         **image_settings(args))
    ServerStage = _server_stage_class()
    server = ServerStage(bundle, engine=args.engine, threads=args.threads, tasks=tasks, precision=args.precision)
    started = time.perf_counter()
    sent = mobile.run(args.image, tasks)
    result = server.run(sent.payload)
    # Measured on one clock around both halves (the stage timings are laps inside them), plus the simulated link.
    transfer = link.transfer_seconds(len(sent.payload), rate, rtt)
    end_to_end = time.perf_counter() - started + transfer
    rows = [("device", name, seconds) for name, seconds in sent.timings.items()]
    rows.append(("link", "transfer", transfer))
    rows += [("server", name, seconds) for name, seconds in result.timings.items()]
    document = result.to_json(args.mask_out, args.top_k)
    document["image_notes"] = sent.notes
    document["engines"] = dict(sent.engines, **result.engines)
    document["link"] = {"payload_bytes": len(sent.payload), "rate_bps": rate, "rtt_s": rtt,
                        "transfer_ms": round(transfer * 1000.0, 3)}
    document["timings_ms"] = {"device": timings_ms(sent.timings), "server": timings_ms(result.timings),
                              "end_to_end": round(end_to_end * 1000.0, 3)}
    if args.json:
        print(json.dumps(document))
        return 0
    print_notes(sent.notes)
    print_results(document)
    print("link: %d bytes at %s%s -> %.2f ms" % (len(sent.payload), link.format_rate(rate),
                                                 " + %.1f ms rtt" % (rtt * 1000) if rtt else "", transfer * 1000.0))
    print(_stage_table(rows, document["engines"]))
    print("end-to-end: %.2f ms" % (end_to_end * 1000.0))
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    check_options(args)
    return {"mobile": run_mobile, "server": run_server, "split": run_split}[args.command](args)


def entry_point() -> None:
    sys.exit(run_command(PROG, main))


if __name__ == "__main__":
    entry_point()
