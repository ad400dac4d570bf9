"""The detection head with every order decided by (score descending, index ascending): no float tie is left to an
implementation's sort.

torchvision's Faster R-CNN ranks RPN proposals for NMS by sigmoid(objectness). A confident trained RPN gives logits
above ~17, where the float32 sigmoid is exactly 1.0 for hundreds of anchors: NMS then orders tied scores as its sort
happens to, and PyTorch and ONNX Runtime keep different proposals (a different final detection, scores 0.61 against
0.31, boxes 11 px apart, was measured on such a checkpoint set). The same holds, more rarely, for exactly equal logits
(anchors over the zero padding see identical features), for the RoI heads' class probabilities and for the top-k cuts.

Here each of those orders is one stable sort, (score descending, index ascending), which both sides compute the same
way: `torch.sort(stable=True)` in PyTorch, exported as ONNX TopK, whose specification breaks ties by the lower index.
NMS then runs on the rank (-1, -2, ...: distinct by construction) instead of the scores:
    RPN         pre-NMS top-k per level and NMS order by the objectness LOGIT (sigmoid is monotonic, so this is
                torchvision's order wherever the probabilities differ; logits do not saturate)
    RoI heads   NMS order and the per-image cap by class probability, equal probabilities by flat index
                (proposal rank, then class id)
Away from exact ties this is torchvision's computation; among exactly tied scores it picks the lower index where
torchvision's pick is whatever its sort returns. Classification top-k and the segmentation argmax are ordered in
server/postprocess.py (lower class id first).
"""
import copy
from collections import OrderedDict
from typing import Dict, List, Tuple

import torch
from torch import Tensor, nn
from torch.nn import functional
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.models.detection.rpn import RegionProposalNetwork
from torchvision.ops import boxes as box_ops

TIE_ORDER = "score descending, then index ascending (stable sort; ONNX TopK breaks ties by the lower index)"
DEPARTURES = [
    "RPN: proposals are ranked by objectness logit, not sigmoid probability, for the pre-NMS top-k and for NMS; the "
    "two orders are the same except where float32 probabilities tie (sigmoid saturates to 1.0 above logit ~17)",
    "RPN and RoI heads: among exactly equal scores the lower index is kept first (torchvision leaves that order to "
    "its sort), in the pre-NMS top-k, NMS, the post-NMS top-k and the per-image detection cap",
    "NMS per group (FPN level, class) always offsets boxes per group (torchvision's coordinate trick, which its own "
    "exported graph uses; eager torchvision loops over groups above 1000 boxes): IoU may differ in the last float bits",
]


def ranked_order(scores: Tensor) -> Tensor:
    """Indices of `scores` by (score descending, index ascending)."""
    if torch.onnx.is_in_onnx_export():
        # The exporter has no symbolic for the stable overload; the plain sort becomes ONNX TopK, which orders equal
        # values by the lower index (ONNX specification; ONNX Runtime's CPU kernel does, tests/export checks it).
        return torch.sort(scores, dim=-1, descending=True)[1]
    return torch.sort(scores, dim=-1, descending=True, stable=True)[1]


def ranked_batched_nms(boxes: Tensor, scores: Tensor, groups: Tensor, iou_threshold: float) -> Tensor:
    """batched_nms whose order is ranked_order(scores): indices kept, in that order."""
    order = ranked_order(scores)
    boxes, groups = boxes[order], groups[order]
    # Distinct NMS scores by construction: -1, -2, ... in rank order (float32-exact up to 2**24 boxes).
    nms_scores = -torch.ones_like(scores).cumsum(0)
    # Boxes of different groups never overlap once shifted by group * (largest coordinate + 1); the zero keeps the
    # maximum defined when nothing is left.
    largest = torch.cat([boxes.reshape(-1), boxes.new_zeros(1)]).max()
    shifted = boxes + (groups.to(boxes) * (largest + 1))[:, None]
    keep = box_ops.nms(shifted, nms_scores, iou_threshold)
    return order[keep]


class RankedRPN(RegionProposalNetwork):
    """torchvision's RPN with proposals ranked by logit and ties broken by anchor index."""

    def filter_proposals(self, proposals: Tensor, objectness: Tensor, image_shapes: List[Tuple[int, int]],
                         num_anchors_per_level: List[int]) -> Tuple[List[Tensor], List[Tensor]]:
        num_images = proposals.shape[0]
        objectness = objectness.detach().reshape(num_images, -1)
        final_boxes, final_scores = [], []
        for index in range(num_images):
            picked, levels, offset = [], [], 0
            for level, logits in enumerate(objectness[index].split(num_anchors_per_level)):
                top = ranked_order(logits)[:self.pre_nms_top_n()] + offset
                picked.append(top)
                levels.append(torch.full_like(top, level))
                offset = offset + logits.shape[0]  # a traced size: the exported graph keeps it dynamic
            picked_all, level_of = torch.cat(picked), torch.cat(levels)
            logits = objectness[index][picked_all]
            boxes = box_ops.clip_boxes_to_image(proposals[index][picked_all], image_shapes[index])
            keep = box_ops.remove_small_boxes(boxes, self.min_size)
            boxes, logits, level_of = boxes[keep], logits[keep], level_of[keep]
            keep = torch.where(torch.sigmoid(logits) >= self.score_thresh)[0]
            boxes, logits, level_of = boxes[keep], logits[keep], level_of[keep]
            keep = ranked_batched_nms(boxes, logits, level_of, self.nms_thresh)[:self.post_nms_top_n()]
            final_boxes.append(boxes[keep])
            final_scores.append(torch.sigmoid(logits[keep]))
        return final_boxes, final_scores


class RankedRoIHeads(RoIHeads):
    """torchvision's RoI heads whose NMS and detection cap order equal probabilities by flat (proposal, class)
    index."""

    def postprocess_detections(self, class_logits: Tensor, box_regression: Tensor, proposals: List[Tensor],
                               image_shapes: List[Tuple[int, int]]) -> Tuple[List[Tensor], List[Tensor], List[Tensor]]:
        num_classes = class_logits.shape[-1]
        boxes_per_image = [boxes_in_image.shape[0] for boxes_in_image in proposals]
        pred_boxes = self.box_coder.decode(box_regression, proposals)
        pred_scores = functional.softmax(class_logits, -1)
        all_boxes, all_scores, all_labels = [], [], []
        for boxes, scores, image_shape in zip(pred_boxes.split(boxes_per_image, 0),
                                              pred_scores.split(boxes_per_image, 0), image_shapes):
            boxes = box_ops.clip_boxes_to_image(boxes, image_shape)
            labels = torch.arange(num_classes, device=class_logits.device).view(1, -1).expand_as(scores)
            boxes = boxes[:, 1:].reshape(-1, 4)
            scores = scores[:, 1:].reshape(-1)
            labels = labels[:, 1:].reshape(-1)
            inds = torch.where(scores > self.score_thresh)[0]
            boxes, scores, labels = boxes[inds], scores[inds], labels[inds]
            keep = box_ops.remove_small_boxes(boxes, min_size=1e-2)
            boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
            keep = ranked_batched_nms(boxes, scores, labels, self.nms_thresh)[:self.detections_per_img]
            all_boxes.append(boxes[keep])
            all_scores.append(scores[keep])
            all_labels.append(labels[keep])
        return all_boxes, all_scores, all_labels


def _retyped(module: nn.Module, cls: type) -> nn.Module:
    """A shallow copy of `module` (same parameters, same settings) whose methods are those of subclass `cls`."""
    twin = copy.copy(module)
    twin._modules = OrderedDict(module._modules)
    twin.__class__ = cls
    return twin


def ranked_head(head: nn.Module) -> nn.Module:
    """A detection head (models.ladon.DetectionHead) sharing `head`'s weights, with RankedRPN and RankedRoIHeads."""
    ranked = copy.copy(head)
    ranked._modules = OrderedDict(head._modules)
    ranked.rpn = _retyped(head.rpn, RankedRPN)
    ranked.roi_heads = _retyped(head.roi_heads, RankedRoIHeads)
    return ranked.eval()


def describe() -> Dict[str, object]:
    """What the manifest records about the deployed detection head's orders."""
    return {"tie_order": TIE_ORDER, "departs_from_evaluated_model": list(DEPARTURES)}
