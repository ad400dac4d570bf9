"""`ladon-run`: the split deployment from the command line.

    ladon-run mobile --bundle B --image street.jpg --out street.ldn        # on the device
    ladon-run server --bundle B --payload street.ldn --json                # on the server
    ladon-run split  --bundle B --image street.jpg --rate 37.5kbps         # both halves, link simulated

Edge subset (mobile runs on a Jetson): Python 3.6-clean, never imports torch.
"""
import json
import os
import sys
import threading
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ladon_deploy.atomic import check_writable_file
from ladon_deploy.bundle import TASK_HEADS, open_bundle
from ladon_deploy.cli_support import OneLineParser, UsageError, add_version_option, read_token
from ladon_deploy.device import link, preprocess, wire
from ladon_deploy.device.cli import (open_bundle_stages, print_notes, print_results, print_timings, run_mobile,
                                     stage_settings, timings_ms)
from ladon_deploy.device.stage import DEFAULT_BAND_ROWS, DeviceStage, parse_tasks, select_tasks
from ladon_deploy.engines.registry import ENGINES
from ladon_deploy.errors import PayloadError
from ladon_deploy.link.cli import add_link_arguments, run_link

PROG = "ladon-run"
MAX_PAYLOAD_FILE = 64 << 20
PRECISIONS = ("fp32", "fp16", "int8")


def build_parser() -> OneLineParser:
    parser = OneLineParser(prog=PROG, description="Run Ladon split: mobile (image -> payload), server (payload -> "
                                                  "results) or both with a simulated link.")
    add_version_option(parser)
    commands = parser.add_subparsers(dest="command", metavar="{mobile,server,split,link}")
    commands.required = True

    def common(sub: OneLineParser, several_bundles: bool = False) -> None:
        if several_bundles:
            sub.add_argument("--bundle", dest="bundles", action="append", required=True,
                             help="bundle directory written by ladon-export; with --server udp://... and --budget, "
                                  "repeat it for bundles of one architecture at several betas")
        else:
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
        sub.add_argument("--fast-decode", action="store_true",
                         help="let a JPEG decode at 1/2, 1/4 or 1/8 scale (Pillow's draft mode): less memory and time, "
                              "but not the evaluated preprocessing (the payload changes)")
        sub.add_argument("--band-rows", type=int, default=None, metavar="ROWS",
                         help="latent rows per encoder band on ONNX Runtime (default " + str(DEFAULT_BAND_ROWS) +
                              ", for the least memory; 26: 12-17%% faster and 6 MB more at 416x416; 0: the whole "
                              "image at once). The payload is the same for every value")

    def result_options(sub: OneLineParser) -> None:
        sub.add_argument("--mask-out", default=None, metavar="PNG",
                         help="write the segmentation mask as a paletted PNG (needs the seg task)")
        sub.add_argument("--top-k", type=int, default=5, metavar="K",
                         help="number of classes listed for classification, most probable first")

    mobile = commands.add_parser("mobile", help="image -> payload file")
    common(mobile, several_bundles=True)
    image_options(mobile, required=False)
    mobile.add_argument("--out", default=None, metavar="FILE", help="payload file to write (needed without --server)")
    mobile.add_argument("--images", default=None, metavar="DIR",
                        help="with --server: send every image of a folder in turn and print a summary (an image "
                             "that fails is named on its own line and the folder goes on; exit 2 if any failed)")
    mobile.add_argument("--server", default=None, metavar="URL",
                        help="send the payload to ladon-serve (http://HOST:PORT) and print its results; "
                             "udp://HOST:PORT sends it as radio frames to a frame receiver (needs --link)")
    mobile.add_argument("--rate", default=None,
                        help="with --server: pace the upload to this link rate (37.5kbps, 100kbps, 1Mbps)")
    mobile.add_argument("--rtt", default="0", help="with --server: round-trip time the link adds: 20ms, 0.1s, 0")
    mobile.add_argument("--timeout", default="60s", help="with --server: give up on an answer after this long")
    mobile.add_argument("--token-file", default=None, metavar="FILE",
                        help="with --server http://...: send the token in FILE as 'Authorization: Bearer <token>' "
                             "(for a server started with ladon-serve --token-file)")
    mobile.add_argument("--mask-out", default=None, metavar="PNG",
                        help="with --server and --image: ask the server for the segmentation mask too and write it "
                             "as the paletted PNG `split --mask-out` writes (needs the seg task)")

    frames = mobile.add_argument_group("frame link (--server udp://HOST:PORT)")
    frames.add_argument("--link", default=None, metavar="PROFILE",
                        help="link profile whose frames, time on air and rules the payload follows (lora-sf6-bw500, "
                             "eu868-dr5, ...: ladon-run link --list)")
    frames.add_argument("--region", default=None,
                        help="regional rules: eu868[:SUB-BAND], us915 or none (default: what the profile implies)")
    frames.add_argument("--duty-cycle", choices=("on", "off"), default="on",
                        help="wait out the region's duty-cycle off-time after each frame")
    frames.add_argument("--loss", default=None, metavar="Q",
                        help="drop uplink frames on the way: 0.1 (independent) or ge:P,R[,H,K] (Gilbert-Elliott bursts)")
    frames.add_argument("--seed", type=int, default=0, help="seed of --loss, so that a run can be repeated")
    frames.add_argument("--repair", type=float, default=0.1, metavar="RATIO",
                        help="repair frames sent with the data frames, as a fraction of them (0: retransmission only)")
    frames.add_argument("--rounds", type=int, default=3,
                        help="rounds of frames (the first, then retransmissions the server asks for) before giving up")
    frames.add_argument("--key-file", default=None, metavar="FILE",
                        help="shared key (>= 16 bytes) that authenticates every frame (HMAC-SHA256, 8-byte tag)")
    frames.add_argument("--budget", default=None, metavar="T",
                        help="with several --bundle: per image, send the most accurate bundle whose payload reaches "
                             "its last frame on air within T (device compute + time on air + duty-cycle waits)")
    frames.add_argument("--accuracy", action="append", default=None, metavar="EVAL_JSON",
                        help="ladon-eval result of a bundle (repeat): orders the bundles by accuracy (default: by "
                             "beta, smallest first)")

    server = commands.add_parser("server", help="payload file -> results")
    common(server)
    server.add_argument("--payload", default=None, metavar="FILE",
                        help="payload file written by `ladon-run mobile` for this bundle")
    server.add_argument("--frames-port", type=int, default=None, metavar="PORT",
                        help="instead of --payload: receive one payload as radio frames on this UDP port (from "
                             "`ladon-run mobile --server udp://...`), answer it and exit")
    server.add_argument("--frames-host", default="127.0.0.1", metavar="HOST",
                        help="address the frame receiver listens on (0.0.0.0: every interface)")
    server.add_argument("--key-file", default=None, metavar="FILE",
                        help="with --frames-port: shared key that authenticates every frame")
    server.add_argument("--wait", default="10min", metavar="T",
                        help="with --frames-port: give up when no payload has been answered after this long")
    result_options(server)

    split = commands.add_parser("split", help="both halves in one process, link simulated")
    common(split)
    image_options(split)
    split.add_argument("--rate", default="100kbps",
                       help="link rate with its unit: 100kbps, 37.5kbps, 1Mbps (bits/s) or 125kBps (bytes/s)")
    split.add_argument("--rtt", default="0", help="round-trip time added to the transfer: 20ms, 0.1s, 0")
    result_options(split)

    link_command = commands.add_parser("link", help="what a payload costs on a link profile: frames, time on air, "
                                                    "duty cycle")
    add_link_arguments(link_command)
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
        if not args.mask_out.lower().endswith(".png"):
            raise UsageError("--mask-out writes a PNG file: give a name ending in .png (got %s)" % args.mask_out)


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


def run_server_frames(args) -> int:
    """One payload received as frames, decoded, answered to the device and printed."""
    from ladon_deploy.link import transport

    if args.mask_out:
        raise UsageError("--mask-out does not apply to --frames-port: a radio link carries the result document only")
    key = read_token(args.key_file, "--key-file")
    wait = link.parse_duration(args.wait)
    sock = transport.bind_frame_socket(args.frames_host, args.frames_port)  # a taken port fails before any work
    bundle = open_bundle(args.bundle, verify=False)
    tasks = select_tasks(bundle, parse_tasks(args.tasks))
    stage = _server(args, tasks)
    answered = []  # type: List[Tuple[Dict[str, Any], Dict[str, float]]]  # (document, timings in seconds)

    def handle(payload: bytes) -> Dict[str, Any]:
        result = stage.run(payload, tasks if args.tasks else None)
        document = result.to_json(None, args.top_k)
        document["timings_ms"] = timings_ms(result.timings)
        answered.append((document, result.timings))
        return document

    refused = []  # type: List[str]
    receiver = transport.FrameReceiver(handle, key=key, log=refused.append)
    if not args.json:
        print("receiving frames on udp://%s:%d for bundle %s" % (args.frames_host, sock.getsockname()[1],
                                                                 bundle.bundle_id[:8]))
        sys.stdout.flush()
    stop = threading.Event()
    timer = threading.Timer(wait, stop.set)
    timer.daemon = True
    timer.start()
    try:
        receiver.serve(sock, stop, max_payloads=1)
    finally:
        timer.cancel()
        sock.close()
    if not answered:
        raise PayloadError(refused[-1] if refused else "no payload arrived on udp port %d within %s" % (
            args.frames_port, args.wait))
    document, timings = answered[-1]
    if args.json:
        print(json.dumps(document))
    else:
        print_results(document)
        print_timings(timings)
    return 0


def run_server(args) -> int:
    if (args.payload is None) == (args.frames_port is None):
        raise UsageError("ladon-run server needs one of --payload FILE or --frames-port PORT")
    if args.frames_port is not None:
        return run_server_frames(args)
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
                         **stage_settings(args))
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
    if args.command == "mobile":
        args.bundle = args.bundles[0]
    if args.command == "link":
        run_link(args)
        return 0
    check_options(args)
    return {"mobile": run_mobile, "server": run_server, "split": run_split}[args.command](args)


if __name__ == "__main__":
    from ladon_deploy.runtime import entry_point  # the console script (python -m ladon_deploy.runtime is leaner)

    entry_point()
