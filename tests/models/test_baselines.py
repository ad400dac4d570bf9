"""LC baselines: the registry of the paper's nine models and their seeded random weights (nothing downloaded)."""
import pytest

from ladon_deploy.models import baselines as lc_models
from ladon_deploy.models.baselines import LC_MODELS, build_lc_model

CLASSIFIERS = ["mnasnet0_5", "mnasnet1_3", "mobilenet_v2", "mobilenet_v3_large"]


def test_registry_lists_the_papers_nine_baselines():
    assert lc_models.lc_model_names("classification") == CLASSIFIERS
    assert lc_models.lc_model_names("detection") == [
        "fasterrcnn_mobilenet_v3_large_320_fpn", "ssd300_vgg16", "ssdlite320_mobilenet_v3_large"]
    assert lc_models.lc_model_names("segmentation") == ["deeplabv3_mobilenet_v3_large", "lraspp_mobilenet_v3_large"]
    assert len(LC_MODELS) == 9
    for name, spec in LC_MODELS.items():
        task, builder, size, description = spec
        assert callable(builder) and description
        assert size == {"classification": (224, 224), "detection": (480, 640), "segmentation": (416, 416)}[task]
        assert spec.input_shape == ((3,) + size if task == "detection" else (1, 3) + size)
    with pytest.raises(KeyError, match="unknown LC model"):
        build_lc_model("resnet50")


def test_weights_are_seeded():
    import torch

    a, b, c = (build_lc_model("mnasnet0_5", seed=s, input_size=(32, 32)) for s in (0, 0, 1))
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(a(x), b(x))
        assert not torch.equal(a(x), c(x))
