"""Session-wide fixtures: models and bundles are expensive on 2 cores, so each is built once."""
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))


@pytest.fixture(scope="session")
def demo_model():
    from ladon_deploy.models.ladon import build_demo_model

    return build_demo_model()


@pytest.fixture(scope="session")
def demo_bundle(tmp_path_factory, demo_model):
    """The demo bundle, exported once through the same code path as `ladon-export --demo`."""
    from ladon_deploy.export.pipeline import export_bundle

    out = tmp_path_factory.mktemp("bundles") / "demo-bundle"
    export_bundle(demo_model, str(out))
    return str(out)


@pytest.fixture(scope="session")
def sc2bench_trio():
    from sc2bench_models import build_shared_trio

    return build_shared_trio(seed=3)


@pytest.fixture(scope="session")
def sc2bench_files(tmp_path_factory, sc2bench_trio):
    """The three official-style files (torchdistill format), named as the release names them."""
    from sc2bench_models import torchdistill_file

    directory = tmp_path_factory.mktemp("ckpt")
    cls_model, det_model, seg_model = sc2bench_trio
    return {
        "cls": str(torchdistill_file(cls_model, directory / "ilsvrc2012-splittable_resnet50-fp-beta5.12_from_resnet50.pt",
                                     "configs/ilsvrc2012/ladon/splittable_resnet50-fp-beta5.12_from_resnet50.yaml")),
        "det": str(torchdistill_file(det_model, directory / "coco2017-faster_rcnn_splittable_resnet50-fp-beta5.12_fpn.pt",
                                     "configs/coco2017/ladon/faster_rcnn_splittable_resnet50-fp-beta5.12_fpn.yaml")),
        "seg": str(torchdistill_file(seg_model,
                                     directory / "pascal_voc2012-deeplabv3_splittable_resnet50-fp-beta5.12_two_stages.pt",
                                     "configs/pascal_voc2012/ladon/deeplabv3_splittable_resnet50-fp-beta5.12.yaml")),
    }
