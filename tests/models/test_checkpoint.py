"""Checkpoint loading: every container format and key spelling, task recognition, and every refusal."""
import os
import pickle

import pytest
import torch

from ladon_deploy.errors import CheckpointError
from ladon_deploy.models.checkpoint import (detect_task, first_trunk_difference, load_ladon, rename_compressai_keys,
                                            save_merged, to_canonical)

TABLE_KEYS = ("_offset", "_quantized_cdf", "_cdf_length")


def _save_state(state, path, wrap=True):
    torch.save({"model": state, "optimizer": None} if wrap else state, str(path))
    return str(path)


def _assert_loaded_exactly(model, reference_state, prefix_map):
    """Every tensor of the sc2bench model is in our model, under its canonical name, bit for bit."""
    ours = model.state_dict()
    for key, value in reference_state.items():
        name = key
        for old, new in prefix_map:
            if key.startswith(old):
                name = new + key[len(old):]
                break
        assert name in ours, "tensor %s (from %s) was not loaded" % (name, key)
        assert torch.equal(ours[name], value), name


def test_sc2bench_classification_file_loads_with_no_missing_or_unexpected_keys(sc2bench_files, sc2bench_trio):
    loaded = load_ladon([sc2bench_files["cls"]])
    assert loaded.tasks == ("cls",)
    assert loaded.arch == "resnet50"
    assert loaded.beta == 5.12
    assert loaded.filled_keys == []
    assert not loaded.tables_computed
    _assert_loaded_exactly(loaded.model, sc2bench_trio[0].state_dict(), [])


def test_sc2bench_detection_file_loads_with_no_missing_or_unexpected_keys(sc2bench_files, sc2bench_trio):
    loaded = load_ladon([sc2bench_files["det"]])
    assert loaded.tasks == ("det",)
    assert loaded.filled_keys == []
    _assert_loaded_exactly(loaded.model, sc2bench_trio[1].state_dict(),
                           [("backbone.body.", ""), ("backbone.fpn.", "detection.fpn."), ("rpn.", "detection.rpn."),
                            ("roi_heads.", "detection.roi_heads.")])
    # Our model has exactly as many tensors as sc2bench's detection model (no silently unused ones).
    assert len(loaded.model.state_dict()) == len(sc2bench_trio[1].state_dict())


def test_sc2bench_segmentation_file_loads_with_no_missing_or_unexpected_keys(sc2bench_files, sc2bench_trio):
    loaded = load_ladon([sc2bench_files["seg"]])
    assert loaded.tasks == ("seg",)
    assert loaded.filled_keys == []
    _assert_loaded_exactly(loaded.model, sc2bench_trio[2].state_dict(),
                           [("backbone.", ""), ("classifier.", "segmentation.classifier."),
                            ("aux_classifier.", "segmentation.aux_classifier.")])
    assert len(loaded.model.state_dict()) == len(sc2bench_trio[2].state_dict())


def test_three_task_files_merge_into_one_model(sc2bench_files):
    loaded = load_ladon([sc2bench_files["cls"], sc2bench_files["det"], sc2bench_files["seg"]])
    assert loaded.tasks == ("cls", "det", "seg")
    assert loaded.sources == sc2bench_files
    assert loaded.beta == 5.12


def test_detection_file_without_num_batches_tracked_loads(sc2bench_trio, tmp_path):
    state = {k: v for k, v in sc2bench_trio[1].state_dict().items() if not k.endswith("num_batches_tracked")}
    path = _save_state(state, tmp_path / "coco2017-faster_rcnn_splittable_resnet50-fp-beta5.12_fpn.pt")
    loaded = load_ladon([path])
    assert loaded.filled_keys and all(k.endswith("num_batches_tracked") for k in loaded.filled_keys)


def test_old_compressai_key_names_load_identically(sc2bench_trio, tmp_path):
    state = sc2bench_trio[0].state_dict()
    old = {}
    for key, value in state.items():
        for new_name, old_name in (("matrices.", "_matrix"), ("biases.", "_bias"), ("factors.", "_factor")):
            key = key.replace("entropy_bottleneck." + new_name, "entropy_bottleneck." + old_name)
        old[key] = value
    assert any("_matrix0" in k for k in old)
    path = _save_state(old, tmp_path / "old-compressai-beta5.12.pt")
    loaded = load_ladon([path])
    _assert_loaded_exactly(loaded.model, state, [])


def test_rename_compressai_keys_maps_every_old_name():
    renamed = rename_compressai_keys({"a.entropy_bottleneck._matrix3": 1, "a.entropy_bottleneck._bias0": 2,
                                      "a.entropy_bottleneck._factor2": 3, "a.encoder.0.weight": 4})
    assert set(renamed) == {"a.entropy_bottleneck.matrices.3", "a.entropy_bottleneck.biases.0",
                            "a.entropy_bottleneck.factors.2", "a.encoder.0.weight"}


def test_bare_state_dict_loads(sc2bench_trio, tmp_path):
    path = _save_state(sc2bench_trio[0].state_dict(), tmp_path / "bare.pt", wrap=False)
    loaded = load_ladon([path])
    assert loaded.tasks == ("cls",) and loaded.beta is None


def test_merged_file_round_trips(sc2bench_files, tmp_path):
    loaded = load_ladon(list(sc2bench_files.values()))
    merged_path = tmp_path / "ladon.pt"
    save_merged(loaded, str(merged_path))
    again = load_ladon([str(merged_path)])
    assert again.tasks == loaded.tasks and again.beta == loaded.beta and again.arch == loaded.arch
    for key, value in loaded.model.state_dict().items():
        assert torch.equal(again.model.state_dict()[key], value), key
    # The merged file is plain data: it loads with weights_only=True and no allow-list.
    assert torch.load(str(merged_path), weights_only=True)["format"] == "ladon-merged"


def test_task_recognised_from_keys(sc2bench_trio):
    cls_model, det_model, seg_model = sc2bench_trio
    assert detect_task(cls_model.state_dict(), "x") == "cls"
    assert detect_task(det_model.state_dict(), "x") == "det"
    assert detect_task(seg_model.state_dict(), "x") == "seg"
    canonical = to_canonical(det_model.state_dict(), "det")
    assert detect_task(canonical, "x") == "merged"


def test_empty_entropy_tables_are_computed_once(sc2bench_trio, tmp_path):
    state = dict(sc2bench_trio[0].state_dict())
    reference = {k: state[k].clone() for k in state if k.endswith(TABLE_KEYS)}
    for key in reference:
        state[key] = torch.zeros(0, dtype=torch.int32)
    path = _save_state(state, tmp_path / "stage1-best-beta5.12.pt")
    loaded = load_ladon([path])
    assert loaded.tables_computed
    ours = loaded.model.state_dict()
    for key, value in reference.items():
        assert torch.equal(ours[key], value), key


def test_differing_shared_tensor_is_named(sc2bench_trio, sc2bench_files, tmp_path):
    state = dict(sc2bench_trio[1].state_dict())
    state["backbone.body.layer3.2.conv1.weight"] = state["backbone.body.layer3.2.conv1.weight"] + 1e-3
    path = _save_state(state, tmp_path / "coco2017-faster_rcnn_splittable_resnet50-fp-beta5.12_fpn.pt")
    with pytest.raises(CheckpointError, match=r"layer3\.2\.conv1\.weight"):
        load_ladon([sc2bench_files["cls"], path])


def test_first_trunk_difference_ignores_heads_and_empty_tables(sc2bench_trio):
    a = to_canonical(sc2bench_trio[0].state_dict(), "cls")
    b = dict(a)
    b["fc.weight"] = b["fc.weight"] + 1
    b["bottleneck_layer.entropy_bottleneck._quantized_cdf"] = torch.zeros(0, dtype=torch.int32)
    assert first_trunk_difference(a, b) is None
    b["bottleneck_layer.encoder.0.weight"] = b["bottleneck_layer.encoder.0.weight"] * 2
    assert first_trunk_difference(a, b) == "bottleneck_layer.encoder.0.weight"


def test_two_betas_are_refused(sc2bench_trio, tmp_path):
    first = _save_state(sc2bench_trio[0].state_dict(), tmp_path / "ilsvrc2012-splittable_resnet50-fp-beta5.12.pt")
    second = _save_state(sc2bench_trio[1].state_dict(), tmp_path / "coco2017-faster_rcnn-fp-beta1.28_fpn.pt")
    with pytest.raises(CheckpointError, match="different betas"):
        load_ladon([first, second])


def test_torchvision_resnet50_is_refused(tmp_path):
    from torchvision.models import resnet50

    path = _save_state(resnet50(weights=None).state_dict(), tmp_path / "resnet50.pt", wrap=False)
    with pytest.raises(CheckpointError, match="plain ResNet"):
        load_ladon([path])


def test_missing_and_non_checkpoint_files_are_refused(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_ladon([str(tmp_path / "absent.pt")])
    text = tmp_path / "notes.pt"
    text.write_text("these are not weights\n")
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        load_ladon([str(text)])
    with pytest.raises(CheckpointError, match="not a file"):
        load_ladon([str(tmp_path)])


class _Exploit(object):
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, ("touch %s" % self.marker,))


@pytest.mark.parametrize("container", ["torch_zip", "raw_pickle"])
def test_malicious_pickle_is_refused_and_never_runs(tmp_path, container):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    payload = {"model": {"w": torch.zeros(1)}, "args": _Exploit(marker)}
    if container == "torch_zip":
        torch.save(payload, str(path))
    else:
        path.write_bytes(pickle.dumps(payload, protocol=2))
    with pytest.raises(CheckpointError, match="refusing"):
        load_ladon([str(path)])
    assert not marker.exists(), "the checkpoint's code ran"


def test_argparse_namespace_in_args_is_allowed(sc2bench_files):
    raw = torch.load(sc2bench_files["cls"], weights_only=False)
    assert type(raw["args"]).__name__ == "Namespace"
    assert load_ladon([sc2bench_files["cls"]]).beta == 5.12


@pytest.mark.slow
def test_resnest269e_checkpoint_from_sc2bench_loads(tmp_path):
    from sc2bench.models.backbone import splittable_resnest

    torch.manual_seed(0)
    model = splittable_resnest({"key": "FPBasedResNetBottleneck",
                                "kwargs": {"num_bottleneck_channels": 32, "num_target_channels": 256}},
                               resnest_name="resnest269e", inplanes=2048, skips_avgpool=False, skips_fc=False,
                               num_classes=1000)
    model.update()
    path = _save_state(model.state_dict(), tmp_path / "ilsvrc2012-splittable_resnest269e-fp-beta0.32.pt")
    loaded = load_ladon([path])
    assert loaded.arch == "resnest269e" and loaded.model.num_bottleneck_channels == 32
    assert loaded.filled_keys == []
    _assert_loaded_exactly(loaded.model, model.state_dict(), [])


# --- bad files are CheckpointErrors with their reason; bugs stay bugs ---------------------------------------------


def _malformed_files(tmp_path):
    """Seeded truncations, bit flips and noise of a real torchdistill-style file and of a raw pickle."""
    import argparse
    import io

    import numpy as np

    buffer = io.BytesIO()
    torch.save({"model": {"w": torch.zeros(3), "b": torch.ones(2, 2)}, "args": argparse.Namespace(a=1)}, buffer)
    zipped = buffer.getvalue()
    raw = pickle.dumps({"model": {"a": [1, 2]}, "x": (1.5, "s")}, protocol=2)
    rng = np.random.default_rng(4)
    for index in range(160):
        source = zipped if index % 2 else raw
        kind = index % 4
        if kind < 2:
            data = source[:int(rng.integers(1, len(source)))]
        elif kind == 2:
            mutable = bytearray(source)
            for _ in range(int(rng.integers(1, 5))):
                mutable[int(rng.integers(0, len(mutable)))] = int(rng.integers(0, 256))
            data = bytes(mutable)
        else:
            data = rng.integers(0, 256, int(rng.integers(1, 300)), dtype=np.uint8).tobytes()
        path = tmp_path / ("bad%03d.pt" % index)
        path.write_bytes(data)
        yield str(path)


def test_malformed_files_are_one_line_checkpoint_errors_with_their_reason(tmp_path):
    from ladon_deploy.models.checkpoint import read_checkpoint_file

    refused = 0
    for path in _malformed_files(tmp_path):
        try:
            read_checkpoint_file(path)
        except CheckpointError as exc:
            message = str(exc)
            assert "\n" not in message and len(message) < 400, message
            assert "not a readable PyTorch checkpoint (" in message or message.startswith("refusing "), message
            assert ": " in message.split("(", 1)[-1] or message.startswith("refusing "), "no reason: " + message
            refused += 1
    assert refused >= 120


def test_a_bug_while_loading_is_not_reported_as_a_bad_checkpoint(sc2bench_files, monkeypatch, capsys):
    from ladon_deploy.cli_support import run_command
    from ladon_deploy.export.cli import PROG, main
    from ladon_deploy.models import checkpoint

    def broken_load(*args, **kwargs):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(checkpoint.torch, "load", broken_load)
    with pytest.raises(RuntimeError, match="illegal memory access"):
        load_ladon([sc2bench_files["cls"]])
    code = run_command(PROG, main, ["--ckpt", sc2bench_files["cls"], "--out", "unused", "--quiet"])
    err = capsys.readouterr().err
    assert code == 1 and "internal error: RuntimeError" in err, err

    def misused_api(*args, **kwargs):
        raise TypeError("load() got an unexpected keyword argument 'weights_only'")

    monkeypatch.setattr(checkpoint.torch, "load", misused_api)
    with pytest.raises(TypeError, match="unexpected keyword"):
        load_ladon([sc2bench_files["cls"]])


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root reads every file")
def test_unreadable_file_is_a_checkpoint_error(sc2bench_files, tmp_path):
    import shutil

    path = tmp_path / "locked.pt"
    shutil.copy(sc2bench_files["cls"], str(path))
    path.chmod(0)
    with pytest.raises(CheckpointError, match="cannot read checkpoint .*Permission denied"):
        load_ladon([str(path)])
