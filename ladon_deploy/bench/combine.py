"""`ladon-bench report`'s arithmetic: device files + one server file + rates -> one row per configuration.

Per device, device engine, rate and configuration, for every image, then the median over images of each term:

  LC     device = the sum of its three models; nothing crosses the link; server 0.
  Ladon  device = preprocess + encoder + quantize + frame (device file); coding = rANS encode (device file) + rANS
         decode (server file); transfer = time on air of the payload's frames on the link profile + rtt (an ideal pipe,
         as the paper assumes: payload bytes x 8 / rate); server = unframe + dequantize + body + heads. The wall time
         the profile's regional duty cycle imposes on the transfer is its own column, not part of end-to-end.
  SC     one single-task model per task (N = the bundle's tasks), each with Ladon's graphs: device N x, coding N x,
         transfer of N payloads, server = N x (unframe + dequantize + body) + each head once.
  end-to-end = device + coding + transfer + server, exactly.

Files must come from the same toolkit version and bundle and have measured the same images; anything else is refused
with one line.
"""
import json
import os
import statistics
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ladon_deploy.bench import device_bench, server_bench
from ladon_deploy.errors import LadonError
from ladon_deploy.link.plan import duty_cycle_wall, frame_times, implied_region
from ladon_deploy.link.profiles import get_profile

SERVER_TRUNK_STAGES = ("unframe", "dequantize", "body")
SERVER_HEAD_STAGES = ("head_cls", "head_det", "head_seg")


def load_result(path: str, kind: str) -> Dict[str, Any]:
    try:
        with open(path) as handle:
            document = json.load(handle)
    except (OSError, ValueError) as exc:
        raise LadonError("cannot read %s: %s" % (path, exc))
    if not isinstance(document, dict) or document.get("kind") != kind:
        found = document.get("kind") if isinstance(document, dict) else None
        raise LadonError("%s is not a `%s` file (kind %r)" % (path, kind, found))
    schema = device_bench.SCHEMA if kind == device_bench.KIND else server_bench.SCHEMA
    if document.get("schema") != schema:
        raise LadonError("%s has schema %r; this toolkit reads %d" % (path, document.get("schema"), schema))
    return document


def check_compatible(devices: Sequence[Tuple[str, Dict[str, Any]]], server: Tuple[str, Dict[str, Any]]) -> None:
    """Refuses files of different toolkit versions, bundles or image sets (they would not add up)."""
    server_path, server_doc = server
    for path, device in devices:
        if device["toolkit_version"] != server_doc["toolkit_version"]:
            raise LadonError("%s was measured with toolkit %s and %s with %s: re-measure both with one version"
                             % (path, device["toolkit_version"], server_path, server_doc["toolkit_version"]))
        if device["bundle_id"] != server_doc["bundle_id"]:
            raise LadonError("%s measured bundle %s and %s bundle %s: both sides must measure the same bundle"
                             % (path, device["bundle_id"], server_path, server_doc["bundle_id"]))
        if device["settings"]["images"] != server_doc["settings"]["images"]:
            raise LadonError("%s and %s measured different images (%s vs %s): give both the same --images"
                             % (path, server_path, ",".join(device["settings"]["images"]),
                                ",".join(server_doc["settings"]["images"])))


def device_label(path: str) -> str:
    return os.path.splitext(os.path.basename(path))[0]


def choose_server_engine(server: Dict[str, Any], requested: Optional[str] = None) -> str:
    """The requested server engine, else the first CUDA one measured (the paper's laptop), else the first."""
    engines = list(server["engines"])
    if requested:
        if requested not in engines:
            raise LadonError("--server-engine %s was not measured (the server file has %s)"
                             % (requested, ", ".join(engines)))
        return requested
    cuda = [name for name in engines if server["engines"][name]["cuda"]]
    return (cuda or engines)[0]


def _median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def _stage(stages: Dict[str, Any], name: str) -> float:
    entry = stages.get(name)
    return entry["median_ms"] if entry else 0.0


def _energy(powers: Sequence[Optional[Dict[str, Any]]]) -> Optional[float]:
    values = [p.get("energy_per_run_j") if p else None for p in powers]
    return None if any(v is None for v in values) else float(sum(values))


def configuration_terms(device: Dict[str, Any], engine: str, server_stages: List[Dict[str, Any]],
                        sizes: Optional[Dict[str, int]] = None) -> List[Dict[str, Any]]:
    """Per configuration: per-image device, coding and server ms, payload bytes, energy; GMAC and peak memory."""
    measured = device["engines"][engine]
    ladon_images = measured["ladon"]
    tasks = device["bundle"]["tasks"]
    memory = measured.get("peak_memory_mb") or {}
    configurations = []
    for config in device["lc_configurations"]:
        models = config["models"]
        count = len(ladon_images)
        per_image_energy = [_energy([measured["lc"][m][i].get("power") for m in models]) for i in range(count)]
        configurations.append({
            "name": config["name"], "family": "LC", "models": models,
            "device_ms": [sum(measured["lc"][m][i]["median_ms"] for m in models) for i in range(count)],
            "coding_ms": [0.0] * count, "server_ms": [0.0] * count, "payload_bytes": [0] * count,
            "payload_source": "none", "energy_j": per_image_energy,
            "gmac": sum(device["lc_models"][m]["gmac"] for m in models),
            "weight_bytes": sum(device["lc_models"][m]["weight_bytes"] for m in models),
            "peak_memory_mb": memory.get(config["name"])})
    gmac_values = device.get("ladon_encoder_gmac") or []
    encoder_gmac = None if not gmac_values or None in gmac_values else _median(gmac_values)
    for config in device["split_configurations"]:
        copies = int(config["copies"])
        device_ms, coding_ms, server_ms, payload, energy = [], [], [], [], []
        for image, server in zip(ladon_images, server_stages):
            device_ms.append(copies * sum(_stage(image["stages"], s) for s in device_bench.DEVICE_COMPUTE_STAGES))
            coding_ms.append(copies * (_stage(image["stages"], device_bench.DEVICE_CODING_STAGE)
                                       + _stage(server["stages"], "entropy_decode")))
            server_ms.append(copies * sum(_stage(server["stages"], s) for s in SERVER_TRUNK_STAGES)
                             + sum(_stage(server["stages"], s) for s in SERVER_HEAD_STAGES))
            one = _energy([image.get("power")])
            energy.append(None if one is None else copies * one)
            if sizes:
                payload.append(int(sizes["ladon"]) if config["family"] == "Ladon"
                               else sum(int(sizes["sc_" + task]) for task in tasks))
            else:
                payload.append(copies * int(image["payload_bytes"]))
        configurations.append({
            "name": config["name"], "family": config["family"], "models": [], "copies": copies,
            "device_ms": device_ms, "coding_ms": coding_ms, "server_ms": server_ms, "payload_bytes": payload,
            "payload_source": "--sizes file" if sizes else "measured payloads of the bundle", "energy_j": energy,
            "gmac": None if encoder_gmac is None else copies * encoder_gmac, "weight_bytes": None,
            "peak_memory_mb": memory.get(config["name"])})
    return configurations


def build_rows(label: str, device: Dict[str, Any], server: Dict[str, Any], server_engine: str, rates: List[str],
               rtt: float, sizes: Optional[Dict[str, int]] = None) -> List[Dict[str, Any]]:
    """One row per device engine, rate and configuration (medians over images of every term)."""
    server_stages = server["engines"][server_engine]["ladon"]
    rows = []
    for engine in device["engines"]:
        cuda = bool(device["engines"][engine]["cuda"])
        configurations = configuration_terms(device, engine, server_stages, sizes)
        for rate_text in rates:
            profile = get_profile(rate_text)
            region = implied_region(profile, None)
            for config in configurations:
                times = [frame_times(profile, region, b) if b else [] for b in config["payload_bytes"]]
                transfer = [(sum(t) + rtt) * 1e3 if t else 0.0 for t in times]
                duty_wall = [(duty_cycle_wall(t, region) + rtt) * 1e3 if t else 0.0 for t in times]
                end_to_end = [d + c + t + s for d, c, t, s in zip(config["device_ms"], config["coding_ms"], transfer,
                                                                  config["server_ms"])]
                energy = config["energy_j"]
                energy_j = None if None in energy else _median(energy)
                device_ms = _median(config["device_ms"])
                rows.append({
                    "device": label, "device_engine": engine, "cuda": cuda, "server_engine": server_engine,
                    "rate": rate_text, "rate_bps": profile.bit_rate, "configuration": config["name"], "family": config["family"],
                    "payload_bytes": _median(config["payload_bytes"]), "payload_source": config["payload_source"],
                    "device_ms": device_ms, "coding_ms": _median(config["coding_ms"]),
                    "transfer_ms": _median(transfer), "duty_cycle_wall_ms": _median(duty_wall), "server_ms": _median(config["server_ms"]),
                    "end_to_end_ms": _median(end_to_end), "local_gmac": config["gmac"],
                    "peak_local_memory_mb": config["peak_memory_mb"], "energy_per_image_j": energy_j,
                    "mean_power_w": None if energy_j is None or device_ms <= 0 else energy_j / (device_ms / 1e3)})
    return rows


def headlines(rows: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Per device, device engine and rate: Ladon's saving against the fastest LC and the fastest SC configuration."""
    panels: List[Dict[str, Any]] = []
    keys: List[Tuple[str, str, str]] = []
    for row in rows:
        key = (row["device"], row["device_engine"], row["rate"])
        if key not in keys:
            keys.append(key)
    for key in keys:
        selected = [r for r in rows if (r["device"], r["device_engine"], r["rate"]) == key]
        ladon = [r for r in selected if r["family"] == "Ladon"]
        if not ladon:
            continue
        entry: Dict[str, Any] = {"device": key[0], "device_engine": key[1], "rate": key[2], "cuda": ladon[0]["cuda"],
                                 "ladon_ms": ladon[0]["end_to_end_ms"]}
        for family in ("LC", "SC"):
            candidates = [r for r in selected if r["family"] == family]
            if candidates:
                best = min(candidates, key=lambda r: r["end_to_end_ms"])
                entry["best_%s" % family.lower()] = best["configuration"]
                entry["best_%s_ms" % family.lower()] = best["end_to_end_ms"]
                entry["saving_vs_%s" % family.lower()] = 1.0 - ladon[0]["end_to_end_ms"] / best["end_to_end_ms"]
        panels.append(entry)
    return panels


def combine(device_paths: List[str], server_path: str, rates: List[str], rtt: float,
            sizes: Optional[Dict[str, int]] = None, server_engine: Optional[str] = None) -> Dict[str, Any]:
    """Reads and checks the files, and returns the report's content: rows, headlines and the files' identities."""
    devices = [(path, load_result(path, device_bench.KIND)) for path in device_paths]
    server = load_result(server_path, server_bench.KIND)
    labels = [device_label(path) for path, _ in devices]
    if len(set(labels)) != len(labels):
        raise LadonError("two device files share the name %s: name them after their devices (nano.json, nx.json)"
                         % ", ".join(sorted(set(l for l in labels if labels.count(l) > 1))))
    check_compatible(devices, (server_path, server))
    return combine_documents(list(zip(labels, [device for _, device in devices])), server, rates, rtt, sizes,
                             server_engine)


def combine_documents(devices: List[Tuple[str, Dict[str, Any]]], server: Dict[str, Any], rates: List[str],
                      rtt: float, sizes: Optional[Dict[str, int]] = None,
                      server_engine: Optional[str] = None) -> Dict[str, Any]:
    """The report of already-checked documents: devices as (label, device file content)."""
    engine = choose_server_engine(server, server_engine)
    rows: List[Dict[str, Any]] = []
    for label, device in devices:
        rows += build_rows(label, device, server, engine, rates, rtt, sizes)
    return {"rows": rows, "headlines": headlines(rows), "rates": list(rates), "rtt_s": rtt, "server_engine": engine,
            "server": server, "devices": dict(devices), "sizes": sizes}
