"""Each layout parsed; bad input is one line and exit 2."""
import json
import os

import numpy as np
import pytest
from PIL import Image

from cli_helpers import command_runner
from eval_data import make_voc, write_coco, write_voc_label
from images import make_image
from ladon_deploy.eval import datasets
from ladon_deploy.eval.cli import PROG, main

_run, _one_line_error = command_runner(PROG, main)


def test_imagenet_folder_per_wnid_indexes_by_the_sorted_1000_wnids(tmp_path):
    for wnid in ("n15075141", "n01440764"):  # the last and the first ImageNet-1k wnid
        os.makedirs(str(tmp_path / wnid))
        make_image(tmp_path / wnid / "a.JPEG", 20, 30, 1)
    (tmp_path / "n01440764" / "notes.txt").write_text("not an image")
    dataset = datasets.open_imagenet(str(tmp_path))
    assert [(s.key, s.target) for s in dataset.samples] == [("n01440764/a.JPEG", 0), ("n15075141/a.JPEG", 999)]
    wnids = datasets.imagenet_wnids()
    assert len(wnids) == len(set(wnids)) == 1000 and wnids == sorted(wnids)


def test_imagenet_file_wnid_list(tmp_path):
    make_image(tmp_path / "x.JPEG", 20, 30, 1)
    listing = tmp_path / "val.txt"
    listing.write_text("x.JPEG n01443537\n\n")
    dataset = datasets.open_imagenet(str(listing))
    assert [(s.key, s.target, s.path) for s in dataset.samples] == [("x.JPEG", 1, str(tmp_path / "x.JPEG"))]


def test_imagenet_view_is_resize_448_and_center_crop_416():
    image = Image.new("RGB", (600, 500))
    view = datasets.imagenet_view(image, 416)
    assert view.size == (416, 416)
    # torchvision: shorter side 500 -> 448, longer int(448 * 600 / 500) = 537; crop left round((537 - 416) / 2) = 60
    pixels = np.zeros((500, 600, 3), np.uint8)
    pixels[:, 300:] = 255
    resized = Image.fromarray(pixels).resize((537, 448), Image.BILINEAR)
    expected = np.asarray(resized)[16:432, 60:476]
    assert (np.asarray(datasets.imagenet_view(Image.fromarray(pixels), 416)) == expected).all()


def test_coco_layout(tmp_path):
    make_image(tmp_path / "a.jpg", 40, 50, 1)
    make_image(tmp_path / "b.jpg", 30, 20, 2)
    annotations = write_coco(tmp_path, [(7, "a.jpg", 40, 50), (3, "b.jpg", 30, 20)], [(7, 3, (1, 2, 10, 10))])
    dataset = datasets.open_coco(str(tmp_path), annotations)
    assert [(s.key, s.target) for s in dataset.samples] == [("3", 3), ("7", 7)]
    assert dataset.task == "det" and dataset.coco.getAnnIds(imgIds=[7]) == [1]


def test_voc_layout_and_view(tmp_path):
    root = make_voc(str(tmp_path / "VOC2012"), [("2007_000001", (30, 40))])
    label = np.zeros((30, 40), np.uint8)
    label[:, 20:] = 15
    label[0] = 255
    write_voc_label(os.path.join(root, "SegmentationClass", "2007_000001.png"), label)
    dataset = datasets.open_voc(root)
    view, original, target = datasets.load_view(dataset, dataset.samples[0], 64)
    assert original == (30, 40) and view.size == (64, 64) and target.shape == (64, 64)
    assert set(np.unique(target)) == {0, 15, 255}


def test_voc_label_that_is_not_class_indices_is_refused(tmp_path):
    root = make_voc(str(tmp_path / "VOC2012"), [("x", (20, 20))])
    Image.new("RGB", (20, 20)).save(os.path.join(root, "SegmentationClass", "x.png"))
    dataset = datasets.open_voc(root)
    with pytest.raises(datasets.DatasetError, match="not a class-index PNG"):
        datasets.load_view(dataset, dataset.samples[0], 32)


def test_seeded_subset_keeps_dataset_order_and_depends_on_the_seed():
    samples = [datasets.Sample(str(i), "", i) for i in range(50)]
    first = [s.key for s in datasets.subset(samples, 10, 0)]
    assert first == [s.key for s in datasets.subset(samples, 10, 0)]
    assert first == sorted(first, key=int) and len(set(first)) == 10
    assert first != [s.key for s in datasets.subset(samples, 10, 1)]
    assert len(datasets.subset(samples, None, 0)) == 50


@pytest.mark.parametrize("case", ["missing_folder", "not_wnid", "bad_list", "coco_json", "coco_keys", "coco_file",
                                  "voc_layout", "two_datasets", "annotations_alone", "bad_limit"])
def test_bad_input_is_one_line_exit_2(case, tmp_path, capsys, tiny_cls_bundle):
    out = str(tmp_path / "out.json")
    argv = ["--bundle", tiny_cls_bundle, "--json", out, "--no-progress"]
    pattern = ""
    if case == "missing_folder":
        argv += ["--imagenet", str(tmp_path / "nowhere")]
        pattern = "not found"
    elif case == "not_wnid":
        os.makedirs(str(tmp_path / "cats"))
        argv += ["--imagenet", str(tmp_path)]
        pattern = "not an ImageNet-1k wnid"
    elif case == "bad_list":
        (tmp_path / "val.txt").write_text("a.JPEG\n")
        argv += ["--imagenet", str(tmp_path / "val.txt")]
        pattern = "line 1"
    elif case in ("coco_json", "coco_keys", "coco_file"):
        path = tmp_path / "instances.json"
        if case == "coco_json":
            path.write_text("{not json")
            pattern = "not valid JSON"
        elif case == "coco_keys":
            path.write_text(json.dumps({"images": []}))
            pattern = "not a COCO instances file"
        else:
            path = write_coco(tmp_path, [(1, "gone.jpg", 10, 10)], [])
            pattern = "gone.jpg"
        argv += ["--coco", str(tmp_path), "--coco-annotations", str(path)]
    elif case == "voc_layout":
        argv += ["--voc", str(tmp_path)]
        pattern = "val.txt"
    elif case == "two_datasets":
        argv += ["--imagenet", str(tmp_path), "--voc", str(tmp_path)]
        pattern = "exactly one dataset"
    elif case == "annotations_alone":
        argv += ["--coco-annotations", str(tmp_path / "x.json")]
        pattern = "goes with --coco"
    else:
        argv += ["--imagenet", str(tmp_path), "--limit", "0"]
        pattern = "--limit"
    code, _, err = _run(argv, capsys)
    _one_line_error(code, err, pattern)
    assert not os.path.exists(out)


def test_bundle_without_the_datasets_head_is_one_line(tmp_path, capsys, tiny_cls_bundle):
    root = make_voc(str(tmp_path / "VOC2012"), [("x", (20, 20))])
    write_voc_label(os.path.join(root, "SegmentationClass", "x.png"), np.zeros((20, 20)))
    code, _, err = _run(["--bundle", tiny_cls_bundle, "--voc", root, "--json", str(tmp_path / "o.json")], capsys)
    _one_line_error(code, err, "no seg head")


@pytest.mark.parametrize("engine,precision,pattern", [("onnxruntime", "int8", "no INT8 model"),
                                                      ("tensorrt", "fp16", "tensorrt"),
                                                      ("nope", None, "unknown --engine")])
def test_an_engine_or_precision_this_bundle_or_machine_lacks_is_one_line(engine, precision, pattern, tmp_path, capsys,
                                                                         tiny_cls_bundle):
    os.makedirs(str(tmp_path / "val" / "n01440764"))
    make_image(tmp_path / "val" / "n01440764" / "a.png", 20, 20, 1)
    argv = ["--bundle", tiny_cls_bundle, "--imagenet", str(tmp_path / "val"), "--json", str(tmp_path / "o.json"),
            "--engine", engine, "--no-progress"] + (["--precision", precision] if precision else [])
    code, _, err = _run(argv, capsys)
    _one_line_error(code, err, pattern)
    assert not os.path.exists(str(tmp_path / "o.json")) and not os.path.exists(str(tmp_path / "o.json.journal"))
