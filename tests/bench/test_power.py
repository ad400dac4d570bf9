"""Board power and machine identity: tegrastats lines of both JetPack generations, sysfs rails, absent sensors."""
import os
import time

import pytest

from ladon_deploy.bench import identity, power

# Recorded line formats (NVIDIA's tegrastats; rails as NAME cur/avg, mW, no unit before JetPack 5).
NANO_JETPACK_46 = ("RAM 2216/3964MB (lfb 76x4MB) SWAP 0/1982MB (cached 0MB) IRAM 0/252kB(lfb 252kB) "
                   "CPU [12%@1479,4%@1479,8%@1479,6%@1479] EMC_FREQ 3%@1600 GR3D_FREQ 0%@921 APE 25 PLL@33C "
                   "CPU@36C PMIC@100C GPU@34.5C AO@42C thermal@35.25C POM_5V_IN 2254/2301 POM_5V_GPU 0/12 "
                   "POM_5V_CPU 490/512")
XAVIER_NX_JETPACK_46 = ("RAM 3276/7859MB (lfb 5x4MB) SWAP 1626/12122MB (cached 181MB) CPU [44%@1421,49%@2031,"
                        "67%@2034,17%@1420,25%@1419,8%@1420] EMC_FREQ 1%@1866 GR3D_FREQ 0%@114 APE 150 MTS fg 1% "
                        "bg 1% AO@39C GPU@39.5C Tboard@38C Tdiode@39.25C AUX@38.5C CPU@42.5C thermal@41.3C "
                        "VDD_IN 4341/4341 VDD_CPU_GPU_CV 571/571 VDD_SOC 1265/1265")
XAVIER_NX_JETPACK_51 = ("12-01-2026 08:00:00 RAM 2970/6854MB (lfb 2x4MB) SWAP 0/3427MB (cached 0MB) "
                        "CPU [5%@1190,2%@1190,0%@1190,1%@1190,off,off] EMC_FREQ 0%@1600 GR3D_FREQ 0%@[305] "
                        "VIC_FREQ 115 APE 150 AUX@38C CPU@39.5C thermal@38.85C AO@37C GPU@38C PMIC@50C "
                        "VDD_IN 5033mW/5020mW VDD_CPU_GPU_CV 615mW/610mW VDD_SOC 1397mW/1395mW")
ORIN_NX_JETPACK_6 = ("05-15-2025 18:30:28 RAM 6982/7620MB (lfb 5x1MB) SWAP 2640/16384MB (cached 202MB) "
                     "CPU [97%@1984,95%@1984] EMC_FREQ 18%@3199 GR3D_FREQ 84%@[713] NVENC 1%@115 "
                     "cpu@65.562C VDD_IN 17946mW/15710mW VDD_CPU_GPU_CV 8896mW/7585mW VDD_SOC 3923mW/3515mW")


def test_tegrastats_jetpack_4_nano_rails_without_units():
    rails = power.parse_tegrastats_line(NANO_JETPACK_46)
    assert rails == {"POM_5V_IN": 2.254, "POM_5V_GPU": 0.0, "POM_5V_CPU": 0.49}
    assert power.input_rail(list(rails)) == "POM_5V_IN"


def test_tegrastats_jetpack_4_xavier_nx_ignores_ram_and_swap():
    rails = power.parse_tegrastats_line(XAVIER_NX_JETPACK_46)
    assert rails == {"VDD_IN": 4.341, "VDD_CPU_GPU_CV": 0.571, "VDD_SOC": 1.265}


@pytest.mark.parametrize("line,expected", [
    (XAVIER_NX_JETPACK_51, {"VDD_IN": 5.033, "VDD_CPU_GPU_CV": 0.615, "VDD_SOC": 1.397}),
    (ORIN_NX_JETPACK_6, {"VDD_IN": 17.946, "VDD_CPU_GPU_CV": 8.896, "VDD_SOC": 3.923}),
])
def test_tegrastats_jetpack_5_rails_with_milliwatt_units(line, expected):
    assert power.parse_tegrastats_line(line) == expected


def test_a_line_without_rails_gives_none():
    assert power.parse_tegrastats_line("RAM 3276/7859MB (lfb 5x4MB) SWAP 1626/12122MB (cached 181MB)") == {}


def _fake_tegrastats(tmp_path, lines):
    script = tmp_path / "tegrastats"
    body = "\n".join("echo '%s'; sleep 0.05" % line for line in lines)
    script.write_text("#!/bin/sh\n%s\nsleep 5\n" % body)
    script.chmod(0o755)
    return str(script)


def test_tegrastats_monitor_averages_the_window_and_computes_energy(tmp_path):
    lines = [XAVIER_NX_JETPACK_51.replace("5033mW/", "%dmW/" % (5000 + 100 * i)) for i in range(6)]
    monitor = power.TegrastatsMonitor(_fake_tegrastats(tmp_path, lines)).start()
    try:
        deadline = time.monotonic() + 10
        while len(monitor.samples) < 6 and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        monitor.stop()
    assert len(monitor.samples) == 6
    first, last = monitor.samples[0][0], monitor.samples[-1][0]
    summary = monitor.window(first, last, runs=4)
    assert summary["source"] == "tegrastats" and summary["samples"] == 6 and summary["input_rail"] == "VDD_IN"
    assert summary["mean_power_w"] == pytest.approx(5.25)
    assert summary["rails_w"]["VDD_SOC"] == pytest.approx(1.397)
    assert summary["energy_per_run_j"] == pytest.approx(5.25 * (last - first) / 4)


def test_ina3221_sysfs_of_both_generations(tmp_path):
    iio = tmp_path / "ina3221x" / "6-0040" / "iio:device0"
    iio.mkdir(parents=True)
    (iio / "rail_name_0").write_text("POM_5V_IN\n")
    (iio / "in_power0_input").write_text("2500\n")
    hwmon = tmp_path / "ina3221" / "1-0040" / "hwmon" / "hwmon3"
    hwmon.mkdir(parents=True)
    (hwmon / "in1_label").write_text("VDD_IN\n")
    (hwmon / "in1_input").write_text("5000\n")
    (hwmon / "curr1_input").write_text("1200\n")
    (hwmon / "in2_label").write_text("NC\n")
    read = power.ina3221_reader(str(tmp_path))
    assert read() == {"POM_5V_IN": 2.5, "VDD_IN": pytest.approx(6.0)}
    assert power.ina3221_reader(str(tmp_path / "nothing")) is None


def test_absent_sensor_is_reported_absent_never_zero(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setattr(power, "ina3221_reader", lambda: None)
    monkeypatch.setattr(power, "jtop_reader", lambda: None)
    monkeypatch.setattr(power, "_which", lambda name: None)
    monitor = power.open_monitor("auto")
    summary = monitor.window(0.0, 1.0, runs=10)
    assert monitor.source is None
    assert summary["mean_power_w"] is None and summary["energy_per_run_j"] is None
    assert "no power sensor" in summary["absent"]


def test_identity_parses_jetson_files_and_reports_absent_facts(monkeypatch):
    assert identity.parse_tegra_release("# R32 (release), REVISION: 7.1, GCID: 29818004, BOARD: t210ref") == "32.7.1"
    assert identity.jetpack_for("32.7.1") == "4.6" and identity.jetpack_for("35.3.1") == "5.1.1"
    assert identity.parse_nvpmodel("NV Power Mode: MAXN\n0\n") == "MAXN (mode 0)"
    assert identity.parse_nvpmodel(None) is None
    facts = identity.machine_identity()
    if not os.path.exists(identity.DEVICE_TREE_MODEL):
        assert facts["device_model"] is None and "device_model" in facts["absent"]
    assert facts["onnxruntime"] and facts["toolkit_version"]
    assert set(facts["absent"]) == {key for key, value in facts.items() if value is None}


def test_polling_monitor_samples_a_reader_and_closes_it():
    closed = []
    readings = iter([{"VDD_IN": 4.0}, {"VDD_IN": 6.0}] + [{"VDD_IN": 5.0}] * 1000)
    monitor = power.PollingMonitor("ina3221", lambda: next(readings), interval_s=0.01,
                                   close=lambda: closed.append(True)).start()
    started = time.monotonic()
    time.sleep(0.2)
    finished = time.monotonic()
    monitor.stop()
    summary = monitor.window(started, finished, runs=2)
    assert closed == [True] and summary["samples"] >= 5 and summary["input_rail"] == "VDD_IN"
    assert 4.0 <= summary["mean_power_w"] <= 6.0
    assert summary["energy_per_run_j"] == pytest.approx(summary["mean_power_w"] * (finished - started) / 2)
