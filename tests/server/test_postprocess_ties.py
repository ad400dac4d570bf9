"""Where a float tie decides a server result, the lower class id wins, as in the PyTorch oracle (tests/reference.py)."""
import numpy as np
import torch

from ladon_deploy.server.postprocess import segmentation_mask, top_classes


def test_segmentation_argmax_ties_keep_the_lower_class_like_torch():
    rng = np.random.RandomState(0)
    logits = rng.randint(0, 3, (1, 21, 24, 32)).astype(np.float32)  # many pixels with several maxima
    assert np.sum(logits[0] == logits[0].max(axis=0)) > 2 * 24 * 32
    mask = segmentation_mask(logits, (24, 32), (24, 32))
    assert np.array_equal(mask, torch.from_numpy(logits).argmax(dim=1)[0].numpy())
    maxima = logits[0] == logits[0].max(axis=0)
    assert np.array_equal(mask, maxima.argmax(axis=0))  # the first (lowest) class holding the maximum


def test_classification_ties_keep_the_lower_class_at_the_k_cut():
    probabilities = np.full(1000, 1e-4, np.float32)
    probabilities[[40, 7, 900, 3]] = 0.2
    assert [c.class_id for c in top_classes(probabilities, k=3)] == [3, 7, 40]
