"""Calibration images: seeded split, held-out images never calibrated on, preprocessing identical to the device's."""
import os

import numpy as np
import pytest

from ladon_deploy.bundle import open_bundle
from ladon_deploy.calibration import data
from ladon_deploy.errors import ImageError, LadonError


def test_split_is_seeded_disjoint_and_ignores_non_images(photos):
    first = data.split_images(photos, count=5, seed=3, held_out=4)
    again = data.split_images(photos, count=5, seed=3, held_out=4)
    other = data.split_images(photos, count=5, seed=4, held_out=4)
    assert (first.calibration, first.held_out) == (again.calibration, again.held_out)
    assert (first.calibration, first.held_out) != (other.calibration, other.held_out)
    assert len(first.calibration) == 5 and len(first.held_out) == 4
    assert not set(first.calibration) & set(first.held_out)
    assert all(not p.endswith(".txt") for p in first.calibration + first.held_out)


def test_small_folder_keeps_held_out_images_and_says_it_capped(photos):
    total = len(data.list_images(photos))
    split = data.split_images(photos, count=1000, seed=0, held_out=8)
    assert len(split.held_out) == data.MIN_HELD_OUT
    assert len(split.calibration) == total - data.MIN_HELD_OUT
    assert split.capped and "asked for" in split.describe()


def test_unusable_folders_are_one_line_errors(tmp_path, photos):
    with pytest.raises(ImageError):
        data.split_images(str(tmp_path / "missing"))
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ImageError):
        data.split_images(str(tmp_path))
    with pytest.raises(LadonError):
        data.split_images(photos, count=0)


def test_preprocessing_is_the_device_stages(demo_bundle, photos):
    from ladon_deploy.device.stage import DeviceStage

    bundle = open_bundle(demo_bundle, verify=False)
    stage = DeviceStage(bundle)
    for path in data.list_images(photos)[:3]:
        mine = data.preprocess_image(bundle, path)
        theirs = stage.preprocess(path)
        assert mine.tensor.dtype == np.float32
        assert np.array_equal(mine.tensor, theirs.tensor)
        assert mine.resized_size == theirs.resized_size


def test_pad_to_zero_pads_bottom_right_and_refuses_larger():
    tensor = np.ones((1, 3, 64, 32), np.float32)
    padded = data.pad_to(tensor, 96, 96)
    assert padded.shape == (1, 3, 96, 96)
    assert padded[:, :, :64, :32].all() and not padded[:, :, 64:].any() and not padded[:, :, :, 32:].any()
    with pytest.raises(LadonError):
        data.pad_to(tensor, 32, 96)


def test_progress_lines_are_plain_and_bounded():
    lines = []
    progress = data.ProgressLines("calibrating encoder", 50, lines.append)
    for _ in range(50):
        progress.step()
    assert 10 <= len(lines) <= 11
    assert lines[-1].startswith("calibrating encoder: 50/50")
    assert all("\r" not in line and "\x1b" not in line for line in lines)
