"""The device half for Python code: `Device(bundle_dir, tasks=...).run(image)` -> the payload to send.

An image is a path, encoded bytes, a binary file object, a PIL image, or a numpy H x W x 3 uint8 frame (what a
camera gives; OpenCV and GStreamer frames are BGR: pass channel_order="BGR"). A frame becomes a PIL image before
anything else is done to it, so it goes through exactly the preprocessing a file does: a frame and a PNG of the
same pixels give the same payload, byte for byte.

`ladon_deploy.Device` imports this module on first use. Edge subset: Python 3.6-clean, never imports torch, never
imports the server half.
"""
import os
from typing import Any, Sequence, Union

import numpy as np
from PIL import Image

from ladon_deploy.bundle import open_bundle
from ladon_deploy.device.stage import DeviceResult, DeviceStage, select_tasks
from ladon_deploy.errors import FrameError, ImageError

CHANNEL_ORDERS = ("RGB", "BGR")

Tasks = Union[None, str, Sequence[str]]


def frame_to_image(frame: np.ndarray, channel_order: str = "RGB") -> Image.Image:
    """A numpy H x W x 3 uint8 frame -> the RGB PIL image holding the same pixels (BGR frames are reordered)."""
    if channel_order not in CHANNEL_ORDERS:
        raise FrameError("channel_order must be one of %s, got %r" % (", ".join(CHANNEL_ORDERS), channel_order))
    if frame.dtype != np.uint8:
        raise FrameError("a frame must be uint8 (0-255 per channel), got %s: scale and convert it first" % frame.dtype)
    if frame.ndim != 3 or frame.shape[2] != 3:
        raise FrameError("a frame must be H x W x 3 (%s), got shape %s" % (channel_order, tuple(frame.shape)))
    if frame.shape[0] < 1 or frame.shape[1] < 1:
        raise FrameError("a frame must have pixels, got shape %s" % (tuple(frame.shape),))
    rgb = frame[:, :, ::-1] if channel_order == "BGR" else frame
    return Image.fromarray(np.ascontiguousarray(rgb))


class Device(object):
    """The device half of a bundle: image -> preprocess -> encoder -> quantize -> rANS -> payload bytes.

    tasks: the heads the server will run, as a list ("cls", "det", "seg") or a comma-separated string
    ("cls,seg"); None: all the bundle has. stage_options: DeviceStage's keywords, `ladon-run mobile`'s options
    (engine="onnxruntime", threads=None, precision=None, exif_transpose=True, max_pixels=89.5e6, ...).
    """

    def __init__(self, bundle_dir: str, tasks: Tasks = None, **stage_options: Any) -> None:
        bundle = open_bundle(bundle_dir, verify=False)
        bundle.verify(["encoder", "entropy"])  # only what the device loads
        self.tasks = select_tasks(bundle, tasks)
        self.stage = DeviceStage(bundle, **stage_options)

    def run(self, image: Any, channel_order: str = "RGB") -> DeviceResult:
        """One image -> DeviceResult: .payload (bytes), .timings (seconds per step), .latent_shape, .engines,
        .notes (what decoding did to the image). Bad images raise ImageError, bad frames FrameError (a ValueError);
        both are ladon_deploy.errors.LadonError."""
        if isinstance(image, np.ndarray):
            source = frame_to_image(image, channel_order)  # type: Any
        elif channel_order != "RGB":
            raise FrameError("channel_order=%r applies to numpy frames; a %s is decoded as RGB"
                             % (channel_order, type(image).__name__))
        elif hasattr(image, "read") and not isinstance(image, (str, bytes, os.PathLike)):
            source = image.read()  # a binary file object: its encoded bytes
            if not isinstance(source, bytes):
                raise ImageError("the file object gave %s, not bytes: open the image in binary mode ('rb')"
                                 % type(source).__name__)
        else:
            source = image
        return self.stage.run(source, self.tasks)

    def close(self) -> None:
        self.stage.close()
