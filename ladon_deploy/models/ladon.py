"""The Ladon multi-task model, laid out so that the official checkpoints' tensors load unchanged.

One shared trunk (bottleneck encoder + entropy bottleneck + decoder, then ResNet layer2-4) feeds three heads:
classification (avgpool + fc), detection (FPN + Faster R-CNN) and segmentation (DeepLabv3 head). The bottleneck is
sc2bench's own `FPBasedResNetBottleneck`, the trunk layers are torchvision's ResNet-50 (or timm's ResNeSt-269e) layers,
and the heads are torchvision's modules with the configuration of the authors' Ladon configs (DESIGN.md section 3).

Module names (and therefore state_dict keys) of LadonModel, the "canonical" layout:
    bottleneck_layer.*  layer2.*  layer3.*  layer4.*        shared trunk
    fc.*                                                    classification head
    detection.fpn.*  detection.rpn.*  detection.roi_heads.* detection head
    segmentation.classifier.*  segmentation.aux_classifier.* segmentation head (aux is training-only, kept to load)
"""
from collections import OrderedDict
from typing import Dict, List, Sequence, Tuple

import torch
from torch import Tensor, nn
from torch.nn import functional

from ladon_deploy.bundle import TASKS

IMAGE_MEAN = (0.485, 0.456, 0.406)
IMAGE_STD = (0.229, 0.224, 0.225)
INPUT_SIZE = 416
PAD_MULTIPLE = 32

ARCHITECTURES = {
    # name: (bottleneck channels, description)
    "resnet50": (24, "Ladon ResNet-50 (torchvision ResNet-50 layer2-4)"),
    "resnest269e": (32, "Ladon ResNeSt-269e (timm resnest269e layer2-4)"),
}
NUM_CLASSES = {"cls": 1000, "det": 91, "seg": 21}

# Detection evaluated with FPN features named '1'..'4' while MultiScaleRoIAlign looked up '0'..'3', so only
# levels '1', '2', '3' were pooled (DESIGN.md section 3). Pooling those three levels reproduces what was evaluated.
ROI_POOLED_LEVELS = ["1", "2", "3"]


def _trunk_layers(arch: str) -> Tuple[nn.Module, nn.Module, nn.Module]:
    if arch == "resnet50":
        from torchvision.models import resnet50

        base = resnet50(weights=None)
    elif arch == "resnest269e":
        import timm

        base = timm.create_model("resnest269e", pretrained=False)
    else:
        raise ValueError("unknown architecture %r (known: %s)" % (arch, ", ".join(ARCHITECTURES)))
    return base.layer2, base.layer3, base.layer4


def build_bottleneck(num_bottleneck_channels: int) -> nn.Module:
    from sc2bench.models.layer import FPBasedResNetBottleneck

    return FPBasedResNetBottleneck(num_bottleneck_channels=num_bottleneck_channels, num_target_channels=256)


class DetectionHead(nn.Module):
    """FPN + RPN + RoI heads over the trunk's four feature maps; boxes come out in resized-image pixels."""

    def __init__(self, num_classes: int = NUM_CLASSES["det"], input_size: int = INPUT_SIZE) -> None:
        super().__init__()
        from torchvision.models.detection.faster_rcnn import FasterRCNN
        from torchvision.ops import MultiScaleRoIAlign
        from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool

        self.fpn = FeaturePyramidNetwork([256, 512, 1024, 2048], 256, extra_blocks=LastLevelMaxPool())
        placeholder = nn.Module()
        placeholder.out_channels = 256
        # FasterRCNN's constructor assembles the RPN, RoI heads and transform with torchvision's defaults, exactly as
        # sc2bench does; only the parts are kept (the placeholder backbone is dropped).
        reference = FasterRCNN(placeholder, num_classes=num_classes, min_size=input_size, max_size=input_size,
                               box_roi_pool=MultiScaleRoIAlign(ROI_POOLED_LEVELS, output_size=7, sampling_ratio=2))
        self.rpn = reference.rpn
        self.roi_heads = reference.roi_heads
        self.transform = reference.transform

    def forward(self, features: "OrderedDict[str, Tensor]", padded_size: Tuple[int, int],
                image_sizes: List[Tuple[int, int]]) -> List[Dict[str, Tensor]]:
        from torchvision.models.detection.image_list import ImageList

        pyramid = self.fpn(features)
        first = next(iter(features.values()))
        # The anchor generator only reads the padded tensor's shape, dtype and device.
        canvas = first.new_zeros((first.shape[0], 1) + tuple(padded_size))
        images = ImageList(canvas, image_sizes)
        proposals, _ = self.rpn(images, pyramid)
        detections, _ = self.roi_heads(pyramid, proposals, images.image_sizes)
        return detections


class SegmentationHead(nn.Module):
    """DeepLabv3 head on layer4; the FCN auxiliary head is training-only and kept only so checkpoints load."""

    def __init__(self, num_classes: int = NUM_CLASSES["seg"]) -> None:
        super().__init__()
        from torchvision.models.segmentation.deeplabv3 import DeepLabHead
        from torchvision.models.segmentation.fcn import FCNHead

        self.classifier = DeepLabHead(2048, num_classes)
        self.aux_classifier = FCNHead(1024, num_classes)

    def forward(self, feat4: Tensor, padded_size: Tuple[int, int]) -> Tensor:
        logits = self.classifier(feat4)
        return functional.interpolate(logits, size=padded_size, mode="bilinear", align_corners=False)


class LadonModel(nn.Module):
    """Ladon: shared entropy-coded trunk plus the requested task heads."""

    def __init__(self, arch: str = "resnet50", tasks: Sequence[str] = TASKS) -> None:
        super().__init__()
        if arch not in ARCHITECTURES:
            raise ValueError("unknown architecture %r (known: %s)" % (arch, ", ".join(ARCHITECTURES)))
        unknown = [t for t in tasks if t not in TASKS]
        if unknown or not tasks:
            raise ValueError("tasks must be a non-empty subset of %s, got %s" % (TASKS, list(tasks)))
        self.arch = arch
        self.tasks = tuple(t for t in TASKS if t in tasks)
        self.num_bottleneck_channels = ARCHITECTURES[arch][0]
        self.bottleneck_layer = build_bottleneck(self.num_bottleneck_channels)
        self.layer2, self.layer3, self.layer4 = _trunk_layers(arch)
        if "cls" in self.tasks:
            self.fc = nn.Linear(2048, NUM_CLASSES["cls"])
        if "det" in self.tasks:
            self.detection = DetectionHead()
        if "seg" in self.tasks:
            self.segmentation = SegmentationHead()

    @property
    def entropy_bottleneck(self) -> nn.Module:
        return self.bottleneck_layer.entropy_bottleneck

    def encode(self, image: Tensor) -> Tensor:
        """Normalised, padded image [N,3,H,W] -> latent y before quantization."""
        return self.bottleneck_layer.encoder(image)

    def quantize_dequantize(self, latent: Tensor) -> Tensor:
        """What crosses the link: round(y - median) + median, exactly as EntropyBottleneck.compress/decompress."""
        medians = self.entropy_bottleneck._get_medians().detach().reshape(1, -1, 1, 1)
        return torch.round(latent - medians) + medians

    def body(self, latent_hat: Tensor) -> "OrderedDict[str, Tensor]":
        """Dequantized latent -> the four trunk feature maps, named as the detection FPN saw them ('1'..'4')."""
        features = OrderedDict()
        x = self.bottleneck_layer.decoder(latent_hat)
        features["1"] = x
        x = self.layer2(x)
        features["2"] = x
        x = self.layer3(x)
        features["3"] = x
        features["4"] = self.layer4(x)
        return features

    def classify(self, feat4: Tensor) -> Tensor:
        """feat4 -> class probabilities [N,1000]."""
        pooled = torch.flatten(functional.adaptive_avg_pool2d(feat4, 1), 1)
        return torch.softmax(self.fc(pooled), dim=1)

    @torch.no_grad()
    def update_entropy_tables(self, force: bool = False) -> bool:
        """Computes the quantized CDF tables (CompressAI update()); returns True if they were (re)computed."""
        return bool(self.entropy_bottleneck.update(force=force))

    def has_entropy_tables(self) -> bool:
        return self.entropy_bottleneck._quantized_cdf.numel() > 0


def build_demo_model(arch: str = "resnet50", tasks: Sequence[str] = TASKS, seed: int = 0) -> LadonModel:
    """A seeded, randomly initialised Ladon model with entropy tables computed: everything can run without weights."""
    torch.manual_seed(seed)
    model = LadonModel(arch, tasks).eval()
    if "det" in model.tasks:
        # With default-scale random logits no class clears the 0.05 score threshold and detection parity would be
        # checked on zero boxes; wider seeded logits give about a hundred boxes to compare.
        with torch.no_grad():
            predictor = model.detection.roi_heads.box_predictor
            predictor.cls_score.weight.normal_(0.0, 0.2)
            predictor.cls_score.bias.zero_()
    fit_entropy_model(model, seed=seed)
    model.update_entropy_tables(force=True)
    return model


def _smooth_images(count: int, size: int, generator: torch.Generator) -> Tensor:
    """Seeded images with photo-like structure (low-frequency colour fields plus texture), already normalised."""
    coarse = torch.rand((count, 3, 8, 8), generator=generator)
    fields = functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    pixels = (fields + 0.08 * torch.randn((count, 3, size, size), generator=generator)).clamp(0, 1)
    mean = torch.tensor(IMAGE_MEAN).reshape(1, 3, 1, 1)
    std = torch.tensor(IMAGE_STD).reshape(1, 3, 1, 1)
    return (pixels - mean) / std


def fit_entropy_model(model: LadonModel, steps: int = 120, seed: int = 0) -> None:
    """Fits the untrained factorized prior to the encoder's latents on seeded synthetic images.

    A random entropy model spreads probability over ~20 symbols per channel, so a demo payload would be ~100 KB where
    trained Ladon models send 4-120 KB; fitting only the density (as CompressAI's training does with its likelihood
    and auxiliary losses) to what the random encoder actually emits gives payloads of a realistic order of size.
    """
    generator = torch.Generator().manual_seed(seed + 1)
    bottleneck = model.entropy_bottleneck
    with torch.no_grad():
        latents = model.encode(_smooth_images(2, 96, generator))
    optimizer = torch.optim.Adam(bottleneck.parameters(), lr=0.02)
    was_training = bottleneck.training
    bottleneck.train()
    for _ in range(steps):
        optimizer.zero_grad()
        _, likelihoods = bottleneck(latents)
        loss = -torch.log2(likelihoods).mean() + 1e-3 * bottleneck.loss()
        loss.backward()
        optimizer.step()
    bottleneck.train(was_training)
    for parameter in bottleneck.parameters():
        parameter.requires_grad_(False)
