"""`ladon-run mobile`: image -> payload file, or -> ladon-serve and back (--server); the device's half of `ladon-run`
(the parser is runtime/cli.py).

Edge subset: Python 3.6-clean, never imports torch.
"""
import json
import os
import time
from typing import Any, Dict, List, Optional, Sequence

from ladon_deploy.atomic import write_bytes_atomically
from ladon_deploy.bundle import Bundle, open_bundle
from ladon_deploy.cli_support import UsageError
from ladon_deploy.device import link
from ladon_deploy.device.client import InferenceClient, Reply, percentile
from ladon_deploy.device.pacing import PacedLink
from ladon_deploy.device.stage import DeviceResult, DeviceStage, parse_tasks, select_tasks
from ladon_deploy.errors import LadonError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")


def open_bundle_stages(bundle_dir: str, stages: List[str]) -> Bundle:
    """Opens a bundle checking the sha256 of just the stages this command will load."""
    bundle = open_bundle(bundle_dir, verify=False)
    bundle.verify(stages)
    return bundle


def timings_ms(timings: Dict[str, float]) -> Dict[str, float]:
    return {name: round(seconds * 1000.0, 3) for name, seconds in timings.items()}


def print_timings(timings: Dict[str, float], engines: Optional[Dict[str, str]] = None) -> None:
    """One line per step; a step that is a model stage names the engine that ran it."""
    for name, seconds in timings.items():
        print(("  %-16s %8.2f ms  %s" % (name, seconds * 1000.0, (engines or {}).get(name, ""))).rstrip())


def image_settings(args) -> Dict[str, Any]:
    """DeviceStage's image options (--no-exif-transpose, --max-megapixels) from the command line."""
    return {"exif_transpose": args.exif_transpose, "max_pixels": int(args.max_megapixels * 1e6)}


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


def _check_server_options(args) -> None:
    if args.server is None:
        for name in ("images", "rate"):
            if getattr(args, name) is not None:
                raise UsageError("--%s needs --server URL" % name)
        if args.rtt != "0":
            raise UsageError("--rtt needs --server URL (ladon-run split simulates a link without one)")
        if args.image is None or args.out is None:
            raise UsageError("ladon-run mobile needs --image FILE and --out FILE (or --server URL)")
    elif (args.image is None) == (args.images is None):
        raise UsageError("ladon-run mobile --server needs one of --image FILE or --images DIR")


def list_images(directory: str) -> List[str]:
    if not os.path.isdir(directory):
        raise LadonError("--images %s is not a directory" % directory)
    names = sorted(n for n in os.listdir(directory) if n.lower().endswith(IMAGE_EXTENSIONS))
    if not names:
        raise LadonError("--images %s holds no image (%s)" % (directory, ", ".join(IMAGE_EXTENSIONS)))
    return [os.path.join(directory, name) for name in names]


def served_document(sent: DeviceResult, reply: Reply, started: float, finished: float, pacing: PacedLink
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
    columns = {"device_compute": [sum(d["timings_ms"]["device"].values()) for d in documents],
               "upload": [d["timings_ms"]["upload"] for d in documents],
               "server_compute": [d["timings_ms"]["server_compute"] or 0.0 for d in documents],
               "end_to_end": [d["timings_ms"]["end_to_end"] for d in documents]}
    return dict((name, {"median": round(percentile(values, 50), 3), "p90": round(percentile(values, 90), 3)})
                for name, values in columns.items())


def run_mobile_server(args) -> int:
    pacing = PacedLink(link.parse_rate(args.rate) if args.rate else None, link.parse_duration(args.rtt))
    timeout = link.parse_duration(args.timeout)
    if timeout <= 0:
        raise UsageError("--timeout must be positive")
    images = [args.image] if args.image else list_images(args.images)
    bundle = open_bundle_stages(args.bundle, ["encoder", "entropy"])
    tasks = select_tasks(bundle, parse_tasks(args.tasks))
    stage = DeviceStage(bundle, engine=args.engine, threads=args.threads, precision=getattr(args, "precision", None),
                        **image_settings(args))
    documents = []
    with InferenceClient(args.server, pacing, timeout_s=timeout) as client:
        for path in images:
            started = time.perf_counter()
            sent = stage.run(path, tasks)
            reply = client.infer(sent.payload)
            document = served_document(sent, reply, started, time.perf_counter(), pacing)
            documents.append(document)
            if args.images is None:
                break
            if not args.json:
                print("%s: %d + %d bytes, upload %.1f ms, server %.1f ms, end-to-end %.1f ms" % (
                    os.path.basename(path), reply.payload_bytes, reply.overhead_bytes, reply.upload_seconds * 1e3,
                    document["timings_ms"]["server_compute"] or 0.0, document["timings_ms"]["end_to_end"]))
    if args.images is not None:
        summary = _summary(documents)
        if args.json:
            print(json.dumps({"server": args.server, "images": documents, "summary_ms": summary}))
        else:
            print("%d images, ms:   %10s %10s" % (len(documents), "median", "p90"))
            for name, row in summary.items():
                print("  %-16s %10.1f %10.1f" % (name, row["median"], row["p90"]))
        return 0
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
    print("  %-16s %8.2f ms  (reported by the server, batch of %s)" % (
        "server_compute", timings["server_compute"] or 0.0, document["batch_size"]))
    print("end-to-end: %.2f ms (device clock)" % timings["end_to_end"])
    return 0


def run_mobile(args) -> int:
    _check_server_options(args)
    if args.server is not None:
        return run_mobile_server(args)
    bundle = open_bundle_stages(args.bundle, ["encoder", "entropy"])
    tasks = select_tasks(bundle, parse_tasks(args.tasks))
    stage = DeviceStage(bundle, engine=args.engine, threads=args.threads, precision=getattr(args, "precision", None),
                        **image_settings(args))
    result = stage.run(args.image, tasks)
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
