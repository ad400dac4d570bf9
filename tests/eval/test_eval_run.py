"""ladon-eval end to end on the tiny classification bundle: top-1 as `ladon-run split` gives it, bits per image as
the payload, resuming after a kill."""
import json
import os

import pytest

from cli_helpers import command_runner
from eval_data import ladon_run_split
from images import make_image
from ladon_deploy.device.stage import DeviceStage
from ladon_deploy.bundle import open_bundle
from ladon_deploy.eval import datasets, run
from ladon_deploy.eval.cli import PROG, main

_run, _one_line_error = command_runner(PROG, main)


@pytest.fixture(scope="module")
def imagenet(tmp_path_factory):
    """An ImageNet-layout folder whose labels are set from `ladon-run split`'s own predictions on the evaluation view
    for images 0 and 2 (correct) and a class it does not predict for image 1 (wrong): top-1 must be 2/3."""
    from ladon_deploy.eval.datasets import imagenet_view, imagenet_wnids
    from PIL import Image

    work = tmp_path_factory.mktemp("imagenet")
    sources = [make_image(work / ("src%d.png" % i), h, w, 30 + i) for i, (h, w) in
               enumerate([(90, 120), (150, 100), (64, 64)])]
    views = []
    for index, source in enumerate(sources):
        view = str(work / ("view%d.png" % index))
        imagenet_view(Image.open(source).convert("RGB"), 416).save(view)
        views.append(view)
    return {"work": work, "sources": sources, "views": views, "wnids": imagenet_wnids()}


def _layout(imagenet, predicted, root):
    wnids = imagenet["wnids"]
    labels = [predicted[0], (predicted[1] + 1) % 1000, predicted[2]]
    for index, (source, label) in enumerate(zip(imagenet["sources"], labels)):
        folder = os.path.join(root, wnids[label])
        os.makedirs(folder, exist_ok=True)
        os.link(source, os.path.join(folder, "img%d.png" % index))
    return labels


def test_top1_is_what_ladon_run_split_predicts(tiny_cls_bundle, imagenet, tmp_path, capsys):
    predicted = []
    payload_bytes = []
    for view in imagenet["views"]:
        document = ladon_run_split(tiny_cls_bundle, view, capsys, "cls")
        predicted.append(document["classification"]["top_k"][0][0])
        payload_bytes.append(document["link"]["payload_bytes"])
    root = str(tmp_path / "val")
    labels = _layout(imagenet, predicted, root)
    out = str(tmp_path / "out.json")
    code, stdout, err = _run(["--bundle", tiny_cls_bundle, "--imagenet", root, "--json", out, "--no-progress"], capsys)
    assert code == 0, err
    result = json.load(open(out))
    summary = result["summary"]
    assert summary["top1"] == pytest.approx(2 / 3.0) and summary["images"] == 3
    assert summary["map"] is None and summary["miou"] is None
    by_key = {r["key"]: r for r in result["images"]}
    for index, label in enumerate(labels):
        record = by_key["%s/img%d.png" % (imagenet["wnids"][label], index)]
        assert record["label"] == label and record["top5"][0] == predicted[index]
        assert record["bits"] == 8 * payload_bytes[index]  # the whole framed payload
        height, width = record["original_size"]
        assert record["bpp"] == pytest.approx(record["bits"] / float(height * width))
    assert summary["bits_per_image"] == pytest.approx(8 * sum(payload_bytes) / 3.0)
    assert result["bundle"]["random_weights"] is True and "random" in stdout
    assert not os.path.exists(out + ".journal")


def test_payload_is_the_device_stages_bytes(tiny_cls_bundle, imagenet):
    """bits per image come from the payload DeviceStage sends, not from an estimate."""
    bundle = open_bundle(tiny_cls_bundle)
    stage = DeviceStage(bundle, exif_transpose=False)
    sent = stage.run(imagenet["views"][0], ["cls"])
    pipeline = run.SplitPipeline(bundle, "cls")
    from PIL import Image

    ran = pipeline.run(Image.open(imagenet["views"][0]).convert("RGB"))
    assert ran["payload"] == sent.payload


def _comparable(document):
    images = [{k: v for k, v in record.items() if k != "timings_ms"} for record in document["images"]]
    return document["summary"], images


def test_a_killed_run_resumes_to_the_uninterrupted_result(tiny_cls_bundle, imagenet, tmp_path):
    root = str(tmp_path / "val")
    _layout(imagenet, [0, 1, 2], root)
    for index in range(3, 7):  # more images, so the interruption falls in the middle
        folder = os.path.join(root, imagenet["wnids"][index])
        os.makedirs(folder)
        make_image(os.path.join(folder, "x.png"), 50 + index, 70, index)
    dataset = datasets.open_imagenet(root)
    whole = run.evaluate(tiny_cls_bundle, dataset, str(tmp_path / "whole.json"), limit=5, seed=3)

    out = str(tmp_path / "resumed.json")
    seen = []

    def kill_after_two(record):
        seen.append(record["key"])
        if len(seen) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run.evaluate(tiny_cls_bundle, dataset, out, limit=5, seed=3, on_record=kill_after_two)
    assert not os.path.exists(out)
    with open(out + ".journal", "a") as journal:
        journal.write('{"key": "n01443537/img1.png", "bits": 12')  # a line the kill cut short
    again = []
    resumed = run.evaluate(tiny_cls_bundle, dataset, out, limit=5, seed=3, on_record=lambda r: again.append(r["key"]))
    assert len(again) == 3 and not set(again) & set(seen)  # only what the journal lacked ran
    assert _comparable(resumed) == _comparable(whole)
    assert json.load(open(out))["summary"] == whole["summary"]


def test_a_journal_of_another_run_is_refused_in_one_line(tiny_cls_bundle, imagenet, tmp_path, capsys):
    root = str(tmp_path / "val")
    _layout(imagenet, [0, 1, 2], root)
    out = str(tmp_path / "o.json")
    other = json.dumps({"format": "ladon-eval-journal", "seed": 99}) + "\n"
    with open(out + ".journal", "w") as handle:
        handle.write(other)
    code, _, err = _run(["--bundle", tiny_cls_bundle, "--imagenet", root, "--json", out, "--no-progress"], capsys)
    _one_line_error(code, err, "belongs to another run")
    assert open(out + ".journal").read() == other  # the other run's journal is left as it was
