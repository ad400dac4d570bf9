"""ladon-eval on the demo bundle: COCO mAP as pycocotools computes it from `ladon-run split`'s detections, mIoU from
its masks, top-1 from its classes; and the same metrics from the PyTorch model (random weights: what is checked is
that evaluation measures the deployed pipeline faithfully, not the accuracy itself)."""
import contextlib
import io
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from eval_data import ladon_run_split, make_voc, write_coco, write_voc_label
from images import make_image
from ladon_deploy.eval import datasets, run
from ladon_deploy.eval.cli import PROG, main
from ladon_deploy.cli_support import run_command
from ladon_deploy.models.ladon import IMAGE_MEAN, IMAGE_STD
from reference import ladon_reference_forward

pytestmark = pytest.mark.slow


def torch_preprocess(image):
    """The evaluated preprocessing run by torchvision itself (GeneralizedRCNNTransform, min = max size 416)."""
    from torchvision.models.detection.transform import GeneralizedRCNNTransform
    from torchvision.transforms.functional import to_tensor

    transform = GeneralizedRCNNTransform(416, 416, list(IMAGE_MEAN), list(IMAGE_STD)).eval()
    tensor = to_tensor(image.convert("RGB"))
    images, _ = transform([tensor])
    return images.tensors, tuple(images.image_sizes[0]), tuple(tensor.shape[-2:])


def torch_results(model, image, task):
    tensor, resized, original = torch_preprocess(image)
    with torch.no_grad():
        return ladon_reference_forward(model, tensor, resized, original, [task])[task]


def pycocotools_map(annotations, records):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(annotations)
        evaluator = COCOeval(gt, gt.loadRes(records), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator.stats[0], evaluator.stats[1]


def _xywh(box):
    x1, y1, x2, y2 = box
    return [x1, y1, x2 - x1, y2 - y1]


@pytest.fixture(scope="module")
def coco_set(demo_bundle, tmp_path_factory):
    root = tmp_path_factory.mktemp("coco")
    images = [(11, "a.jpg", 240, 320), (42, "b.jpg", 300, 200)]
    for image_id, name, height, width in images:
        make_image(root / "tmp.png", height, width, image_id)
        Image.open(str(root / "tmp.png")).save(str(root / name), quality=95)
    os.remove(str(root / "tmp.png"))
    return root, images


def test_coco_map_is_pycocotools_on_ladon_run_splits_detections(demo_bundle, demo_model, coco_set, tmp_path, capsys):
    root, images = coco_set
    split = {image_id: ladon_run_split(demo_bundle, str(root / name), capsys, "det")["detection"]
             for image_id, name, _, _ in images}
    assert all(len(d) >= 4 for d in split.values()), "the test images must produce detections"
    # Ground truth: three of the pipeline's own detections per image, moved a little, and one object it misses.
    annotations = []
    for image_id, detections in split.items():
        for detection in detections[:6:2]:
            x, y, w, h = _xywh(detection["box"])
            annotations.append((image_id, detection["label"], (x + 1.5, y - 1.0, w * 0.97, h + 2.0)))
        annotations.append((image_id, 1, (5.0, 5.0, 60.0, 80.0)))
    labels = sorted({d["label"] for ds in split.values() for d in ds} | {1})
    annotation_file = write_coco(root, images, annotations, [(c, "c%d" % c) for c in labels])

    out = str(tmp_path / "coco.json")
    assert run_command(PROG, main, ["--bundle", demo_bundle, "--coco", str(root), "--coco-annotations",
                                    annotation_file, "--json", out, "--no-progress"]) == 0
    summary = json.load(open(out))["summary"]
    records = [{"image_id": i, "category_id": d["label"], "bbox": _xywh(d["box"]), "score": d["score"]}
               for i, ds in split.items() for d in ds]
    expected_map, expected_ap50 = pycocotools_map(annotation_file, records)
    assert 0.05 < expected_map < 0.95
    # ladon-run split's JSON rounds boxes to 0.01 px and scores to 1e-6; ladon-eval scores unrounded ones.
    assert summary["map"] == pytest.approx(expected_map, abs=1e-3)
    assert summary["ap50"] == pytest.approx(expected_ap50, abs=1e-3)
    assert summary["images"] == 2

    # The unsplit PyTorch model on the same images gives the same mAP.
    torch_records = []
    for image_id, name, _, _ in images:
        detections = torch_results(demo_model, Image.open(str(root / name)), "det")
        for box, score, label in zip(detections["boxes"].tolist(), detections["scores"].tolist(),
                                     detections["labels"].tolist()):
            torch_records.append({"image_id": image_id, "category_id": int(label), "bbox": _xywh(box),
                                  "score": float(score)})
    torch_map, torch_ap50 = pycocotools_map(annotation_file, torch_records)
    print("COCO: ladon-eval map %.6f ap50 %.6f | pycocotools on ladon-run split %.6f %.6f | PyTorch %.6f %.6f"
          % (summary["map"], summary["ap50"], expected_map, expected_ap50, torch_map, torch_ap50))
    assert summary["map"] == pytest.approx(torch_map, abs=1e-3)
    assert summary["ap50"] == pytest.approx(torch_ap50, abs=1e-3)


def _miou(pairs, classes=21):
    """mIoU written out per class with boolean masks (independent of metrics.py's confusion matrix)."""
    ious = []
    for c in range(classes):
        intersection = union = 0
        for prediction, truth in pairs:
            valid = truth != 255
            p, t = (prediction == c) & valid, (truth == c) & valid
            intersection += int((p & t).sum())
            union += int((p | t).sum())
        if union:
            ious.append(intersection / float(union))
    return float(np.mean(ious))


def test_voc_miou_is_what_ladon_run_splits_masks_give(demo_bundle, demo_model, tmp_path, capsys):
    root = make_voc(str(tmp_path / "VOC2012"), [("2008_000001", (120, 160)), ("2008_000002", (90, 90))], seed=5)
    pairs, torch_pairs = [], []
    for name, (height, width) in (("2008_000001", (120, 160)), ("2008_000002", (90, 90))):
        image = Image.open(os.path.join(root, "JPEGImages", name + ".jpg")).convert("RGB")
        view = str(tmp_path / (name + ".png"))
        image.resize((416, 416), Image.BILINEAR).save(view)
        mask_png = str(tmp_path / (name + "-mask.png"))
        ladon_run_split(demo_bundle, view, capsys, "seg", ["--mask-out", mask_png])
        predicted = np.asarray(Image.open(mask_png))
        # Ground truth: the prediction (scaled to the file's size) with a band relabelled and a void border.
        label = np.asarray(Image.fromarray(predicted).resize((width, height), Image.NEAREST)).copy()
        label[: height // 3] = 7
        label[:, :3] = 255
        write_voc_label(os.path.join(root, "SegmentationClass", name + ".png"), label)
        truth = np.asarray(Image.fromarray(label).resize((416, 416), Image.NEAREST))
        pairs.append((predicted, truth))
        torch_pairs.append((torch_results(demo_model, Image.open(view), "seg").numpy(), truth))
    out = str(tmp_path / "voc.json")
    assert run_command(PROG, main, ["--bundle", demo_bundle, "--voc", root, "--json", out, "--no-progress"]) == 0
    summary = json.load(open(out))["summary"]
    expected = _miou(pairs)
    print("VOC: ladon-eval miou %.6f | ladon-run split masks %.6f | PyTorch %.6f"
          % (summary["miou"], expected, _miou(torch_pairs)))
    assert 0.05 < expected < 0.95
    assert summary["miou"] == pytest.approx(expected, abs=1e-12)
    assert summary["miou"] == pytest.approx(_miou(torch_pairs), abs=2e-3)


def test_top1_matches_the_pytorch_model(demo_bundle, demo_model, tmp_path, capsys):
    wnids = datasets.imagenet_wnids()
    sources = [make_image(tmp_path / ("s%d.png" % i), h, w, 60 + i) for i, (h, w) in enumerate([(300, 400), (500, 450)])]
    torch_top5 = []
    for source in sources:
        probabilities = torch_results(demo_model, datasets.imagenet_view(Image.open(source).convert("RGB"), 416), "cls")
        torch_top5.append(torch.topk(probabilities[0], 5).indices.tolist())
    labels = [torch_top5[0][0], torch_top5[1][3]]  # a top-1 hit and a top-5-only hit
    root = tmp_path / "val"
    for index, (source, label) in enumerate(zip(sources, labels)):
        os.makedirs(str(root / wnids[label]), exist_ok=True)
        os.rename(source, str(root / wnids[label] / ("img%d.png" % index)))
    out = str(tmp_path / "cls.json")
    document = run.evaluate(demo_bundle, datasets.open_imagenet(str(root)), out)
    assert document["summary"]["top1"] == 0.5 and document["summary"]["top5"] == 1.0
    assert [r["top5"] for r in document["images"]] == torch_top5
