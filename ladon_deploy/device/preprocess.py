"""Image decoding and preprocessing for the mobile stage, in numpy + Pillow only.

The model was evaluated on tensors produced by torchvision, so this module reproduces that arithmetic rather
than "something equivalent": a different resize kernel or rounding order moves the latent, and with it the
entropy-coded payload and the task accuracy.

Two policies:

- ``"longer_side"`` (default): torchvision's ``GeneralizedRCNNTransform(min_size=size, max_size=size, mean, std)`` applied
  to ``to_tensor(image)``, in eval mode and eager (not scripted/traced) execution: normalize, bilinear resize so
  the longer side becomes ``size`` (aspect ratio kept), zero-pad bottom/right to a multiple of 32.
- ``"square"``: normalize, then bilinear resize to exactly ``size`` x ``size``; no padding.

Image loading starts from ``PIL.Image.open(...).convert("RGB")`` (what the torchvision reference datasets do for
RGB, CMYK, palette and 8-bit grayscale files), with four differences a user's photo needs, each reported as a note
(``Preprocessed.notes``) so that the command line can say what was done:

- EXIF orientation is applied (as ``PIL.ImageOps.exif_transpose``), so boxes and masks come back in the frame every
  viewer shows, not the sensor's; ``exif_transpose=False`` turns it off.
- 16-bit grayscale (modes I;16 and I, e.g. 16-bit PNGs) is scaled to 8 bits (``convert("RGB")`` clips it at 255).
- transparent pixels are composited onto white (``convert("RGB")`` drops alpha, showing whatever colour the
  transparent pixels happen to hold).
- of a multi-frame file (animated GIF, multi-page TIFF) the first frame is used, and the note says so.

Images with more than ``max_pixels`` pixels are refused from the header, before decoding; the limit replaces
Pillow's own decompression-bomb limit (89.5 MP), so it can be raised for a 108 MP phone photo.

Memory: ``preprocess`` holds no full-size copy beyond Pillow's decoded image. The resize reads at most two source
rows and columns per output pixel, so only those rows are taken from the decoded image, a band of a few MB at a
time, and converted to RGB per band; the EXIF orientation is applied to the small gathered block. The result is
bit for bit what converting, rotating and copying the whole image first gives (``decode_image`` +
``preprocess_array``, still here for callers that want the whole RGB image). ``fast_decode=True`` lets the JPEG
decoder downscale by its DCT (Pillow's draft mode) to no less than the resize's output size: far less memory and
time, but no longer the evaluated arithmetic (the payload changes; ``ladon_deploy.bench.memory --fast-decode``
measures how much).

On the edge import path: Python 3.6 / numpy 1.19 clean, never imports torch.
"""

import contextlib
import io
import math
import os
import struct
import threading
import zlib
from typing import Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image

from ladon_deploy.errors import ImageError

POLICY_LONGER_SIDE = "longer_side"
POLICY_SQUARE = "square"
POLICIES = (POLICY_LONGER_SIDE, POLICY_SQUARE)

DEFAULT_SIZE = 416
SIZE_DIVISIBLE = 32
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Pillow's decompression-bomb threshold (89,478,485 pixels), as users quote it; the CLI's --max-megapixels default.
DEFAULT_MAX_MEGAPIXELS = 89.5
DEFAULT_MAX_PIXELS = int(DEFAULT_MAX_MEGAPIXELS * 1e6)

# Pillow's limit is a module global read while opening and while loading some formats (GIF frames); ours replaces
# it for the duration of one decode (none while the header is read: ours is checked right after, without Pillow's
# warning on stderr; ours while frames load), and the lock keeps two threads from restoring each other's value.
_PILLOW_LIMIT_LOCK = threading.Lock()

_EXIF_ORIENTATION = 0x0112
_TRANSPOSE = getattr(Image, "Transpose", Image)  # Pillow >= 9.1 moved the constants into an enum
# EXIF orientation -> the transpose that displays it, as PIL.ImageOps.exif_transpose applies it.
_ORIENTATIONS = {
    2: (_TRANSPOSE.FLIP_LEFT_RIGHT, "mirrored left-right"),
    3: (_TRANSPOSE.ROTATE_180, "rotated 180 degrees"),
    4: (_TRANSPOSE.FLIP_TOP_BOTTOM, "mirrored top-bottom"),
    5: (_TRANSPOSE.TRANSPOSE, "transposed"),
    6: (_TRANSPOSE.ROTATE_270, "rotated 90 degrees clockwise"),
    7: (_TRANSPOSE.TRANSVERSE, "transversed"),
    8: (_TRANSPOSE.ROTATE_90, "rotated 90 degrees counter-clockwise"),
}
# EXIF orientation -> (swap axes, flip the displayed rows, flip the displayed columns): the same transposes as index
# arithmetic, applied to the few rows and columns the resize reads instead of to the whole image.
_ORIENTATION_AXES = {2: (False, False, True), 3: (False, True, True), 4: (False, True, False), 5: (True, False, False),
                     6: (True, False, True), 7: (True, True, True), 8: (True, True, False)}
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
# How much of the decoded image is converted to RGB at once (the only full-width copies preprocess makes).
BAND_BYTES = 1 << 20
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")

# Pillow's plugins report corrupt data through a mix of exception types, not only OSError.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, struct.error, zlib.error)

ImageSource = Union[str, bytes, bytearray, memoryview, os.PathLike, Image.Image]


class Preprocessed(object):
    """The network input and the sizes needed to map results back to the original image.

    ``tensor``: float32 array [1, 3, Hp, Wp] (padded); ``original_size``: (H, W) of the decoded image (after the
    EXIF orientation); ``resized_size``: (H, W) of the resized image before padding (the region holding real
    pixels); ``notes``: what decoding did to the file's pixels (orientation, alpha, bit depth, frames), one
    sentence each.
    """

    __slots__ = ("tensor", "original_size", "resized_size", "notes")

    def __init__(self, tensor: np.ndarray, original_size: Tuple[int, int], resized_size: Tuple[int, int],
                 notes: Optional[List[str]] = None) -> None:
        self.tensor = tensor
        self.original_size = original_size
        self.resized_size = resized_size
        self.notes = list(notes or [])

    @property
    def padded_size(self) -> Tuple[int, int]:
        return int(self.tensor.shape[2]), int(self.tensor.shape[3])

    def __repr__(self) -> str:
        return "Preprocessed(tensor=float32%s, original_size=%s, resized_size=%s)" % (
            list(self.tensor.shape), self.original_size, self.resized_size)


def _describe(source: object) -> str:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return "<%d bytes>" % len(source)
    try:
        return os.fspath(source)  # type: ignore[arg-type]
    except TypeError:
        return "<%s>" % type(source).__name__


def load_image(source: ImageSource, max_pixels: Optional[int] = DEFAULT_MAX_PIXELS,
               exif_transpose: bool = True) -> Image.Image:
    """Decode ``source`` (path, encoded bytes or a PIL image) into a fully loaded RGB PIL image; see decode_image."""
    return decode_image(source, max_pixels, exif_transpose)[0]


def decode_image(source: ImageSource, max_pixels: Optional[int] = DEFAULT_MAX_PIXELS,
                 exif_transpose: bool = True) -> Tuple[Image.Image, List[str]]:
    """Decode ``source`` into a fully loaded RGB PIL image and the notes on what decoding did (module docstring).

    Raises ImageError for missing, empty, unreadable, corrupt or truncated files and for images with more than
    ``max_pixels`` pixels (None: no limit), checked from the header before the pixel data is decoded.
    """
    with _opened(source, max_pixels) as (image, name):
        return _decode(image, name, max_pixels, exif_transpose)


@contextlib.contextmanager
def _opened(source: ImageSource, max_pixels: Optional[int]) -> Iterator[Tuple[Image.Image, str]]:
    """The opened (not yet decoded) image and its name for messages, with ``max_pixels`` as Pillow's limit."""
    if isinstance(source, Image.Image):
        yield source, "<PIL image>"
        return
    name = _describe(source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise ImageError("image data is empty (0 bytes)")
        fp = io.BytesIO(bytes(source))
    else:
        try:
            path = os.fspath(source)  # type: ignore[arg-type]
        except TypeError:
            raise ImageError("cannot read an image from a %s" % type(source).__name__)
        if not os.path.exists(path):
            raise ImageError("%s: no such file" % name)
        if os.path.isdir(path):
            raise ImageError("%s: is a directory, not an image file" % name)
        try:
            if os.path.getsize(path) == 0:
                raise ImageError("%s: file is empty (0 bytes)" % name)
            fp = open(path, "rb")
        except OSError as exc:
            raise ImageError("%s: cannot open: %s" % (name, exc.strerror or exc))
    try:
        with _PILLOW_LIMIT_LOCK:
            pillow_limit = Image.MAX_IMAGE_PIXELS
            Image.MAX_IMAGE_PIXELS = None
            try:
                try:
                    image = Image.open(fp)
                except _DECODE_ERRORS:
                    raise ImageError("%s: not a readable image file (unknown format or corrupt header)" % name)
                Image.MAX_IMAGE_PIXELS = max_pixels
                # Pillow does not close a file object it was handed (the finally below does); closing the image
                # instead would also discard the pixels of an image that is already RGB.
                yield image, name
            finally:
                Image.MAX_IMAGE_PIXELS = pillow_limit
    finally:
        fp.close()


def _orientation(image: Image.Image) -> Optional[int]:
    try:
        value = image.getexif().get(_EXIF_ORIENTATION)
    except _DECODE_ERRORS + (KeyError,):
        return None  # a corrupt EXIF block says nothing reliable about orientation
    return value if value in _ORIENTATIONS else None


def _check_pixels(image: Image.Image, name: str, max_pixels: Optional[int]) -> None:
    width, height = image.size
    if width <= 0 or height <= 0:
        raise ImageError("%s: image has no pixels (%dx%d)" % (name, width, height))
    if max_pixels is not None and width * height > max_pixels:
        raise ImageError("%s: image is %dx%d = %.1f MP, too large to decode safely under the limit of %.1f MP "
                         "(raise it with --max-megapixels)" % (name, width, height, width * height / 1e6,
                                                                max_pixels / 1e6))


def _frame_notes(image: Image.Image) -> List[str]:
    frames = getattr(image, "n_frames", 1)
    # An MPO (many phones' JPEGs) keeps the photo in frame 0 and previews or depth maps after it: nothing to say.
    if frames > 1 and image.format != "MPO":
        return ["the first of %d frames was used" % frames]
    return []


def _orientation_note(orientation: int, exif_transpose: bool) -> str:
    description = _ORIENTATIONS[orientation][1]
    if exif_transpose:
        return "EXIF orientation %d applied: %s to the frame viewers show" % (orientation, description)
    return "EXIF orientation %d (%s) ignored: the sensor's frame is used" % (orientation, description)


@contextlib.contextmanager
def _decoding(image: Image.Image, name: str) -> Iterator[None]:
    """Pillow's errors while pixels are decoded or converted, as one-line ImageErrors."""
    try:
        yield
    except Image.DecompressionBombError as exc:
        raise ImageError("%s: a frame is too large to decode safely (%s)" % (name, exc))
    except _DECODE_ERRORS as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ImageError("%s: cannot decode %s image: %s" % (name, image.format or image.mode, reason))


def _decode(image: Image.Image, name: str, max_pixels: Optional[int],
            exif_transpose: bool) -> Tuple[Image.Image, List[str]]:
    _check_pixels(image, name, max_pixels)
    orientation = _orientation(image)
    notes = _frame_notes(image)
    with _decoding(image, name):
        # load() before convert() so that truncation surfaces here as an error instead of inside convert().
        image.load()
        rgb = _to_rgb(image, notes)
    if orientation is not None:
        if exif_transpose:
            rgb = rgb.transpose(_ORIENTATIONS[orientation][0])
        notes.append(_orientation_note(orientation, exif_transpose))
    return rgb, notes


def _to_rgb(image: Image.Image, notes: List[str]) -> Image.Image:
    conversion = _conversion(image)
    composite = conversion == "alpha" and _min_alpha(image) < 255
    notes.extend(_conversion_notes(image, conversion, composite))
    return _convert(image, conversion, composite)


def _conversion(image: Image.Image) -> str:
    """How the image becomes RGB: "rgb" (as it is), "16-bit", "alpha" (maybe onto white) or "convert"."""
    if image.mode == "RGB":
        return "rgb"
    if image.mode in _SIXTEEN_BIT_MODES:
        return "16-bit"
    if image.mode in _ALPHA_MODES or "transparency" in image.info:
        return "alpha"
    return "convert"


def _conversion_notes(image: Image.Image, conversion: str, composite: bool) -> List[str]:
    if conversion == "16-bit":
        return ["16-bit grayscale (%s) scaled to 8 bits" % image.mode]
    if composite:
        return ["transparent pixels composited onto white"]
    return []


def _min_alpha(image: Image.Image) -> int:
    """The smallest alpha of the whole image, as ``convert("RGBA")`` would give it, one band at a time."""
    if image.mode in ("RGBA", "LA"):
        return int(image.getextrema()[-1][0])  # the alpha band's extrema, without a copy
    lowest = 255
    for top, bottom in _bands(image, range(image.size[1])):
        lowest = min(lowest, image.crop((0, top, image.size[0], bottom)).convert("RGBA").getchannel("A")
                     .getextrema()[0])
    return lowest


def _convert(image: Image.Image, conversion: str, composite: bool) -> Image.Image:
    """The RGB image; every conversion is per pixel, so converting a band gives that band of the whole result."""
    if conversion == "rgb":
        return image
    if conversion == "16-bit":
        values = np.asarray(image).astype(np.float64)
        # 65535 -> 255 and 257 * v -> v: the scaling every 16-to-8-bit converter uses, rounded to nearest.
        gray = np.floor(np.clip(values, 0, 65535) * (255.0 / 65535.0) + 0.5).astype(np.uint8)
        return Image.fromarray(gray, "L").convert("RGB")
    if conversion == "alpha":
        rgba = image.convert("RGBA")
        if composite:
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return Image.alpha_composite(white, rgba).convert("RGB")
        return rgba.convert("RGB")
    return image.convert("RGB")


def _bands(image: Image.Image, rows: Sequence[int]) -> Iterator[Tuple[int, int]]:
    """(top, bottom) row ranges covering the sorted ``rows``, each at most BAND_BYTES of RGBA-sized pixels tall."""
    height = max(1, BAND_BYTES // (4 * image.size[0]))
    index = 0
    while index < len(rows):
        top = int(rows[index])
        last = index
        while last + 1 < len(rows) and rows[last + 1] < top + height:
            last += 1
        yield top, int(rows[last]) + 1
        index = last + 1


def resized_size(height: int, width: int, size: int = DEFAULT_SIZE, policy: str = POLICY_LONGER_SIDE) -> Tuple[int, int]:
    """The (H, W) the image is resized to before padding, exactly as torchvision computes it."""
    _check_params(size, policy)
    if policy == POLICY_SQUARE:
        return size, size
    # Eager torchvision computes the scale in Python floats (double), and F.interpolate truncates
    # in_size * scale_factor; double rounding makes the long side size-1 for some sizes (e.g. 360 -> 415).
    scale = min(float(size) / min(height, width), float(size) / max(height, width))
    return int(height * scale), int(width * scale)


def _check_params(size: int, policy: str) -> None:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise ValueError("size must be a positive integer, got %r" % (size,))
    if policy not in POLICIES:
        raise ValueError("unknown preprocessing policy %r (expected one of %s)" % (policy, ", ".join(POLICIES)))


def _linear_taps(in_size: int, out_size: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Source indices and weights of torch's CPU upsample_bilinear2d (align_corners=False) along one axis.

    Follows ATen's ``area_pixel_compute_source_index`` and ``guard_index_and_lambda`` in float32, so the
    weights are bit-identical to torch's.
    """
    if out_size == in_size:
        idx = np.arange(out_size, dtype=np.int64)
        return idx, idx, np.ones(out_size, np.float32), np.zeros(out_size, np.float32)
    ratio = np.float32(in_size) / np.float32(out_size)
    # torch's compiled kernel contracts `ratio * (dst + 0.5) - 0.5` into one fused multiply-add (a single
    # float32 rounding). Plain float32 numpy rounds twice and moves lambdas by up to 1 ulp of the source
    # index (~1.5e-5 near 256), i.e. output errors of ~6e-5. In float64 the product of a 24-bit ratio and a
    # half-integer < 2**24 and the subtraction are exact, so one cast to float32 rounds exactly like the FMA.
    dst = np.arange(out_size, dtype=np.float64)
    src = (np.float64(ratio) * (dst + 0.5) - 0.5).astype(np.float32)
    src = np.maximum(src, np.float32(0.0))
    idx0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    lam1 = np.clip(src - idx0.astype(np.float32), np.float32(0.0), np.float32(1.0)).astype(np.float32)
    idx1 = idx0 + (idx0 < in_size - 1).astype(np.int64)
    lam0 = (np.float32(1.0) - lam1).astype(np.float32)
    return idx0, idx1, lam0, lam1


def _interpolate(chw: np.ndarray, rows: Tuple[np.ndarray, ...], cols: Tuple[np.ndarray, ...]) -> np.ndarray:
    r0, r1, rl0, rl1 = rows
    c0, c1, cl0, cl1 = cols
    # ATen's Interpolate<2> blends along W within each source row, then blends the two rows; its compiled
    # form is `fma(t0, w0, t1 * w1)` at both levels. Forming that in float64 (a float32 product is exact there)
    # and rounding once reproduces torch's CPU output bit for bit, where plain float32 is off by 1-2 ulp.
    # An axis whose size does not change is an exact identity (weights 1 and 0); skipping it keeps a 416x416
    # photo's preprocessing to a normalize.
    horiz = chw if _is_identity(cols, chw.shape[2]) else _fma32(chw[:, :, c0], cl0, chw[:, :, c1] * cl1)
    if _is_identity(rows, horiz.shape[1]):
        return horiz
    return _fma32(horiz[:, r0, :], rl0[:, None], horiz[:, r1, :] * rl1[:, None])


def _is_identity(taps: Tuple[np.ndarray, ...], in_size: int) -> bool:
    idx0, _, _, lam1 = taps
    return len(idx0) == in_size and not lam1.any() and bool((idx0 == np.arange(in_size)).all())


def _fma32(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    return (a.astype(np.float64) * b.astype(np.float64) + c).astype(np.float32)


def resize_bilinear(chw: np.ndarray, out_height: int, out_width: int) -> np.ndarray:
    """Resize a float32 [C, H, W] array like ``F.interpolate(mode="bilinear", align_corners=False)`` on CPU."""
    if chw.ndim != 3:
        raise ValueError("expected a [C, H, W] array, got shape %s" % (chw.shape,))
    if out_height < 1 or out_width < 1:
        raise ValueError("output size must be positive, got %dx%d" % (out_height, out_width))
    chw = np.asarray(chw, dtype=np.float32)
    rows = _linear_taps(chw.shape[1], out_height)
    cols = _linear_taps(chw.shape[2], out_width)
    return _interpolate(chw, rows, cols)


def _compact(taps: Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]) -> Tuple[np.ndarray, Tuple[np.ndarray, ...]]:
    """The distinct source indices an axis reads, and the taps re-expressed as positions in that list."""
    idx0, idx1, lam0, lam1 = taps
    used = np.unique(np.concatenate([idx0, idx1]))
    return used, (np.searchsorted(used, idx0), np.searchsorted(used, idx1), lam0, lam1)


def preprocess_array(rgb: np.ndarray, size: int = DEFAULT_SIZE, policy: str = POLICY_LONGER_SIDE,
                     mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                     size_divisible: int = SIZE_DIVISIBLE) -> Preprocessed:
    """Preprocess an RGB uint8 [H, W, 3] array (as ``np.asarray(pil_rgb_image)`` gives)."""
    _check_params(size, policy)
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ImageError("expected an RGB uint8 array of shape [H, W, 3], got %s %s" % (rgb.dtype, rgb.shape))
    height, width = int(rgb.shape[0]), int(rgb.shape[1])
    if height < 1 or width < 1:
        raise ImageError("image has no pixels (%dx%d)" % (width, height))
    plan = _ResizePlan((height, width), (height, width), size, policy)
    return plan.finish(rgb[plan.used_rows][:, plan.used_cols], mean, std, size_divisible)


class _ResizePlan(object):
    """Which source rows and columns the resize reads, and how it blends them (torch's taps, compacted).

    A downscale reads at most two source rows/columns per output pixel, so normalizing only those (exactly the
    values torchvision's full-image normalize would produce there) keeps memory at the output's scale even for a
    50-megapixel photo on a 4 GB Jetson. ``source_size`` is the image the pixels come from (smaller than
    ``original_size`` after a JPEG draft decode); the output size always follows ``original_size``.
    """

    def __init__(self, original_size: Tuple[int, int], source_size: Tuple[int, int], size: int,
                 policy: str) -> None:
        self.original_size = original_size
        height, width = original_size
        self.out_h, self.out_w = resized_size(height, width, size, policy)
        if self.out_h < 1 or self.out_w < 1:
            raise ImageError("image %dx%d is too elongated: it would resize to %dx%d"
                             % (width, height, self.out_w, self.out_h))
        self.policy = policy
        self.used_rows, self.rows = _compact(_linear_taps(source_size[0], self.out_h))
        self.used_cols, self.cols = _compact(_linear_taps(source_size[1], self.out_w))

    def finish(self, block: np.ndarray, mean: Sequence[float], std: Sequence[float],
               size_divisible: int) -> Preprocessed:
        """Normalize the gathered uint8 [rows, cols, 3] block, resize it and pad it: the network input."""
        out_h, out_w = self.out_h, self.out_w
        if self.policy == POLICY_LONGER_SIDE and size_divisible > 1:
            pad_h = int(math.ceil(float(out_h) / size_divisible) * size_divisible)
            pad_w = int(math.ceil(float(out_w) / size_divisible) * size_divisible)
        else:
            pad_h, pad_w = out_h, out_w
        tensor = np.zeros((1, 3, pad_h, pad_w), dtype=np.float32)
        identity = block.shape[:2] == (out_h, out_w) and _is_identity(self.rows, out_h) and \
            _is_identity(self.cols, out_w)
        # In place, and straight into the tensor when the resize is an identity: the same float32 operations in the
        # same order as torchvision's (x / 255 - mean) / std, without a temporary per step.
        chw = tensor[0, :, :out_h, :out_w] if identity else np.empty((3,) + block.shape[:2], dtype=np.float32)
        chw[...] = block.transpose(2, 0, 1)
        chw /= np.float32(255.0)
        chw -= np.asarray(mean, dtype=np.float32).reshape(3, 1, 1)
        chw /= np.asarray(std, dtype=np.float32).reshape(3, 1, 1)
        if not identity:
            tensor[0, :, :out_h, :out_w] = _interpolate(chw, self.rows, self.cols)
        return Preprocessed(tensor, self.original_size, (out_h, out_w))


def preprocess(source: ImageSource, size: int = DEFAULT_SIZE, policy: str = POLICY_LONGER_SIDE,
               mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
               size_divisible: int = SIZE_DIVISIBLE, max_pixels: Optional[int] = DEFAULT_MAX_PIXELS,
               exif_transpose: bool = True, fast_decode: bool = False) -> Preprocessed:
    """Load ``source`` (path, encoded bytes or PIL image) and preprocess it; see the module docstring.

    Bit for bit ``preprocess_array(np.asarray(decode_image(source)))`` (unless ``fast_decode``), without its
    full-size RGB copies: the decoded image is read in bands and released before this returns.
    """
    _check_params(size, policy)
    with _opened(source, max_pixels) as opened:
        plan, block, notes = _gather(opened[0], opened[1], max_pixels, exif_transpose, size, policy, fast_decode)
    del opened  # the last reference to the decoded image (ours): its memory is free before the float work
    result = plan.finish(block, mean, std, size_divisible)
    result.notes = notes
    return result


def _gather(image: Image.Image, name: str, max_pixels: Optional[int], exif_transpose: bool, size: int,
            policy: str, fast_decode: bool) -> Tuple[_ResizePlan, np.ndarray, List[str]]:
    """The resize plan, the uint8 RGB pixels it reads (in the displayed frame) and the decoding notes."""
    _check_pixels(image, name, max_pixels)
    orientation = _orientation(image)
    swap, flip_rows, flip_cols = _ORIENTATION_AXES.get(orientation, (False, False, False)) if exif_transpose \
        else (False, False, False)
    notes = _frame_notes(image)
    width, height = image.size
    displayed = (width, height) if swap else (height, width)
    with _decoding(image, name):
        if fast_decode and image.format == "JPEG":
            out_h, out_w = resized_size(displayed[0], displayed[1], size, policy)
            image.draft(image.mode, (out_h, out_w) if swap else (out_w, out_h))
            if image.size != (width, height):
                notes.append("fast decode: the JPEG was decoded at 1/%d scale (%dx%d), not bit-exact"
                             % (int(round(float(width) / image.size[0])), image.size[0], image.size[1]))
        source_size = (image.size[0], image.size[1]) if swap else (image.size[1], image.size[0])
        plan = _ResizePlan(displayed, source_size, size, policy)
        image.load()
        conversion = _conversion(image)
        composite = conversion == "alpha" and _min_alpha(image) < 255
        notes.extend(_conversion_notes(image, conversion, composite))
        # The displayed frame's rows and columns the resize reads, as rows and columns of the stored image.
        rows = source_size[0] - 1 - plan.used_rows if flip_rows else plan.used_rows
        cols = source_size[1] - 1 - plan.used_cols if flip_cols else plan.used_cols
        stored_rows, stored_cols = (cols, rows) if swap else (rows, cols)
        block = _read_pixels(image, stored_rows, stored_cols, conversion, composite)
    if orientation is not None:
        notes.append(_orientation_note(orientation, exif_transpose))
    return plan, block.transpose(1, 0, 2) if swap else block, notes


def _read_pixels(image: Image.Image, rows: np.ndarray, cols: np.ndarray, conversion: str,
                 composite: bool) -> np.ndarray:
    """RGB uint8 pixels [len(rows), len(cols), 3] at the given rows and columns of the stored image, converted a
    band of rows at a time (rows and columns: distinct, each sorted ascending or descending)."""
    order = np.argsort(rows, kind="stable")
    ascending = rows[order]
    block = np.empty((len(rows), len(cols), 3), dtype=np.uint8)
    columns = _as_slice(cols)
    done = 0
    for top, bottom in _bands(image, ascending):
        count = int(np.searchsorted(ascending, bottom)) - done
        band = _convert(image.crop((0, top, image.size[0], bottom)), conversion, composite)
        # np.asarray(band) would go through Pillow's __array_interface__, whose buffers older Pillow/numpy pairs
        # (8.4 / 1.19, JetPack 4.6) free only at the next garbage collection: 50 MB of bands at 48 MP.
        pixels = np.frombuffer(band.tobytes(), dtype=np.uint8).reshape(bottom - top, image.size[0], 3)
        band_rows = _as_slice(ascending[done:done + count] - top)
        destination = _as_slice(order[done:done + count])
        if band_rows is not None and columns is not None and destination is not None:
            # Runs of neighbouring rows and columns (all of them when the resize is an identity): plain copies,
            # 3x faster than the gather below at 416x416, and the same bytes.
            block[destination] = pixels[band_rows, columns]
        else:
            block[order[done:done + count]] = pixels[np.ix_(ascending[done:done + count] - top, cols)]
        done += count
    return block


def _as_slice(indices: np.ndarray) -> Optional[slice]:
    """The slice that selects exactly ``indices`` when they run in steps of +1 or -1, else None."""
    if len(indices) == 0:
        return None
    first, last = int(indices[0]), int(indices[-1])
    if len(indices) == 1:
        return slice(first, first + 1)
    step = 1 if last > first else -1
    if not (np.diff(indices) == step).all():
        return None
    return slice(first, last + step if last + step >= 0 else None, step)
