"""The device half of the split: image -> preprocess -> encoder -> quantize -> rANS encode -> framed payload.

The encoder runs through the engine runner interface; everything the stage needs comes from a bundle. Each call
returns its per-stage wall-clock timings so that the CLI and the benchmarks report the same numbers.

Memory: on ONNX Runtime's CPU engine the encoder runs in horizontal bands (``band_rows`` latent rows each, with
the halo its convolutions read), which cuts its activations (three 96-channel maps at half the input's resolution:
50 MB at 416x416) to a band's share. The latent is bit for bit the whole-image run's (tests/device/test_memory.py
checks it), so payloads do not change; ``band_rows=0`` runs the whole image at once. ``release_memory=True`` (the
last image of a run) hands the engine's activation memory back once the encoder is done with the image, so that it
is not resident under the quantizer and the coder; a process that encodes image after image keeps it, because
giving it back and taking it again fragments the heap (docs/device-performance.md).

Edge subset: Python 3.6-clean, never imports torch.
"""
import collections
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ladon_deploy.bundle import TASKS, Bundle
from ladon_deploy.device import preprocess, wire
from ladon_deploy.device.entropy import EntropyCoder
from ladon_deploy.engines.registry import open_stage_runner
from ladon_deploy.errors import EngineError, LadonError

# The encoder's convolutions, (kernel, stride, padding) along the height, from the input up: sc2bench's
# FPBasedResNetBottleneck for every architecture (the GDNs between them work per pixel).
ENCODER_CONVOLUTIONS = ((5, 2, 2), (5, 2, 2), (2, 1, 0))
# Latent rows per encoder band: 8 bands at 416x416. Against 26 rows (4 bands), 6 MB less resident at 12-17% more
# encoder time (the halo rows each band computes again). ONNX Runtime's arena grows in steps, so the memory is not
# proportional to the rows: 14 and 15 rows cost up to 5 MB more than 13 at some image widths, 24 rows 11 MB more
# than 26 (docs/device-performance.md has the sweep).
DEFAULT_BAND_ROWS = 13
BANDED_ENGINES = ("onnxruntime",)  # engines that take any input height (a TensorRT engine has fixed shapes)


def select_tasks(bundle: Bundle, requested: Optional[Sequence[str]]) -> Tuple[str, ...]:
    """The requested tasks (a sequence, or a comma-separated string) in canonical order; all of the bundle's when
    None. Unknown/absent ones are refused."""
    if requested is None:
        return tuple(t for t in TASKS if t in bundle.tasks)
    if isinstance(requested, str):
        requested = parse_tasks(requested)  # "cls" is one task, not the three letters c, l, s
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


def timings_ms(timings: Dict[str, float]) -> Dict[str, float]:
    """A Clock's timings (seconds) as result documents give them: milliseconds, rounded to the microsecond."""
    return {name: round(seconds * 1000.0, 3) for name, seconds in timings.items()}


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


class EncoderGeometry(object):
    """Which input rows a latent row reads, for a chain of (kernel, stride, padding) convolutions."""

    def __init__(self, convolutions: Sequence[Tuple[int, int, int]] = ENCODER_CONVOLUTIONS) -> None:
        self.convolutions = tuple(convolutions)
        self.stride = 1
        self.reach_up = 0  # latent row j reads input rows stride*j - reach_up .. stride*j + reach_down
        self.reach_down = 0
        for kernel, stride, padding in self.convolutions:
            self.reach_up += padding * self.stride
            self.reach_down += (kernel - 1 - padding) * self.stride
            self.stride *= stride

    def output_rows(self, input_rows: int) -> int:
        for kernel, stride, padding in self.convolutions:
            input_rows = (input_rows + 2 * padding - kernel) // stride + 1
        return input_rows

    def bands(self, input_rows: int, band_rows: int) -> List[Tuple[int, int, int, int]]:
        """(first input row, end input row, first latent row, end latent row) per band.

        A band starts on a multiple of the stride, so its latent grid is the whole image's; its outermost rows see
        the zero padding at its cut edges instead of the neighbouring pixels, so it reaches far enough beyond the
        latent rows it keeps that none of those is touched by that padding.
        """
        latent_rows = self.output_rows(input_rows)
        up = -(-self.reach_up // self.stride) * self.stride  # reach_up rounded up to whole strides
        bands = []
        for first in range(0, latent_rows, band_rows):
            end = min(latent_rows, first + band_rows)
            bands.append((max(0, self.stride * first - up), min(input_rows, self.stride * (end - 1) + self.reach_down
                                                                + 1), first, end))
        return bands


def run_encoder_in_bands(encoder: Any, image: np.ndarray, band_rows: int,
                         geometry: Optional[EncoderGeometry] = None, release_memory: bool = False) -> np.ndarray:
    """The encoder's latent for `image` [1, 3, H, W], computed `band_rows` latent rows at a time; release_memory:
    the last band's run hands the engine's activation memory back (Runner.run)."""
    geometry = geometry or EncoderGeometry()
    pieces = []
    bands = geometry.bands(int(image.shape[2]), band_rows)
    for index, (top, bottom, first, end) in enumerate(bands):
        last = index == len(bands) - 1
        latent = encoder.run({"image": image[:, :, top:bottom]}, release_memory=release_memory and last)["latent"]
        offset = top // geometry.stride
        expected = geometry.output_rows(bottom - top)
        if latent.shape[2] != expected:
            raise EngineError("the encoder gave %d latent rows for %d input rows, not the %d its convolutions %s "
                              "give: run it whole (band_rows=0)" % (latent.shape[2], bottom - top, expected,
                                                                   list(geometry.convolutions)))
        pieces.append(latent[:, :, first - offset:end - offset])
    return pieces[0] if len(pieces) == 1 else np.concatenate(pieces, axis=2)


class DeviceStage(object):
    """Image -> preprocess -> encoder -> quantize -> rANS encode -> framed payload.

    band_rows: latent rows per encoder band on ONNX Runtime's CPU engine (None: DEFAULT_BAND_ROWS; 0: the whole
    image at once); fast_decode: let a JPEG decode at a reduced scale (preprocess's module docstring).
    """

    def __init__(self, bundle: Bundle, engine: str = "onnxruntime", threads: Optional[int] = None,
                 exif_transpose: bool = True, max_pixels: Optional[int] = preprocess.DEFAULT_MAX_PIXELS,
                 precision: Optional[str] = None, band_rows: Optional[int] = None, fast_decode: bool = False) -> None:
        self.bundle = bundle
        self.exif_transpose = exif_transpose
        self.max_pixels = max_pixels
        self.fast_decode = fast_decode
        settings = bundle.preprocessing
        self.size = int(settings["input_size"])
        self.policy = settings["resize"]
        self.mean = tuple(settings["mean"])
        self.std = tuple(settings["std"])
        if band_rows is None:
            band_rows = DEFAULT_BAND_ROWS if engine in BANDED_ENGINES else 0
        if band_rows < 0:
            raise LadonError("band rows must be 0 (whole image) or positive, got %d" % band_rows)
        if band_rows and engine not in BANDED_ENGINES:
            raise LadonError("band rows apply to %s only: a %s engine has fixed shapes and runs the whole image"
                             % (", ".join(BANDED_ENGINES), engine))
        self.band_rows = band_rows
        self.encoder = open_stage_runner(bundle, "encoder", engine, threads, precision)
        self.engines = {"encoder": self.encoder.engine_label}  # type: Dict[str, str]  # stage -> what ran it
        self.coder = EntropyCoder.from_tables(bundle.load_entropy_tables())

    def preprocess(self, source: Any) -> preprocess.Preprocessed:
        return preprocess.preprocess(source, size=self.size, policy=self.policy, mean=self.mean, std=self.std,
                                     max_pixels=self.max_pixels, exif_transpose=self.exif_transpose,
                                     fast_decode=self.fast_decode)

    def encode(self, tensor: np.ndarray, release_memory: bool = False) -> np.ndarray:
        """The encoder's latent for a preprocessed [1, 3, H, W] tensor (in bands where the stage is set to);
        release_memory: hand the encoder's activation memory back afterwards (the module docstring)."""
        if self.band_rows:
            return run_encoder_in_bands(self.encoder, tensor, self.band_rows, release_memory=release_memory)
        return self.encoder.run({"image": tensor}, release_memory=release_memory)["latent"]

    def run(self, source: Any, tasks: Sequence[str], release_memory: bool = False) -> DeviceResult:
        """One image to a framed payload; release_memory=True for the last image a process encodes."""
        clock = Clock()
        # preprocess() has released the decoded photo when it returns: only the small tensor reaches the encoder.
        image = self.preprocess(source)
        clock.lap("preprocess")
        latent = self.encode(image.tensor, release_memory)
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
