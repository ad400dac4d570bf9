"""`ladon-bench device` and `server` as two separate processes (as on two machines), then `report` on their files.

The LC models here are tiny ONNX graphs written with onnx.helper (the real ones take a torch export each): what is
tested is the measuring, the files and the arithmetic, which do not depend on the models' size.
"""
import copy
import json
import os
import statistics
import subprocess
import sys

import numpy as np
import pytest

from ladon_deploy.cli_support import run_command

TINY_LC = {"mobilenet_v3_large": ("classification", [1, 3, 32, 32]),
           "ssdlite320_mobilenet_v3_large": ("detection", [3, 48, 64]),
           "lraspp_mobilenet_v3_large": ("segmentation", [1, 3, 32, 32])}

DEVICE_CHECK = """
import sys
from ladon_deploy.bench.cli import main
code = main(sys.argv[1:])
assert not [m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision', 'compressai')], 'torch imported'
sys.exit(code)
"""


def _tiny_model(path, shape, seed):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weights = np.random.default_rng(seed).normal(size=(4, 3, 3, 3)).astype(np.float32)
    batched = len(shape) == 4
    nodes = [] if batched else [helper.make_node("Unsqueeze", ["image", "axes"], ["batched"])]
    nodes += [helper.make_node("Conv", ["image" if batched else "batched", "w"], ["features"], pads=[1, 1, 1, 1]),
              helper.make_node("ReduceMean", ["features"], ["score"], axes=[2, 3], keepdims=0)]
    initializers = [numpy_helper.from_array(weights, "w")]
    if not batched:
        initializers.append(numpy_helper.from_array(np.asarray([0], dtype=np.int64), "axes"))
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("image", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("score", TensorProto.FLOAT, None)], initializers)
    # IR version 7: what onnxruntime 1.10 (the last cp36 wheel) reads, like the exported models.
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=7), path)


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    directory = tmp_path_factory.mktemp("lc-models")
    models = {}
    for seed, (name, (task, shape)) in enumerate(TINY_LC.items()):
        _tiny_model(str(directory / ("%s.onnx" % name)), shape, seed)
        models[name] = {"task": task, "file": "%s.onnx" % name, "input_shape": shape, "weight_bytes": 432,
                        "gmac": 0.01 * (seed + 1), "gmac_complete": True}
    (directory / "models.json").write_text(json.dumps({"models": models}))
    return str(directory)


@pytest.fixture(scope="module")
def measured(tmp_path_factory, demo_bundle, tiny_models):
    """device.json and server.json, each written by its own process."""
    from images import make_image

    work = tmp_path_factory.mktemp("two-machines")
    images = work / "images"
    images.mkdir()
    make_image(str(images / "street.png"), 300, 400, seed=4)
    common = ["--bundle", demo_bundle, "--images", str(images), "--repeats", "2", "--warmup", "1"]
    device = subprocess.run([sys.executable, "-c", DEVICE_CHECK, "device", "--models", tiny_models,
                             "--out", str(work / "nano.json")] + common, capture_output=True, text=True, timeout=300)
    assert device.returncode == 0, device.stderr
    server = subprocess.run([sys.executable, "-m", "ladon_deploy.bench.cli", "server", "--out",
                             str(work / "laptop.json")] + common, capture_output=True, text=True, timeout=300)
    assert server.returncode == 0, server.stderr
    return work


def _bench(argv, capsys):
    from ladon_deploy.bench.cli import PROG, main

    code = run_command(PROG, main, argv)
    return code, capsys.readouterr()


def _stage(stages, name):
    return stages[name]["median_ms"] if name in stages else 0.0


@pytest.mark.slow
def test_report_on_radio_link_profiles(measured, capsys):
    """Figs S1-S2 on real link profiles: transfer is the frames' time on air, the duty-cycle wall time its own
    column; the ideal pipe keeps the paper's arithmetic."""
    from ladon_deploy.link import plan
    from ladon_deploy.link.profiles import get_profile

    out = measured / "figs-links"
    code, captured = _bench(["report", "--device", str(measured / "nano.json"), "--server",
                             str(measured / "laptop.json"), "--links", "ideal:37.5kbps,lora-sf6-bw500,eu868-dr5",
                             "--out", str(out)], capsys)
    assert code == 0, captured.err
    rows = json.loads((out / "results.json").read_text())["rows"]
    ladon = {row["rate"]: row for row in rows if row["family"] == "Ladon"}
    size = json.loads((measured / "nano.json").read_text())["engines"]["cpu"]["ladon"][0]["payload_bytes"]
    assert ladon["ideal:37.5kbps"]["transfer_ms"] == pytest.approx(size * 8 / 37.5)
    assert ladon["ideal:37.5kbps"]["duty_cycle_wall_ms"] == pytest.approx(ladon["ideal:37.5kbps"]["transfer_ms"])
    for name, duty in (("lora-sf6-bw500", None), ("eu868-dr5", 0.01)):
        profile = get_profile(name)
        region = plan.implied_region(profile, None)
        airtime = sum(plan.frame_times(profile, region, size))
        assert ladon[name]["transfer_ms"] == pytest.approx(airtime * 1e3)
        assert ladon[name]["duty_cycle_wall_ms"] == pytest.approx(airtime * 1e3 / (duty or 1.0))
    # framing costs time: the same 37.5 kbps as LoRa SF6/500 frames takes longer than the ideal pipe
    assert ladon["lora-sf6-bw500"]["transfer_ms"] > ladon["ideal:37.5kbps"]["transfer_ms"]
    assert "duty-cycle wall ms" in (out / "results.md").read_text()


@pytest.mark.slow
def test_report_end_to_end_is_the_sum_of_both_files(measured, capsys):
    out = measured / "figs"
    code, captured = _bench(["report", "--device", str(measured / "nano.json"), "--server",
                             str(measured / "laptop.json"), "--rates", "100kbps,37.5kbps", "--rtt", "20ms",
                             "--out", str(out)], capsys)
    assert code == 0, captured.err
    device = json.loads((measured / "nano.json").read_text())
    server = json.loads((measured / "laptop.json").read_text())
    rows = json.loads((out / "results.json").read_text())["rows"]
    # Independently of bench/combine.py: from the raw stage medians of the two files (one image, one engine).
    dev = device["engines"]["cpu"]["ladon"][0]
    srv = server["engines"]["cpu"]["ladon"][0]["stages"]
    tasks = len(device["bundle"]["tasks"])
    ladon_device = sum(_stage(dev["stages"], s) for s in ("preprocess", "encoder", "quantize", "frame"))
    ladon_coding = _stage(dev["stages"], "entropy_encode") + _stage(srv, "entropy_decode")
    trunk = sum(_stage(srv, s) for s in ("unframe", "dequantize", "body"))
    heads = sum(_stage(srv, s) for s in ("head_cls", "head_det", "head_seg"))
    lc_device = sum(device["engines"]["cpu"]["lc"][name][0]["median_ms"] for name in TINY_LC)
    expected = {}
    for rate, bps in (("100kbps", 1e5), ("37.5kbps", 37.5e3)):
        transfer = dev["payload_bytes"] * 8 / bps * 1e3 + 20.0
        expected[("Ladon", rate)] = ladon_device + ladon_coding + transfer + trunk + heads
        expected[("SC", rate)] = tasks * (ladon_device + ladon_coding + dev["payload_bytes"] * 8 / bps * 1e3 +
                                          trunk) + 20.0 + heads
        expected[("LC", rate)] = lc_device
    assert len(rows) == 2 * 3
    for row in rows:
        assert row["end_to_end_ms"] == pytest.approx(expected[(row["family"], row["rate"])], rel=1e-9)
        assert row["end_to_end_ms"] == pytest.approx(row["device_ms"] + row["coding_ms"] + row["transfer_ms"] +
                                                     row["server_ms"], rel=1e-9)
        assert row["peak_local_memory_mb"] > 20 and row["energy_per_image_j"] is None
        assert row["device_engine"] == "cpu" and row["server_engine"] == "cpu"
    ladon = [r for r in rows if r["family"] == "Ladon"][0]
    assert ladon["local_gmac"] == pytest.approx(statistics.median(device["ladon_encoder_gmac"]))
    text = (out / "results.md").read_text()
    assert "CUDA was not measured on `nano`" in text and "`street.png` (1 image)" in text
    assert "p90 ms" in text and "Energy on nano: absent" in text
    for name in ("latency_100kbps.png", "latency_37_5kbps.png", "local_gmac.png", "peak_local_memory.png"):
        assert (out / name).stat().st_size > 10000, name
    assert device["identity"]["toolkit_version"] and "device_model" in device["identity"]["absent"] or \
        device["identity"]["device_model"]


@pytest.mark.slow
@pytest.mark.parametrize("field,value,message", [
    ("toolkit_version", "0.0.1", "measured with toolkit 0.0.1"),
    ("bundle_id", "deadbeef", "measured bundle deadbeef"),
])
def test_report_refuses_files_that_do_not_belong_together(measured, capsys, tmp_path, field, value, message):
    document = json.loads((measured / "nano.json").read_text())
    altered = copy.deepcopy(document)
    altered[field] = value
    other = tmp_path / "nx.json"
    other.write_text(json.dumps(altered))
    code, captured = _bench(["report", "--device", str(measured / "nano.json"), "--device", str(other),
                             "--server", str(measured / "laptop.json"), "--out", str(tmp_path / "r")], capsys)
    assert code == 2 and message in captured.err and len(captured.err.strip().splitlines()) == 1
    assert not os.path.exists(str(tmp_path / "r" / "results.md"))


@pytest.mark.slow
def test_report_refuses_a_server_file_given_as_device(measured, capsys, tmp_path):
    code, captured = _bench(["report", "--device", str(measured / "laptop.json"), "--server",
                             str(measured / "laptop.json"), "--out", str(tmp_path / "r")], capsys)
    assert code == 2 and "is not a `ladon-bench device` file" in captured.err


@pytest.mark.slow
def test_two_devices_get_their_own_figures(measured, capsys, tmp_path):
    document = json.loads((measured / "nano.json").read_text())
    (tmp_path / "nx.json").write_text(json.dumps(document))
    code, captured = _bench(["report", "--device", str(measured / "nano.json"), "--device", str(tmp_path / "nx.json"),
                             "--server", str(measured / "laptop.json"), "--rates", "37.5kbps",
                             "--out", str(tmp_path / "r")], capsys)
    assert code == 0, captured.err
    names = set(os.listdir(str(tmp_path / "r")))
    assert {"nano_latency_37_5kbps.png", "nx_latency_37_5kbps.png", "nano_local_gmac.png",
            "nx_peak_local_memory.png"} <= names


def test_device_errors_are_one_line(capsys, tmp_path, demo_bundle, tiny_models):
    code, captured = _bench(["device", "--bundle", demo_bundle, "--models", str(tmp_path), "--out",
                             str(tmp_path / "d.json")], capsys)
    assert code == 2 and "ladon-bench models" in captured.err and len(captured.err.strip().splitlines()) == 1
    code, captured = _bench(["device", "--bundle", demo_bundle, "--models", tiny_models, "--engines", "tpu",
                             "--out", str(tmp_path / "d.json")], capsys)
    assert code == 2 and "unknown engine 'tpu'" in captured.err


ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PYTHON36 = os.path.join(ROOT, ".venv36", "bin", "python")


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists(PYTHON36), reason="no .venv36 (setup.sh found no Python 3.6 interpreter)")
def test_device_bench_runs_on_the_jetson_nano_python36_stack(demo_bundle, tiny_models, tmp_path):
    """JetPack 4.6's stack (Python 3.6, numpy 1.19, onnxruntime 1.10, no torch, no onnx): the package copied and the
    coder compiled as Dockerfile.jetson does; memory through the launcher's fork + exec path."""
    import shutil

    from images import make_image

    package = tmp_path / "edge"
    shutil.copytree(os.path.join(ROOT, "ladon_deploy"), str(package / "ladon_deploy"),
                    ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    include, suffix = subprocess.run(
        [PYTHON36, "-c", "import sysconfig; print(sysconfig.get_config_var('INCLUDEPY')); "
                         "print(sysconfig.get_config_var('EXT_SUFFIX'))"],
        capture_output=True, text=True, check=True).stdout.split()
    device = package / "ladon_deploy" / "device"
    subprocess.run(["gcc", "-O3", "-shared", "-fPIC", "-I" + include, str(device / "_rans.c"), "-o",
                    str(device / ("_rans" + suffix))], check=True, capture_output=True)
    images = tmp_path / "images"
    images.mkdir()
    make_image(str(images / "street.png"), 200, 300, seed=6)
    out = tmp_path / "nano.json"
    run = subprocess.run([PYTHON36, "-c", DEVICE_CHECK, "device", "--bundle", demo_bundle, "--models", tiny_models,
                          "--images", str(images), "--repeats", "1", "--warmup", "0", "--out", str(out)],
                         capture_output=True, text=True, timeout=300, cwd=str(tmp_path),
                         env=dict(os.environ, PYTHONPATH=str(package)))
    assert run.returncode == 0, run.stderr
    document = json.loads(out.read_text())
    assert document["identity"]["python"].startswith("3.6") and document["identity"]["onnxruntime"] == "1.10.0"
    memory = document["engines"]["cpu"]["peak_memory_mb"]
    assert len(memory) == 3 and all(value > 20 for value in memory.values())
    assert document["engines"]["cpu"]["ladon"][0]["payload_bytes"] > 100
    # .venv36 has no onnx package (a Jetson need not): the encoder's GMAC comes from the bundle's manifest, where
    # ladon-export recorded what ladon_deploy.gmac counts.
    from ladon_deploy.gmac import count_gmac

    shape = document["engines"]["cpu"]["ladon"][0]["input_shape"]
    assert shape == [1, 3, 288, 416]
    counted = count_gmac(os.path.join(demo_bundle, "encoder.onnx"), {"image": tuple(shape)}).total_gmac
    assert document["ladon_encoder_gmac"] == [counted]
    assert subprocess.run([PYTHON36, "-c", "import onnx"], capture_output=True).returncode != 0


def test_a_broken_model_index_is_one_line(capsys, tmp_path, demo_bundle):
    (tmp_path / "models.json").write_text(json.dumps({"models": {"mobilenet_v3_large": {"task": "classification"}}}))
    code, captured = _bench(["device", "--bundle", demo_bundle, "--models", str(tmp_path), "--out",
                             str(tmp_path / "d.json")], capsys)
    assert code == 2 and "lacks file, gmac, weight_bytes" in captured.err
