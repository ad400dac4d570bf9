"""One evaluation run: every image of a dataset through the split pipeline exactly as deployed, into one result.

Per image: the dataset's evaluation view -> DeviceStage (the chosen engine and precision) -> the payload bytes the
device would send -> ServerStage -> the task's post-processing (server/postprocess.py, as `ladon-run split` prints
it) -> the metric's per-image record. Bits per image are the whole payload, framing included, times 8; bits per
pixel divide them by the pixels of the image file (before the evaluation view).

Resumable: each image's record is appended to a journal (one JSON line, flushed and fsynced) before the next image
starts; a run started again with the same bundle, dataset, subset, engine and precision skips the images the journal
holds, and the result is computed from the journal alone, so it equals an uninterrupted run's (timings aside). A
line cut short by a kill is dropped. The result JSON is written atomically and the journal removed after it.
"""
import collections
import hashlib
import json
import os
import statistics
import time
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence

from ladon_deploy.atomic import write_text_atomically
from ladon_deploy.bundle import Bundle, open_bundle
from ladon_deploy.device.stage import DeviceStage, timings_ms
from ladon_deploy.errors import LadonError
from ladon_deploy.eval import datasets, metrics
from ladon_deploy.server.stage import ServerStage

RESULT_FORMAT = "ladon-eval"
JOURNAL_FORMAT = "ladon-eval-journal"
FORMAT_VERSION = 1
SUMMARY_KEYS = ("top1", "top5", "map", "ap50", "miou", "bits_per_image", "bits_per_pixel", "kb_per_image", "images")
RANDOM_WEIGHTS = "random (no checkpoint sources: a demo export); accuracy figures are not a trained model's"


def provenance(bundle: Bundle) -> Dict[str, Any]:
    """What the result says about the bundle: identity, beta, and whether its weights are random."""
    manifest = bundle.manifest
    sources = manifest.get("sources") or {}
    return collections.OrderedDict([
        ("path", os.path.abspath(bundle.directory)), ("bundle_id", bundle.bundle_id),
        ("architecture", manifest.get("architecture")), ("beta", manifest.get("beta")), ("sources", sources),
        ("random_weights", not sources), ("weights", "checkpoints" if sources else RANDOM_WEIGHTS),
        ("input_size", int(bundle.preprocessing["input_size"])), ("resize", bundle.preprocessing.get("resize"))])


class SplitPipeline:
    """The device and server stages of one bundle for one task, as `ladon-run split` composes them."""

    def __init__(self, bundle: Bundle, task: str, engine: str = "onnxruntime", precision: Optional[str] = None,
                 threads: Optional[int] = None) -> None:
        if task not in bundle.tasks:
            raise LadonError("bundle %s has no %s head (it has %s): this dataset needs one"
                             % (bundle.directory, task, ",".join(bundle.tasks)))
        self.task = task
        # EXIF orientation is ignored: dataset annotations are in the stored pixel frame.
        self.device = DeviceStage(bundle, engine=engine, threads=threads, precision=precision, exif_transpose=False)
        self.server = ServerStage(bundle, engine=engine, threads=threads, tasks=[task], precision=precision)
        self.engines = dict(self.device.engines, **self.server.engines)

    def run(self, source: Any) -> Dict[str, Any]:
        sent = self.device.run(source, [self.task])
        result = self.server.run(sent.payload)
        return {"payload": sent.payload, "result": result, "device_timings": sent.timings,
                "server_timings": result.timings}

    def close(self) -> None:
        self.device.close()
        self.server.close()


def task_record(task: str, result: Any, target: Any) -> Dict[str, Any]:
    """The metric's per-image record: what the journal keeps so the totals can be computed from it alone."""
    if task == "cls":
        ranked = [c.class_id for c in result.classification(5)]
        return {"label": int(target), "top5": ranked, "correct1": metrics.topk_correct(ranked, target, 1),
                "correct5": metrics.topk_correct(ranked, target, 5)}
    if task == "det":
        return {"detections": [{"box": d["box"], "score": d["score"], "label": d["label"]}
                               for d in result.detections()]}
    mask = result.mask()
    if mask.shape != target.shape:
        raise LadonError("mask %s and label %s differ in size" % (mask.shape, target.shape))
    return {"confusion": metrics.sparse_confusion(metrics.confusion(mask, target))}


def measure(pipeline: SplitPipeline, dataset: datasets.Dataset, sample: datasets.Sample,
            input_size: int) -> Dict[str, Any]:
    started = time.perf_counter()
    source, original, target = datasets.load_view(dataset, sample, input_size)
    view_seconds = time.perf_counter() - started
    ran = pipeline.run(source)
    bits = len(ran["payload"]) * 8
    record = collections.OrderedDict([
        ("key", sample.key), ("original_size", list(original)), ("payload_bytes", len(ran["payload"])),
        ("bits", bits), ("bpp", bits / float(original[0] * original[1]))])
    record.update(task_record(dataset.task, ran["result"], target))
    record["timings_ms"] = {"view": round(view_seconds * 1000.0, 3),
                            "device": timings_ms(ran["device_timings"]),
                            "server": timings_ms(ran["server_timings"])}
    return record


class Journal:
    """Append-only JSON lines: a header naming the run, then one record per image."""

    def __init__(self, path: str, header: Dict[str, Any]) -> None:
        self.path = path
        self.header = header
        self.records: Dict[str, Dict[str, Any]] = collections.OrderedDict()
        self.created = False  # by this run (only such a journal, still empty, is removed when the run fails)

    def open(self) -> None:
        if not os.path.exists(self.path):
            write_text_atomically(self.path, json.dumps(self.header, sort_keys=True) + "\n")
            self.created = True
            return
        with open(self.path, "rb") as handle:
            data = handle.read()
        complete = data[:data.rfind(b"\n") + 1]
        lines = complete.decode("utf-8").splitlines()
        try:
            header = json.loads(lines[0]) if lines else None
            records = [json.loads(line) for line in lines[1:]]
        except ValueError as exc:
            raise LadonError("journal %s is damaged (%s): remove it to start over" % (self.path, exc))
        if header != json.loads(json.dumps(self.header, sort_keys=True)):
            raise LadonError("journal %s belongs to another run (bundle, dataset, subset, engine or precision "
                             "differ): remove it or write the result elsewhere" % self.path)
        if len(complete) < len(data):  # a line cut short by a kill: drop it before appending after it
            with open(self.path, "r+b") as handle:
                handle.truncate(len(complete))
        for record in records:
            self.records[record["key"]] = record

    def append(self, record: Dict[str, Any]) -> None:
        with open(self.path, "a") as handle:
            handle.write(json.dumps(record) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        self.records[record["key"]] = record


def summarize(task: str, records: Sequence[Dict[str, Any]], dataset: datasets.Dataset) -> Dict[str, Any]:
    """The totals under their fixed names (a metric another task has is None)."""
    summary: Dict[str, Any] = collections.OrderedDict((key, None) for key in SUMMARY_KEYS)
    summary["images"] = len(records)
    summary["bits_per_image"] = sum(r["bits"] for r in records) / float(len(records))
    summary["kb_per_image"] = summary["bits_per_image"] / 8000.0
    summary["bits_per_pixel"] = statistics.mean(r["bpp"] for r in records)
    if task == "cls":
        summary["top1"] = sum(r["correct1"] for r in records) / float(len(records))
        summary["top5"] = sum(r["correct5"] for r in records) / float(len(records))
    elif task == "det":
        results: List[Dict[str, Any]] = []
        for record in records:
            results += metrics.coco_records(int(record["key"]), record["detections"])
        scored = metrics.coco_map(dataset.coco, results, [int(r["key"]) for r in records])
        summary["map"], summary["ap50"] = scored["map"], scored["ap50"]
    else:
        matrix = metrics.dense_confusion(cell for r in records for cell in r["confusion"])
        summary["miou"] = metrics.mean_iou(matrix)
    return summary


def median_timings(records: Iterable[Dict[str, Any]]) -> Dict[str, Dict[str, float]]:
    laps: Dict[str, Dict[str, List[float]]] = collections.OrderedDict()
    for record in records:
        for side in ("device", "server"):
            for name, ms in record["timings_ms"][side].items():
                laps.setdefault(side, collections.OrderedDict()).setdefault(name, []).append(ms)
    return {side: {name: statistics.median(values) for name, values in stages.items()}
            for side, stages in laps.items()}


def _public(record: Dict[str, Any]) -> Dict[str, Any]:
    """A journal record as the result lists it: detections counted, the confusion cells left to the journal."""
    shown = collections.OrderedDict((k, v) for k, v in record.items() if k not in ("detections", "confusion"))
    if "detections" in record:
        shown["detections"] = len(record["detections"])
    return shown


def evaluate(bundle_dir: str, dataset: datasets.Dataset, out_json: str, engine: str = "onnxruntime",
             precision: Optional[str] = None, threads: Optional[int] = None, limit: Optional[int] = None,
             seed: int = 0, progress: bool = False,
             on_record: Optional[Callable[[Dict[str, Any]], None]] = None) -> Dict[str, Any]:
    """Runs (or resumes) the evaluation, writes `out_json` atomically and returns the result document.

    on_record: called after each new record is journalled (the progress bar; tests stop a run there)."""
    bundle = open_bundle(bundle_dir)
    if limit is not None and limit < 1:
        raise LadonError("--limit must be at least 1")
    samples = datasets.subset(dataset.samples, limit, seed)
    input_size = int(bundle.preprocessing["input_size"])
    keys = hashlib.sha256("\n".join(s.key for s in samples).encode("utf-8")).hexdigest()
    header = {"format": JOURNAL_FORMAT, "version": FORMAT_VERSION, "bundle_id": bundle.bundle_id,
              "bundle": os.path.abspath(bundle_dir), "dataset": dataset.description, "task": dataset.task,
              "engine": engine, "precision": precision, "limit": limit, "seed": seed, "images_sha256": keys}
    journal = Journal(out_json + ".journal", header)
    pipeline = SplitPipeline(bundle, dataset.task, engine, precision, threads)
    try:
        journal.open()
        todo = [s for s in samples if s.key not in journal.records]
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=len(samples), initial=len(samples) - len(todo), unit="img", desc="ladon-eval",
                       dynamic_ncols=True)
        for sample in todo:
            record = measure(pipeline, dataset, sample, input_size)
            journal.append(record)
            if bar is not None:
                bar.update(1)
            if on_record is not None:
                on_record(record)
        if bar is not None:
            bar.close()
        engines = pipeline.engines
    except BaseException:
        if journal.created and not journal.records and os.path.exists(journal.path):
            os.remove(journal.path)  # nothing to resume: leave no journal behind
        raise
    finally:
        pipeline.close()
    records = [journal.records[s.key] for s in samples]
    document = collections.OrderedDict([
        ("format", RESULT_FORMAT), ("version", FORMAT_VERSION), ("task", dataset.task),
        ("bundle", provenance(bundle)), ("dataset", dict(dataset.description, images_total=len(dataset.samples))),
        ("subset", {"limit": limit, "seed": seed, "images_sha256": keys}),
        ("engine", engine), ("precision", precision or ("fp32" if engine != "tensorrt" else "engine default")),
        ("engines", engines),
        ("summary", summarize(dataset.task, records, dataset)),
        ("timings_ms", median_timings(records)),
        ("images", [_public(r) for r in records])])
    write_text_atomically(out_json, json.dumps(document, indent=1) + "\n")
    os.remove(journal.path)
    return document
