"""Ladon split at the bottleneck: one nn.Module per exported stage, with the ONNX names and axes of each.

    encoder   image [1,3,H,W]                      -> latent [1,C,H/4-1,W/4-1]
    body      latent_hat [1,C,h,w]                 -> feat1 [1,256,H/4,W/4] feat2 feat3 feat4 [1,2048,H/32,W/32]
    head_cls  feat4                                -> probabilities [1,1000]
    head_det  feat1..feat4, image_size int64 [2]   -> boxes [N,4] (resized-image pixels), scores [N], labels [N]
    head_seg  feat4                                -> logits [1,21,H,W] at the padded input size (H = 32 * feat4 H)
"""
from collections import OrderedDict
from typing import Dict, List, Tuple

from torch import Tensor, nn

from ladon_deploy.models.ladon import LadonModel

FEATURE_NAMES = ["feat1", "feat2", "feat3", "feat4"]
FEATURE_STRIDES = {"feat1": 4, "feat2": 8, "feat3": 16, "feat4": 32}


class EncoderStage(nn.Module):
    def __init__(self, model: LadonModel) -> None:
        super().__init__()
        self.encoder = model.bottleneck_layer.encoder

    def forward(self, image: Tensor) -> Tensor:
        return self.encoder(image)


class BodyStage(nn.Module):
    def __init__(self, model: LadonModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, latent_hat: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        features = self.model.body(latent_hat)
        return features["1"], features["2"], features["3"], features["4"]


class ClassificationStage(nn.Module):
    def __init__(self, model: LadonModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, feat4: Tensor) -> Tensor:
        return self.model.classify(feat4)


class DetectionStage(nn.Module):
    def __init__(self, model: LadonModel) -> None:
        super().__init__()
        self.head = model.detection

    def forward(self, feat1: Tensor, feat2: Tensor, feat3: Tensor, feat4: Tensor,
                image_size: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        features = OrderedDict([("1", feat1), ("2", feat2), ("3", feat3), ("4", feat4)])
        padded = (feat1.shape[-2] * FEATURE_STRIDES["feat1"], feat1.shape[-1] * FEATURE_STRIDES["feat1"])
        detections = self.head(features, padded, [(image_size[0], image_size[1])])[0]
        return detections["boxes"], detections["scores"], detections["labels"]


class SegmentationStage(nn.Module):
    def __init__(self, model: LadonModel) -> None:
        super().__init__()
        self.head = model.segmentation

    def forward(self, feat4: Tensor) -> Tensor:
        padded = (feat4.shape[-2] * FEATURE_STRIDES["feat4"], feat4.shape[-1] * FEATURE_STRIDES["feat4"])
        return self.head(feat4, padded)


class StageSpec(object):
    """How one stage is exported: its module, ONNX input/output names and dynamic axes."""

    def __init__(self, name: str, module: nn.Module, inputs: List[str], outputs: List[str],
                 dynamic_axes: Dict[str, Dict[int, str]]) -> None:
        self.name = name
        self.module = module.eval()
        self.inputs = inputs
        self.outputs = outputs
        self.dynamic_axes = dynamic_axes


def _feature_axes() -> Dict[str, Dict[int, str]]:
    return {name: {2: name + "_h", 3: name + "_w"} for name in FEATURE_NAMES}


def stage_specs(model: LadonModel) -> List[StageSpec]:
    specs = [
        StageSpec("encoder", EncoderStage(model), ["image"], ["latent"],
                  {"image": {2: "height", 3: "width"}, "latent": {2: "latent_h", 3: "latent_w"}}),
        StageSpec("body", BodyStage(model), ["latent_hat"], list(FEATURE_NAMES),
                  dict(_feature_axes(), latent_hat={2: "latent_h", 3: "latent_w"})),
    ]
    if "cls" in model.tasks:
        specs.append(StageSpec("head_cls", ClassificationStage(model), ["feat4"], ["probabilities"],
                               {"feat4": {2: "feat4_h", 3: "feat4_w"}}))
    if "det" in model.tasks:
        specs.append(StageSpec("head_det", DetectionStage(model), list(FEATURE_NAMES) + ["image_size"],
                               ["boxes", "scores", "labels"],
                               dict(_feature_axes(), boxes={0: "detections"}, scores={0: "detections"},
                                    labels={0: "detections"})))
    if "seg" in model.tasks:
        specs.append(StageSpec("head_seg", SegmentationStage(model), ["feat4"], ["logits"],
                               {"feat4": {2: "feat4_h", 3: "feat4_w"}, "logits": {2: "height", 3: "width"}}))
    return specs
