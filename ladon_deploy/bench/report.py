"""Turning a combined bench report (bench/combine.py) into the files users publish: CSV, Markdown and PNG figures.

Figures follow the paper's supplementary layout: per device and rate, end-to-end latency as stacked bars with CUDA
off (top) and CUDA on (bottom) as two panels (Figs S1-S2); local GMAC per configuration (Fig S3); peak local memory
per configuration and engine (Table S1, also plotted); energy per image where a power sensor was read. They are
sized for a two-column paper's full text width (7 in) with 9 pt tick labels, every colour in a legend placed outside
the bars, and values printed on the bars.
"""
import csv
import os
import re
from typing import Any, Dict, List, Optional, Sequence

from ladon_deploy.bench.identity import describe

COLUMNS = [("device", "device"), ("device_engine", "device engine"), ("server_engine", "server engine"),
           ("configuration", "configuration"), ("family", "family"), ("rate", "rate"),
           ("payload_bytes", "payload B"), ("device_ms", "device ms"), ("coding_ms", "coding ms"),
           ("transfer_ms", "transfer ms"), ("server_ms", "server ms"), ("end_to_end_ms", "end-to-end ms"),
           ("duty_cycle_wall_ms", "duty-cycle wall ms"), ("local_gmac", "local GMAC"), ("peak_local_memory_mb", "peak local MB"),
           ("energy_per_image_j", "energy J/image"), ("mean_power_w", "mean power W")]
TEXT_COLUMNS = ("device", "device_engine", "server_engine", "configuration", "family", "rate")

FAMILY_COLORS = {"LC": "#8c8c8c", "SC": "#4c72b0", "Ladon": "#dd8452"}
SEGMENTS = [("device_ms", "device compute", "#4c72b0"), ("coding_ms", "entropy coding", "#e3c800"),
            ("transfer_ms", "transfer", "#c44e52"), ("server_ms", "server compute", "#8172b2")]
ENGINE_HATCHES = ["", "//", "..", "xx"]
FIGURE_WIDTH_IN = 7.0
TICK_PT = 9


def plural(count: int, word: str) -> str:
    return "%d %s%s" % (count, word, "" if count == 1 else "s")


def _format(key: str, value: Any) -> str:
    if value is None:
        return "n/a"
    if key == "payload_bytes":
        return "%d" % value
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if key == "local_gmac":
            return "%.3f" % value
        if key in ("energy_per_image_j", "mean_power_w"):
            return "%.3f" % value
        return "%.1f" % value
    return str(value)


def write_csv(rows: List[Dict[str, Any]], path: str) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        provenance = ["payload_source", "cuda", "rate_bps"]
        writer.writerow([key for key, _ in COLUMNS] + provenance)
        for row in rows:
            writer.writerow(["" if row[key] is None else row[key] for key, _ in COLUMNS]
                            + [row.get(key, "") for key in provenance])


def markdown_table(rows: List[Dict[str, Any]], columns: Sequence = COLUMNS) -> str:
    lines = ["| " + " | ".join(title for _, title in columns) + " |",
             "| " + " | ".join("---" if key in TEXT_COLUMNS else "---:" for key, _ in columns) + " |"]
    for row in rows:
        lines.append("| " + " | ".join(_format(key, row.get(key)) for key, _ in columns) + " |")
    return "\n".join(lines)


def cuda_engines(device: Dict[str, Any]) -> List[str]:
    return [name for name, measured in device["engines"].items() if measured["cuda"]]


def memory_table(device: Dict[str, Any]) -> str:
    """Table S1: peak local memory (MB) per configuration (rows) and engine (columns)."""
    engines = list(device["engines"])
    names = [c["name"] for c in device["lc_configurations"]] + [c["name"] for c in device["split_configurations"]]
    lines = ["| configuration | " + " | ".join("%s MB" % e for e in engines) + " |",
             "| --- | " + " | ".join("---:" for _ in engines) + " |"]
    for name in names:
        values = [(device["engines"][e].get("peak_memory_mb") or {}).get(name) for e in engines]
        lines.append("| %s | %s |" % (name, " | ".join("n/a" if v is None else "%.1f" % v for v in values)))
    return "\n".join(lines)


def stage_table(device: Dict[str, Any], server: Dict[str, Any], server_engine: str) -> str:
    """Median and p90 of every measured stage and model, on the first image (named), per engine; `runs on` is what
    the runner reported (a TensorRT run's fallbacks to ONNX Runtime show there)."""
    image = device["settings"]["images"][0]
    lines = ["| side | engine | stage or model | runs on | median ms | p90 ms |",
             "| --- | --- | --- | --- | ---: | ---: |"]

    def add(side: str, engine: str, name: str, runs_on: str, entry: Dict[str, Any]) -> None:
        lines.append("| %s | %s | %s | %s | %.2f | %.2f |" % (side, engine, name, runs_on, entry["median_ms"],
                                                             entry["p90_ms"]))

    for engine, measured in device["engines"].items():
        first = measured["ladon"][0]
        for name, entry in first["stages"].items():
            add("device", engine, "Ladon " + name, first.get("stage_engines", {}).get(name, ""), entry)
        for name, per_image in measured["lc"].items():
            add("device", engine, "LC " + name, measured.get("lc_engine", ""), per_image[0])
    first = server["engines"][server_engine]["ladon"][0]
    for name, entry in first["stages"].items():
        add("server", server_engine, "Ladon " + name, first.get("stage_engines", {}).get(name, ""), entry)
    return "Per-stage figures on image `%s`:\n\n" % image + "\n".join(lines)


def energy_note(device: Dict[str, Any], label: str) -> str:
    source = device.get("power_source")
    if source:
        return "Energy on %s: board input power sampled with %s during every measured loop; energy per image = mean " \
               "input-rail power x loop time / runs." % (label, source)
    reasons = set()
    for measured in device["engines"].values():
        for image in measured["ladon"]:
            if image.get("power") and image["power"].get("absent"):
                reasons.add(image["power"]["absent"])
    return "Energy on %s: absent (%s); the energy columns say n/a, not zero." % (
        label, "; ".join(sorted(reasons)) or "no power source")


def markdown_report(report: Dict[str, Any]) -> str:
    server = report["server"]
    rows = report["rows"]
    parts = ["# Ladon vs SC vs LC", ""]
    for label, device in report["devices"].items():
        settings = device["settings"]
        parts.append("Device `%s`: %s; engines %s; %s (%s) after %d warm-up per image; toolkit %s, bundle %s "
                     "(%s)." % (label, describe(device["identity"]), ", ".join(device["engines"]),
                                plural(settings["repeats"], "repeat"), "medians and p90", settings["warmup"],
                                device["toolkit_version"], device["bundle_id"], device["bundle"]["architecture"]))
        parts.append("Images: %s (%s); peak memory measured on `%s`. Facts not found on the device: %s." % (
            ", ".join("`%s`" % name for name in settings["images"]), plural(len(settings["images"]), "image"),
            settings["memory_image"], ", ".join(device["identity"]["absent"]) or "none"))
        if not cuda_engines(device):
            parts.append("**CUDA was not measured on `%s`** (engines measured: %s): the CUDA-on panel of its "
                         "latency figures is empty." % (label, ", ".join(device["engines"])))
        parts.append(energy_note(device, label))
        parts.append("")
    parts.append("Server: %s; engine %s (of %s measured), %s after %d warm-up." % (
        describe(server["identity"]), report["server_engine"], ", ".join(server["engines"]),
        plural(server["settings"]["repeats"], "repeat"), server["settings"]["warmup"]))
    if not server["engines"][report["server_engine"]]["cuda"]:
        parts.append("**CUDA was not measured on the server either**: its compute is the %s engine's, not the paper's "
                     "GPU laptop's." % report["server_engine"])
    sources = sorted({row["payload_source"] for row in rows if row["payload_source"] != "none"})
    parts.append("Payload sizes: %s. Transfer = the payload's time on air on the link (an ideal pipe: bytes x 8 / "
                 "rate; a radio profile: its frames with every header) + %.1f ms rtt; end-to-end = device + coding + "
                 "transfer + server; the duty-cycle wall time (frames waiting out the region's off-time) is its own "
                 "column; each term is the median over images." % (", ".join(sources) or "none",
                                                                                report["rtt_s"] * 1e3))
    parts += ["", "## Headline ratios", "",
              "| device | engine | rate | Ladon ms | best LC | LC ms | saving vs LC | best SC | SC ms | saving vs SC |",
              "| --- | --- | --- | ---: | --- | ---: | ---: | --- | ---: | ---: |"]
    for entry in report["headlines"]:
        parts.append("| %s | %s | %s | %.1f | %s | %.1f | %.1f%% | %s | %.1f | %.1f%% |" % (
            entry["device"], entry["device_engine"], entry["rate"], entry["ladon_ms"], entry.get("best_lc", "n/a"),
            entry.get("best_lc_ms", float("nan")), 100 * entry.get("saving_vs_lc", float("nan")),
            entry.get("best_sc", "n/a"), entry.get("best_sc_ms", float("nan")),
            100 * entry.get("saving_vs_sc", float("nan"))))
    for panel in largest_savings(report["headlines"]):
        parts.append("")
        parts.append("Largest saving on %s, %s (CUDA %s): %+.1f%% against the best LC, %+.1f%% against the best SC%s."
                     % (panel["device"], panel["device_engine"], "on" if panel["cuda"] else "off", 100 * panel["lc"],
                        100 * panel["sc"], " (negative: Ladon end-to-end was slower than that baseline)"
                        if min(panel["lc"], panel["sc"]) < 0 else ""))
    parts += ["", "## End-to-end latency (Figs S1-S2)", "", markdown_table(rows), ""]
    for label, device in report["devices"].items():
        parts += ["## Peak local memory on %s (Table S1)" % label, "", memory_table(device), "",
                  stage_table(device, server, report["server_engine"]), ""]
    return "\n".join(parts) + "\n"


def largest_savings(headlines: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    panels: List[Dict[str, Any]] = []
    for entry in headlines:
        found = [p for p in panels if (p["device"], p["device_engine"]) == (entry["device"], entry["device_engine"])]
        if not found:
            found = [{"device": entry["device"], "device_engine": entry["device_engine"], "cuda": entry["cuda"],
                      "lc": float("-inf"), "sc": float("-inf")}]
            panels.append(found[0])
        found[0]["lc"] = max(found[0]["lc"], entry.get("saving_vs_lc", float("-inf")))
        found[0]["sc"] = max(found[0]["sc"], entry.get("saving_vs_sc", float("-inf")))
    return panels


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_")


def _draw_latency_panel(axis: Any, rows: List[Dict[str, Any]], title: str, longest: float) -> None:
    names = [row["configuration"] for row in rows]
    left = [0.0] * len(rows)
    for key, _, color in SEGMENTS:
        values = [row[key] / 1e3 for row in rows]
        axis.barh(names, values, left=left, color=color, height=0.7)
        left = [a + b for a, b in zip(left, values)]
    for index, (row, total) in enumerate(zip(rows, left)):
        text = "%.2f s" % total
        if row["coding_ms"] > 0:
            # A few ms on a seconds axis is invisible as a segment: say it in words next to the bar.
            text += "  (coding %.1f ms)" % row["coding_ms"]
        axis.text(total + longest * 0.01, index, text, va="center", fontsize=TICK_PT - 1)
    axis.set_xlim(0, longest * 1.6)
    axis.invert_yaxis()
    axis.tick_params(axis="both", labelsize=TICK_PT)
    for label, row in zip(axis.get_yticklabels(), rows):
        label.set_color({"Ladon": "#b35000", "SC": "#2a4f8f"}.get(row["family"], "black"))
    axis.set_title(title, fontsize=TICK_PT + 1)
    axis.set_xlabel("end-to-end latency per image (s)", fontsize=TICK_PT)


def plot_latency(report: Dict[str, Any], label: str, rate: str, path: str) -> None:
    """Figs S1-S2: CUDA off on top, CUDA on below; the CUDA-on panel says so when nothing was measured."""
    plt = _pyplot()
    from matplotlib.patches import Patch

    device = report["devices"][label]
    rows = [r for r in report["rows"] if r["device"] == label and r["rate"] == rate]
    off = [e for e in device["engines"] if not device["engines"][e]["cuda"]]
    on = cuda_engines(device)
    panels = [("CUDA off", off[0] if off else None), ("CUDA on", on[0] if on else None)]
    count = len(device["lc_configurations"]) + len(device["split_configurations"])
    panel_heights = [0.22 * count + 0.9 if engine else 0.6 for _, engine in panels]
    figure, axes = plt.subplots(2, 1, figsize=(FIGURE_WIDTH_IN, sum(panel_heights) + 0.9),
                                gridspec_kw={"height_ratios": panel_heights})
    # The same x range on both panels, so that CUDA off and on compare at a glance.
    longest = max([sum(r[key] for key, _, _ in SEGMENTS) / 1e3 for r in rows] or [1.0])
    for axis, (panel, engine) in zip(axes, panels):
        selected = [r for r in rows if r["device_engine"] == engine] if engine else []
        if selected:
            _draw_latency_panel(axis, selected, "%s: %s, %s" % (panel, engine, rate), longest)
        else:
            axis.set_axis_off()
            axis.text(0.5, 0.5, "%s: not measured on %s\n(engines measured: %s)"
                      % (panel, label, ", ".join(device["engines"])), ha="center", va="center",
                      fontsize=TICK_PT + 2, transform=axis.transAxes)
    handles = [Patch(color=color, label=name) for _, name, color in SEGMENTS]
    figure.legend(handles=handles, loc="upper center", ncol=4, fontsize=TICK_PT, frameon=False,
                  bbox_to_anchor=(0.5, 1.0))
    figure.suptitle("device %s: %s; server engine %s; labels: LC black, SC blue, Ladon orange"
                    % (label, describe(device["identity"]), report["server_engine"]),
                    fontsize=TICK_PT - 1, y=0.005, va="bottom")
    height = sum(panel_heights) + 0.9
    # The legend sits above both panels and the machine line below them: neither can cover a bar.
    figure.tight_layout(rect=(0, 0.3 / height, 1, 1 - 0.35 / height))
    figure.savefig(path, dpi=200)
    plt.close(figure)


def plot_per_configuration(report: Dict[str, Any], label: str, key: str, xlabel: str, path: str,
                           fmt: str = "%.2f") -> None:
    """One bar per configuration (and engine, where the value depends on it), coloured by family, values on bars."""
    plt = _pyplot()
    from matplotlib.patches import Patch

    device = report["devices"][label]
    first_rate = report["rates"][0]
    rows = [r for r in report["rows"] if r["device"] == label and r["rate"] == first_rate]
    engines = list(device["engines"]) if key != "local_gmac" else [list(device["engines"])[0]]
    names: List[str] = []
    for row in rows:
        if row["configuration"] not in names:
            names.append(row["configuration"])
    bar = 0.8 / len(engines)
    handles = [Patch(color=color, label=family) for family, color in FAMILY_COLORS.items()]
    if len(engines) > 1:
        handles += [Patch(facecolor="#cccccc", hatch=ENGINE_HATCHES[i % len(ENGINE_HATCHES)], edgecolor="white",
                          label="engine %s" % engine) for i, engine in enumerate(engines)]
    legend_rows = (len(handles) + 2) // 3
    height = 0.24 * len(names) * len(engines) + 1.4 + 0.3 * legend_rows
    figure, axis = plt.subplots(figsize=(FIGURE_WIDTH_IN, height))
    longest = 0.0
    for slot, engine in enumerate(engines):
        by_name = dict((r["configuration"], r) for r in rows if r["device_engine"] == engine)
        for index, name in enumerate(names):
            row = by_name.get(name)
            value = row.get(key) if row else None
            position = index - 0.4 + bar * (slot + 0.5)
            if value is None:
                axis.text(0, position, " n/a", va="center", fontsize=TICK_PT - 1)
                continue
            axis.barh(position, value, height=bar * 0.9, color=FAMILY_COLORS[row["family"]],
                      hatch=ENGINE_HATCHES[slot % len(ENGINE_HATCHES)], edgecolor="white")
            axis.text(value, position, " " + fmt % value, va="center", fontsize=TICK_PT - 1)
            longest = max(longest, value)
    axis.set_yticks(range(len(names)))
    axis.set_yticklabels(names)
    axis.set_xlim(0, (longest or 1.0) * 1.2)
    axis.invert_yaxis()
    axis.tick_params(axis="both", labelsize=TICK_PT)
    axis.set_xlabel(xlabel, fontsize=TICK_PT)
    axis.set_title("%s (%s)" % (label, describe(device["identity"])), fontsize=TICK_PT)
    # Below the axis, three entries a row: it never covers a bar and never runs off the figure.
    figure.legend(handles=handles, loc="lower center", ncol=min(3, len(handles)), fontsize=TICK_PT, frameon=False)
    figure.tight_layout(rect=(0, (0.3 * legend_rows + 0.05) / height, 1, 1))
    figure.savefig(path, dpi=200)
    plt.close(figure)


def write_reports(report: Dict[str, Any], out_dir: str, prefix_devices: Optional[bool] = None) -> List[str]:
    """results.csv, results.md and the figures; figure names carry the device label when there are several."""
    written = []
    csv_path = os.path.join(out_dir, "results.csv")
    write_csv(report["rows"], csv_path)
    written.append(csv_path)
    md_path = os.path.join(out_dir, "results.md")
    with open(md_path, "w") as handle:
        handle.write(markdown_report(report))
    written.append(md_path)
    several = len(report["devices"]) > 1 if prefix_devices is None else prefix_devices
    for label, device in report["devices"].items():
        prefix = _slug(label) + "_" if several else ""
        for rate in report["rates"]:
            path = os.path.join(out_dir, "%slatency_%s.png" % (prefix, _slug(rate)))
            plot_latency(report, label, rate, path)
            written.append(path)
        figures = [("local_gmac", "local GMAC per image", "local_gmac.png", "%.2f"),
                   ("peak_local_memory_mb", "peak local memory (MB, device-only process RSS)",
                    "peak_local_memory.png", "%.0f")]
        if device.get("power_source"):
            figures.append(("energy_per_image_j", "device energy per image (J)", "energy_per_image.png", "%.2f"))
        for key, xlabel, name, fmt in figures:
            path = os.path.join(out_dir, prefix + name)
            plot_per_configuration(report, label, key, xlabel, path, fmt)
            written.append(path)
    return written
