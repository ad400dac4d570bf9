"""ladon-export records the encoder's GMAC in the manifest, so that a device without `onnx` (a Jetson) reports it
instead of n/a; the device bench prefers the record, counts where it can, and says n/a where neither is possible."""
import copy
import sys

import numpy as np
import pytest

from ladon_deploy.bench.device_bench import encoder_gmac
from ladon_deploy.bundle import open_bundle
from ladon_deploy.device import preprocess
from ladon_deploy.export.pipeline import encoder_input_shapes
from ladon_deploy.gmac import count_gmac, gmac_from_record


def test_every_shape_the_device_can_give_the_encoder_is_recorded_at_what_gmac_counts(demo_bundle):
    bundle = open_bundle(demo_bundle)
    record = bundle.manifest["stages"]["encoder"]["gmac"]
    assert record["convention"] == "fvcore" and record["input"] == "image"
    shapes = encoder_input_shapes(416, "longer_side")
    assert len(record["macs_by_input_shape"]) == len(shapes) == 25
    for shape in shapes:
        counted = count_gmac(bundle.path("encoder"), {"image": tuple(shape)})
        assert gmac_from_record(record, shape) == counted.total_gmac, shape
    # The encoder of the design note: 2.030 GMAC at 416x416, counting GDN.
    assert gmac_from_record(record, [1, 3, 416, 416]) == pytest.approx(2.030, abs=5e-4)
    # The table is needed: the encoder's last convolution (2x2, unpadded) does not scale with the pixel count.
    per_pixel = [gmac_from_record(record, [1, 3, side, 416]) / side for side in (352, 416)]
    assert per_pixel[0] != per_pixel[1]


@pytest.mark.parametrize("height, width", [(20, 5000), (333, 500), (500, 333), (360, 480), (415, 416), (416, 416),
                                           (2000, 31), (17, 17), (600, 601)])
def test_the_recorded_shapes_cover_what_preprocessing_produces(height, width):
    padded = preprocess.preprocess_array(np.zeros((height, width, 3), np.uint8)).tensor.shape
    assert list(padded) in encoder_input_shapes(416, "longer_side")
    assert encoder_input_shapes(416, "square") == [[1, 3, 416, 416]]


def test_the_device_bench_prefers_the_record_counts_without_it_and_says_none_without_onnx(demo_bundle, monkeypatch):
    bundle = open_bundle(demo_bundle)
    shape = [1, 3, 288, 416]
    expected = count_gmac(bundle.path("encoder"), {"image": tuple(shape)}).total_gmac
    monkeypatch.setitem(sys.modules, "onnx", None)  # the Jetson stack: `import onnx` fails
    assert encoder_gmac(bundle, shape) == expected
    assert encoder_gmac(bundle, [1, 3, 300, 416]) is None  # a shape never recorded, nothing to count with
    old = copy.copy(bundle)
    old.manifest = copy.deepcopy(bundle.manifest)
    del old.manifest["stages"]["encoder"]["gmac"]  # a bundle exported before the record
    assert encoder_gmac(old, shape) is None
    monkeypatch.delitem(sys.modules, "onnx")
    assert encoder_gmac(old, shape) == expected
