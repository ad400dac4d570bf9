"""Metric code against known answers and against pycocotools called directly."""
import contextlib
import io

import numpy as np
import pytest

from ladon_deploy.eval import metrics


def test_topk_known_answers():
    rankings = [[3, 1, 2, 0, 4], [0, 1, 2, 3, 4], [4, 3, 2, 1, 0], [2, 0, 1, 3, 4]]
    labels = [3, 1, 9, 1]
    assert metrics.topk_accuracy(rankings, labels, 1) == 0.25
    assert metrics.topk_accuracy(rankings, labels, 2) == 0.5
    assert metrics.topk_accuracy(rankings, labels, 5) == 0.75
    # ground truth as the prediction: 1.0
    assert metrics.topk_accuracy([[l, 7] for l in labels], labels, 1) == 1.0


def test_miou_of_ground_truth_is_one_and_of_a_fixed_shuffle_is_computed():
    rng = np.random.RandomState(0)
    target = rng.randint(0, 3, (8, 8))
    target[0, :] = 255
    assert metrics.mean_iou(metrics.confusion(target.copy(), target, classes=3)) == 1.0
    # A fixed relabelling of class 2 -> 1: IoU(0) = 1, IoU(1) = n1 / (n1 + n2), IoU(2) = 0 (in the truth only).
    prediction = np.where(target == 2, 1, target)
    labelled = target != 255
    n1, n2 = int(((target == 1) & labelled).sum()), int(((target == 2) & labelled).sum())
    expected = (1.0 + n1 / float(n1 + n2) + 0.0) / 3
    assert metrics.mean_iou(metrics.confusion(prediction, target, classes=3)) == pytest.approx(expected, abs=1e-12)


def test_ignored_pixels_do_not_count_and_absent_classes_are_left_out():
    target = np.array([[0, 0, 255, 255]])
    prediction = np.array([[0, 0, 5, 7]])  # whatever is predicted on void pixels is ignored
    matrix = metrics.confusion(prediction, target, classes=8)
    assert matrix.sum() == 2 and metrics.mean_iou(matrix) == 1.0
    cells = metrics.sparse_confusion(matrix)
    assert (metrics.dense_confusion(cells, classes=8) == matrix).all()


def test_out_of_range_labels_are_refused():
    with pytest.raises(ValueError):
        metrics.confusion(np.array([0, 1]), np.array([0, 30]), classes=21)


def _gt():
    from pycocotools.coco import COCO

    coco = COCO()
    coco.dataset = {
        "images": [{"id": 1, "height": 100, "width": 100}, {"id": 2, "height": 100, "width": 100}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 3, "bbox": [10, 10, 30, 40], "area": 1200, "iscrowd": 0},
            {"id": 2, "image_id": 2, "category_id": 3, "bbox": [50, 50, 20, 20], "area": 400, "iscrowd": 0},
            {"id": 3, "image_id": 2, "category_id": 1, "bbox": [0, 0, 60, 30], "area": 1800, "iscrowd": 0}],
        "categories": [{"id": 1, "name": "person"}, {"id": 3, "name": "car"}]}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _as_detections(annotations):
    return [{"box": [x, y, x + w, y + h], "score": 1.0, "label": c} for x, y, w, h, c in annotations]


def test_coco_map_of_ground_truth_is_one():
    coco = _gt()
    results = metrics.coco_records(1, _as_detections([(10, 10, 30, 40, 3)]))
    results += metrics.coco_records(2, _as_detections([(50, 50, 20, 20, 3), (0, 0, 60, 30, 1)]))
    scored = metrics.coco_map(coco, results, [1, 2])
    assert scored["map"] == pytest.approx(1.0) and scored["ap50"] == pytest.approx(1.0)


def test_coco_map_known_answer_for_half_the_cars_found():
    # car: one of two found (recall 0.5 at precision 1: 51 of COCO's 101 recall points); person: found: AP 1.
    coco = _gt()
    results = metrics.coco_records(1, _as_detections([(10, 10, 30, 40, 3)]))
    results += metrics.coco_records(2, _as_detections([(0, 0, 60, 30, 1)]))
    scored = metrics.coco_map(coco, results, [1, 2])
    assert scored["map"] == pytest.approx((51 / 101.0 + 1.0) / 2)


def test_coco_map_equals_pycocotools_called_directly():
    from pycocotools.cocoeval import COCOeval

    coco = _gt()
    rng = np.random.RandomState(4)
    detections = {1: [], 2: []}
    for image_id in (1, 2):
        for _ in range(6):
            x, y = rng.uniform(0, 60, 2)
            w, h = rng.uniform(5, 40, 2)
            detections[image_id].append({"box": [x, y, x + w, y + h], "score": float(rng.uniform()),
                                         "label": int(rng.choice([1, 3]))})
    detections[1].append({"box": [11, 12, 41, 49], "score": 0.9, "label": 3})
    results = metrics.coco_records(1, detections[1]) + metrics.coco_records(2, detections[2])
    ours = metrics.coco_map(coco, results, [1, 2])
    with contextlib.redirect_stdout(io.StringIO()):
        direct = COCOeval(coco, coco.loadRes(results), "bbox")
        direct.evaluate()
        direct.accumulate()
        direct.summarize()
    assert ours["map"] == direct.stats[0] and ours["ap50"] == direct.stats[1]
    assert 0 < ours["map"] < 1


def test_no_detections_score_zero():
    assert metrics.coco_map(_gt(), [], [1, 2])["map"] == 0.0
