"""ladon-eval report: curve differences against known answers, plots and tables that say when weights are random."""
import json
import math

import pytest

from cli_helpers import command_runner
from ladon_deploy.eval import report
from ladon_deploy.eval.cli import PROG, main

_run, _one_line_error = command_runner(PROG, main)

ANCHOR = [(4.0, 63.0), (12.0, 70.0), (40.0, 75.0), (90.0, 77.0)]


def test_bd_rate_of_a_curve_shifted_to_nine_tenths_of_the_rate_is_minus_ten_percent():
    test = [(r * 0.9, a) for r, a in ANCHOR]
    assert report.bd_rate(ANCHOR, test) == pytest.approx(-10.0, abs=1e-9)
    assert report.bd_rate(ANCHOR, ANCHOR) == pytest.approx(0.0, abs=1e-12)


def test_bd_accuracy_of_a_curve_one_point_higher_is_one_point():
    test = [(r, a + 1.0) for r, a in ANCHOR]
    assert report.bd_accuracy(ANCHOR, test) == pytest.approx(1.0, abs=1e-9)


def test_bd_rate_is_undefined_without_overlap_or_monotonic_accuracy():
    assert report.bd_rate(ANCHOR, [(1.0, 10.0), (2.0, 20.0)]) is None  # no accuracy overlap
    assert report.bd_rate(ANCHOR, [(5.0, 70.0), (50.0, 65.0)]) is None  # accuracy falls with rate
    assert report.bd_rate(ANCHOR, [(5.0, 70.0)]) is None


def test_a_single_point_is_compared_at_equal_rate_by_interpolation():
    # At the anchor's own rate the PCHIP interpolant is exact: the change is the plain difference.
    entry = report.compare("fp32", ANCHOR, "int8", [(12.0, 69.25)])
    assert entry["at_equal_rate"] == [{"kb": 12.0, "accuracy_change_points": pytest.approx(-0.75)}]
    # Between anchor points the interpolant lies between their accuracies.
    between = report.compare("fp32", ANCHOR, "int8", [(20.0, 70.0)])["at_equal_rate"][0]
    assert -5.0 < between["accuracy_change_points"] < 0.0


def test_two_single_points_at_different_rates_say_so():
    entry = report.compare("fp32", [(10.0, 70.0)], "int8", [(10.5, 69.0)])
    assert entry["at_equal_rate"] == []
    difference = entry["point_difference"]
    assert difference["accuracy_change_points"] == pytest.approx(-1.0)
    assert difference["rate_change_percent"] == pytest.approx(5.0)
    assert "not at equal rate" in report.describe(entry)


def _result(path, kb, top1, engine="onnxruntime", precision="fp32", random_weights=True, beta=None, bundle="b1"):
    document = {"format": "ladon-eval", "version": 1, "task": "cls",
                "bundle": {"bundle_id": bundle, "beta": beta, "random_weights": random_weights},
                "dataset": {"kind": "imagenet"}, "engine": engine, "precision": precision,
                "summary": {"top1": top1, "top5": None, "map": None, "ap50": None, "miou": None,
                            "bits_per_image": kb * 8000, "bits_per_pixel": 0.5, "kb_per_image": kb, "images": 3}}
    with open(path, "w") as handle:
        json.dump(document, handle)
    return str(path)


def test_report_writes_plot_table_and_differences_and_names_random_weights(tmp_path, capsys):
    files = [_result(tmp_path / "b1.json", 5.0, 0.6, bundle="aaaa"), _result(tmp_path / "b2.json", 20.0, 0.7, bundle="bbbb"),
             _result(tmp_path / "b2-int8.json", 19.0, 0.69, precision="int8", bundle="bbbb")]
    out = tmp_path / "figs"
    code, stdout, err = _run(["report"] + files + ["--out", str(out)], capsys)
    assert code == 0, err
    png = out / "rate_accuracy_cls.png"
    with open(str(png), "rb") as handle:
        assert handle.read(8) == b"\x89PNG\r\n\x1a\n"
    table = (out / "table.md").read_text()
    assert report.RANDOM_NOTE in table.splitlines()[0]
    assert "| b2-int8.json | cls | imagenet | 3 | bbbb |" in table
    assert (out / "table.csv").read_text().count("\n") == 4
    document = json.loads((out / "report.json").read_text())
    difference = document["tasks"]["cls"]["differences"][0]
    assert difference["anchor"] == "onnxruntime fp32" and difference["curve"] == "onnxruntime int8"
    # int8 at 19 KB against the fp32 curve (5 KB: 60 %, 20 KB: 70 %) interpolated over log rate
    change = difference["at_equal_rate"][0]["accuracy_change_points"]
    assert -1.0 < change < 0.0 and "int8" in stdout


def test_trained_results_carry_no_random_weights_note(tmp_path):
    files = [_result(tmp_path / "a.json", 5.0, 0.6, random_weights=False, beta=5.12)]
    report.make_report(files, str(tmp_path / "figs"))
    assert report.RANDOM_NOTE not in (tmp_path / "figs" / "table.md").read_text()


@pytest.mark.parametrize("case", ["missing", "not_result", "out_is_file"])
def test_bad_report_input_is_one_line(case, tmp_path, capsys):
    good = _result(tmp_path / "a.json", 5.0, 0.6)
    out = str(tmp_path / "figs")
    if case == "missing":
        files, pattern = [str(tmp_path / "nope.json")], "not found"
    elif case == "not_result":
        (tmp_path / "x.json").write_text('{"format": "other"}')
        files, pattern = [str(tmp_path / "x.json")], "not a ladon-eval result"
    else:
        (tmp_path / "file").write_text("")
        files, pattern, out = [good], "is a file", str(tmp_path / "file")
    code, _, err = _run(["report"] + files + ["--out", out], capsys)
    _one_line_error(code, err, pattern)


def test_interpolation_is_named():
    assert "PCHIP" in report.INTERPOLATION and "log10" in report.INTERPOLATION
    assert math.isclose(report.bd_accuracy(ANCHOR, ANCHOR), 0.0, abs_tol=1e-12)
