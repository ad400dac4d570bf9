"""ladon-bench: the paper's arithmetic, the configuration combinations, the memory probe and the command line."""
import json
import os

import pytest

from ladon_deploy.bench import memory, report, suite
from ladon_deploy.cli_support import run_command


def _settings(tmp_path, quick=False, images=2):
    return suite.BenchSettings("unused", ["a.png", "b.png"][:images], ["100kbps", "37.5kbps"], str(tmp_path),
                               quick=quick)


def _prepared(names):
    prepared = {}
    for offset, (task, models) in enumerate(names.items()):
        for index, name in enumerate(models):
            prepared[name] = {"task": task, "latency": [{"median_ms": 10.0 * (offset + 1) + index},
                                                        {"median_ms": 20.0 * (offset + 1) + index}],
                              "gmac": 0.1 * (offset + 1), "weight_bytes": 1000 * (offset + 1)}
    return prepared


def _ladon(payloads=(5000, 7000)):
    def image(payload, scale):
        stages = {"mobile/preprocess": 2.0, "mobile/encoder": 40.0, "mobile/quantize": 0.5,
                  "mobile/entropy_encode": 1.5, "mobile/frame": 0.1, "server/unframe": 0.05,
                  "server/entropy_decode": 2.0, "server/dequantize": 0.1, "server/body": 400.0,
                  "server/head_cls": 1.0, "server/head_det": 1000.0, "server/head_seg": 30.0}
        return {"payload_bytes": payload, "latent_shape": [24, 103, 103], "encoder_gmac": 2.03,
                "stages": {k: {"median_ms": v * scale} for k, v in stages.items()}}

    return {"architecture": "resnet50", "encoder_weight_bytes": 555000, "tasks": ["cls", "det", "seg"],
            "per_image": [image(payloads[0], 1.0), image(payloads[1], 1.1)]}


def test_full_suite_has_24_lc_configurations_plus_sc_and_ladon(tmp_path):
    settings = _settings(tmp_path)
    names = suite.lc_model_names(False)
    assert {k: len(v) for k, v in names.items()} == {"classification": 4, "detection": 3, "segmentation": 2}
    configurations = suite.build_configurations(_prepared(names), _ladon(), settings, None)
    families = [c["family"] for c in configurations]
    assert families.count("LC") == 24 and families.count("SC") == 1 and families.count("Ladon") == 1
    assert len({c["name"] for c in configurations}) == 26


def test_lc_sums_its_three_models_and_sends_nothing(tmp_path):
    settings = _settings(tmp_path)
    names = suite.lc_model_names(False)
    prepared = _prepared(names)
    lc = suite.build_configurations(prepared, _ladon(), settings, None)[0]
    models = lc["models"]
    assert lc["device_ms"][1] == pytest.approx(sum(prepared[m]["latency"][1]["median_ms"] for m in models))
    assert lc["gmac"] == pytest.approx(sum(prepared[m]["gmac"] for m in models))
    assert lc["payload_bytes"] == [0, 0] and lc["server_ms"] == [0.0, 0.0]


def test_sc_is_three_single_task_models_and_ladon_runs_the_body_once(tmp_path):
    configurations = suite.build_configurations(_prepared(suite.QUICK_LC), _ladon(), _settings(tmp_path, True), None)
    sc = [c for c in configurations if c["family"] == "SC"][0]
    ladon = [c for c in configurations if c["family"] == "Ladon"][0]
    assert ladon["device_ms"][0] == pytest.approx(2.0 + 40.0 + 0.5 + 0.1)
    assert ladon["coding_ms"][0] == pytest.approx(1.5 + 2.0)
    assert ladon["server_ms"][0] == pytest.approx(0.05 + 0.1 + 400.0 + 1.0 + 1000.0 + 30.0)
    assert sc["device_ms"][0] == pytest.approx(3 * ladon["device_ms"][0])
    assert sc["server_ms"][0] == pytest.approx(3 * (0.05 + 0.1 + 400.0) + 1031.0)
    assert sc["payload_bytes"] == [15000, 21000] and ladon["payload_bytes"] == [5000, 7000]
    assert sc["gmac"] == pytest.approx(3 * 2.03) and ladon["gmac"] == pytest.approx(2.03)


def test_sizes_file_replaces_measured_payloads(tmp_path):
    sizes = {"ladon": 16600, "sc_cls": 9000, "sc_det": 8000, "sc_seg": 7000}
    configurations = suite.build_configurations(_prepared(suite.QUICK_LC), _ladon(), _settings(tmp_path, True), sizes)
    ladon = configurations[-1]
    assert ladon["payload_bytes"] == [16600, 16600] and ladon["payload_source"] == "--sizes file"
    assert configurations[-2]["payload_bytes"] == [24000, 24000]


def test_rows_reproduce_the_papers_arithmetic(tmp_path):
    configurations = suite.build_configurations(_prepared(suite.QUICK_LC), _ladon((5000, 5000)),
                                                _settings(tmp_path, True), None)
    rows = suite.rows_for_rates(configurations, ["100kbps", "37.5kbps"], 0.02)
    assert len(rows) == 2 * len(configurations)
    for row in rows:
        if row["payload_bytes"]:
            assert row["transfer_ms"] == pytest.approx(row["payload_bytes"] * 8 / row["rate_bps"] * 1e3 + 20.0)
        else:
            assert row["transfer_ms"] == 0.0
    ladon_100 = [r for r in rows if r["family"] == "Ladon" and r["rate"] == "100kbps"][0]
    assert ladon_100["transfer_ms"] == pytest.approx(5000 * 8 / 100000 * 1000 + 20)
    # End-to-end per image is the sum of the four terms; the row holds the medians over images.
    config = configurations[-1]
    per_image = [d + c + (b * 8 / 1e5 * 1e3 + 20) + s for d, c, b, s in zip(
        config["device_ms"], config["coding_ms"], config["payload_bytes"], config["server_ms"])]
    assert ladon_100["end_to_end_ms"] == pytest.approx(sorted(per_image)[0] / 2 + sorted(per_image)[1] / 2)


def test_markdown_and_csv_reports(tmp_path):
    configurations = suite.build_configurations(_prepared(suite.QUICK_LC), _ladon(), _settings(tmp_path, True), None)
    for index, config in enumerate(configurations):
        config["peak_rss_mb"] = 100.0 + 50 * (index == 0)
    result = {"configurations": configurations, "rows": suite.rows_for_rates(configurations, ["100kbps"], 0.0),
              "machine": {"platform": "test", "processor": "x86_64", "cpu_count": 2, "python": "3.11",
                          "onnxruntime": "1"},
              "runner": {"engine": "onnxruntime", "precision": "fp32", "device": "cpu"},
              "settings": {"repeats": 20, "warmup": 3, "images": ["a", "b"], "rtt_s": 0.0, "rates": ["100kbps"]},
              "glue_ms": {"median_over_images": 0.08}}
    text = report.markdown_report(result)
    assert "runner onnxruntime, precision fp32, device cpu" in text
    assert "Ladon / smallest LC = 0.667" in text
    written = report.write_reports(result, str(tmp_path))
    assert {os.path.basename(p) for p in written} == {"results.csv", "results.md", "latency_100kbps.png",
                                                      "local_gmac.png", "peak_local_memory.png"}
    assert open(str(tmp_path / "results.csv")).read().count("\n") == len(configurations) + 1


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
    assert code == 2 and "cannot parse rate" in captured.err and len(captured.err.strip().splitlines()) == 1
    code, captured = _bench(["--bundle", str(tmp_path), "--out", str(tmp_path / "r")], capsys)
    assert code == 2 and "not a bundle" in captured.err
    code, captured = _bench(["--bundle", demo_bundle, "--out", str(tmp_path), "--device", "tpu"], capsys)
    assert code == 2 and "--device" in captured.err
    code, captured = _bench(["--bundle", demo_bundle, "--out", str(tmp_path), "--images", str(tmp_path / "none")],
                            capsys)
    assert code == 2 and "not a directory" in captured.err


def test_cuda_without_provider_is_refused(capsys, tmp_path, demo_bundle):
    from ladon_deploy.engines.ort_runner import available_providers

    if "CUDAExecutionProvider" in available_providers():
        pytest.skip("this onnxruntime has CUDA")
    code, captured = _bench(["--bundle", demo_bundle, "--out", str(tmp_path), "--device", "cuda"], capsys)
    assert code == 2 and "CUDA execution provider" in captured.err


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
    ladon = [c for c in result["configurations"] if c["family"] == "Ladon"][0]
    lc = [c for c in result["configurations"] if c["family"] == "LC"]
    assert abs(ladon["gmac"] - 2.03) / 2.03 <= 0.03
    assert all(ladon["peak_rss_mb"] < c["peak_rss_mb"] for c in lc)
    assert result["runner"] == {"engine": "onnxruntime", "precision": "fp32", "device": "cpu"}
    assert all(row["engine"] == "onnxruntime" and row["device"] == "cpu" for row in result["rows"])
    header = (out / "results.csv").read_text().splitlines()[0]
    assert header.endswith("payload_source,engine,precision,device")
    assert "Ladon / smallest LC" in captured.out
