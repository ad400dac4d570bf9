"""ladon-bench: the paper's arithmetic on synthetic files, the configuration combinations, the memory probe and the
one-machine command line."""
import json
import os

import pytest

from ladon_deploy.bench import combine, device_bench, memory, report
from ladon_deploy.cli_support import run_command

FULL_LC = {"classification": ["mnasnet0_5", "mnasnet1_3", "mobilenet_v2", "mobilenet_v3_large"],
           "detection": ["fasterrcnn_mobilenet_v3_large_320_fpn", "ssd300_vgg16", "ssdlite320_mobilenet_v3_large"],
           "segmentation": ["deeplabv3_mobilenet_v3_large", "lraspp_mobilenet_v3_large"]}
DEVICE_STAGES = {"preprocess": 2.0, "encoder": 40.0, "quantize": 0.5, "entropy_encode": 1.5, "frame": 0.1}
SERVER_STAGES = {"unframe": 0.05, "entropy_decode": 2.0, "dequantize": 0.1, "body": 400.0, "head_cls": 1.0,
                 "head_det": 1000.0, "head_seg": 30.0}


def _summaries(stages, scale):
    return {name: {"median_ms": value * scale, "p90_ms": value * scale * 1.1, "n": 20}
            for name, value in stages.items()}


def _device(payloads=(5000, 7000), energy=None):
    models = {}
    for offset, (task, names) in enumerate(FULL_LC.items()):
        for index, name in enumerate(names):
            models[name] = {"task": task, "gmac": 0.1 * (offset + 1), "weight_bytes": 1000 * (offset + 1)}
    power = {"energy_per_run_j": energy} if energy else {"energy_per_run_j": None, "absent": "no sensor"}
    lc = {name: [{"median_ms": 10.0 * (i + 1) + len(name), "p90_ms": 0.0, "power": power} for i in range(2)]
          for name in models}
    configurations = device_bench.lc_configurations(models)
    names = [c["name"] for c in configurations] + ["SC ResNet-50 FP-24 x3", "Ladon resnet50"]
    memory = {name: 200.0 + index for index, name in enumerate(names)}
    ladon = [{"image": "img%d.png" % i, "payload_bytes": payloads[i], "stages": _summaries(DEVICE_STAGES, 1.0 + i / 10),
              "power": power, "input_shape": [1, 3, 416, 416]} for i in range(2)]
    return {"kind": device_bench.KIND, "schema": device_bench.SCHEMA, "toolkit_version": "t", "bundle_id": "b",
            "bundle": {"tasks": ["cls", "det", "seg"], "architecture": "resnet50"},
            "identity": {"cpu": "test", "cpu_count": 2, "absent": ["device_model"]}, "power_source": None,
            "settings": {"images": ["img0.png", "img1.png"], "repeats": 20, "warmup": 3, "memory_image": "img0.png"},
            "lc_models": models, "lc_configurations": configurations,
            "split_configurations": [{"name": "SC ResNet-50 FP-24 x3", "family": "SC", "copies": 3},
                                     {"name": "Ladon resnet50", "family": "Ladon", "copies": 1}],
            "ladon_encoder_gmac": [2.03, 1.56],
            "engines": {"cpu": {"cuda": False, "ladon": ladon, "lc": lc, "peak_memory_mb": memory}}}


def _server():
    return {"kind": "ladon-bench server", "schema": 1, "toolkit_version": "t", "bundle_id": "b",
            "identity": {"cpu": "test", "cpu_count": 2}, "settings": {"images": ["img0.png", "img1.png"],
                                                                      "repeats": 20, "warmup": 3},
            "engines": {"cpu": {"cuda": False, "ladon": [{"stages": _summaries(SERVER_STAGES, 1.0)},
                                                         {"stages": _summaries(SERVER_STAGES, 1.2)}]}}}


def _terms(**kwargs):
    return combine.configuration_terms(_device(**kwargs), "cpu", _server()["engines"]["cpu"]["ladon"])


def test_full_set_has_24_lc_configurations_plus_sc_and_ladon():
    configurations = _terms()
    families = [c["family"] for c in configurations]
    assert families.count("LC") == 24 and families.count("SC") == 1 and families.count("Ladon") == 1
    assert len({c["name"] for c in configurations}) == 26


def test_lc_sums_its_three_models_and_sends_nothing():
    device = _device()
    lc = _terms()[0]
    assert lc["device_ms"][1] == pytest.approx(sum(device["engines"]["cpu"]["lc"][m][1]["median_ms"]
                                                   for m in lc["models"]))
    assert lc["gmac"] == pytest.approx(sum(device["lc_models"][m]["gmac"] for m in lc["models"]))
    assert lc["payload_bytes"] == [0, 0] and lc["server_ms"] == [0.0, 0.0]


def test_sc_is_three_single_task_models_and_ladon_runs_the_body_once():
    configurations = _terms()
    sc, ladon = configurations[-2], configurations[-1]
    assert ladon["device_ms"][0] == pytest.approx(2.0 + 40.0 + 0.5 + 0.1)
    assert ladon["coding_ms"][0] == pytest.approx(1.5 + 2.0)
    assert ladon["server_ms"][0] == pytest.approx(0.05 + 0.1 + 400.0 + 1.0 + 1000.0 + 30.0)
    assert sc["device_ms"][0] == pytest.approx(3 * ladon["device_ms"][0])
    assert sc["server_ms"][0] == pytest.approx(3 * (0.05 + 0.1 + 400.0) + 1031.0)
    assert sc["payload_bytes"] == [15000, 21000] and ladon["payload_bytes"] == [5000, 7000]
    assert sc["gmac"] == pytest.approx(3 * (2.03 + 1.56) / 2) and ladon["gmac"] == pytest.approx((2.03 + 1.56) / 2)


def test_sizes_file_replaces_measured_payloads():
    sizes = {"ladon": 16600, "sc_cls": 9000, "sc_det": 8000, "sc_seg": 7000}
    configurations = combine.configuration_terms(_device(), "cpu", _server()["engines"]["cpu"]["ladon"], sizes)
    assert configurations[-1]["payload_bytes"] == [16600, 16600]
    assert configurations[-1]["payload_source"] == "--sizes file"
    assert configurations[-2]["payload_bytes"] == [24000, 24000]


def test_energy_is_summed_over_models_and_absent_stays_absent():
    with_power = _terms(energy=0.5)
    assert with_power[0]["energy_j"] == [1.5, 1.5] and with_power[-2]["energy_j"] == [1.5, 1.5]
    assert with_power[-1]["energy_j"] == [0.5, 0.5]
    assert all(value is None for config in _terms() for value in config["energy_j"])


def test_rows_reproduce_the_papers_arithmetic_and_headlines():
    result = combine.combine_documents([("nano", _device((5000, 5000)))], _server(), ["100kbps", "37.5kbps"], 0.02)
    rows = result["rows"]
    assert len(rows) == 2 * 26
    for row in rows:
        if row["payload_bytes"]:
            assert row["transfer_ms"] == pytest.approx(row["payload_bytes"] * 8 / row["rate_bps"] * 1e3 + 20.0)
        else:
            assert row["transfer_ms"] == 0.0
    ladon = [r for r in rows if r["family"] == "Ladon" and r["rate"] == "100kbps"][0]
    config = _terms(payloads=(5000, 5000))[-1]
    per_image = [d + c + (b * 8 / 1e5 * 1e3 + 20) + s for d, c, b, s in zip(
        config["device_ms"], config["coding_ms"], config["payload_bytes"], config["server_ms"])]
    assert ladon["end_to_end_ms"] == pytest.approx(sum(per_image) / 2)
    panel = [h for h in result["headlines"] if h["rate"] == "100kbps"][0]
    best_lc = min(r["end_to_end_ms"] for r in rows if r["family"] == "LC" and r["rate"] == "100kbps")
    assert panel["saving_vs_lc"] == pytest.approx(1 - ladon["end_to_end_ms"] / best_lc)


def test_reports_name_the_images_and_say_cuda_was_not_measured(tmp_path):
    result = combine.combine_documents([("nano", _device())], _server(), ["100kbps"], 0.0)
    text = report.markdown_report(result)
    assert "CUDA was not measured on `nano`" in text
    assert "`img0.png`, `img1.png` (2 images)" in text and "20 repeats" in text and "p90 ms" in text
    assert "Energy on nano: absent (no sensor)" in text
    written = report.write_reports(result, str(tmp_path))
    assert {os.path.basename(p) for p in written} == {"results.csv", "results.md", "latency_100kbps.png",
                                                      "local_gmac.png", "peak_local_memory.png"}
    assert open(str(tmp_path / "results.csv")).read().count("\n") == 26 + 1
    assert report.plural(1, "image") == "1 image" and report.plural(3, "repeat") == "3 repeats"


def test_energy_columns_and_figure_when_a_sensor_was_read(tmp_path):
    device = _device(energy=0.5)
    device["power_source"] = "tegrastats"
    result = combine.combine_documents([("nano", device)], _server(), ["37.5kbps"], 0.0)
    ladon = [r for r in result["rows"] if r["family"] == "Ladon"][0]
    assert ladon["energy_per_image_j"] == pytest.approx(0.5)
    assert ladon["mean_power_w"] == pytest.approx(0.5 / (ladon["device_ms"] / 1e3))
    assert "sampled with tegrastats" in report.markdown_report(result)
    written = {os.path.basename(p) for p in report.write_reports(result, str(tmp_path))}
    assert "energy_per_image.png" in written


def test_memory_probe_measures_the_child_not_the_parent():
    big = bytearray(300 * 1024 * 1024)  # this process is large; the figure must not inherit it
    small = memory.measure(memory.python_command("print(1)"))
    large = memory.measure(memory.python_command("x = bytearray(200 * 1024 * 1024); x[::4096] = b'1' * len(x[::4096])"))
    assert small.returncode == 0 and small.stdout.strip() == "1"
    assert small.peak_rss_mb < 60
    assert large.peak_rss_mb > 200
    assert memory.measure(memory.python_command("import sys; sys.exit(3)")).returncode == 3
    del big


def _bench(argv, capsys):
    from ladon_deploy.bench.cli import PROG, main

    code = run_command(PROG, main, argv)
    return code, capsys.readouterr()


def test_bench_errors_are_one_line(capsys, tmp_path, demo_bundle):
    code, captured = _bench(["--bundle", demo_bundle, "--out", str(tmp_path), "--rates", "fast"], capsys)
    assert code == 2 and "unknown link profile 'fast'" in captured.err and len(captured.err.strip().splitlines()) == 1
    code, captured = _bench(["--bundle", str(tmp_path), "--out", str(tmp_path / "r")], capsys)
    assert code == 2 and "not a bundle" in captured.err
    code, captured = _bench(["--bundle", demo_bundle, "--out", str(tmp_path), "--engines", "tpu"], capsys)
    assert code == 2 and "--engines" in captured.err
    code, captured = _bench(["--bundle", demo_bundle, "--out", str(tmp_path), "--device", "cpu"], capsys)
    assert code == 2 and "unrecognized arguments: --device" in captured.err
    code, captured = _bench(["--bundle", demo_bundle, "--out", str(tmp_path), "--images", str(tmp_path / "none")],
                            capsys)
    assert code == 2 and "not a directory" in captured.err


def test_quick_help_tells_the_truth(capsys):
    from ladon_deploy.bench.cli import build_parser

    text = build_parser().format_help()
    assert "about 30 s" in text and "couple of minutes" not in text


def test_cuda_engine_without_provider_is_refused(capsys, tmp_path, demo_bundle):
    from ladon_deploy.engines.ort_runner import available_providers

    if "CUDAExecutionProvider" in available_providers():
        pytest.skip("this onnxruntime has CUDA")
    code, captured = _bench(["--bundle", demo_bundle, "--out", str(tmp_path), "--engines", "cpu,onnxruntime-cuda"],
                            capsys)
    assert code == 2 and "CUDAExecutionProvider" in captured.err


@pytest.mark.slow
def test_quick_bench_end_to_end(capsys, tmp_path, demo_bundle):
    out = tmp_path / "results"
    code, captured = _bench(["--bundle", demo_bundle, "--out", str(out), "--quick", "--rtt", "10ms"], capsys)
    assert code == 0, captured.err
    for name in ("results.json", "results.csv", "results.md", "latency_100kbps.png", "latency_37_5kbps.png",
                 "local_gmac.png", "peak_local_memory.png"):
        assert (out / name).is_file(), name
    assert not [p for p in os.listdir(str(out)) if p.startswith(".results.partial-")]
    result = json.loads((out / "results.json").read_text())
    for row in result["rows"]:
        expected_transfer = row["payload_bytes"] * 8 / row["rate_bps"] * 1e3 + 10.0 if row["payload_bytes"] else 0.0
        assert row["transfer_ms"] == pytest.approx(expected_transfer)
        assert row["device_engine"] == "cpu" and row["server_engine"] == "cpu"
    ladon = [r for r in result["rows"] if r["family"] == "Ladon"][0]
    lc = [r for r in result["rows"] if r["family"] == "LC"]
    assert abs(ladon["local_gmac"] - 2.03) / 2.03 <= 0.03
    assert all(ladon["peak_local_memory_mb"] < r["peak_local_memory_mb"] for r in lc)
    header = (out / "results.csv").read_text().splitlines()[0]
    assert header.startswith("device,device_engine,server_engine,configuration")
    assert "CUDA was not measured" in captured.out and "Largest saving" in captured.out
