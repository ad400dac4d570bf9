"""Calibration and held-out images: which files of a folder, in which seeded order, preprocessed as the device does.

The same folder, count and seed give the same split on every machine (numpy's RandomState permutation is stable
across numpy releases), so the ONNX Runtime calibration here and TensorRT's calibrator on a Jetson see the same
images. The held-out images (those the fidelity report is computed on) are never calibrated on. A file with an
image's extension that Pillow cannot open (a text file renamed .jpg, an empty or foreign file) is skipped before
the split, counted, and named in the split's description; a file whose header opens but whose pixels are corrupt
still stops the run with its one-line ImageError when it is decoded.

Edge subset (the device's TensorRT calibrator reads its batches through here): Python 3.6-clean, numpy and Pillow.
"""
import os
import struct
import sys
import time
import zlib
from typing import Any, Callable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from ladon_deploy.bundle import Bundle
from ladon_deploy.device import preprocess
from ladon_deploy.errors import ImageError, LadonError

DEFAULT_COUNT = 512
DEFAULT_SEED = 0
DEFAULT_HELD_OUT = 8
MIN_HELD_OUT = 2

Progress = Callable[[str], None]


def image_extensions() -> Tuple[str, ...]:
    """The file extensions Pillow (the runtime's decoder) opens: '.jpg', '.png', '.webp', ..."""
    Image.init()
    return tuple(sorted(ext.lower() for ext in Image.registered_extensions()))


def list_images(directory: str) -> List[str]:
    """The image files of `directory` (not recursive, hidden files skipped), sorted by name."""
    if not os.path.isdir(directory):
        raise ImageError("calibration image folder not found: %s" % directory)
    extensions = image_extensions()
    paths = []
    for name in sorted(os.listdir(directory)):
        path = os.path.join(directory, name)
        if name.startswith(".") or not os.path.isfile(path):
            continue
        if os.path.splitext(name)[1].lower() in extensions:
            paths.append(path)
    if not paths:
        raise ImageError("%s holds no image files Pillow can open (%s)" % (directory, " ".join(extensions[:8])))
    return paths


# What Pillow raises for a file it cannot open: its plugins use a mix of exception types.
_OPEN_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, struct.error, zlib.error,
                Image.DecompressionBombError)


def opens_as_image(path: str) -> bool:
    """Whether Pillow opens the file's header and finds pixels in it (the pixel data is not decoded)."""
    try:
        with Image.open(path) as image:
            width, height = image.size
    except _OPEN_ERRORS:
        return False
    return width > 0 and height > 0


class ImageSplit(object):
    """A folder's images split into a seeded calibration subset and held-out images for the fidelity report."""

    def __init__(self, directory: str, calibration: List[str], held_out: List[str], requested: int, seed: int,
                 skipped: Optional[List[str]] = None) -> None:
        self.directory = directory
        self.calibration = calibration
        self.held_out = held_out
        self.requested = requested
        self.seed = seed
        self.skipped = list(skipped or [])  # files with an image's extension that Pillow cannot open

    @property
    def capped(self) -> bool:
        return len(self.calibration) < self.requested

    def describe(self) -> str:
        text = "%d calibration and %d held-out images from %s (seed %d)" % (
            len(self.calibration), len(self.held_out), self.directory, self.seed)
        if self.capped:
            text += "; %d calibration images were asked for, the folder has only %d besides the held-out ones" % (
                self.requested, len(self.calibration))
        if self.skipped:
            text += "; %d unreadable file(s) skipped (Pillow cannot open them): %s" % (
                len(self.skipped), _name_list(self.skipped))
        return text


def _name_list(paths: Sequence[str], shown: int = 5) -> str:
    names = [os.path.basename(p) for p in paths[:shown]]
    return ", ".join(names) + (" and %d more" % (len(paths) - shown) if len(paths) > shown else "")


def split_images(directory: str, count: int = DEFAULT_COUNT, seed: int = DEFAULT_SEED,
                 held_out: int = DEFAULT_HELD_OUT) -> ImageSplit:
    """Held-out images first (up to `held_out`, at least MIN_HELD_OUT), then up to `count` calibration images.

    A small folder keeps MIN_HELD_OUT images out of calibration and calibrates on the rest.
    """
    if count < 1:
        raise LadonError("--calib-count must be at least 1, got %d" % count)
    listed = list_images(directory)
    paths = [path for path in listed if opens_as_image(path)]
    readable = set(paths)
    skipped = [path for path in listed if path not in readable]
    if len(paths) < MIN_HELD_OUT + 1:
        raise ImageError("%s has %d readable image(s)%s: calibration needs at least %d (%d are held out for the "
                         "fidelity report)" % (directory, len(paths), " (%d unreadable: %s)" % (
                             len(skipped), _name_list(skipped)) if skipped else "", MIN_HELD_OUT + 1, MIN_HELD_OUT))
    order = [paths[i] for i in np.random.RandomState(seed).permutation(len(paths))]
    kept_out = max(MIN_HELD_OUT, min(held_out, len(paths) - count))
    return ImageSplit(directory, sorted(order[kept_out:kept_out + count]), sorted(order[:kept_out]), count, seed,
                      skipped)


def preprocess_image(bundle: Bundle, source: Any) -> preprocess.Preprocessed:
    """The image as DeviceStage.preprocess prepares it for the encoder (the bundle's preprocessing settings)."""
    settings = bundle.preprocessing
    return preprocess.preprocess(source, size=int(settings["input_size"]), policy=settings["resize"],
                                 mean=tuple(settings["mean"]), std=tuple(settings["std"]))


def pad_to(tensor: np.ndarray, height: int, width: int) -> np.ndarray:
    """Zero-pads an [N, C, H, W] tensor at the bottom and right, as preprocessing pads to a multiple of 32.

    TensorRT calibrates a dynamic-shape network at one shape (the calibration profile's), so every batch is brought
    to the largest input the device stage feeds.
    """
    n, c, h, w = tensor.shape
    if h > height or w > width:
        raise LadonError("calibration input %dx%d is larger than the calibration shape %dx%d" % (h, w, height, width))
    padded = np.zeros((n, c, height, width), dtype=tensor.dtype)
    padded[:, :, :h, :w] = tensor
    return padded


def stderr_lines(message: str) -> None:
    sys.stderr.write(message + "\n")
    sys.stderr.flush()


class ProgressLines(object):
    """A progress report for the edge path: one plain line per tenth of the work (and the last item), no terminal
    control characters, so it reads the same in a log file as on a Jetson's serial console."""

    def __init__(self, label: str, total: int, write: Progress = stderr_lines) -> None:
        self.label = label
        self.total = max(int(total), 1)
        self.write = write
        self.done = 0
        self.started = time.perf_counter()
        self._next = 1

    def step(self, count: int = 1) -> None:
        self.done += count
        if self.done >= self._next or self.done >= self.total:
            elapsed = time.perf_counter() - self.started
            self.write("%s: %d/%d (%.1f s)" % (self.label, min(self.done, self.total), self.total, elapsed))
            self._next = self.done + max(1, self.total // 10)


def iterate_images(bundle: Bundle, paths: Sequence[str], label: str = "preprocessing",
                   progress: Optional[Progress] = stderr_lines) -> Iterator[Tuple[str, preprocess.Preprocessed]]:
    """(path, preprocessed image) for each path, lazily; an undecodable file stops it with its one-line ImageError."""
    lines = ProgressLines(label, len(paths), progress) if progress else None
    for path in paths:
        image = preprocess_image(bundle, path)
        if lines:
            lines.step()
        yield path, image
