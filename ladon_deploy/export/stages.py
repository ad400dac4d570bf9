"""Ladon split at the bottleneck: one nn.Module per exported stage, with the ONNX names and axes of each.

    encoder   image [1,3,H,W]                      -> latent [1,C,H/4-1,W/4-1]
    body      latent_hat [1,C,h,w]                 -> feat1 [1,256,H/4,W/4] feat2 feat3 feat4 [1,2048,H/32,W/32]
    head_cls  feat4                                -> probabilities [1,1000]
    head_det  feat1..feat4, image_size int64 [2]   -> boxes [N,4] (resized-image pixels), scores [N], labels [N]
              (ranked: no output depends on the order of tied scores; see models/ranked_detection.py)
    head_seg  feat4                                -> logits [1,21,H,W] at the padded input size (H = 32 * feat4 H)
"""
import copy
from collections import OrderedDict
from typing import Dict, List, Optional, Tuple

import torch
from compressai.layers import GDN, GDN1
from torch import Tensor, nn
from torch.nn import functional

from ladon_deploy.models.ladon import LadonModel
from ladon_deploy.models.ranked_detection import ranked_head

FEATURE_NAMES = ["feat1", "feat2", "feat3", "feat4"]
FEATURE_STRIDES = {"feat1": 4, "feat2": 8, "feat3": 16, "feat4": 32}


class DeployGDN(nn.Module):
    """GDN / GDN1 (or their inverses) with the reparametrised gamma and beta computed once, as graph constants.

    CompressAI's layers recompute gamma and beta from their parametrisation on every call, so an export computes the
    Conv weights inside the graph and writes 1/norm as Reciprocal: TensorRT 8.2's parser (the Nano's) takes Conv
    weights only as initializers and has no Reciprocal. Here the weights are buffers and the normalisation is one
    Div (or Mul). Ladon's bottleneck uses GDN1 (norm = conv(|x|), no square or square root). Equal to the original
    up to float rounding; the export's parity check compares the exported graph with the original layers.
    """

    def __init__(self, gdn: GDN) -> None:
        super().__init__()
        with torch.no_grad():
            gamma = gdn.gamma_reparam(gdn.gamma)
            self.register_buffer("weight", gamma.reshape(gamma.shape[0], gamma.shape[1], 1, 1).clone())
            self.register_buffer("bias", gdn.beta_reparam(gdn.beta).clone())
        self.inverse = bool(gdn.inverse)
        self.simplified = isinstance(gdn, GDN1)

    def forward(self, x: Tensor) -> Tensor:
        if self.simplified:
            norm = functional.conv2d(torch.abs(x), self.weight, self.bias)
        else:
            norm = torch.sqrt(functional.conv2d(x * x, self.weight, self.bias))
        return x * norm if self.inverse else x / norm


def fold_gdn(module: nn.Module) -> nn.Module:
    """A copy of `module` whose every GDN layer is a DeployGDN; the original is left as it is."""
    folded = copy.deepcopy(module)
    for parent in folded.modules():
        for name, child in list(parent.named_children()):
            if isinstance(child, GDN):
                setattr(parent, name, DeployGDN(child))
    return folded.eval()


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
    """The deployed detection head: the model's weights with every tie order fixed (models/ranked_detection.py)."""

    def __init__(self, model: LadonModel) -> None:
        super().__init__()
        self.head = ranked_head(model.detection)

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


class StageSpec:
    """How one stage is exported: its module, ONNX input/output names and dynamic axes.

    module is the reference the parity check runs; export_module (by default the same) is what is written to ONNX.
    """

    def __init__(self, name: str, module: nn.Module, inputs: List[str], outputs: List[str],
                 dynamic_axes: Dict[str, Dict[int, str]], export_module: Optional[nn.Module] = None) -> None:
        self.name = name
        self.module = module.eval()
        self.export_module = (export_module or module).eval()
        self.inputs = inputs
        self.outputs = outputs
        self.dynamic_axes = dynamic_axes


def _feature_axes() -> Dict[str, Dict[int, str]]:
    return {name: {2: name + "_h", 3: name + "_w"} for name in FEATURE_NAMES}


def stage_specs(model: LadonModel) -> List[StageSpec]:
    # The encoder and the body's decoder hold GDN layers: they are exported with GDN folded (TensorRT 8.2 reads
    # them then) and checked against the model as it is.
    deployed = fold_gdn(model)
    specs = [
        StageSpec("encoder", EncoderStage(model), ["image"], ["latent"],
                  {"image": {2: "height", 3: "width"}, "latent": {2: "latent_h", 3: "latent_w"}},
                  export_module=EncoderStage(deployed)),
        StageSpec("body", BodyStage(model), ["latent_hat"], list(FEATURE_NAMES),
                  dict(_feature_axes(), latent_hat={2: "latent_h", 3: "latent_w"}),
                  export_module=BodyStage(deployed)),
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
