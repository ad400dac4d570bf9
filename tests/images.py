"""Test images: synthetic photo-like pictures made on the fly (nothing is downloaded)."""
import numpy as np
from PIL import Image


def make_image(path, height, width, seed):
    """A synthetic photo-like image: smooth colour gradients, blocks and noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([xx * 255.0 / width, yy * 255.0 / height, (xx + yy) * 127.0 / (height + width)], -1)
    blocks = np.kron(rng.integers(0, 120, (height // 24 + 1, width // 24 + 1, 3)), np.ones((24, 24, 1)))
    pixels = base * 0.6 + blocks[:height, :width] + rng.normal(0, 25, (height, width, 3))
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(str(path))
    return str(path)
