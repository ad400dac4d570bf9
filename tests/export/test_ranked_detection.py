"""The ranked detection head (models/ranked_detection.py): no output depends on the order of tied scores, PyTorch and
ONNX Runtime agree on ties, and away from ties it is torchvision's head exactly."""
import io
import warnings
from collections import OrderedDict

import numpy as np
import pytest
import torch
from torchvision.ops import boxes as box_ops

from ladon_deploy.export.pipeline import StageInputs
from ladon_deploy.models.ranked_detection import ranked_batched_nms, ranked_head, ranked_order


def _boxes(count, seed):
    generator = torch.Generator().manual_seed(seed)
    corner = torch.rand((count, 2), generator=generator) * 200
    return torch.cat([corner, corner + 20 + torch.rand((count, 2), generator=generator) * 60], 1)


def test_ranked_order_is_score_descending_then_index():
    scores = torch.tensor([0.5, 1.0, 0.5, 1.0, 0.2, 1.0])
    assert ranked_order(scores).tolist() == [1, 3, 5, 0, 2, 4]
    many = torch.randint(0, 4, (5000,), generator=torch.Generator().manual_seed(1)).float()
    assert np.array_equal(ranked_order(many).numpy(), np.argsort(-many.numpy(), kind="stable"))


def test_ranked_nms_is_torchvision_nms_away_from_ties():
    """Distinct scores: the same kept indices in the same order, on both of torchvision's eager paths (coordinate
    trick up to 1000 boxes, a loop over groups above)."""
    for count, seed in ((300, 2), (2500, 3)):
        boxes = _boxes(count, seed)
        scores = torch.randperm(count, generator=torch.Generator().manual_seed(seed)).float() / count
        groups = torch.randint(0, 5, (count,), generator=torch.Generator().manual_seed(seed))
        expected = box_ops.batched_nms(boxes, scores, groups, 0.7)
        assert torch.equal(ranked_batched_nms(boxes, scores, groups, 0.7), expected)


def _onnx_and_torch(module, inputs):
    import onnxruntime

    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, inputs, buffer, input_names=["boxes", "scores", "groups"], output_names=["keep"],
                          dynamic_axes={"boxes": {0: "n"}, "scores": {0: "n"}, "groups": {0: "n"}, "keep": {0: "k"}},
                          opset_version=13, dynamo=False)
    session = onnxruntime.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
    feeds = {"boxes": inputs[0].numpy(), "scores": inputs[1].numpy(), "groups": inputs[2].numpy()}
    with torch.no_grad():
        return module(*inputs).numpy(), session.run(None, feeds)[0]


class _RankedTop(torch.nn.Module):
    def forward(self, scores):
        return ranked_order(scores)[:1000]


def test_the_exported_order_breaks_ties_by_index_in_onnx_runtime():
    """ranked_order exports as ONNX TopK; ONNX Runtime must order equal values by the lower index, as the stable
    sort does in PyTorch (the ONNX specification says so; this checks the runtime)."""
    import onnxruntime

    scores = torch.randint(0, 5, (40000,), generator=torch.Generator().manual_seed(6)).float()
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(_RankedTop(), (scores,), buffer, input_names=["scores"], output_names=["order"],
                          dynamic_axes={"scores": {0: "n"}, "order": {0: "k"}}, opset_version=13, dynamo=False)
    session = onnxruntime.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
    for count in (40000, 700):
        order = session.run(None, {"scores": scores[:count].numpy()})[0]
        assert np.array_equal(order, np.argsort(-scores[:count].numpy(), kind="stable")[:1000])


class _TopAfterNms(torch.nn.Module):
    """NMS per group then the top 300, as the RPN keeps its post-NMS top-n; `ranked` picks the implementation."""

    def __init__(self, ranked):
        super().__init__()
        self.ranked = ranked

    def forward(self, boxes, scores, groups):
        nms = ranked_batched_nms if self.ranked else box_ops.batched_nms
        return nms(boxes, scores, groups, 0.7)[:300]


def test_tied_scores_keep_the_same_boxes_in_pytorch_and_onnx_runtime():
    """The failure behind a saturated RPN, small: 3000 boxes, most scores exactly 1.0 (a saturated sigmoid), NMS per
    group then a top-300 cut. torchvision's eager NMS and ONNX Runtime's order the ties differently and keep
    different boxes; ranked by (score, index) both keep the same ones."""
    count = 3000
    boxes = _boxes(count, 4)
    scores = torch.ones(count)
    scores[::7] = 0.5
    groups = torch.randint(0, 5, (count,), generator=torch.Generator().manual_seed(4)).sort()[0]
    plain_torch, plain_onnx = _onnx_and_torch(_TopAfterNms(False), (boxes, scores, groups))
    assert set(plain_torch) != set(plain_onnx)  # the problem, reproduced
    ranked_torch, ranked_onnx = _onnx_and_torch(_TopAfterNms(True), (boxes, scores, groups))
    assert np.array_equal(ranked_torch, ranked_onnx)
    # And what is kept is the lowest-index box among tied scores first.
    assert ranked_torch[0] == 1 and np.all(np.diff(ranked_torch[scores.numpy()[ranked_torch] == 1.0]) > 0)


@pytest.mark.slow
def test_ranked_head_equals_the_evaluated_head_on_unsaturated_inputs(demo_model, height=352, width=416):
    """The demo model (random weights, RPN logits near 0: no tie) gives identical detections, bit for bit."""
    probe = StageInputs(demo_model, height, width, seed=5)
    features = OrderedDict(zip("1234", probe.features))
    image_sizes = [tuple(int(v) for v in probe.image_size)]
    with torch.no_grad():
        evaluated = demo_model.detection(features, (height, width), image_sizes)[0]
        ranked = ranked_head(demo_model.detection)(features, (height, width), image_sizes)[0]
    assert len(evaluated["boxes"]) == 100
    for key in ("boxes", "scores", "labels"):
        assert torch.equal(evaluated[key], ranked[key]), key
    # The ranked copy shares the weights and leaves the model's own head as torchvision built it.
    assert type(demo_model.detection.rpn).__name__ == "RegionProposalNetwork"
    assert ranked_head(demo_model.detection).rpn.head is demo_model.detection.rpn.head
