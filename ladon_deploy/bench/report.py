"""Turning a bench result into the files users publish: CSV, Markdown, and PNG plots."""
import csv
import os
from typing import Any, Dict, List

COLUMNS = [("configuration", "configuration"), ("family", "family"), ("rate", "rate"),
           ("payload_bytes", "payload B"), ("device_ms", "device ms"), ("coding_ms", "coding ms"),
           ("transfer_ms", "transfer ms"), ("server_ms", "server ms"), ("end_to_end_ms", "end-to-end ms"),
           ("local_gmac", "local GMAC"), ("peak_local_memory_mb", "peak local MB"), ("local_weight_mb", "weights MB")]

FAMILY_COLORS = {"LC": "#8c8c8c", "SC": "#4c72b0", "Ladon": "#dd8452"}
SEGMENTS = [("device_ms", "mobile compute", "#4c72b0"), ("coding_ms", "entropy coding", "#55a868"),
            ("transfer_ms", "transfer", "#c44e52"), ("server_ms", "server compute", "#8172b2")]


def _format(key: str, value: Any) -> str:
    if value is None:
        return "n/a"
    if key == "payload_bytes":
        return "%d" % value
    if isinstance(value, float):
        return "%.3f" % value if key == "local_gmac" else "%.1f" % value
    return str(value)


def write_csv(rows: List[Dict[str, Any]], path: str) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        provenance = ["payload_source", "engine", "precision", "device"]
        writer.writerow([key for key, _ in COLUMNS] + provenance)
        for row in rows:
            writer.writerow([row[key] for key, _ in COLUMNS] + [row.get(key, "") for key in provenance])


def markdown_table(rows: List[Dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(title for _, title in COLUMNS) + " |",
             "| " + " | ".join("---" if key in ("configuration", "family", "rate") else "---:"
                               for key, _ in COLUMNS) + " |"]
    for row in rows:
        lines.append("| " + " | ".join(_format(key, row[key]) for key, _ in COLUMNS) + " |")
    return "\n".join(lines)


def memory_ratios(result: Dict[str, Any]) -> Dict[str, float]:
    """Peak local memory of the Ladon device process against the LC configurations (all fp32)."""
    configurations = result["configurations"]
    ladon = [c for c in configurations if c["family"] == "Ladon"][0]["peak_rss_mb"]
    lc = [c["peak_rss_mb"] for c in configurations if c["family"] == "LC"]
    return {"ladon_mb": ladon, "lc_min_mb": min(lc), "lc_max_mb": max(lc), "ladon_over_smallest_lc": ladon / min(lc)}


def markdown_report(result: Dict[str, Any]) -> str:
    machine = result["machine"]
    runner = result["runner"]
    settings = result["settings"]
    ratios = memory_ratios(result)
    rows = result["rows"]
    sources = sorted({row["payload_source"] for row in rows if row["payload_source"] != "none"})
    parts = [
        "# Ladon vs SC vs LC",
        "",
        "Measured on %s (%s, %d cores, Python %s, onnxruntime %s); runner %s, precision %s, device %s. "
        "Medians over %d repeats after %d warm-up per image (%d images), then the median over images. "
        "Payload sizes: %s. Transfer = bytes x 8 / rate + %.1f ms rtt." % (
            machine["platform"], machine["processor"], machine["cpu_count"], machine["python"],
            machine["onnxruntime"], runner["engine"], runner["precision"], runner["device"], settings["repeats"],
            settings["warmup"], len(settings["images"]), ", ".join(sources) or "none", settings["rtt_s"] * 1e3),
        "",
        markdown_table(rows),
        "",
        "Glue overhead (wall time of the Ladon pipeline minus the sum of its stages): %.3f ms (median)."
        % result["glue_ms"]["median_over_images"],
        "",
        "Peak local memory: Ladon device process %.1f MB; LC configurations %.1f-%.1f MB; Ladon / smallest LC = %.3f."
        % (ratios["ladon_mb"], ratios["lc_min_mb"], ratios["lc_max_mb"], ratios["ladon_over_smallest_lc"]),
    ]
    return "\n".join(parts) + "\n"


def machine_label(result: Dict[str, Any]) -> str:
    machine, runner = result["machine"], result["runner"]
    return "%s, %d cores, %s %s %s" % (machine["processor"], machine["cpu_count"], runner["engine"],
                                       runner["precision"], runner["device"])


def plot_latency(rows: List[Dict[str, Any]], rate: str, path: str, label: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    selected = [row for row in rows if row["rate"] == rate]
    names = [row["configuration"] for row in selected]
    figure, axis = plt.subplots(figsize=(10, 0.32 * len(names) + 1.6))
    left = [0.0] * len(names)
    for key, segment, color in SEGMENTS:
        values = [row[key] / 1e3 for row in selected]
        axis.barh(names, values, left=left, label=segment, color=color)
        left = [a + b for a, b in zip(left, values)]
    axis.set_xlabel("end-to-end latency per image (s)")
    axis.set_title("End-to-end latency at %s%s" % (rate, "\n(measured on %s)" % label if label else ""), fontsize=10)
    axis.invert_yaxis()
    axis.tick_params(axis="y", labelsize=7)
    axis.legend(loc="upper right", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_per_configuration(result: Dict[str, Any], key: str, label: str, path: str) -> None:
    """One horizontal bar per configuration, coloured by family (LC grey, SC blue, Ladon orange)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    configurations = result["configurations"]
    names = [c["name"] for c in configurations]
    values = [c[key] for c in configurations]
    figure, axis = plt.subplots(figsize=(10, 0.32 * len(names) + 1.6))
    axis.barh(names, values, color=[FAMILY_COLORS[c["family"]] for c in configurations])
    axis.set_xlabel(label)
    axis.set_title("measured on %s" % machine_label(result), fontsize=9)
    axis.invert_yaxis()
    axis.tick_params(axis="y", labelsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def write_reports(result: Dict[str, Any], out_dir: str) -> List[str]:
    written = []
    csv_path = os.path.join(out_dir, "results.csv")
    write_csv(result["rows"], csv_path)
    written.append(csv_path)
    md_path = os.path.join(out_dir, "results.md")
    with open(md_path, "w") as handle:
        handle.write(markdown_report(result))
    written.append(md_path)
    for rate in result["settings"]["rates"]:
        path = os.path.join(out_dir, "latency_%s.png" % rate.replace(".", "_"))
        plot_latency(result["rows"], rate, path, machine_label(result))
        written.append(path)
    for key, label, name in (("gmac", "local GMAC per image", "local_gmac.png"),
                             ("peak_rss_mb", "peak local memory (MB, RSS of the device process)",
                              "peak_local_memory.png")):
        path = os.path.join(out_dir, name)
        plot_per_configuration(result, key, label, path)
        written.append(path)
    return written
