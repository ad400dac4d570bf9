"""Ladon models built by sc2bench's own classes, configured as the authors' Ladon configs (DESIGN.md section 3).

The three task models share one trunk, as the trained Ladon files do (encoder frozen after step 1, body after step 2).
"""
import argparse
import copy

import torch


def bottleneck_config(channels=24):
    return {"key": "FPBasedResNetBottleneck",
            "kwargs": {"num_bottleneck_channels": channels, "num_target_channels": 256}}


def classification_model():
    from sc2bench.models.backbone import splittable_resnet

    return splittable_resnet(bottleneck_config(), resnet_name="resnet50", inplanes=2048, skips_avgpool=False,
                             skips_fc=False, num_classes=1000, weights=None)


def detection_model(input_size=416):
    from sc2bench.models.detection.rcnn import faster_rcnn_model

    backbone_config = {"key": "splittable_resnet",
                       "kwargs": {"num_classes": 1000, "weights": None, "inplanes": 2048,
                                  "bottleneck_config": bottleneck_config(), "resnet_name": "resnet50",
                                  "skips_avgpool": False, "skips_fc": False}}
    return faster_rcnn_model(backbone_config, pretrained=False, progress=False, num_classes=91,
                             backbone_fpn_kwargs={"return_layer_dict": {"bottleneck_layer": "1", "layer2": "2",
                                                                        "layer3": "3", "layer4": "4"},
                                                  "in_channels_list": [256, 512, 1024, 2048], "out_channels": 256,
                                                  "analyzable_layer_key": "bottleneck_layer"},
                             in_channels_stage2=256, min_size=input_size, max_size=input_size)


def segmentation_model():
    from sc2bench.models.segmentation.deeplabv3 import deeplabv3_model

    backbone_config = {"key": "splittable_resnet",
                       "kwargs": {"num_classes": 1000, "weights": None, "bottleneck_config": bottleneck_config(),
                                  "resnet_name": "resnet50", "skips_avgpool": True, "skips_fc": True}}
    return deeplabv3_model(backbone_config, pretrained=False, num_classes=21, uses_aux=True, num_input_channels=2048,
                           num_aux_channels=1024, return_layer_dict={"layer3": "aux", "layer4": "out"},
                           analyzable_layer_key="bottleneck_layer")


def build_shared_trio(seed=0):
    """(cls, det, seg) sc2bench models whose trunks hold identical, seeded weights and updated entropy tables."""
    torch.manual_seed(seed)
    cls_model = classification_model().eval()
    with torch.no_grad():
        for parameter in cls_model.bottleneck_layer.entropy_bottleneck.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    cls_model.update()
    det_model = detection_model().eval()
    seg_model = segmentation_model().eval()
    trunk = {k: v for k, v in cls_model.state_dict().items() if not k.startswith("fc.")}
    for prefix, target in (("backbone.body.", det_model), ("backbone.", seg_model)):
        state = target.state_dict()
        for key, value in trunk.items():
            name = prefix + key
            if name in state:
                state[name] = value.clone()
            elif key.endswith(("_offset", "_quantized_cdf", "_cdf_length")):
                state[name] = value.clone()
        _load_exact(target, state)
    return cls_model, det_model, seg_model


def _load_exact(model, state):
    for key in ("_offset", "_quantized_cdf", "_cdf_length"):
        for name, value in state.items():
            if name.endswith("entropy_bottleneck." + key):
                module = model.get_submodule(name[: -len(key) - 1])
                setattr(module, key, torch.zeros_like(value))
    torch.nn.Module.load_state_dict(model, state, strict=True)


def torchdistill_file(model, path, config_name):
    """Saves a model the way torchdistill does (plus an argparse.Namespace 'args')."""
    args = argparse.Namespace(config=config_name, device="cuda", log=None, seed=None, test_only=False)
    torch.save({"model": copy.deepcopy(model.state_dict()), "optimizer": None, "best_value": 0.5,
                "lr_scheduler": None, "args": args}, str(path))
    return path


def widen_class_logits(det_model, seed=11):
    """Seeded box-classifier weights wide enough that boxes clear the 0.05 score threshold: random default-scale
    logits give none, and boxes compared on nothing prove nothing."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        predictor = det_model.roi_heads.box_predictor
        predictor.cls_score.weight.copy_(torch.randn(predictor.cls_score.weight.shape, generator=generator) * 0.2)
        predictor.cls_score.bias.zero_()


def save_trio(cls_model, det_model, seg_model, directory):
    """The three task files in torchdistill format, named as the release names them; their paths as strings."""
    return [str(torchdistill_file(cls_model, directory / "ilsvrc2012-splittable_resnet50-fp-beta5.12.pt", "cls.yaml")),
            str(torchdistill_file(det_model, directory / "coco2017-faster_rcnn_splittable_resnet50-fp-beta5.12_fpn.pt",
                                  "det.yaml")),
            str(torchdistill_file(seg_model,
                                  directory / "pascal_voc2012-deeplabv3_splittable_resnet50-fp-beta5.12.pt",
                                  "seg.yaml"))]
