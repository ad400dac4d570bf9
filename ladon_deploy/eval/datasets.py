"""Datasets in their standard layouts, and the view of each image the authors evaluated on.

    ImageNet val   a folder per wnid (val/n01440764/*.JPEG), or a text file of `<file> <wnid>` lines (files relative
                   to the text file's folder). Class index = the wnid's position in the sorted list of the 1000
                   ImageNet-1k wnids (imagenet_wnids.txt), as torchvision's ImageFolder gives on the full val set and
                   as the models' 1000 outputs are ordered; a subset of folders keeps those indices.
    COCO val2017   a folder of images + instances_val2017.json; scored on the annotation file's category ids (1-90
                   with gaps), which is what the detection head emits (torchvision's 91-entry label list).
    VOC2012        VOCdevkit/VOC2012 with ImageSets/Segmentation/val.txt, JPEGImages/<id>.jpg and
                   SegmentationClass/<id>.png (paletted class indices, 255 = void, ignored).

The evaluation views (sc2bench's configs): ImageNet Resize(448) + CenterCrop(416) (scaled with the bundle's input
size), VOC a square resize to the input size (labels nearest-neighbour), COCO the file as it is (the device stage's
own Faster R-CNN transform resizes it). Each view is applied before the device stage sees the image, as the authors'
data loaders did; images are decoded with the device's decoder, EXIF orientation ignored (the annotations are in the
stored pixel frame).
"""
import json
import os
import random
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from ladon_deploy.device.preprocess import decode_image
from ladon_deploy.errors import LadonError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
WNIDS_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "imagenet_wnids.txt")
# ImageNet's evaluation resize side for a 416-pixel crop (sc2bench: Resize 448 + CenterCrop 416).
IMAGENET_RESIZE = 448
IMAGENET_CROP = 416
VOC_IGNORE = 255
TASK_OF = {"imagenet": "cls", "coco": "det", "voc": "seg"}


class DatasetError(LadonError):
    """A dataset folder, list or annotation file that is missing or not in its standard layout."""


class Sample:
    """One image: a stable key (what the journal and results name it by), its file, and its ground truth
    (ImageNet: class index; COCO: the image id; VOC: the label PNG's path)."""

    def __init__(self, key: str, path: str, target: Any) -> None:
        self.key = key
        self.path = path
        self.target = target


class Dataset:
    def __init__(self, kind: str, root: str, samples: List[Sample], description: Dict[str, Any],
                 coco: Any = None) -> None:
        self.kind = kind
        self.task = TASK_OF[kind]
        self.root = root
        self.samples = samples
        self.description = description  # what the result JSON records about the dataset
        self.coco = coco  # pycocotools COCO of the annotations (COCO only)


def imagenet_wnids() -> List[str]:
    with open(WNIDS_FILE) as handle:
        return [line.strip() for line in handle if line.strip()]


def _images_in(folder: str) -> List[str]:
    return sorted(name for name in os.listdir(folder)
                  if name.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(os.path.join(folder, name)))


def open_imagenet(path: str) -> Dataset:
    """ImageNet val from a folder per wnid or from a `<file> <wnid>` text file."""
    index = {wnid: i for i, wnid in enumerate(imagenet_wnids())}
    samples: List[Sample] = []
    if os.path.isdir(path):
        folders = sorted(name for name in os.listdir(path) if os.path.isdir(os.path.join(path, name)))
        if not folders:
            raise DatasetError("%s has no class folders: ImageNet val is laid out as val/<wnid>/*.JPEG (or give a "
                               "text file of '<file> <wnid>' lines)" % path)
        unknown = [name for name in folders if name not in index]
        if unknown:
            raise DatasetError("%s: folder %r is not an ImageNet-1k wnid (expected val/<wnid>/*.JPEG)"
                               % (path, unknown[0]))
        for wnid in folders:
            for name in _images_in(os.path.join(path, wnid)):
                samples.append(Sample("%s/%s" % (wnid, name), os.path.join(path, wnid, name), index[wnid]))
        layout = "folder per wnid"
    elif os.path.isfile(path):
        base = os.path.dirname(os.path.abspath(path))
        with open(path) as handle:
            for number, line in enumerate(handle, 1):
                fields = line.split()
                if not fields:
                    continue
                if len(fields) != 2 or fields[1] not in index:
                    raise DatasetError("%s line %d: expected '<file> <wnid>' with an ImageNet-1k wnid, got %r"
                                       % (path, number, line.strip()[:80]))
                samples.append(Sample(fields[0], os.path.join(base, fields[0]), index[fields[1]]))
        layout = "<file> <wnid> list"
    else:
        raise DatasetError("ImageNet folder or list not found: %s" % path)
    if not samples:
        raise DatasetError("%s holds no images" % path)
    return Dataset("imagenet", path, samples, {"kind": "imagenet", "path": os.path.abspath(path), "layout": layout,
                                               "view": "Resize 448 + CenterCrop 416 (scaled to the input size)"})


def _quiet_coco(annotations: str) -> Any:
    import contextlib
    import io

    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress to stdout
        return COCO(annotations)


def open_coco(images: str, annotations: str) -> Dataset:
    """COCO images + instances json; every image the json lists is a sample (a missing file is an error)."""
    if not os.path.isdir(images):
        raise DatasetError("COCO image folder not found: %s" % images)
    if not os.path.isfile(annotations):
        raise DatasetError("COCO annotation file not found: %s" % annotations)
    try:
        with open(annotations) as handle:
            document = json.load(handle)
    except ValueError as exc:
        raise DatasetError("%s is not valid JSON: %s" % (annotations, exc))
    if not isinstance(document, dict) or not all(k in document for k in ("images", "annotations", "categories")):
        raise DatasetError("%s is not a COCO instances file (it needs 'images', 'annotations' and 'categories')"
                           % annotations)
    try:
        coco = _quiet_coco(annotations)
    except (KeyError, TypeError, AssertionError) as exc:
        raise DatasetError("%s is not a COCO instances file: %s" % (annotations, exc))
    samples = []
    for image_id in sorted(coco.getImgIds()):
        entry = coco.imgs[image_id]
        path = os.path.join(images, entry.get("file_name", ""))
        if not os.path.isfile(path):
            raise DatasetError("%s lists %s, which is not in %s" % (annotations, entry.get("file_name"), images))
        samples.append(Sample(str(image_id), path, int(image_id)))
    if not samples:
        raise DatasetError("%s lists no images" % annotations)
    return Dataset("coco", images, samples, {"kind": "coco", "path": os.path.abspath(images),
                                             "annotations": os.path.abspath(annotations),
                                             "view": "the file as it is (the device's Faster R-CNN transform)"}, coco)


def open_voc(root: str) -> Dataset:
    """VOC2012 segmentation val: ImageSets/Segmentation/val.txt, JPEGImages, SegmentationClass."""
    listing = os.path.join(root, "ImageSets", "Segmentation", "val.txt")
    if not os.path.isdir(root):
        raise DatasetError("VOC folder not found: %s" % root)
    if not os.path.isfile(listing):
        raise DatasetError("%s is not a VOC2012 folder: it has no ImageSets/Segmentation/val.txt" % root)
    samples = []
    with open(listing) as handle:
        for name in (line.strip() for line in handle):
            if not name:
                continue
            image = os.path.join(root, "JPEGImages", name + ".jpg")
            label = os.path.join(root, "SegmentationClass", name + ".png")
            for path in (image, label):
                if not os.path.isfile(path):
                    raise DatasetError("%s lists %s, but %s is missing" % (listing, name, path))
            samples.append(Sample(name, image, label))
    if not samples:
        raise DatasetError("%s lists no images" % listing)
    return Dataset("voc", root, samples, {"kind": "voc", "path": os.path.abspath(root), "split": "val",
                                          "view": "square resize to the input size, labels nearest"})


def subset(samples: Sequence[Sample], limit: Optional[int], seed: int) -> List[Sample]:
    """`limit` samples drawn without replacement by a Random(seed), kept in dataset order; all when limit is None."""
    if limit is None or limit >= len(samples):
        return list(samples)
    chosen = sorted(random.Random(seed).sample(range(len(samples)), limit))
    return [samples[i] for i in chosen]


def _load(path: str) -> Image.Image:
    return decode_image(path, exif_transpose=False)[0]


def imagenet_view(image: Image.Image, input_size: int) -> Image.Image:
    """torchvision Resize(shorter side) + CenterCrop(input_size) on a PIL image, as the authors' loader did."""
    resize = int(round(input_size * IMAGENET_RESIZE / float(IMAGENET_CROP)))
    width, height = image.size
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = resize, int(resize * long / short)
    size = (new_short, new_long) if width <= height else (new_long, new_short)
    resized = image.resize(size, Image.BILINEAR)
    top = int(round((size[1] - input_size) / 2.0))
    left = int(round((size[0] - input_size) / 2.0))
    return resized.crop((left, top, left + input_size, top + input_size))


def voc_label(path: str) -> Image.Image:
    try:
        label = Image.open(path)
        label.load()
    except (OSError, ValueError) as exc:
        raise DatasetError("cannot read label %s: %s" % (path, exc))
    if label.mode not in ("P", "L"):
        raise DatasetError("%s is a %s image, not a class-index PNG (mode P or L)" % (path, label.mode))
    return label


def load_view(dataset: Dataset, sample: Sample, input_size: int) -> Tuple[Any, Tuple[int, int], Any]:
    """(what the device stage gets, the file's (height, width), the ground truth in the view's frame)."""
    if dataset.kind == "coco":
        with Image.open(sample.path) as header:
            width, height = header.size
        return sample.path, (height, width), sample.target
    image = _load(sample.path)
    original = (image.size[1], image.size[0])
    if dataset.kind == "imagenet":
        return imagenet_view(image, input_size), original, sample.target
    label = voc_label(sample.target)
    if label.size != image.size:
        raise DatasetError("%s is %dx%d but its image is %dx%d" % (sample.target, label.size[0], label.size[1],
                                                                   image.size[0], image.size[1]))
    square = (input_size, input_size)
    view = image.resize(square, Image.BILINEAR)
    target = np.asarray(label.resize(square, Image.NEAREST), dtype=np.uint8)
    return view, original, target


def open_dataset(imagenet: Optional[str] = None, coco: Optional[str] = None, coco_annotations: Optional[str] = None,
                 voc: Optional[str] = None) -> Dataset:
    """The one dataset the options name."""
    given = [name for name, value in (("--imagenet", imagenet), ("--coco", coco), ("--voc", voc)) if value]
    if len(given) != 1:
        raise DatasetError("give exactly one dataset: --imagenet DIR|FILE, --coco DIR --coco-annotations JSON or "
                           "--voc DIR (got %s)" % (", ".join(given) or "none"))
    if imagenet:
        return open_imagenet(imagenet)
    if coco:
        if not coco_annotations:
            raise DatasetError("--coco needs --coco-annotations instances_val2017.json")
        return open_coco(coco, coco_annotations)
    return open_voc(str(voc))
