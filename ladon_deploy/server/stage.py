"""The server half of the split: payload -> rANS decode -> dequantize -> body (once) -> requested heads -> results.

Not in the edge subset: the server's code may use what Python 3.8 offers; it never imports torch either.
"""
import collections
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

from ladon_deploy.bundle import TASK_HEADS, TASKS, Bundle
from ladon_deploy.device import wire
from ladon_deploy.device.entropy import EntropyCoder
from ladon_deploy.device.stage import Clock, parse_tasks, select_tasks
from ladon_deploy.engines.base import Runner
from ladon_deploy.engines.registry import open_stage_runner
from ladon_deploy.errors import LadonError, PayloadError
from ladon_deploy.server import postprocess


def _height_width(size: Sequence[int]) -> Dict[str, int]:
    return {"height": int(size[0]), "width": int(size[1])}


class ServerResult:
    def __init__(self, payload: wire.Payload, outputs: Dict[str, Dict[str, np.ndarray]],
                 timings: Dict[str, float], engines: Optional[Dict[str, str]] = None) -> None:
        self.payload = payload
        self.outputs = outputs  # task -> raw head outputs
        self.timings = timings
        self.engines = engines or {}  # stage -> the engine that ran it

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
        document: Dict[str, Any] = collections.OrderedDict()
        document["bundle_id"] = self.payload.bundle_id
        document["original_size"] = _height_width(self.payload.original_size)
        document["resized_size"] = _height_width(self.payload.resized_size)
        document["tasks"] = list(self.payload.tasks)
        if "cls" in self.outputs:
            # Stable keys whatever --top-k is: "k" and "top_k", [class_id, probability, name] most probable first.
            document["classification"] = {"k": top_k, "top_k": [[c.class_id, c.probability, c.name]
                                                                for c in self.classification(top_k)]}
        if "det" in self.outputs:
            document["detection"] = [
                {"box": [round(float(v), 2) for v in d["box"]], "score": round(float(d["score"]), 6),
                 "label": int(d["label"]), "name": d["name"]} for d in self.detections()]
        if "seg" in self.outputs:
            mask = self.mask()
            segmentation: Dict[str, Any] = {
                "pixel_counts": postprocess.mask_pixel_counts(mask),
                "size": {"height": int(mask.shape[0]), "width": int(mask.shape[1])}}
            if mask_path:
                postprocess.save_mask_png(mask, mask_path)
                segmentation["mask_png"] = str(mask_path)
            document["segmentation"] = segmentation
        if self.engines:
            document["engines"] = dict(self.engines)
        return document


class PayloadDecoder:
    """Payload bytes -> validated Payload -> entropy tables: the part of the server stage that needs no engine
    (Triton's ladon_decode step runs it alone)."""

    def __init__(self, bundle: Bundle) -> None:
        self.bundle = bundle
        self.coder = EntropyCoder.from_tables(bundle.load_entropy_tables())
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


class ServerStage:
    """Payload -> rANS decode -> dequantize -> body (once) -> requested heads."""

    def __init__(self, bundle: Bundle, engine: str = "onnxruntime", threads: Optional[int] = None,
                 tasks: Optional[Sequence[str]] = None, precision: Optional[str] = None,
                 open_stage: Optional[Callable[[str], Runner]] = None) -> None:
        """open_stage: stage name -> its runner, for a caller that opens some stages its own way (ladon-serve opens
        batch-capable copies); by default every stage goes through engines.registry.open_stage_runner."""
        self.bundle = bundle
        self.tasks = select_tasks(bundle, tasks)
        self.decoder = PayloadDecoder(bundle)
        self.coder = self.decoder.coder
        if open_stage is None:
            def open_stage(stage: str) -> Runner:
                return open_stage_runner(bundle, stage, engine, threads, precision)
        self.body = open_stage("body")
        self.heads = {task: open_stage(TASK_HEADS[task]) for task in self.tasks}
        # stage -> the engine that runs it ("onnxruntime", "tensorrt fp16", ...), named in every result
        self.engines: Dict[str, str] = {"body": self.body.engine_label}
        self.engines.update({TASK_HEADS[task]: head.engine_label for task, head in self.heads.items()})

    def unpack(self, data: bytes) -> wire.Payload:
        return self.decoder.unpack(data)

    def run(self, data: bytes, tasks: Optional[Sequence[str]] = None) -> ServerResult:
        clock = Clock()
        payload = self.unpack(data)
        clock.lap("unframe")
        wanted = list(parse_tasks(tasks) if isinstance(tasks, str) else tasks or payload.tasks)
        unknown = [t for t in wanted if t not in TASKS]
        if unknown:
            raise LadonError("unknown task %s (known: %s)" % (",".join(map(str, unknown)), ",".join(TASKS)))
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
        outputs: Dict[str, Dict[str, np.ndarray]] = {}
        for task in TASKS:
            if task not in wanted:
                continue
            head = self.heads[task]
            feeds = {name: features[name] for name in head.input_names if name in features}
            if task == "det":
                feeds["image_size"] = np.asarray(payload.resized_size, dtype=np.int64)
            outputs[task] = head.run(feeds)
            clock.lap("head_" + task)
        used = ["body"] + [TASK_HEADS[task] for task in outputs]
        return ServerResult(payload, outputs, clock.timings, {stage: self.engines[stage] for stage in used})

    def close(self) -> None:
        self.body.close()
        for head in self.heads.values():
            head.close()
