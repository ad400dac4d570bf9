"""The paper's comparison: LC vs SC vs Ladon, measured model by model and then combined per configuration.

Every model is measured once (per image: median and p90 over the repeats after warm-up), and configurations are
combined from those measurements:

  LC     one classifier + one detector + one segmenter run wholly on the device (4 x 3 x 2 = 24 configurations):
         device compute = the sum of the three; nothing crosses the link.
  SC     three single-task supervised-compression models (sc2bench's splittable ResNet-50 with an FP bottleneck, one
         per task), each with its own encoder and payload. Their stage graphs are the same as Ladon's (same
         bottleneck, same ResNet-50 layers, same heads), so their times come from the Ladon stages measured in the
         same run: device = 3 x (preprocess + encoder + quantize + encode), server = 3 x (decode + body) + each head,
         transfer = the three payloads.
  Ladon  one encoder, one payload, the body once, three heads.

Transfer = bytes * 8 / rate + rtt, exactly. End-to-end = device compute + entropy coding + transfer + server compute;
the glue between stages (framing, dict handling) is measured separately as wall time minus the sum of stages.
"""
import collections
import json
import os
import statistics
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

from ladon_deploy.bench import memory
from ladon_deploy.device import link

LC_FAMILY = "LC"
SC_FAMILY = "SC"
LADON_FAMILY = "Ladon"

QUICK_LC = {"classification": ["mobilenet_v3_large"], "detection": ["ssdlite320_mobilenet_v3_large"],
            "segmentation": ["lraspp_mobilenet_v3_large"]}

Progress = Callable[[str], None]


def summarize(samples: Sequence[float]) -> Dict[str, float]:
    values = np.asarray(samples, dtype=np.float64)
    return {"median_ms": float(np.median(values) * 1e3), "p90_ms": float(np.percentile(values, 90) * 1e3),
            "n": int(values.size)}


def time_call(function: Callable[[], Any], repeats: int, warmup: int) -> List[float]:
    for _ in range(warmup):
        function()
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        samples.append(time.perf_counter() - started)
    return samples


class BenchSettings(object):
    def __init__(self, bundle_dir: str, images: List[str], rates: List[str], out_dir: str, device: str = "cpu",
                 repeats: int = 20, warmup: int = 3, rtt: float = 0.0, threads: Optional[int] = None,
                 sizes: Optional[Dict[str, Any]] = None, quick: bool = False, cache_dir: Optional[str] = None) -> None:
        self.bundle_dir = bundle_dir
        self.images = images
        self.rates = rates
        self.out_dir = out_dir
        self.device = device
        self.repeats = repeats
        self.warmup = warmup
        self.rtt = rtt
        self.threads = threads
        self.sizes = sizes
        self.quick = quick
        self.cache_dir = cache_dir or os.path.join(out_dir, "models")

    @property
    def engine(self) -> str:
        return "onnxruntime-cuda" if self.device == "cuda" else "onnxruntime"


def lc_model_names(quick: bool) -> Dict[str, List[str]]:
    from ladon_deploy.models.baselines import lc_model_names as names

    if quick:
        return QUICK_LC
    return {task: names(task) for task in ("classification", "detection", "segmentation")}


def lc_model_path(settings: BenchSettings, name: str) -> str:
    from ladon_deploy.export.pipeline import OPSET

    # The same opset as the bundles, so that the LC baselines load on the same devices.
    return os.path.join(settings.cache_dir, "%s-opset%d.onnx" % (name, OPSET))


def steps_planned(settings: BenchSettings) -> int:
    """How many progress steps run_suite reports: exports still to do, one per model, image and configuration."""
    names = lc_model_names(settings.quick)
    models = [name for task_names in names.values() for name in task_names]
    exports = sum(1 for name in models if not os.path.isfile(lc_model_path(settings, name)))
    configurations = len(names["classification"]) * len(names["detection"]) * len(names["segmentation"]) + 2
    return exports + len(models) + len(settings.images) + configurations


def prepare_lc_models(settings: BenchSettings, progress: Progress) -> Dict[str, Dict[str, Any]]:
    """Exports each LC model to ONNX once (cached by name in the cache directory)."""
    from ladon_deploy.atomic import write_file_atomically
    from ladon_deploy.export.baselines import export_lc_model
    from ladon_deploy.models.baselines import LC_MODELS
    from ladon_deploy.export.pipeline import OPSET

    os.makedirs(settings.cache_dir, exist_ok=True)
    prepared = collections.OrderedDict()  # type: Dict[str, Dict[str, Any]]
    for task, names in lc_model_names(settings.quick).items():
        for name in names:
            path = lc_model_path(settings, name)
            if not os.path.isfile(path):
                progress("exporting LC model %s" % name)
                def export(temporary: str, name: str = name) -> None:
                    result = export_lc_model(name, temporary, opset=OPSET, verify=False)
                    if result["error"]:
                        raise RuntimeError("cannot export %s: %s" % (name, result["error"]))

                write_file_atomically(path, export)
            spec = LC_MODELS[name]
            prepared[name] = {"task": task, "path": path, "input_size": list(spec.input_size),
                              "description": spec.description, "weight_bytes": onnx_weight_bytes(path)}
    return prepared


def onnx_weight_bytes(path: str) -> int:
    import onnx

    model = onnx.load(path, load_external_data=False)
    return int(sum(onnx.numpy_helper.to_array(t).nbytes for t in model.graph.initializer))


def measure_lc(settings: BenchSettings, prepared: Dict[str, Dict[str, Any]], progress: Progress) -> None:
    """Adds per-image latency (preprocessing + inference) and GMAC to every prepared LC model."""
    from ladon_deploy.bench.device_process import lc_input
    from ladon_deploy.bench.gmac import count_gmac
    from ladon_deploy.engines.registry import open_runner
    from ladon_deploy.device import preprocess

    images = [np.asarray(preprocess.load_image(path)) for path in settings.images]
    for name, model in prepared.items():
        progress("measuring LC model %s" % name)
        runner = open_runner(model["path"], settings.engine, settings.threads)
        input_name = runner.input_names[0]
        shape = runner.input_shape(input_name)
        per_image = []
        for rgb in images:
            samples = time_call(lambda: runner.run({input_name: lc_input(rgb, model["task"], shape)}),
                                settings.repeats, settings.warmup)
            per_image.append(summarize(samples))
        runner.close()
        model["latency"] = per_image
        model["input_shape"] = [int(d) for d in shape]
        report = count_gmac(model["path"], {input_name: tuple(int(d) for d in shape)}, unknown_dim=150)
        model["gmac"] = report.total_gmac
        model["gmac_complete"] = report.complete


def measure_ladon(settings: BenchSettings, progress: Progress) -> Dict[str, Any]:
    """Per-image stage latencies of the bundle's mobile and server stages, payload sizes, glue and GMAC."""
    from ladon_deploy.bench.gmac import count_gmac
    from ladon_deploy.bundle import open_bundle
    from ladon_deploy.device.stage import DeviceStage
    from ladon_deploy.server.stage import ServerStage

    bundle = open_bundle(settings.bundle_dir)
    mobile = DeviceStage(bundle, engine=settings.engine, threads=settings.threads)
    server = ServerStage(bundle, engine=settings.engine, threads=settings.threads)
    tasks = tuple(bundle.tasks)
    per_image = []
    for image in settings.images:
        progress("measuring Ladon on %s" % os.path.basename(image))
        stages = collections.defaultdict(list)  # type: Dict[str, List[float]]
        walls, glue = [], []
        payload_bytes = 0
        for index in range(settings.warmup + settings.repeats):
            started = time.perf_counter()
            sent = mobile.run(image, tasks)
            result = server.run(sent.payload)
            wall = time.perf_counter() - started
            if index < settings.warmup:
                continue
            payload_bytes = len(sent.payload)
            for name, seconds in sent.timings.items():
                stages["mobile/" + name].append(seconds)
            for name, seconds in result.timings.items():
                stages["server/" + name].append(seconds)
            walls.append(wall)
            glue.append(wall - sum(sent.timings.values()) - sum(result.timings.values()))
        padded = [int(d) for d in mobile.preprocess(image).tensor.shape]
        gmac = count_gmac(bundle.path("encoder"), {"image": tuple(padded)})
        per_image.append({"image": os.path.basename(image), "input_shape": padded,
                          "payload_bytes": payload_bytes, "latent_shape": list(sent.latent_shape),
                          "stages": {name: summarize(values) for name, values in stages.items()},
                          "wall": summarize(walls), "glue": summarize(glue), "encoder_gmac": gmac.total_gmac})
    return {"bundle": os.path.abspath(settings.bundle_dir), "bundle_id": bundle.bundle_id, "tasks": list(tasks),
            "architecture": bundle.manifest["architecture"], "beta": bundle.manifest.get("beta"),
            "encoder_weight_bytes": onnx_weight_bytes(bundle.path("encoder")), "per_image": per_image}


def measure_memory(settings: BenchSettings, prepared: Dict[str, Dict[str, Any]],
                   configurations: List[Dict[str, Any]], progress: Progress) -> None:
    """Peak RSS of a separate device-only process for every configuration (first image)."""
    import sys

    image = settings.images[0]
    base = [sys.executable, "-m", "ladon_deploy.bench.device_process"]
    threads = ["--threads", str(settings.threads)] if settings.threads else []
    for config in configurations:
        progress("peak memory of %s" % config["name"])
        if config["family"] == LC_FAMILY:
            command = base + ["lc", "--image", image] + threads
            for name in config["models"]:
                command += ["--model", "%s:%s" % (prepared[name]["path"], prepared[name]["task"])]
        else:
            copies = config.get("single_task_models", 1)
            command = base + ["ladon", "--bundle", settings.bundle_dir, "--image", image, "--copies", str(copies)]
            command += threads
        peak = memory.measure(command)
        if peak.returncode != 0:
            raise RuntimeError("device process for %s failed: %s" % (config["name"], peak.stderr.strip()[-300:]))
        config["peak_rss_mb"] = peak.peak_rss_mb


def _median_over_images(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def build_configurations(prepared: Dict[str, Dict[str, Any]], ladon: Dict[str, Any], settings: BenchSettings,
                         sizes: Optional[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Combines the per-model measurements into LC, SC and Ladon configurations (compute parts, per image)."""
    configurations = []
    names = lc_model_names(settings.quick)
    for classifier in names["classification"]:
        for detector in names["detection"]:
            for segmenter in names["segmentation"]:
                models = [classifier, detector, segmenter]
                device = [sum(prepared[m]["latency"][i]["median_ms"] for m in models)
                          for i in range(len(settings.images))]
                configurations.append({
                    "name": "LC %s + %s + %s" % tuple(short_name(m) for m in models), "family": LC_FAMILY,
                    "models": models, "device_ms": device, "coding_ms": [0.0] * len(device),
                    "server_ms": [0.0] * len(device), "payload_bytes": [0] * len(device), "payload_source": "none",
                    "gmac": sum(prepared[m]["gmac"] for m in models),
                    "weight_bytes": sum(prepared[m]["weight_bytes"] for m in models)})

    def stage(image: Dict[str, Any], name: str) -> float:
        entry = image["stages"].get(name)
        return entry["median_ms"] if entry else 0.0

    mobile_compute = ("mobile/preprocess", "mobile/encoder", "mobile/quantize", "mobile/frame")
    heads = ("server/head_cls", "server/head_det", "server/head_seg")
    # SC runs one single-task model per task the bundle serves, each with its own encoder, payload and body.
    tasks = ladon["tasks"]
    single_task_models = len(tasks)
    ladon_device, ladon_coding, ladon_server, sc_device, sc_coding, sc_server = [], [], [], [], [], []
    for image in ladon["per_image"]:
        device = sum(stage(image, s) for s in mobile_compute)
        coding = stage(image, "mobile/entropy_encode") + stage(image, "server/entropy_decode")
        trunk = sum(stage(image, s) for s in ("server/unframe", "server/dequantize", "server/body"))
        head_total = sum(stage(image, s) for s in heads)
        ladon_device.append(device)
        ladon_coding.append(coding)
        ladon_server.append(trunk + head_total)
        sc_device.append(single_task_models * device)
        sc_coding.append(single_task_models * coding)
        sc_server.append(single_task_models * trunk + head_total)
    measured_bytes = [image["payload_bytes"] for image in ladon["per_image"]]
    if sizes:
        ladon_bytes = [int(sizes["ladon"])] * len(measured_bytes)
        sc_bytes = [sum(int(sizes["sc_" + task]) for task in tasks)] * len(measured_bytes)
        source = "--sizes file"
    else:
        ladon_bytes = measured_bytes
        sc_bytes = [single_task_models * b for b in measured_bytes]
        source = "measured payloads of the bundle"
    encoder_gmac = _median_over_images([image["encoder_gmac"] for image in ladon["per_image"]])
    channels = ladon["per_image"][0]["latent_shape"][0]
    trunk_name = {"resnet50": "ResNet-50", "resnest269e": "ResNeSt-269e"}.get(ladon["architecture"],
                                                                            ladon["architecture"])
    configurations.append({"name": "SC %s FP-%d x%d" % (trunk_name, channels, single_task_models),
                           "family": SC_FAMILY, "models": [],
                           "device_ms": sc_device, "coding_ms": sc_coding, "server_ms": sc_server,
                           "payload_bytes": sc_bytes, "payload_source": source, "gmac": single_task_models * encoder_gmac,
                           "weight_bytes": single_task_models * ladon["encoder_weight_bytes"],
                           "single_task_models": single_task_models})
    configurations.append({"name": "Ladon %s" % ladon["architecture"], "family": LADON_FAMILY, "models": [],
                           "device_ms": ladon_device, "coding_ms": ladon_coding, "server_ms": ladon_server,
                           "payload_bytes": ladon_bytes, "payload_source": source, "gmac": encoder_gmac,
                           "weight_bytes": ladon["encoder_weight_bytes"]})
    return configurations


def short_name(name: str) -> str:
    table = {"mnasnet0_5": "MnasNet0.5", "mnasnet1_3": "MnasNet1.3", "mobilenet_v2": "MobileNetV2",
             "mobilenet_v3_large": "MobileNetV3-L", "fasterrcnn_mobilenet_v3_large_320_fpn": "FRCNN-MBv3-320",
             "ssd300_vgg16": "SSD300-VGG16", "ssdlite320_mobilenet_v3_large": "SSDLite320-MBv3",
             "deeplabv3_mobilenet_v3_large": "DeepLabv3-MBv3", "lraspp_mobilenet_v3_large": "LRASPP-MBv3"}
    return table.get(name, name)


def rows_for_rates(configurations: List[Dict[str, Any]], rates: List[str], rtt: float) -> List[Dict[str, Any]]:
    """One row per configuration and rate: medians over images of every term, and the end-to-end sum."""
    rows = []
    for rate_text in rates:
        rate = link.parse_rate(rate_text)
        for config in configurations:
            transfer = [link.transfer_seconds(b, rate, rtt) * 1e3 if b else 0.0 for b in config["payload_bytes"]]
            end_to_end = [d + c + t + s for d, c, t, s in zip(config["device_ms"], config["coding_ms"], transfer,
                                                              config["server_ms"])]
            rows.append({"configuration": config["name"], "family": config["family"], "rate": rate_text,
                         "rate_bps": rate, "payload_bytes": _median_over_images(config["payload_bytes"]),
                         "payload_source": config["payload_source"],
                         "device_ms": _median_over_images(config["device_ms"]),
                         "coding_ms": _median_over_images(config["coding_ms"]),
                         "transfer_ms": _median_over_images(transfer),
                         "server_ms": _median_over_images(config["server_ms"]),
                         "end_to_end_ms": _median_over_images(end_to_end),
                         "local_gmac": config["gmac"], "peak_local_memory_mb": config.get("peak_rss_mb"),
                         "local_weight_mb": config["weight_bytes"] / 1e6})
    return rows


def run_suite(settings: BenchSettings, progress: Progress) -> Dict[str, Any]:
    started = time.perf_counter()
    prepared = prepare_lc_models(settings, progress)
    measure_lc(settings, prepared, progress)
    ladon = measure_ladon(settings, progress)
    configurations = build_configurations(prepared, ladon, settings, settings.sizes)
    measure_memory(settings, prepared, configurations, progress)
    rows = rows_for_rates(configurations, settings.rates, settings.rtt)
    runner = {"engine": settings.engine, "precision": "fp32", "device": settings.device}
    for row in rows:
        row.update(runner)
    glue = [image["glue"]["median_ms"] for image in ladon["per_image"]]
    import onnxruntime
    import platform

    return {
        "settings": {"bundle": settings.bundle_dir, "images": settings.images, "rates": settings.rates,
                     "rtt_s": settings.rtt, "repeats": settings.repeats, "warmup": settings.warmup,
                     "device": settings.device, "threads": settings.threads, "quick": settings.quick},
        "machine": {"platform": platform.platform(), "processor": cpu_model() or platform.machine(),
                    "cpu_count": os.cpu_count(), "python": platform.python_version(),
                    "onnxruntime": onnxruntime.__version__},
        "runner": runner,
        "lc_models": prepared, "ladon": ladon, "configurations": configurations, "rows": rows,
        "glue_ms": {"median_over_images": _median_over_images(glue), "per_image": glue},
        "bench_seconds": time.perf_counter() - started,
    }


def cpu_model() -> Optional[str]:
    """The CPU's marketing name from /proc/cpuinfo (Linux), so reports say which machine produced them."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.lower().startswith(("model name", "hardware")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def write_json(result: Dict[str, Any], path: str) -> None:
    with open(path, "w") as handle:
        json.dump(result, handle, indent=1)
        handle.write("\n")
