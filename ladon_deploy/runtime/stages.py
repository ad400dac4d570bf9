"""The two halves of the split: the mobile stage (image -> payload) and the server stage (payload -> results).

Both run their models through the engine runner interface and open everything they need from a bundle; neither
imports torch. Each call returns its per-stage wall-clock timings so that the CLI and the benchmarks report the
same numbers.

Edge subset: Python 3.6-clean.
"""
import collections
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ladon_deploy.engines.registry import open_runner
from ladon_deploy.errors import LadonError, PayloadError
from ladon_deploy.export.bundle import TASK_HEADS, TASKS, Bundle
from ladon_deploy.runtime import postprocess, preprocess, wire
from ladon_deploy.runtime.entropy import EntropyCoder



def select_tasks(bundle: Bundle, requested: Optional[Sequence[str]]) -> Tuple[str, ...]:
    """The requested tasks in canonical order; all of the bundle's when None. Unknown/absent ones are refused."""
    if requested is None:
        return tuple(t for t in TASKS if t in bundle.tasks)
    unknown = [t for t in requested if t not in TASKS]
    if unknown or not requested:
        raise LadonError("tasks must be a non-empty subset of cls,det,seg (got %s)" % ",".join(requested))
    absent = [t for t in requested if t not in bundle.tasks]
    if absent:
        raise LadonError("bundle %s has no %s head (it has %s)"
                         % (bundle.directory, ",".join(absent), ",".join(bundle.tasks)))
    return tuple(t for t in TASKS if t in requested)


def parse_tasks(text: Optional[str]) -> Optional[List[str]]:
    if text is None:
        return None
    return [t.strip() for t in text.split(",") if t.strip()]


class _Clock(object):
    def __init__(self) -> None:
        self.timings = collections.OrderedDict()  # type: Dict[str, float]
        self._last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.timings[name] = now - self._last
        self._last = now


class MobileResult(object):
    def __init__(self, payload: bytes, timings: Dict[str, float], image: preprocess.Preprocessed,
                 latent_shape: Tuple[int, int, int]) -> None:
        self.payload = payload
        self.timings = timings
        self.image = image
        self.latent_shape = latent_shape


class MobileStage(object):
    """Image -> preprocess -> encoder -> quantize -> rANS encode -> framed payload."""

    def __init__(self, bundle: Bundle, engine: str = "onnxruntime", threads: Optional[int] = None) -> None:
        self.bundle = bundle
        settings = bundle.preprocessing
        self.size = int(settings["input_size"])
        self.policy = settings["resize"]
        self.mean = tuple(settings["mean"])
        self.std = tuple(settings["std"])
        self.encoder = open_runner(bundle.path("encoder"), engine, threads)
        self.coder = EntropyCoder.from_tables(bundle.load_entropy_tables())

    def preprocess(self, source: Any) -> preprocess.Preprocessed:
        return preprocess.preprocess(source, size=self.size, policy=self.policy, mean=self.mean, std=self.std)

    def run(self, source: Any, tasks: Sequence[str]) -> MobileResult:
        clock = _Clock()
        image = self.preprocess(source)
        clock.lap("preprocess")
        latent = self.encoder.run({"image": image.tensor})["latent"]
        clock.lap("encoder")
        symbols = self.coder.quantize(latent)
        clock.lap("quantize")
        body = self.coder.encode(symbols)
        clock.lap("entropy_encode")
        shape = tuple(int(d) for d in latent.shape[1:])
        payload = wire.pack(wire.Payload(self.bundle.bundle_id, shape, image.original_size, image.resized_size,
                                         tuple(tasks), body))
        clock.lap("frame")
        return MobileResult(payload, clock.timings, image, shape)

    def close(self) -> None:
        self.encoder.close()


class ServerResult(object):
    def __init__(self, payload: wire.Payload, outputs: Dict[str, Dict[str, np.ndarray]],
                 timings: Dict[str, float]) -> None:
        self.payload = payload
        self.outputs = outputs  # task -> raw head outputs
        self.timings = timings

    def classification(self, k: int = 5) -> List[postprocess.ClassScore]:
        return postprocess.top_classes(self.outputs["cls"]["probabilities"], k=k)

    def detections(self, score_threshold: float = 0.0) -> List[Dict[str, Any]]:
        raw = self.outputs["det"]
        return postprocess.detection_results(raw["boxes"], raw["scores"], raw["labels"],
                                             self.payload.original_size, self.payload.resized_size,
                                             score_threshold=score_threshold)

    def mask(self) -> np.ndarray:
        return postprocess.segmentation_mask(self.outputs["seg"]["logits"], self.payload.original_size,
                                             self.payload.resized_size)

    def to_json(self, mask_path: Optional[str] = None, top_k: int = 5) -> Dict[str, Any]:
        document = collections.OrderedDict()  # type: Dict[str, Any]
        document["bundle_id"] = self.payload.bundle_id
        document["original_size"] = list(self.payload.original_size)
        document["resized_size"] = list(self.payload.resized_size)
        document["tasks"] = list(self.payload.tasks)
        if "cls" in self.outputs:
            document["classification"] = {"top%d" % top_k: [[c.class_id, c.probability, c.name]
                                                            for c in self.classification(top_k)]}
        if "det" in self.outputs:
            document["detection"] = [
                {"box": [round(float(v), 2) for v in d["box"]], "score": round(float(d["score"]), 6),
                 "label": int(d["label"]), "name": d["name"]} for d in self.detections()]
        if "seg" in self.outputs:
            mask = self.mask()
            segmentation = {"pixel_counts": postprocess.mask_pixel_counts(mask),
                            "size": [int(mask.shape[0]), int(mask.shape[1])]}  # type: Dict[str, Any]
            if mask_path:
                postprocess.save_mask_png(mask, mask_path)
                segmentation["mask_png"] = str(mask_path)
            document["segmentation"] = segmentation
        return document


class ServerStage(object):
    """Payload -> rANS decode -> dequantize -> body (once) -> requested heads."""

    def __init__(self, bundle: Bundle, engine: str = "onnxruntime", threads: Optional[int] = None,
                 tasks: Optional[Sequence[str]] = None) -> None:
        self.bundle = bundle
        self.tasks = select_tasks(bundle, tasks)
        self.coder = EntropyCoder.from_tables(bundle.load_entropy_tables())
        self.body = open_runner(bundle.path("body"), engine, threads)
        self.heads = {task: open_runner(bundle.path(TASK_HEADS[task]), engine, threads) for task in self.tasks}
        # The mobile stage never feeds more than input_size pixels a side, so a latent side beyond input_size / 4
        # cannot come from this bundle: refusing it bounds the decoder's time and memory before it starts.
        self.channels = int(bundle.manifest["bottleneck_channels"])
        self.max_latent_side = int(bundle.preprocessing["input_size"]) // 4

    def unpack(self, data: bytes) -> wire.Payload:
        payload = wire.unpack(data, expected_bundle_id=self.bundle.bundle_id,
                              max_symbols=self.channels * self.max_latent_side ** 2)
        channels, height, width = payload.latent_shape
        if channels != self.channels:
            raise PayloadError("payload latent has %d channels, this bundle's model has %d" % (channels, self.channels))
        if max(height, width) > self.max_latent_side:
            raise PayloadError("payload latent %dx%d exceeds what a %d-pixel input produces"
                               % (height, width, 4 * self.max_latent_side))
        return payload

    def run(self, data: bytes, tasks: Optional[Sequence[str]] = None) -> ServerResult:
        clock = _Clock()
        payload = self.unpack(data)
        clock.lap("unframe")
        wanted = [t for t in (tasks or payload.tasks) if t in TASKS]
        missing = [t for t in wanted if t not in self.heads]
        if missing:
            raise LadonError("payload asks for %s but this server runs only %s"
                             % (",".join(missing), ",".join(self.tasks)))
        symbols = self.coder.decode(payload.body, payload.latent_shape)
        clock.lap("entropy_decode")
        latent_hat = self.coder.dequantize(symbols)
        if latent_hat.ndim == 3:
            latent_hat = latent_hat[None]
        clock.lap("dequantize")
        features = self.body.run({"latent_hat": latent_hat})
        clock.lap("body")
        outputs = {}  # type: Dict[str, Dict[str, np.ndarray]]
        for task in TASKS:
            if task not in wanted:
                continue
            head = self.heads[task]
            feeds = {name: features[name] for name in head.input_names if name in features}
            if task == "det":
                feeds["image_size"] = np.asarray(payload.resized_size, dtype=np.int64)
            outputs[task] = head.run(feeds)
            clock.lap("head_" + task)
        return ServerResult(payload, outputs, clock.timings)

    def close(self) -> None:
        self.body.close()
        for head in self.heads.values():
            head.close()
