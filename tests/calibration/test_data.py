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


def test_unreadable_files_are_skipped_counted_and_named(demo_bundle, photos, tmp_path):
    for path in data.list_images(photos)[:4]:
        os.symlink(path, str(tmp_path / os.path.basename(path)))
    (tmp_path / "notes.jpg").write_text("a text file, renamed")
    (tmp_path / "empty.png").write_bytes(b"")
    split = data.split_images(str(tmp_path), count=10, seed=0, held_out=2)
    used = split.calibration + split.held_out
    assert len(used) == len(data.list_images(str(tmp_path))) - 2
    assert sorted(os.path.basename(p) for p in split.skipped) == ["empty.png", "notes.jpg"]
    assert not {"notes.jpg", "empty.png"} & {os.path.basename(p) for p in used}
    assert "2 unreadable file(s) skipped (Pillow cannot open them): empty.png, notes.jpg" in split.describe()
    # Every image the split keeps is decoded without an error.
    bundle = open_bundle(demo_bundle, verify=False)
    decoded = list(data.iterate_images(bundle, used, progress=None))
    assert [path for path, _ in decoded] == used
    # The device's TensorRT calibrator reads the same split and says what it skipped (TensorRT is not needed here).
    from ladon_deploy.calibration.trt_calibrator import EncoderBatches

    lines = []
    batches = EncoderBatches(bundle, str(tmp_path), count=10, shape=(1, 3, 416, 416), progress=lines.append)
    assert batches.split.calibration == split.calibration and batches.split.skipped == split.skipped
    assert lines[0].startswith("calibration images: ") and "2 unreadable file(s) skipped" in lines[0]


def test_a_folder_of_mostly_unreadable_files_says_how_many_it_could_not_read(photos, tmp_path):
    for path in data.list_images(photos)[:2]:
        os.symlink(path, str(tmp_path / os.path.basename(path)))
    (tmp_path / "notes.jpg").write_text("a text file, renamed")
    with pytest.raises(ImageError, match="has 2 readable image.*1 unreadable: notes.jpg"):
        data.split_images(str(tmp_path))


def test_a_clean_folder_says_nothing_about_skipping(photos):
    split = data.split_images(photos, count=5, seed=3, held_out=4)
    assert split.skipped == [] and "unreadable" not in split.describe()

