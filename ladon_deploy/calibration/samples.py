"""Real photographs that ship inside PyPI wheels (scikit-image's skimage/data, matplotlib's sample_data), for
calibrating and testing without downloading anything. A user calibrates on photographs like the device's own."""
import os
import shutil
from typing import List

from ladon_deploy.errors import LadonError

# Photographs only: no charts, silhouettes or synthetic patterns. The grayscale ones reach the model through Pillow's
# RGB conversion, as a user's grayscale photo would.
SKIMAGE_PHOTOS = ("astronaut.png", "brick.png", "camera.png", "chelsea.png", "coffee.png", "coins.png", "grass.png",
                  "gravel.png", "hubble_deep_field.jpg", "ihc.png", "moon.png", "motorcycle_left.png",
                  "motorcycle_right.png", "page.png", "retina.jpg", "rocket.jpg")
MATPLOTLIB_PHOTOS = ("grace_hopper.jpg",)


def photo_sources() -> List[str]:
    """Paths of the sample photographs installed here (scikit-image and/or matplotlib)."""
    sources = []
    try:
        import skimage

        data = os.path.join(os.path.dirname(skimage.__file__), "data")
        sources += [os.path.join(data, name) for name in SKIMAGE_PHOTOS if os.path.isfile(os.path.join(data, name))]
    except ImportError:
        pass
    try:
        import matplotlib

        data = os.path.join(matplotlib.get_data_path(), "sample_data")
        sources += [os.path.join(data, name) for name in MATPLOTLIB_PHOTOS if os.path.isfile(os.path.join(data, name))]
    except ImportError:
        pass
    return sources


def copy_sample_photos(directory: str) -> List[str]:
    """Copies the sample photographs into `directory` (created if needed); refuses when none are installed."""
    sources = photo_sources()
    if not sources:
        raise LadonError("no sample photographs installed: pip install scikit-image matplotlib")
    os.makedirs(directory, exist_ok=True)
    copied = []
    for source in sources:
        destination = os.path.join(directory, os.path.basename(source))
        shutil.copy(source, destination)
        copied.append(destination)
    return copied
