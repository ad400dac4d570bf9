"""ladon_deploy.server.postprocess against torchvision's own box/mask arithmetic and category lists.

torch/torchvision are imported here only to build references; the module under test must not need them.
"""

import numpy as np
import pytest
from PIL import Image

from ladon_deploy.server import postprocess as post

torch = pytest.importorskip("torch")
F = torch.nn.functional
import torchvision  # noqa: E402
from torchvision.models.detection.transform import GeneralizedRCNNTransform, resize_boxes  # noqa: E402

# (original (H, W), resized (H, W) as GeneralizedRCNNTransform(416, 416) produces them, padded (H, W))
GEOMETRIES = [((416, 416), (416, 416), (416, 416)), ((333, 500), (277, 416), (288, 416)),
              ((500, 333), (416, 277), (416, 288)), ((480, 640), (312, 416), (320, 416)),
              ((100, 150), (277, 416), (288, 416)), ((360, 360), (415, 415), (416, 416)),
              ((333, 500), (416, 416), (416, 416))]  # the last one: the square policy
IDS = ["%dx%d" % g[0] + ("-square" if g[1] == (416, 416) and g[0] != (416, 416) else "") for g in GEOMETRIES]


def test_label_files_match_torchvision_metadata():
    weights = torchvision.models
    assert post.load_labels("imagenet") == weights.ResNet50_Weights.IMAGENET1K_V1.meta["categories"]
    assert post.load_labels("coco") == (
        weights.detection.FasterRCNN_ResNet50_FPN_Weights.COCO_V1.meta["categories"])
    assert post.load_labels("voc") == (
        weights.segmentation.DeepLabV3_ResNet50_Weights.COCO_WITH_VOC_LABELS_V1.meta["categories"])
    coco = post.load_labels("coco")
    assert coco[0] == "__background__" and coco[1] == "person" and coco[12] == "N/A" and len(coco) == 91
    assert post.load_labels("voc") is post.load_labels("voc")  # cached
    with pytest.raises(ValueError, match="unknown label set"):
        post.load_labels("ade20k")


# --- classification -------------------------------------------------------------------------------------------


def test_top_classes_match_torch_topk():
    logits = torch.from_numpy(np.random.RandomState(0).standard_normal((1, 1000)).astype(np.float32) * 3)
    probs = torch.softmax(logits, dim=1)
    values, indices = probs.topk(5, dim=1)

    top = post.top_classes(probs.numpy(), k=5)

    names = post.load_labels("imagenet")
    assert [c.class_id for c in top] == indices[0].tolist()
    assert [c.probability for c in top] == values[0].tolist()
    assert [c.name for c in top] == [names[i] for i in indices[0].tolist()]
    assert post.top_classes(probs.numpy()[0], k=1)[0] == top[0]


def test_top_classes_ties_and_errors():
    probs = np.zeros((1, 1000), np.float32)
    probs[0, [7, 3, 500]] = 0.25
    assert [c.class_id for c in post.top_classes(probs, k=3)] == [3, 7, 500]
    with pytest.raises(ValueError, match=r"\[1, 1000\]"):
        post.top_classes(np.zeros((1, 10), np.float32))
    with pytest.raises(ValueError, match="k must be"):
        post.top_classes(probs, k=0)


# --- detection ------------------------------------------------------------------------------------------------


def random_boxes(n, height, width, seed=0):
    rng = np.random.RandomState(seed)
    xy = rng.uniform(0, 1, size=(n, 2, 2)) * np.array([width, height], dtype=np.float64)
    xy.sort(axis=1)
    return xy.reshape(n, 4).astype(np.float32)  # x1, y1, x2, y2


@pytest.mark.parametrize("original,resized,padded", GEOMETRIES, ids=IDS)
def test_rescale_boxes_matches_resize_boxes(original, resized, padded):
    boxes = random_boxes(200, resized[0], resized[1])
    expected = resize_boxes(torch.from_numpy(boxes), list(resized), list(original)).numpy()
    transform = GeneralizedRCNNTransform(416, 416, [0.0] * 3, [1.0] * 3).eval()
    via_postprocess = transform.postprocess([{"boxes": torch.from_numpy(boxes)}], [resized], [original])[0]["boxes"]

    got = post.rescale_boxes(boxes, original, resized)

    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(got, via_postprocess.numpy())


def test_rescale_boxes_keeps_float64_like_torch():
    boxes = random_boxes(20, 277, 416).astype(np.float64)
    expected = resize_boxes(torch.from_numpy(boxes), [277, 416], [333, 500]).numpy()
    got = post.rescale_boxes(boxes, (333, 500), (277, 416))
    assert got.dtype == expected.dtype == np.float64
    np.testing.assert_array_equal(got, expected)


def test_detection_results():
    boxes = np.array([[10, 20, 110, 220], [0, 0, 416, 277], [5, 5, 6, 6]], np.float32)
    scores = np.array([0.9, 0.5, 0.01], np.float32)
    labels = np.array([1, 18, 12], np.int64)

    results = post.detection_results(boxes, scores, labels, (333, 500), (277, 416), score_threshold=0.05)

    assert [r["name"] for r in results] == ["person", "dog"]
    assert [r["label"] for r in results] == [1, 18]
    assert results[0]["score"] == pytest.approx(0.9)
    expected = resize_boxes(torch.from_numpy(boxes), [277, 416], [333, 500]).numpy()
    assert results[1]["box"] == [float(v) for v in expected[1]]
    assert all(isinstance(v, float) for v in results[0]["box"])
    assert post.detection_results(boxes, scores, labels, (333, 500), (277, 416))[2]["name"] == "N/A"
    assert post.detection_results(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64),
                                  (333, 500), (277, 416)) == []


def test_detection_results_reject_inconsistent_outputs():
    boxes = np.zeros((2, 4), np.float32)
    with pytest.raises(ValueError, match="disagree"):
        post.detection_results(boxes, np.zeros(3, np.float32), np.zeros(2, np.int64), (10, 10), (10, 10))
    with pytest.raises(ValueError, match="out of range"):
        post.detection_results(boxes, np.zeros(2, np.float32), np.array([1, 91]), (10, 10), (10, 10))
    with pytest.raises(ValueError, match=r"\[N, 4\]"):
        post.rescale_boxes(np.zeros((2, 5), np.float32), (10, 10), (10, 10))
    with pytest.raises(ValueError, match="resized_size"):
        post.rescale_boxes(boxes, (10, 10), (0, 10))


# --- segmentation ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("in_hw,out_hw", [((277, 416), (333, 500)), ((416, 277), (500, 333)),
                                          ((312, 416), (480, 640)), ((277, 416), (100, 150)),
                                          ((415, 415), (360, 360)), ((100, 150), (200, 300)),
                                          ((64, 64), (64, 64)), ((416, 416), (1, 1)), ((3, 5), (1000, 7))])
def test_resize_nearest_matches_interpolate(in_hw, out_hw):
    mask = np.random.RandomState(2).randint(0, 21, size=in_hw).astype(np.uint8)
    expected_float = F.interpolate(torch.from_numpy(mask)[None, None].float(), size=out_hw, mode="nearest")
    expected_byte = F.interpolate(torch.from_numpy(mask)[None, None], size=out_hw, mode="nearest")

    got = post.resize_nearest(mask, *out_hw)

    np.testing.assert_array_equal(got, expected_float[0, 0].byte().numpy())
    np.testing.assert_array_equal(got, expected_byte[0, 0].numpy())


@pytest.mark.parametrize("original,resized,padded", GEOMETRIES, ids=IDS)
def test_segmentation_mask_matches_torch(original, resized, padded):
    logits = torch.from_numpy(np.random.RandomState(3).standard_normal((1, 21) + padded).astype(np.float32))
    classes = logits.argmax(dim=1)[:, : resized[0], : resized[1]]
    expected = F.interpolate(classes[:, None].float(), size=original, mode="nearest")[0, 0].byte().numpy()

    got = post.segmentation_mask(logits.numpy(), original, resized)

    assert got.dtype == np.uint8 and got.shape == original
    np.testing.assert_array_equal(got, expected)


def test_segmentation_mask_rejects_bad_logits():
    with pytest.raises(ValueError, match="smaller than"):
        post.segmentation_mask(np.zeros((1, 21, 200, 416), np.float32), (333, 500), (277, 416))
    with pytest.raises(ValueError, match=r"\[1, C, H, W\]"):
        post.segmentation_mask(np.zeros((21, 416), np.float32), (333, 500), (277, 416))


def test_mask_pixel_counts():
    mask = np.zeros((10, 20), np.uint8)
    mask[:2] = 15
    mask[5, 5] = 12
    counts = post.mask_pixel_counts(mask)
    assert counts == {"__background__": 200 - 41, "dog": 1, "person": 40}
    assert list(counts) == ["__background__", "dog", "person"]
    mask[0, 0] = 21
    with pytest.raises(ValueError, match="beyond"):
        post.mask_pixel_counts(mask)


def test_save_mask_png_round_trip(tmp_path):
    mask = np.random.RandomState(4).randint(0, 21, size=(33, 50)).astype(np.uint8)
    path = tmp_path / "mask.png"

    post.save_mask_png(mask, path)

    image = Image.open(str(path))
    assert image.mode == "P" and image.size == (50, 33)
    np.testing.assert_array_equal(np.asarray(image), mask)
    palette = image.getpalette()
    assert palette[:12] == [0, 0, 0, 128, 0, 0, 0, 128, 0, 128, 128, 0]  # background, aeroplane, bicycle, bird
    assert palette[15 * 3: 16 * 3] == [192, 128, 128]  # person
    assert post.voc_palette()[255 * 3: 256 * 3] == [224, 224, 192]  # void / boundary
