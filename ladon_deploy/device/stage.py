"""The device half of the split: image -> preprocess -> encoder -> quantize -> rANS encode -> framed payload.

The encoder runs through the engine runner interface; everything the stage needs comes from a bundle. Each call
returns its per-stage wall-clock timings so that the CLI and the benchmarks report the same numbers.

Edge subset: Python 3.6-clean, never imports torch.
"""
import collections
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ladon_deploy.bundle import TASKS, Bundle
from ladon_deploy.device import preprocess, wire
from ladon_deploy.device.entropy import EntropyCoder
from ladon_deploy.engines.registry import open_stage_runner
from ladon_deploy.errors import LadonError


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


class Clock(object):
    def __init__(self) -> None:
        self.timings = collections.OrderedDict()  # type: Dict[str, float]
        self._last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.timings[name] = now - self._last
        self._last = now


class DeviceResult(object):
    def __init__(self, payload: bytes, timings: Dict[str, float], image: preprocess.Preprocessed,
                 latent_shape: Tuple[int, int, int], engines: Optional[Dict[str, str]] = None) -> None:
        self.payload = payload
        self.timings = timings
        self.image = image
        self.latent_shape = latent_shape
        self.engines = engines or {}  # stage -> the engine that ran it ("onnxruntime", "tensorrt fp16", ...)

    @property
    def notes(self) -> List[str]:
        """What decoding did to the image (EXIF orientation, alpha, bit depth, frames), for the user to see."""
        return self.image.notes


class DeviceStage(object):
    """Image -> preprocess -> encoder -> quantize -> rANS encode -> framed payload."""

    def __init__(self, bundle: Bundle, engine: str = "onnxruntime", threads: Optional[int] = None,
                 exif_transpose: bool = True, max_pixels: Optional[int] = preprocess.DEFAULT_MAX_PIXELS,
                 precision: Optional[str] = None) -> None:
        self.bundle = bundle
        self.exif_transpose = exif_transpose
        self.max_pixels = max_pixels
        settings = bundle.preprocessing
        self.size = int(settings["input_size"])
        self.policy = settings["resize"]
        self.mean = tuple(settings["mean"])
        self.std = tuple(settings["std"])
        self.encoder = open_stage_runner(bundle, "encoder", engine, threads, precision)
        self.engines = {"encoder": self.encoder.engine_label}  # type: Dict[str, str]  # stage -> what ran it
        self.coder = EntropyCoder.from_tables(bundle.load_entropy_tables())

    def preprocess(self, source: Any) -> preprocess.Preprocessed:
        return preprocess.preprocess(source, size=self.size, policy=self.policy, mean=self.mean, std=self.std,
                                     max_pixels=self.max_pixels, exif_transpose=self.exif_transpose)

    def run(self, source: Any, tasks: Sequence[str]) -> DeviceResult:
        clock = Clock()
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
        return DeviceResult(payload, clock.timings, image, shape, dict(self.engines))

    def close(self) -> None:
        self.encoder.close()
