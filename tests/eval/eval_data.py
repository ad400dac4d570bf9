"""Tiny datasets in the standard layouts, made in the tests (nothing downloads), and `ladon-run split` as users run it."""
import json
import os

import numpy as np
from PIL import Image

from images import make_image


def ladon_run_split(bundle, image, capsys, tasks, extra=()):
    """`ladon-run split --json` on one image file: its JSON document."""
    from ladon_deploy.cli_support import run_command
    from ladon_deploy.runtime.cli import PROG, main

    capsys.readouterr()
    code = run_command(PROG, main, ["split", "--bundle", bundle, "--image", image, "--tasks", tasks, "--json",
                                    "--no-exif-transpose"] + list(extra))
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return json.loads(captured.out)


def write_coco(directory, images, annotations, categories=((1, "person"), (3, "car"), (18, "dog"))):
    """A COCO instances file over `images` [(id, file, height, width)] and `annotations` [(image_id, cat, xywh)]."""
    document = {
        "info": {}, "licenses": [],
        "images": [{"id": i, "file_name": f, "height": h, "width": w} for i, f, h, w in images],
        "annotations": [{"id": n + 1, "image_id": i, "category_id": c, "bbox": list(b), "area": b[2] * b[3],
                         "iscrowd": 0} for n, (i, c, b) in enumerate(annotations)],
        "categories": [{"id": c, "name": name, "supercategory": "x"} for c, name in categories],
    }
    path = os.path.join(str(directory), "instances_val2017.json")
    with open(path, "w") as handle:
        json.dump(document, handle)
    return path


def write_voc_label(path, label):
    from ladon_deploy.server.postprocess import save_mask_png

    save_mask_png(np.asarray(label, dtype=np.uint8), path)


def make_voc(root, names_and_sizes, seed=0):
    """VOCdevkit/VOC2012 layout with images; labels are written by the caller (write_voc_label)."""
    os.makedirs(os.path.join(root, "ImageSets", "Segmentation"))
    os.makedirs(os.path.join(root, "JPEGImages"))
    os.makedirs(os.path.join(root, "SegmentationClass"))
    with open(os.path.join(root, "ImageSets", "Segmentation", "val.txt"), "w") as handle:
        handle.write("".join(name + "\n" for name, _ in names_and_sizes))
    for index, (name, (height, width)) in enumerate(names_and_sizes):
        # JPEG as VOC ships it: quality 95 keeps the synthetic image close to its PNG source.
        png = make_image(os.path.join(root, "JPEGImages", name + ".png"), height, width, seed + index)
        Image.open(png).save(os.path.join(root, "JPEGImages", name + ".jpg"), quality=95)
        os.remove(png)
    return str(root)
