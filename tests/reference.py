"""The test oracle: Ladon's unsplit PyTorch pipeline from a preprocessed image to final results."""
from typing import Dict, Optional, Sequence, Tuple

import torch
from torch import Tensor
from torch.nn import functional

from ladon_deploy.models.ladon import LadonModel


def ladon_reference_forward(model: LadonModel, image: Tensor, resized_size: Tuple[int, int],
                            original_size: Tuple[int, int], tasks: Optional[Sequence[str]] = None) -> Dict[str, object]:
    """The unsplit PyTorch pipeline from a preprocessed image to final results; the runtime is checked against it.

    image: normalised, padded [1,3,Hp,Wp] (as the mobile stage produces it); resized_size: the image's size before
    padding; original_size: the decoded image's size. Returns probabilities, boxes in original pixels and the mask.
    """
    from torchvision.models.detection.transform import resize_boxes

    tasks = model.tasks if tasks is None else tuple(tasks)
    padded_size = (int(image.shape[-2]), int(image.shape[-1]))
    features = model.body(model.quantize_dequantize(model.encode(image)))
    results = {}  # type: Dict[str, object]
    if "cls" in tasks:
        results["cls"] = model.classify(features["4"])
    if "det" in tasks:
        detections = model.detection(features, padded_size, [tuple(resized_size)])[0]
        detections["boxes"] = resize_boxes(detections["boxes"], tuple(resized_size), tuple(original_size))
        results["det"] = detections
    if "seg" in tasks:
        logits = model.segmentation(features["4"], padded_size)
        mask = logits.argmax(dim=1, keepdim=True)[:, :, :resized_size[0], :resized_size[1]]
        mask = functional.interpolate(mask.float(), size=tuple(original_size), mode="nearest")
        results["seg"] = mask[0, 0].to(torch.uint8)
    return results
