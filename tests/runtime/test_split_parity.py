"""The split runtime against the unsplit PyTorch Ladon model, and the payload body against CompressAI's bytes."""
import numpy as np
import pytest
import torch
from PIL import Image

from images import make_image
from ladon_deploy.bundle import open_bundle
from ladon_deploy.models.ladon import IMAGE_MEAN, IMAGE_STD
from reference import ladon_reference_forward
from ladon_deploy.device import wire
from ladon_deploy.device.stage import DeviceStage
from ladon_deploy.server.stage import ServerStage


def torch_preprocess(path):
    """The evaluated preprocessing, run by torchvision itself (not by our numpy port)."""
    from torchvision.models.detection.transform import GeneralizedRCNNTransform
    from torchvision.transforms.functional import to_tensor

    transform = GeneralizedRCNNTransform(416, 416, list(IMAGE_MEAN), list(IMAGE_STD)).eval()
    image = to_tensor(Image.open(path).convert("RGB"))
    images, _ = transform([image])
    return images.tensors, tuple(images.image_sizes[0]), tuple(image.shape[-2:])


@pytest.fixture(scope="module")
def stages(demo_bundle):
    bundle = open_bundle(demo_bundle)
    return DeviceStage(bundle), ServerStage(bundle)


@pytest.mark.parametrize("height,width,seed", [(333, 500, 1), (416, 416, 2), (480, 360, 3)])
def test_split_matches_unsplit_pytorch(stages, demo_model, tmp_path, height, width, seed):
    mobile, server = stages
    path = make_image(tmp_path / "image.png", height, width, seed)
    sent = mobile.run(path, ("cls", "det", "seg"))
    result = server.run(sent.payload)

    tensor, resized, original = torch_preprocess(path)
    assert resized == tuple(sent.image.resized_size) and original == (height, width)
    with torch.no_grad():
        reference = ladon_reference_forward(demo_model, tensor, resized, original)

    probabilities = result.outputs["cls"]["probabilities"]
    assert np.abs(probabilities - reference["cls"].numpy()).max() <= 1e-4

    boxes = np.array([d["box"] for d in result.detections()], dtype=np.float32).reshape(-1, 4)
    reference_boxes = reference["det"]["boxes"].numpy()
    assert len(reference_boxes) > 0, "the test image must produce detections"
    assert boxes.shape == reference_boxes.shape
    assert np.abs(boxes - reference_boxes).max() <= 0.5
    assert np.array_equal(result.outputs["det"]["labels"], reference["det"]["labels"].numpy())

    mask = result.mask()
    agreement = float((mask == reference["seg"].numpy()).mean())
    assert mask.shape == (height, width)
    assert agreement >= 0.999


def test_body_runs_once_for_all_tasks(stages, tmp_path):
    mobile, server = stages
    sent = mobile.run(make_image(tmp_path / "i.png", 200, 300, 4), ("cls", "det", "seg"))
    calls = []
    original = server.body.run

    def counting(feeds):
        calls.append(1)
        return original(feeds)

    server.body.run = counting
    try:
        result = server.run(sent.payload)
    finally:
        server.body.run = original
    assert calls == [1] and set(result.outputs) == {"cls", "det", "seg"}


def test_task_selection_runs_only_requested_heads(stages, tmp_path):
    mobile, server = stages
    sent = mobile.run(make_image(tmp_path / "i.png", 240, 320, 5), ("cls",))
    result = server.run(sent.payload)
    assert set(result.outputs) == {"cls"}
    assert wire.unpack(sent.payload).tasks == ("cls",)


@pytest.mark.parametrize("height,width,seed", [(333, 500, 11), (416, 416, 12), (200, 640, 13)])
def test_payload_body_is_compressai_bytes(stages, demo_model, tmp_path, height, width, seed):
    """The rANS body equals EntropyBottleneck.compress on the same latent, byte for byte."""
    mobile, _ = stages
    path = make_image(tmp_path / "image.png", height, width, seed)
    sent = mobile.run(path, ("cls",))
    payload = wire.unpack(sent.payload)
    image = torch.from_numpy(mobile.preprocess(path).tensor)
    with torch.no_grad():
        latent = torch.from_numpy(mobile.encoder.run({"image": image.numpy()})["latent"])
        expected = demo_model.entropy_bottleneck.compress(latent)[0]
    assert payload.body == expected
    assert payload.latent_shape == tuple(latent.shape[1:])
    # And CompressAI decodes our body to the same y_hat the server uses.
    with torch.no_grad():
        y_hat = demo_model.entropy_bottleneck.decompress([payload.body], latent.shape[-2:]).numpy()
    assert np.array_equal(y_hat, mobile.coder.decompress(payload.body, payload.latent_shape).reshape(y_hat.shape))


def test_two_latent_sizes_in_payload_tests():
    """Guard on the test above: its images produce at least two different latent shapes."""
    from ladon_deploy.device.preprocess import resized_size

    shapes = {resized_size(h, w) for h, w in [(333, 500), (416, 416), (200, 640)]}
    assert len(shapes) >= 2
