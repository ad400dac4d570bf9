"""`ladon-eval report`: result files -> a rate-accuracy plot per task, a table, and the differences between curves.

A curve is the results of one engine and precision (one point per bundle: a beta sweep is one curve); accuracy is
plotted against KB per image (whole payload, framing included), as the paper plots it. Differences between the first
curve of a task (the anchor) and each other one:

- Bjontegaard delta rate (BD-rate, %): log10(rate) as a function of accuracy, each curve interpolated piecewise-cubic
  with monotone Hermite slopes (PCHIP, scipy.interpolate.PchipInterpolator: the interpolation of VCEG-AL22's
  update of Bjontegaard's method), the mean gap over the accuracy interval both curves cover; needs two points per
  curve, accuracy strictly increasing with rate, and overlapping accuracy.
- BD-accuracy (points): accuracy as a function of log10(rate), same interpolation, mean gap over the rate interval
  both cover.
- With a one-point curve: the other curve interpolated (PCHIP over log10 rate) at that point's rate when it lies in
  its range ("accuracy change at equal rate"); two single points give their plain difference, rates named.

Figures from bundles without checkpoint sources (random weights) say so in their title and on the plot; the table
says so in its caption.
"""
import collections
import csv
import io
import json
import math
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ladon_deploy.atomic import write_bytes_atomically, write_text_atomically
from ladon_deploy.errors import LadonError
from ladon_deploy.eval.run import RESULT_FORMAT

# task -> (summary key, axis label, dataset name)
TASK_METRICS = {"cls": ("top1", "top-1 accuracy (%)", "ImageNet layout"),
                "det": ("map", "COCO mAP@[.5:.95] (%)", "COCO layout"),
                "seg": ("miou", "mIoU (%)", "VOC2012 layout")}
RANDOM_NOTE = "RANDOM WEIGHTS (demo bundles): these accuracies are not a trained model's"
INTERPOLATION = "PCHIP (piecewise cubic Hermite) over log10(rate)"

Point = Tuple[float, float]  # (KB per image, accuracy in %)


class Result:
    def __init__(self, path: str, document: Dict[str, Any]) -> None:
        self.path = path
        self.document = document
        self.task = document["task"]
        summary = document["summary"]
        metric = summary.get(TASK_METRICS[self.task][0])
        self.accuracy = None if metric is None else 100.0 * float(metric)
        self.kb = float(summary["kb_per_image"])
        self.curve = "%s %s" % (document["engine"], document["precision"])
        self.random = bool(document["bundle"].get("random_weights"))
        beta = document["bundle"].get("beta")
        self.point_label = ("beta %g" % beta) if beta is not None else "bundle " + document["bundle"]["bundle_id"]
        self.dataset = os.path.basename(os.path.normpath(document["dataset"].get("path") or "")) or "?"


def load_result(path: str) -> Result:
    if not os.path.isfile(path):
        raise LadonError("result file not found: %s" % path)
    try:
        with open(path) as handle:
            document = json.load(handle)
        if document.get("format") != RESULT_FORMAT or document.get("task") not in TASK_METRICS:
            raise ValueError("not a ladon-eval result")
        return Result(path, document)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise LadonError("%s is not a ladon-eval result file (%s)" % (path, exc))


def curves_of(results: Sequence[Result]) -> "collections.OrderedDict[str, List[Point]]":
    """curve name -> its points sorted by rate, in the order the curves first appear."""
    curves: "collections.OrderedDict[str, List[Point]]" = collections.OrderedDict()
    for result in results:
        if result.accuracy is not None:
            curves.setdefault(result.curve, []).append((result.kb, result.accuracy))
    for points in curves.values():
        points.sort()
    return curves


def _pchip(xs: Sequence[float], ys: Sequence[float]) -> Any:
    from scipy.interpolate import PchipInterpolator

    return PchipInterpolator(list(xs), list(ys))


def _strictly_increasing(values: Sequence[float]) -> bool:
    return all(b > a for a, b in zip(values, values[1:]))


def bd_accuracy(anchor: Sequence[Point], test: Sequence[Point]) -> Optional[float]:
    """Mean accuracy gap (test - anchor, points) over the log-rate interval both cover; None when they do not."""
    if len(anchor) < 2 or len(test) < 2:
        return None
    la, lt = [math.log10(r) for r, _ in anchor], [math.log10(r) for r, _ in test]
    if not (_strictly_increasing(la) and _strictly_increasing(lt)):
        return None
    low, high = max(la[0], lt[0]), min(la[-1], lt[-1])
    if high <= low:
        return None
    fa, ft = _pchip(la, [a for _, a in anchor]), _pchip(lt, [a for _, a in test])
    return float((ft.integrate(low, high) - fa.integrate(low, high)) / (high - low))


def bd_rate(anchor: Sequence[Point], test: Sequence[Point]) -> Optional[float]:
    """Mean rate change of test against anchor at equal accuracy, in %; None where undefined (module docstring)."""
    if len(anchor) < 2 or len(test) < 2:
        return None
    aa, at = [a for _, a in anchor], [a for _, a in test]
    if not (_strictly_increasing(aa) and _strictly_increasing(at)):
        return None
    low, high = max(aa[0], at[0]), min(aa[-1], at[-1])
    if high <= low:
        return None
    fa = _pchip(aa, [math.log10(r) for r, _ in anchor])
    ft = _pchip(at, [math.log10(r) for r, _ in test])
    mean_gap = (ft.integrate(low, high) - fa.integrate(low, high)) / (high - low)
    return float((10.0 ** mean_gap - 1.0) * 100.0)


def _at_rate(curve: Sequence[Point], kb: float) -> Optional[float]:
    """The curve's accuracy at rate kb (PCHIP over log rate; exact at its own points), None outside its range."""
    rates = [r for r, _ in curve]
    if len(curve) == 1:
        return curve[0][1] if kb == rates[0] else None
    logs = [math.log10(r) for r in rates]
    if not _strictly_increasing(logs) or not logs[0] <= math.log10(kb) <= logs[-1]:
        return None
    return float(_pchip(logs, [a for _, a in curve])(math.log10(kb)))


def compare(anchor_name: str, anchor: Sequence[Point], name: str, test: Sequence[Point]) -> Dict[str, Any]:
    """How curve `name` differs from the anchor: BD figures where defined, else accuracy at equal rate, else the
    plain difference of single points."""
    entry = collections.OrderedDict([("anchor", anchor_name), ("curve", name), ("interpolation", INTERPOLATION),
                                     ("bd_rate_percent", bd_rate(anchor, test)),
                                     ("bd_accuracy_points", bd_accuracy(anchor, test))])
    at_equal_rate = []
    for kb, accuracy in test:
        reference = _at_rate(anchor, kb)
        if reference is not None:
            at_equal_rate.append({"kb": kb, "accuracy_change_points": accuracy - reference})
    for kb, accuracy in anchor:
        other = _at_rate(test, kb)
        if other is not None and len(test) > 1:
            at_equal_rate.append({"kb": kb, "accuracy_change_points": other - accuracy})
    entry["at_equal_rate"] = at_equal_rate
    if len(anchor) == 1 and len(test) == 1 and not at_equal_rate:
        (ra, aa), (rt, at) = anchor[0], test[0]
        entry["point_difference"] = {"accuracy_change_points": at - aa, "anchor_kb": ra, "curve_kb": rt,
                                     "rate_change_percent": (rt / ra - 1.0) * 100.0,
                                     "note": "single points at different rates: not a difference at equal rate"}
    return entry


def describe(entry: Dict[str, Any]) -> str:
    parts = []
    if entry["bd_rate_percent"] is not None:
        parts.append("BD-rate %+.2f %%" % entry["bd_rate_percent"])
    if entry["bd_accuracy_points"] is not None:
        parts.append("BD-accuracy %+.3f points" % entry["bd_accuracy_points"])
    for item in entry["at_equal_rate"]:
        parts.append("%+.3f points at %.3f KB" % (item["accuracy_change_points"], item["kb"]))
    if "point_difference" in entry:
        diff = entry["point_difference"]
        parts.append("%+.3f points, rate %.3f -> %.3f KB (%+.2f %%; not at equal rate)" % (
            diff["accuracy_change_points"], diff["anchor_kb"], diff["curve_kb"], diff["rate_change_percent"]))
    return "; ".join(parts) or "no overlap in rate or accuracy: no difference defined"


def table_rows(results: Sequence[Result]) -> List["collections.OrderedDict[str, Any]"]:
    rows = []
    for result in results:
        document = result.document
        summary = document["summary"]
        rows.append(collections.OrderedDict([
            ("file", os.path.basename(result.path)), ("task", result.task),
            ("dataset", document["dataset"]["kind"]), ("images", summary["images"]),
            ("bundle", document["bundle"]["bundle_id"]), ("beta", document["bundle"].get("beta")),
            ("weights", "random" if result.random else "checkpoints"),
            ("engine", document["engine"]), ("precision", document["precision"]),
            ("kb_per_image", round(result.kb, 4)), ("bits_per_pixel", round(summary["bits_per_pixel"], 5)),
            ("metric", TASK_METRICS[result.task][0]),
            ("value_percent", None if result.accuracy is None else round(result.accuracy, 3))]))
    return rows


def markdown_table(rows: Sequence[Dict[str, Any]], caption: str) -> str:
    header = list(rows[0].keys())
    lines = [caption, "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        lines.append("| " + " | ".join("" if row[k] is None else str(row[k]) for k in header) + " |")
    return "\n".join(lines) + "\n"


def csv_table(rows: Sequence[Dict[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0].keys()), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def plot_task(task: str, results: Sequence[Result], path: str) -> None:
    """The rate-accuracy plot of one task, written atomically as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    _, label, dataset = TASK_METRICS[task]
    random_weights = any(r.random for r in results)
    figure, axes = pyplot.subplots(figsize=(6.4, 4.4), dpi=100)
    markers = "osD^v<>"
    for index, (name, points) in enumerate(curves_of(results).items()):
        axes.plot([p[0] for p in points], [p[1] for p in points], marker=markers[index % len(markers)],
                  label=name)
    names = list(curves_of(results))
    for result in results:
        if result.accuracy is not None:
            # each curve labels its points on its own side, so the points of two precisions of one bundle stay legible
            above = names.index(result.curve) % 2 == 0
            axes.annotate(result.point_label, (result.kb, result.accuracy), textcoords="offset points",
                          xytext=(4, 6 if above else -13), fontsize=7)
    images = sorted({r.document["summary"]["images"] for r in results})
    folders = sorted({r.dataset for r in results})
    title = "Rate-accuracy: %s, %s (%s images)" % (", ".join(folders), dataset, "/".join(str(i) for i in images))
    if random_weights:
        title += "\n" + RANDOM_NOTE
        axes.text(0.5, 0.5, "RANDOM WEIGHTS", transform=axes.transAxes, fontsize=28, color="red", alpha=0.18,
                  ha="center", va="center", rotation=20)
    axes.set_title(title, fontsize=9, color="darkred" if random_weights else "black")
    values = [r.accuracy for r in results if r.accuracy is not None]
    if values and max(values) - min(values) < 1e-9:
        # equal accuracies (random weights score 0 everywhere): a readable one-point band instead of 1e-9 ticks
        axes.set_ylim(min(values) - 0.1, max(values) + 1.0)
    axes.set_xlabel("KB per image (whole payload incl. framing)")
    axes.set_ylabel(label)
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize=8, loc="best")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    pyplot.close(figure)
    write_bytes_atomically(path, buffer.getvalue())


def make_report(paths: Sequence[str], out_dir: str) -> Dict[str, Any]:
    """Writes rate_accuracy_<task>.png, table.md, table.csv, differences.md and report.json into out_dir."""
    if not paths:
        raise LadonError("give at least one ladon-eval result file")
    results = [load_result(p) for p in paths]
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise LadonError("--out %s is a file, not a folder" % out_dir)
    if not os.path.isdir(os.path.dirname(os.path.abspath(out_dir))):
        raise LadonError("cannot write %s: its parent folder does not exist" % out_dir)
    os.makedirs(out_dir, exist_ok=True)
    random_weights = any(r.random for r in results)
    caption = "Rate and accuracy per result file." + (" " + RANDOM_NOTE + "." if random_weights else "")
    rows = table_rows(results)
    write_text_atomically(os.path.join(out_dir, "table.md"), markdown_table(rows, caption))
    write_text_atomically(os.path.join(out_dir, "table.csv"), csv_table(rows))
    report = collections.OrderedDict([("random_weights", random_weights), ("interpolation", INTERPOLATION),
                                      ("tasks", collections.OrderedDict())])
    lines = ["# Curve differences (%s)" % INTERPOLATION, ""] + ([RANDOM_NOTE + ".", ""] if random_weights else [])
    for task in TASK_METRICS:
        of_task = [r for r in results if r.task == task]
        if not of_task:
            continue
        figure = os.path.join(out_dir, "rate_accuracy_%s.png" % task)
        plot_task(task, of_task, figure)
        curves = curves_of(of_task)
        names = list(curves)
        differences = [compare(names[0], curves[names[0]], name, curves[name]) for name in names[1:]]
        report["tasks"][task] = {"figure": figure, "curves": {k: v for k, v in curves.items()},
                                 "differences": differences}
        for entry in differences:
            lines.append("- %s: %s against %s: %s" % (task, entry["curve"], entry["anchor"], describe(entry)))
    write_text_atomically(os.path.join(out_dir, "differences.md"), "\n".join(lines) + "\n")
    write_text_atomically(os.path.join(out_dir, "report.json"), json.dumps(report, indent=1) + "\n")
    return report
