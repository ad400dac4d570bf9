"""LadonModel against sc2bench's own forward passes, on the same weights: logits, boxes and masks.

Every other parity test compares LadonModel with its own export; here the reference is the code the model was
trained and evaluated with (sc2bench's SplittableResNet, its Faster R-CNN and DeepLabv3 builders), so a wrong head,
RoI level list or trunk layout fails. Seeded inputs at two sizes per task.
"""
import copy

import pytest
import torch

from ladon_deploy.models.checkpoint import load_ladon
from reference import ladon_reference_forward
from sc2bench_models import _load_exact, detection_model, save_trio, widen_class_logits


@pytest.fixture(scope="module")
def detecting_trio(sc2bench_trio, tmp_path_factory):
    """The session's sc2bench trio with a detection head whose class logits are wide enough (seeded) that boxes
    clear the 0.05 score threshold: random default-scale logits give none, and boxes compared on nothing prove
    nothing. Returns (sc2bench cls, det, seg models, LadonModel loaded from their three files)."""
    cls_model, det_model, seg_model = sc2bench_trio
    det_model = copy.deepcopy(det_model)
    widen_class_logits(det_model)
    files = save_trio(cls_model, det_model, seg_model, tmp_path_factory.mktemp("sc2bench-forward"))
    loaded = load_ladon(files)
    assert loaded.filled_keys == []
    return cls_model, det_model, seg_model, loaded.model


def _normalised(height, width, seed):
    return torch.randn((1, 3, height, width), generator=torch.Generator().manual_seed(seed))


@pytest.mark.slow
@pytest.mark.parametrize("height, width", [(160, 160), (128, 224)])
def test_classification_logits_match_sc2bench(detecting_trio, height, width):
    cls_model, _, _, ladon = detecting_trio
    image = _normalised(height, width, seed=height)
    with torch.no_grad():
        # sc2bench's eval forward entropy-codes the latent for real (compress -> decompress) after update().
        expected = torch.softmax(cls_model(image), dim=1)
        ours = ladon_reference_forward(ladon, image, (height, width), (height, width), tasks=["cls"])["cls"]
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-6)
    assert int(ours.argmax()) == int(expected.argmax())


@pytest.mark.slow
@pytest.mark.parametrize("height, width", [(160, 160), (128, 224)])
def test_segmentation_logits_and_mask_match_sc2bench(detecting_trio, height, width):
    _, _, seg_model, ladon = detecting_trio
    image = _normalised(height, width, seed=width + 1)
    with torch.no_grad():
        expected = seg_model(image)["out"]
        features = ladon.body(ladon.quantize_dequantize(ladon.encode(image)))
        ours = ladon.segmentation(features["4"], (height, width))
        mask = ladon_reference_forward(ladon, image, (height, width), (height, width), tasks=["seg"])["seg"]
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-4)
    assert torch.equal(mask, expected.argmax(dim=1)[0].to(torch.uint8))


def _box_sides(boxes):
    return torch.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))


def _capture_roi_pool(model_roi_heads, store):
    """Records the inputs and output of a RoI heads' MultiScaleRoIAlign during one forward."""
    def hook(module, args, output):
        if "output" not in store:  # the model's own call, not the probes made afterwards
            store["args"], store["output"] = args, output

    return model_roi_heads.box_roi_pool.register_forward_hook(hook)


@pytest.mark.slow
@pytest.mark.parametrize("input_size, image_hw", [(416, (300, 400)), (640, (640, 560))])
def test_detection_boxes_match_sc2bench(detecting_trio, input_size, image_hw):
    """Final boxes, scores and labels, and the RoI-pooled features of every proposal (not only those that survive
    to the top 100) plus a few large probe boxes (sqrt(area) >= 448 px): the ones that pooling a fourth FPN level
    (the authors' runtime wrapper) would take from another map than sc2bench evaluated (DESIGN.md section 3).
    Random RPN weights propose only small boxes, so without the probes that difference would go unseen."""
    _, det_model, _, ladon = detecting_trio
    reference_model = det_model
    if input_size != 416:
        reference_model = detection_model(input_size).eval()
        _load_exact(reference_model, det_model.state_dict())
    pixels = torch.rand((3,) + image_hw, generator=torch.Generator().manual_seed(input_size))
    theirs, ours_pool = {}, {}
    hooks = [_capture_roi_pool(reference_model.roi_heads, theirs), _capture_roi_pool(ladon.detection.roi_heads,
                                                                                        ours_pool)]
    try:
        with torch.no_grad():
            expected = reference_model([pixels])[0]
            # The same normalised, resized and padded tensor the sc2bench model ran on, through LadonModel.
            images, _ = reference_model.transform([pixels])
            ours = ladon_reference_forward(ladon, images.tensors, tuple(images.image_sizes[0]), image_hw,
                                           tasks=["det"])["det"]
            pyramid, _, shapes = ours_pool["args"]
            features, proposals, reference_shapes = theirs["args"]
            pooled = ladon.detection.roi_heads.box_roi_pool(pyramid, proposals, reference_shapes)
            # Random RPN weights propose only small boxes; large ones are added so every FPN level is exercised.
            probe = [torch.cat([proposals[0][:50], torch.tensor([[0.0, 0.0, 600.0, 560.0], [10.0, 20.0, 550.0, 555.0],
                                                                 [30.0, 0.0, 540.0, 530.0], [0.0, 0.0, 200.0, 200.0]])])]
            probe_ours = ladon.detection.roi_heads.box_roi_pool(pyramid, probe, reference_shapes)
            probe_theirs = reference_model.roi_heads.box_roi_pool(features, probe, reference_shapes)
    finally:
        for hook in hooks:
            hook.remove()
    assert shapes == reference_shapes
    torch.testing.assert_close(pooled, theirs["output"], rtol=1e-4, atol=1e-4)
    assert bool((_box_sides(probe[0]) >= 448).any())  # boxes the fourth level would take (sqrt(area) >= 448)
    torch.testing.assert_close(probe_ours, probe_theirs, rtol=1e-4, atol=1e-4)
    assert len(expected["boxes"]) >= 20, "too few detections to compare"
    assert torch.equal(ours["labels"], expected["labels"])
    torch.testing.assert_close(ours["boxes"], expected["boxes"], rtol=0, atol=1e-3)
    torch.testing.assert_close(ours["scores"], expected["scores"], rtol=0, atol=1e-5)
