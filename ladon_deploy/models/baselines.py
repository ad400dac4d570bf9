"""The local-computing (LC) baselines of the Ladon paper, built from torchvision with seeded random weights.

LC means the whole model runs on the mobile device. The Ladon paper (WACV 2025, configs under
``configs/*/baseline/`` of yoshitomo-matsubara/ladon-multi-task-sc2) compares against these torchvision models:

=============================  ==========  ============  =====================================================
name                           task        input         notes
=============================  ==========  ============  =====================================================
mnasnet0_5                     classify    1x3x224x224   ImageNet eval: Resize 256 + CenterCrop 224
mnasnet1_3                     classify    1x3x224x224
mobilenet_v2                   classify    1x3x224x224
mobilenet_v3_large             classify    1x3x224x224
fasterrcnn_mobilenet_v3_       detect      3x480x640     raw image in [0, 1]; the model resizes it itself
large_320_fpn                                            (min_size 320, max_size 640 -> 320x427)
ssd300_vgg16                   detect      3x480x640     the model resizes to 300x300
ssdlite320_mobilenet_v3_large  detect      3x480x640     the model resizes to 320x320
deeplabv3_mobilenet_v3_large   segment     1x3x416x416   21 VOC classes
lraspp_mobilenet_v3_large      segment     1x3x416x416   21 VOC classes
=============================  ==========  ============  =====================================================

Input sizes. Classifiers: 224x224, torchvision's and the paper's ImageNet eval crop. Detectors take one raw
image (the paper feeds COCO val2017 images at their native size, batch 1) and normalize + resize it inside the
model (``GeneralizedRCNNTransform``); 480x640 is the typical COCO image and is the default here; any size works
(``input_size=``). Segmenters: torchvision evaluates at 520, but the paper fine-tuned both segmentation
baselines on PASCAL VOC 2012 with 416-pixel crops and evaluates them with the shorter side resized to 416
(``CustomRandomResize(min_size=416, max_size=416)``), the same resolution as Ladon's VOC input, so the default
here is 416x416 (square, as Ladon's). Pass ``input_size=(520, 520)`` for torchvision's size.

Weights. ``weights=None, weights_backbone=None`` everywhere (nothing is downloaded); parameters come from
torchvision's own initializers after ``torch.manual_seed(seed)``. torchvision leaves BatchNorm running
statistics at mean 0 / var 1, under which MobileNet activations shrink to ~1e-13 by the last layer: logits of
~1e-8 and every detector class score exactly 1/91, so detections tie and a parity check compares noise. The
builder therefore calibrates the BatchNorm statistics on one seeded random batch (``calibrate_batchnorm``;
``calibrate_bn=False`` skips it), which gives unit-scale activations, non-degenerate scores and deterministic
detections. Latency and GMAC do not depend on the weight values, except the detectors' post-processing, which
depends on how many boxes pass the score threshold: random-weight class scores of a 91-class softmax are around
1/91 = 0.011, below Faster R-CNN's default ``box_score_thresh=0.05`` and around SSD300's ``score_thresh=0.01``,
which would give zero detections and an unrealistically cheap post-processing. The registry therefore builds the
detectors with a score threshold of 0.001 (``DETECTOR_SCORE_THRESH``; SSDLite's own default is already 0.001):
every run keeps the maximum number of detections (100 / 200 / 300), deterministically. Override with
``build_lc_model(name, score_thresh=...)``.

Export. Every model exports with the TorchScript exporter (``dynamo=False``; ladon-bench asks for opset 13, the
bundles' opset): it folds batch-norm into the convolutions, is fast on small machines and handles the detectors
(the dynamo exporter fails on Faster R-CNN's data-dependent NMS guard). Detectors are wrapped so that the ONNX
graph takes a single float32 image tensor ``image`` [3, H, W] in [0, 1] and returns ``boxes`` [N, 4] (x1, y1,
x2, y2 in input pixels), ``scores`` [N] and ``labels`` [N] (int64, COCO category ids); classifiers take
``input`` [1, 3, H, W] (ImageNet-normalized) and return ``logits`` [1, 1000]; segmenters take ``input`` [1, 3,
H, W] and return ``out`` [1, 21, H, W] (the aux head is off: it is training-only). The graph has static shapes
(the export size); re-export for another size.

Exporting and checking the exports: export/baselines.py.
"""

from collections import OrderedDict

__all__ = ["LCModelSpec", "LC_MODELS", "DETECTOR_SCORE_THRESH", "build_lc_model", "example_input",
           "io_names", "lc_model_names", "lc_spec", "wrap_for_export"]

DETECTOR_SCORE_THRESH = 0.001


class LCModelSpec:
    """One LC baseline.

    Attributes:
        name: registry key (the torchvision builder's name).
        task: ``"classification"``, ``"detection"`` or ``"segmentation"``.
        builder: callable ``builder(seed=0, input_size=None, **overrides) -> torch.nn.Module`` in eval mode
            (unwrapped: the torchvision model itself, with its list-of-images / dict-output interface).
        input_size: default (H, W).
        description: one line.
        tv_name: torchvision builder name.
        tv_kwargs: the keyword arguments passed to it (besides weights / weights_backbone).
    """

    __slots__ = ("name", "task", "builder", "input_size", "description", "tv_name", "tv_kwargs")

    def __init__(self, name, task, input_size, description, tv_name, tv_kwargs):
        self.name = name
        self.task = task
        self.input_size = tuple(input_size)
        self.description = description
        self.tv_name = tv_name
        self.tv_kwargs = dict(tv_kwargs)
        self.builder = self._build

    def _build(self, seed=0, input_size=None, **overrides):
        import torch
        import torchvision.models as tvm
        package = {"classification": tvm, "detection": tvm.detection, "segmentation": tvm.segmentation}[self.task]
        fn = getattr(package, self.tv_name)
        kwargs = dict(self.tv_kwargs)
        kwargs.update(overrides)
        if self.task == "detection" and "score_thresh" in kwargs and self.tv_name.startswith("fasterrcnn"):
            kwargs["box_score_thresh"] = kwargs.pop("score_thresh")
        calibrate = kwargs.pop("calibrate_bn", True)
        if self.task != "classification":
            kwargs["weights_backbone"] = None  # classifiers have no backbone argument
        torch.manual_seed(seed)
        model = fn(weights=None, **kwargs)
        if calibrate:
            calibrate_batchnorm(model, self.task, tuple(input_size or self.input_size), seed=seed)
        return model.eval()

    @property
    def input_shape(self):
        """Default shape of the exported graph's input."""
        return input_shape_for(self, self.input_size)

    def __iter__(self):
        """``task, builder, input_size, description = LC_MODELS[name]``."""
        return iter((self.task, self.builder, self.input_size, self.description))

    def __repr__(self):
        return "LCModelSpec(%r, task=%r, input_size=%s)" % (self.name, self.task, self.input_size)


def calibrate_batchnorm(model, task, input_size, seed=0, batch=2):
    """Set every BatchNorm's running statistics from one forward pass on a seeded random batch.

    torchvision's random init leaves running_mean 0 / running_var 1, under which MobileNet-style activations
    shrink layer after layer (to about 1e-13 at the end of MobileNetV3): classifier logits are ~1e-8 and every
    detector class score is exactly 1/91, so detections tie and a parity check compares noise. Running the
    model once with only its BatchNorm layers in training mode (momentum None: the running statistics become
    that batch's statistics) gives unit-scale activations everywhere, deterministically. A batch of 2 is used
    because a BatchNorm on a 1x1 map needs more than one value per channel.
    """
    import torch
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return model
    model.eval()
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    gen = torch.Generator().manual_seed(10007 + seed)
    h, w = input_size
    with torch.no_grad():
        if task == "detection":
            model([torch.rand((3, h, w), generator=gen) for _ in range(batch)])
        else:
            model(torch.randn((batch, 3, h, w), generator=gen))
    for m, mom in zip(bns, saved):
        m.momentum = mom
        m.eval()
    return model.eval()


def input_shape_for(spec, input_size):
    h, w = input_size
    return (3, h, w) if spec.task == "detection" else (1, 3, h, w)


def _specs():
    cls, det, seg = "classification", "detection", "segmentation"
    rows = [
        ("mnasnet0_5", cls, (224, 224), "MnasNet 0.5 ImageNet classifier", {"num_classes": 1000}),
        ("mnasnet1_3", cls, (224, 224), "MnasNet 1.3 ImageNet classifier", {"num_classes": 1000}),
        ("mobilenet_v2", cls, (224, 224), "MobileNetV2 ImageNet classifier", {"num_classes": 1000}),
        ("mobilenet_v3_large", cls, (224, 224), "MobileNetV3-Large ImageNet classifier", {"num_classes": 1000}),
        ("fasterrcnn_mobilenet_v3_large_320_fpn", det, (480, 640),
         "Faster R-CNN MobileNetV3-Large 320 FPN COCO detector (resizes to min 320 / max 640, 150 proposals)",
         {"num_classes": 91, "box_score_thresh": DETECTOR_SCORE_THRESH}),
        ("ssd300_vgg16", det, (480, 640), "SSD300 VGG16 COCO detector (resizes to 300x300)",
         {"num_classes": 91, "score_thresh": DETECTOR_SCORE_THRESH}),
        ("ssdlite320_mobilenet_v3_large", det, (480, 640),
         "SSDLite320 MobileNetV3-Large COCO detector (resizes to 320x320)",
         {"num_classes": 91, "score_thresh": DETECTOR_SCORE_THRESH}),
        ("deeplabv3_mobilenet_v3_large", seg, (416, 416),
         "DeepLabv3 MobileNetV3-Large PASCAL VOC segmenter (21 classes, no aux head)",
         {"num_classes": 21, "aux_loss": False}),
        ("lraspp_mobilenet_v3_large", seg, (416, 416),
         "LR-ASPP MobileNetV3-Large PASCAL VOC segmenter (21 classes)", {"num_classes": 21}),
    ]
    return OrderedDict((r[0], LCModelSpec(r[0], r[1], r[2], r[3], r[0], r[4])) for r in rows)


LC_MODELS = _specs()


def lc_model_names(task=None):
    """Registry names, optionally only those of one task."""
    return [n for n, s in LC_MODELS.items() if task is None or s.task == task]


def lc_spec(name):
    """The registry entry of ``name``; KeyError naming the known models otherwise."""
    try:
        return LC_MODELS[name]
    except KeyError:
        raise KeyError("unknown LC model %r; known: %s" % (name, ", ".join(LC_MODELS)))


def build_lc_model(name, seed=0, input_size=None, **overrides):
    """The torchvision model of ``name`` with seeded random weights, in eval mode (not wrapped).

    ``input_size`` (H, W) is the size of the batch that calibrates the BatchNorm statistics (default: the
    registry's); ``calibrate_bn=False`` keeps torchvision's initial statistics; other keyword arguments go to the
    torchvision builder (``score_thresh=`` is accepted for every detector).
    """
    return lc_spec(name).builder(seed=seed, input_size=input_size, **overrides)


def _wrappers():
    import torch

    class DetectorWrapper(torch.nn.Module):
        """One image tensor [3, H, W] in, (boxes, scores, labels) out."""

        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, image):
            out = self.model([image])[0]
            return out["boxes"], out["scores"], out["labels"]

    class SegmenterWrapper(torch.nn.Module):
        """[1, 3, H, W] in, the 'out' logits [1, C, H, W] out."""

        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, x):
            return self.model(x)["out"]

    return DetectorWrapper, SegmenterWrapper


def wrap_for_export(name, model):
    """The module that is exported: detectors and segmenters get a single-tensor interface."""
    task = lc_spec(name).task
    det, seg = _wrappers()
    if task == "detection":
        return det(model).eval()
    if task == "segmentation":
        return seg(model).eval()
    return model


def io_names(name):
    task = lc_spec(name).task
    if task == "detection":
        return ["image"], ["boxes", "scores", "labels"]
    if task == "segmentation":
        return ["input"], ["out"]
    return ["input"], ["logits"]


def example_input(name, input_size=None, seed=0):
    """A seeded input of the exported graph: [3, H, W] uniform [0, 1) image for detectors, a standard-normal
    (normalized-image-like) [1, 3, H, W] tensor otherwise."""
    import torch
    spec = lc_spec(name)
    shape = input_shape_for(spec, input_size or spec.input_size)
    gen = torch.Generator().manual_seed(seed)
    if spec.task == "detection":
        return torch.rand(shape, generator=gen)
    return torch.randn(shape, generator=gen)
