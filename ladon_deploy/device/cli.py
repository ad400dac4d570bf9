"""`ladon-run mobile`: image -> payload file, or -> ladon-serve and back (--server); the device's half of `ladon-run`
(the parser is runtime/cli.py).

Edge subset: Python 3.6-clean, never imports torch. The HTTP client (http.client, ssl, email) and the radio link's
modules are imported by the functions that use them: a plain `ladon-run mobile` would otherwise hold 2.3 MB of them
through its peak (docs/device-performance.md; tests/device/test_footprint.py checks that it does not).
"""
import json
import os
import sys
import time
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple

from ladon_deploy.atomic import write_bytes_atomically
from ladon_deploy.bundle import Bundle, open_bundle
from ladon_deploy.cli_support import EXIT_USAGE, UsageError, read_token
from ladon_deploy.device import link
from ladon_deploy.device.stage import DeviceResult, DeviceStage, parse_tasks, select_tasks, timings_ms
from ladon_deploy.errors import LadonError

if TYPE_CHECKING:  # annotations only (see the module docstring)
    from ladon_deploy.device.client import Reply
    from ladon_deploy.device.pacing import PacedLink

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")


def open_bundle_stages(bundle_dir: str, stages: List[str]) -> Bundle:
    """Opens a bundle checking the sha256 of just the stages this command will load."""
    bundle = open_bundle(bundle_dir, verify=False)
    bundle.verify(stages)
    return bundle


def print_timings(timings: Dict[str, float], engines: Optional[Dict[str, str]] = None) -> None:
    """One line per step; a step that is a model stage names the engine that ran it."""
    for name, seconds in timings.items():
        print(("  %-16s %8.2f ms  %s" % (name, seconds * 1000.0, (engines or {}).get(name, ""))).rstrip())


def stage_settings(args) -> Dict[str, Any]:
    """DeviceStage's image and memory options (--no-exif-transpose, --max-megapixels, --fast-decode, --band-rows)
    from the command line."""
    return {"exif_transpose": args.exif_transpose, "max_pixels": int(args.max_megapixels * 1e6),
            "fast_decode": getattr(args, "fast_decode", False), "band_rows": getattr(args, "band_rows", None)}


def print_notes(notes: Sequence[str]) -> None:
    """What decoding did to the image (EXIF orientation, alpha, bit depth, frames), one line each."""
    for note in notes:
        print("image: %s" % note)


def print_results(document: Dict[str, Any]) -> None:
    """A result document (ladon-run server/split, or the one ladon-serve answers) as text."""
    if "classification" in document:
        print("classification (top-%d):" % document["classification"]["k"])
        for class_id, probability, name in document["classification"]["top_k"]:
            print("  %4d  %.5f  %s" % (class_id, probability, name))
    if "detection" in document:
        print("detection: %d boxes (original-image pixels)" % len(document["detection"]))
        for item in document["detection"][:10]:
            print("  %-14s %.3f  [%s]" % (item["name"], item["score"], ", ".join("%.1f" % v for v in item["box"])))
        if len(document["detection"]) > 10:
            print("  ... %d more (use --json for all)" % (len(document["detection"]) - 10))
    if "segmentation" in document:
        segmentation = document["segmentation"]
        size = segmentation["size"]
        print("segmentation: %dx%d mask (height x width), pixels per class:" % (size["height"], size["width"]))
        for name, count in segmentation["pixel_counts"].items():
            print("  %-14s %d" % (name, count))
        if "mask_png" in segmentation:
            print("  mask written to %s" % segmentation["mask_png"])


FRAME_OPTIONS = (("link", None), ("region", None), ("loss", None), ("key_file", None), ("budget", None),
                 ("accuracy", None), ("duty_cycle", "on"), ("seed", 0), ("repair", 0.1), ("rounds", 3))


def _check_server_options(args) -> None:
    frames_link = bool(args.server) and args.server.startswith("udp://")
    if not frames_link:
        for name, default in FRAME_OPTIONS:
            if getattr(args, name, default) != default:
                raise UsageError("--%s needs --server udp://HOST:PORT (a frame link)" % name.replace("_", "-"))
        if len(getattr(args, "bundles", [args.bundle])) > 1:
            raise UsageError("several --bundle need --server udp://HOST:PORT --link PROFILE --budget T")
    else:
        if args.rtt != "0":
            raise UsageError("--rtt does not apply to a frame link (--server udp://...): its timing comes from --link")
        if getattr(args, "token_file", None) is not None:
            raise UsageError("--token-file is for an HTTP server (ladon-serve --token-file); a frame link "
                             "authenticates its frames with --key-file")
        for name in ("rate", "mask_out"):
            if getattr(args, name, None) is not None:
                raise UsageError("--%s does not apply to a frame link (--server udp://...): %s" % (
                    name.replace("_", "-"), "its time on air comes from --link" if name == "rate"
                    else "a radio link carries the result document only"))
    if args.server is None:
        for name in ("images", "rate", "token_file"):
            if getattr(args, name, None) is not None:
                raise UsageError("--%s needs --server URL" % name.replace("_", "-"))
        if args.rtt != "0":
            raise UsageError("--rtt needs --server URL (ladon-run split simulates a link without one)")
        if getattr(args, "mask_out", None):
            raise UsageError("--mask-out needs --server URL: the mask is the server half's result (ladon-run split "
                             "writes it in one process)")
        if args.image is None or args.out is None:
            raise UsageError("ladon-run mobile needs --image FILE and --out FILE (or --server URL)")
    elif (args.image is None) == (args.images is None):
        raise UsageError("ladon-run mobile --server needs one of --image FILE or --images DIR")
    elif getattr(args, "mask_out", None) and args.images is not None:
        raise UsageError("--mask-out writes the mask of one image: use it with --image FILE, not --images DIR")


def list_images(directory: str) -> List[str]:
    if not os.path.isdir(directory):
        raise LadonError("--images %s is not a directory" % directory)
    names = sorted(n for n in os.listdir(directory) if n.lower().endswith(IMAGE_EXTENSIONS))
    if not names:
        raise LadonError("--images %s holds no image (%s)" % (directory, ", ".join(IMAGE_EXTENSIONS)))
    return [os.path.join(directory, name) for name in names]


def served_document(sent: DeviceResult, reply: "Reply", started: float, finished: float, pacing: "PacedLink"
                    ) -> Dict[str, Any]:
    """The document of `ladon-run split --json`, with every timing measured: the device's stages, the upload over
    the socket, the server's compute as the server reported it, end-to-end on the device's clock."""
    document = dict((key, value) for key, value in reply.document.items()
                    if key not in ("timings_ms", "server_compute_ms", "batch_size"))
    document["image_notes"] = sent.notes
    document["engines"] = dict(sent.engines)
    document["link"] = {"payload_bytes": reply.payload_bytes, "overhead_bytes": reply.overhead_bytes,
                        "request_bytes": reply.request_bytes, "rate_bps": pacing.bits_per_second,
                        "rtt_s": pacing.rtt_seconds, "transfer_ms": round(reply.upload_seconds * 1000.0, 3),
                        "formula_ms": round(pacing.expected_upload_seconds(reply.request_bytes) * 1000.0, 3)
                        if pacing.bits_per_second else None}
    document["timings_ms"] = {"device": timings_ms(sent.timings),
                              "server": reply.document.get("timings_ms", {}),
                              "upload": round(reply.upload_seconds * 1000.0, 3),
                              "server_compute": reply.document.get("server_compute_ms"),
                              "answer": round(reply.answer_seconds * 1000.0, 3),
                              "end_to_end": round((finished - started) * 1000.0, 3)}
    document["batch_size"] = reply.document.get("batch_size")
    return document


def _summary(documents: List[Dict[str, Any]]) -> Dict[str, Dict[str, float]]:
    from ladon_deploy.device.client import percentile
    if not documents:
        return {}
    columns = {"device_compute": [sum(d["timings_ms"]["device"].values()) for d in documents],
               "upload": [d["timings_ms"]["upload"] for d in documents],
               "server_compute": [d["timings_ms"]["server_compute"] or 0.0 for d in documents],
               "end_to_end": [d["timings_ms"]["end_to_end"] for d in documents]}
    return dict((name, {"median": round(percentile(values, 50), 3), "p90": round(percentile(values, 90), 3)})
                for name, values in columns.items())


def _record_failure(failures: List[Dict[str, str]], path: str, exc: LadonError) -> None:
    """One image of a folder failed: its own line on stderr (named without its directory) and an entry in
    `failures` whose message drops the path it starts with (the entry names the image)."""
    message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if message.startswith(path + ": "):
        message = message[len(path) + 2:]
    failures.append({"image": path, "error": message})
    sys.stderr.write("%s: error: %s\n" % (os.path.basename(path), message))
    sys.stderr.flush()


def _print_folder_summary(args, documents: List[Dict[str, Any]], failures: List[Dict[str, str]]) -> int:
    summary = _summary(documents)
    if args.json:
        print(json.dumps({"server": args.server, "images": documents, "failed": failures, "summary_ms": summary}))
    else:
        print("%d images answered, %d failed%s" % (len(documents), len(failures), ", ms:" if summary else ""))
        if summary:
            print("  %-16s %10s %10s" % ("", "median", "p90"))
        for name, row in summary.items():
            print("  %-16s %10.1f %10.1f" % (name, row["median"], row["p90"]))
    if failures:
        sys.stderr.write("ladon-run: error: %d of %d images failed: %s\n" % (
            len(failures), len(failures) + len(documents), ", ".join(os.path.basename(f["image"]) for f in failures)))
        return EXIT_USAGE
    return 0


def run_mobile_server(args) -> int:
    """One image, or every image of a folder in turn: a bad image (or a payload the server refuses) is reported on
    its own line and the folder goes on; the summary says how many failed, and any failure makes the exit code 2."""
    from ladon_deploy.device.client import InferenceClient, UnauthorizedError
    from ladon_deploy.device.pacing import PacedLink
    pacing = PacedLink(link.parse_rate(args.rate) if args.rate else None, link.parse_duration(args.rtt))
    timeout = link.parse_duration(args.timeout)
    if timeout <= 0:
        raise UsageError("--timeout must be positive")
    token = read_token(getattr(args, "token_file", None))
    images = [args.image] if args.image else list_images(args.images)
    bundle = open_bundle_stages(args.bundle, ["encoder", "entropy"])
    tasks = select_tasks(bundle, parse_tasks(args.tasks))
    mask_out = getattr(args, "mask_out", None)
    if mask_out and "seg" not in tasks:
        raise UsageError("--mask-out needs the seg task, and this run has only %s" % ",".join(tasks))
    stage = DeviceStage(bundle, engine=args.engine, threads=args.threads, precision=getattr(args, "precision", None),
                        **stage_settings(args))
    documents = []  # type: List[Dict[str, Any]]
    failures = []  # type: List[Dict[str, str]]
    with InferenceClient(args.server, pacing, timeout_s=timeout, token=token) as client:
        for number, path in enumerate(images):
            started = time.perf_counter()
            try:
                sent = stage.run(path, tasks, release_memory=number == len(images) - 1)
                reply = client.infer(sent.payload, mask=bool(mask_out))
            except UnauthorizedError as exc:  # the same for every image: the folder stops here
                raise UsageError("%s (%s)" % (exc, "the token of --token-file is not this server's" if token else
                                              "give the server's token with --token-file FILE"))
            except LadonError as exc:
                if args.images is None:
                    raise
                _record_failure(failures, path, exc)
                continue
            document = served_document(sent, reply, started, time.perf_counter(), pacing)
            document["image"] = path
            if mask_out:
                write_bytes_atomically(mask_out, reply.mask_png)
                document["segmentation"]["mask_png"] = mask_out
            documents.append(document)
            if args.images is not None and not args.json:
                print("%s: %d + %d bytes, upload %.1f ms, server %.1f ms, end-to-end %.1f ms" % (
                    os.path.basename(path), reply.payload_bytes, reply.overhead_bytes, reply.upload_seconds * 1e3,
                    document["timings_ms"]["server_compute"] or 0.0, document["timings_ms"]["end_to_end"]))
                sys.stdout.flush()
    if args.images is not None:
        return _print_folder_summary(args, documents, failures)
    document = documents[0]
    if args.json:
        print(json.dumps(document))
        return 0
    print_notes(sent.notes)
    print_results(document)
    timings = document["timings_ms"]
    print("request: %d bytes = payload %d + %d bytes of HTTP/KServe overhead" % (
        reply.request_bytes, reply.payload_bytes, reply.overhead_bytes))
    if pacing.shaped:
        print("upload: %.2f ms measured, %.2f ms by the formula (bytes*8/rate + rtt)" % (
            timings["upload"], document["link"]["formula_ms"] or pacing.rtt_seconds * 1000.0))
    print_timings(sent.timings, sent.engines)
    print("  %-16s %8.2f ms" % ("upload", timings["upload"]))
    # A model-repository server batches each step on its own and reports no batch size.
    batch = ", batch of %s" % document["batch_size"] if document.get("batch_size") is not None else ""
    print("  %-16s %8.2f ms  (reported by the server%s)" % ("server_compute", timings["server_compute"] or 0.0, batch))
    print("end-to-end: %.2f ms (device clock)" % timings["end_to_end"])
    return 0


def _eval_accuracies(paths: List[str]) -> Dict[str, float]:
    """bundle id -> the headline accuracy of a ladon-eval result (top-1, else mAP, else mIoU)."""
    found = {}  # type: Dict[str, float]
    for path in paths:
        try:
            with open(path) as handle:
                document = json.load(handle)
            bundle_id = document["bundle"]["bundle_id"]
            summary = document["summary"]
        except (OSError, ValueError, KeyError, TypeError):
            raise UsageError("--accuracy %s is not a ladon-eval result (no bundle.bundle_id and summary)" % path)
        for metric in ("top1", "map", "miou"):
            if summary.get(metric) is not None:
                found[bundle_id] = float(summary[metric])
                break
    return found


def run_mobile_frames(args) -> int:
    from ladon_deploy.link import operating_point, transport
    from ladon_deploy.link.loss import parse_loss
    from ladon_deploy.link.plan import duty_cycle_wall, frame_times, implied_region
    from ladon_deploy.link.profiles import get_profile
    address = transport.parse_frame_url(args.server)
    if args.link is None:
        raise UsageError("--server udp://... needs --link PROFILE (e.g. lora-sf6-bw500; ladon-run link --list)")
    profile = get_profile(args.link)
    if profile.max_frame_payload is None:
        raise UsageError("--link %s is an ideal pipe with no frames: use --server http://... with --rate" % args.link)
    region = implied_region(profile, args.region)
    if not 0.0 <= args.repair <= 4.0:
        raise UsageError("--repair must be between 0 and 4 (a fraction of the data frames), got %g" % args.repair)
    if args.rounds < 1:
        raise UsageError("--rounds must be at least 1")
    key = read_token(args.key_file, "--key-file")
    loss = parse_loss(args.loss, args.seed)
    timeout = link.parse_duration(args.timeout)
    budget = link.parse_duration(args.budget) if args.budget is not None else None
    bundle_dirs = args.bundles
    if len(bundle_dirs) > 1 and budget is None:
        raise UsageError("several --bundle need --budget T: the time each image may take to its last frame on air")
    accuracy = _eval_accuracies(args.accuracy or [])
    stages, candidates = {}, []
    for directory in bundle_dirs:
        bundle = open_bundle_stages(directory, ["encoder", "entropy"])  # the device verifies only what it loads
        stage = DeviceStage(bundle, engine=args.engine, threads=args.threads, precision=args.precision,
                            **stage_settings(args))
        stages[directory] = (stage, select_tasks(bundle, parse_tasks(args.tasks)))
        candidates.append(operating_point.Candidate(directory, bundle.bundle_id, bundle.manifest.get("beta"),
                                                    accuracy.get(bundle.bundle_id)))
    if len({tuple(sorted(stages[c.name][1])) for c in candidates}) > 1:
        raise UsageError("the --bundle directories serve different tasks; give bundles of one architecture")
    images = [args.image] if args.image else list_images(args.images)
    duty = args.duty_cycle == "on"
    documents, failures = [], []  # type: List[Dict[str, Any]], List[Dict[str, str]]
    for number, path in enumerate(images):
        started = time.perf_counter()
        sent = {}  # type: Dict[str, Any]

        def encode(candidate: operating_point.Candidate) -> Tuple[bytes, float]:
            stage, tasks = stages[candidate.name]
            result = stage.run(path, tasks, release_memory=number == len(images) - 1)
            sent[candidate.name] = result
            return result.payload, sum(result.timings.values())

        try:
            if budget is not None:
                chosen, payload, attempts = operating_point.choose(candidates, encode, profile, region, budget,
                                                                   args.repair, duty, key is not None)
                choice = operating_point.describe_choice(chosen, attempts, budget, candidates)
            else:
                chosen, choice = candidates[0], None
                payload = encode(chosen)[0]
            answer, report = transport.send_payload(payload, address, profile, region, loss, number % 256,
                                                    args.repair, args.rounds, key, duty, True, timeout)
        except LadonError as exc:
            if args.images is None:
                raise
            _record_failure(failures, path, exc)
            continue
        device = sent[chosen.name]
        times = frame_times(profile, region, len(payload), key is not None)
        document = dict(answer)
        document["image"] = path
        document["bundle"] = {"directory": chosen.name, "bundle_id": chosen.bundle_id, "beta": chosen.beta}
        if choice is not None:
            document["operating_point"] = choice
        document["link"] = dict(report.as_dict(), payload_bytes=len(payload),
                                model_airtime_s=sum(times),
                                model_duty_cycle_wall_s=duty_cycle_wall(times, region) if duty else sum(times))
        document["timings_ms"] = {"device": timings_ms(device.timings),
                                  "server": answer.get("timings_ms", {}),
                                  "end_to_end": round((time.perf_counter() - started) * 1e3, 3)}
        documents.append(document)
        if not args.json:
            _print_frames_document(document)
    if args.json:
        print(json.dumps(documents[0] if args.images is None else {"images": documents, "failed": failures}))
    if failures:
        sys.stderr.write("ladon-run: error: %d of %d images failed\n" % (len(failures), len(images)))
        return EXIT_USAGE
    return 0


def _print_frames_document(document: Dict[str, Any]) -> None:
    sent = document["link"]
    print("%s -> %s" % (document["image"], document["bundle"]["directory"]))
    if "operating_point" in document:
        print("  " + document["operating_point"])
    print_results(document)
    print("link %s (%s): %d bytes in %d data + %d repair frames, %d retransmitted, %d lost, %d repaired, %d round%s"
          % (sent["profile"], sent["region"], sent["payload_bytes"], sent["data_frames"], sent["repair_frames"],
             sent["retransmitted"], sent["frames_lost"], sent["frames_repaired"], sent["rounds"],
             "" if sent["rounds"] == 1 else "s"))
    print("  time on air %.3f s for every frame sent (the payload's data frames alone: %.3f s); wall time %.3f s "
          "measured to the answer, %.3f s modelled for the frames" % (sent["airtime_s"], sent["model_airtime_s"],
                                                                      sent["wall_s"], sent["model_wall_s"]))


def run_mobile(args) -> int:
    _check_server_options(args)
    if args.server is not None and args.server.startswith("udp://"):
        return run_mobile_frames(args)
    if args.server is not None:
        return run_mobile_server(args)
    bundle = open_bundle_stages(args.bundle, ["encoder", "entropy"])
    tasks = select_tasks(bundle, parse_tasks(args.tasks))
    stage = DeviceStage(bundle, engine=args.engine, threads=args.threads, precision=getattr(args, "precision", None),
                        **stage_settings(args))
    result = stage.run(args.image, tasks, release_memory=True)
    write_bytes_atomically(args.out, result.payload)
    if args.json:
        print(json.dumps({"payload": args.out, "payload_bytes": len(result.payload),
                          "latent_shape": list(result.latent_shape), "image_notes": result.notes,
                          "engines": result.engines, "timings_ms": timings_ms(result.timings)}))
    else:
        print_notes(result.notes)
        print("payload: %s, %d bytes (latent %s)" % (args.out, len(result.payload),
                                                     "x".join(str(d) for d in result.latent_shape)))
        print_timings(result.timings, result.engines)
    return 0
