"""`ladon-bench device`: everything the mobile device runs, measured where it runs, per engine.

For each engine (`cpu` is ONNX Runtime on the CPU, CUDA off; `tensorrt`, `onnxruntime-cuda`, `onnxruntime-tensorrt`
are CUDA on) and each image:
  - the Ladon device stage (preprocess, encoder, quantize, rANS encode, frame): median and p90 of every stage, the
    payload bytes; SC's device side is the same graph once per task (its encoders are Ladon's bottleneck), so it is
    combined from these measurements by the report;
  - every LC model (classifiers, detectors, segmenters) from an exported model directory (below): median and p90;
  - board power during each measured loop (bench/power.py), where a sensor exists;
and once per engine, the peak memory of a separate device-only process per configuration (bench/device_process.py).

The device has no torch, so the LC models are exported beforehand on a torch machine (`ladon-bench models --out
DIR`, which writes DIR/models.json: file, task, input size, weight bytes and GMAC of each model) and DIR is copied
to the device (`--models DIR`). GMAC of the Ladon encoder is read from the bundle's manifest (ladon-export records it
at every input shape the device can give the encoder); for a bundle exported before that, it is counted here when
the `onnx` package is installed and reported absent otherwise.

Edge subset: Python 3.6-clean, never imports torch.
"""
import collections
import json
import os
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

from ladon_deploy.errors import LadonError

KIND = "ladon-bench device"
SCHEMA = 1
MODELS_INDEX = "models.json"
INDEX_KEYS = ("task", "file", "gmac", "weight_bytes")
LC_TASKS = ("classification", "detection", "segmentation")
QUICK_LC = {"classification": ["mobilenet_v3_large"], "detection": ["ssdlite320_mobilenet_v3_large"],
            "segmentation": ["lraspp_mobilenet_v3_large"]}

# Bench engine name -> engine in engines/registry.py. `cpu` is the paper's "CUDA off".
ENGINE_ALIASES = {"cpu": "onnxruntime"}
CUDA_OFF_ENGINES = ("cpu", "onnxruntime")
DEVICE_COMPUTE_STAGES = ("preprocess", "encoder", "quantize", "frame")
DEVICE_CODING_STAGE = "entropy_encode"

Progress = Callable[[str], None]


def registry_engine(engine: str) -> str:
    return ENGINE_ALIASES.get(engine, engine)


def lc_engine(engine: str) -> str:
    """The engine an LC model runs on. ladon-build's TensorRT engines cover a bundle's stages only, so under
    `tensorrt` the LC models (bare ONNX files) get TensorRT through ONNX Runtime's TensorRT execution provider."""
    wanted = registry_engine(engine)
    return "onnxruntime-tensorrt" if wanted == "tensorrt" else wanted


def precision_of(engine: str) -> Optional[str]:
    """fp32 for ONNX Runtime; a TensorRT run's precision is per stage (each image's `stage_engines` names it)."""
    return None if registry_engine(engine) == "tensorrt" else "fp32"


def lc_cache_dir(models_dir: Optional[str]) -> Optional[str]:
    """Where the TensorRT execution provider keeps the LC models' engines (built once per device, then reused)."""
    return os.path.join(models_dir, "trt-cache") if models_dir else None


def is_cuda(engine: str) -> bool:
    return engine not in CUDA_OFF_ENGINES


def parse_engines(text: str, with_lc: bool = True) -> List[str]:
    """'cpu,tensorrt' -> ['cpu', 'tensorrt'], each checked to be runnable here (one line otherwise)."""
    from ladon_deploy.engines.registry import ENGINES

    engines = []  # type: List[str]
    for name in (part.strip() for part in text.split(",")):
        if not name:
            continue
        if name not in ENGINE_ALIASES and name not in ENGINES:
            raise LadonError("unknown engine %r in --engines (known: %s)"
                             % (name, ", ".join(["cpu"] + [e for e in ENGINES if e != "onnxruntime"])))
        if name not in engines:
            engines.append(name)
    if not engines:
        raise LadonError("--engines needs at least one engine (e.g. cpu,tensorrt)")
    for name in engines:
        check_engine_available(name, with_lc)
    return engines


def check_engine_available(engine: str, with_lc: bool = True) -> None:
    """One line when an engine cannot run here (nothing is loaded). with_lc: the LC models must run on it too."""
    wanted = registry_engine(engine)
    if wanted == "tensorrt":
        from ladon_deploy.engines import tensorrt_api
        from ladon_deploy.engines.registry import require_tensorrt

        require_tensorrt(tensorrt_api.this_target())
    provider = {"onnxruntime-cuda": "CUDAExecutionProvider",
                "onnxruntime-tensorrt": "TensorrtExecutionProvider"}.get(lc_engine(engine) if with_lc else wanted)
    if provider:
        from ladon_deploy.engines.ort_runner import available_providers

        if provider not in available_providers():
            raise LadonError("--engines %s: this onnxruntime has no %s%s (install an onnxruntime with it, e.g. "
                             "onnxruntime-gpu on an NVIDIA GPU, or measure cpu only)"
                             % (engine, provider, " (the LC models run on it)" if wanted == "tensorrt" else ""))


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


def make_bench_image(path: str, size: int = 416, seed: int = 0, width: Optional[int] = None) -> str:
    """A seeded photo-like test image (colour gradients plus texture) of size x size, or size x width, as PNG."""
    from PIL import Image

    height, width = size, width or size
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([xx * 255.0 / width, yy * 255.0 / height, (xx + yy) * 127.0 / (height + width) * 2], -1)
    pixels = base * 0.7 + rng.normal(0, 30, (height, width, 3))
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path)
    return path


def generated_images(directory: str) -> List[str]:
    """Two seeded images, 416x416 and 480x640 (the LC detectors' size); the same names and pixels on every machine."""
    if not os.path.isdir(directory):
        os.makedirs(directory)
    return [make_bench_image(os.path.join(directory, "generated-416x416.png"), 416, seed=1),
            make_bench_image(os.path.join(directory, "generated-480x640.png"), 480, seed=2, width=640)]


class DeviceSettings(object):
    def __init__(self, bundle_dir: str, images: List[str], engines: List[str], models_dir: Optional[str],
                 repeats: int = 20, warmup: int = 3, threads: Optional[int] = None, quick: bool = False,
                 measure_memory: bool = True, power: str = "auto") -> None:
        self.bundle_dir = bundle_dir
        self.images = images
        self.engines = engines
        self.models_dir = models_dir
        self.repeats = repeats
        self.warmup = warmup
        self.threads = threads
        self.quick = quick
        self.measure_memory = measure_memory
        self.power = power


def read_models_index(models_dir: str, quick: bool) -> Dict[str, Dict[str, Any]]:
    """The LC models to measure, from DIR/models.json (written by `ladon-bench models`): name -> entry."""
    path = os.path.join(models_dir, MODELS_INDEX)
    try:
        with open(path) as handle:
            index = json.load(handle)
    except (IOError, OSError, ValueError) as exc:
        raise LadonError("cannot read the LC model index %s (%s): export the models on a torch machine with "
                         "`ladon-bench models --out %s` and copy that directory here" % (path, exc, models_dir))
    models = index.get("models") if isinstance(index, dict) else None
    if not isinstance(models, dict) or not models:
        raise LadonError("%s lists no LC models" % path)
    wanted = [name for names in QUICK_LC.values() for name in names] if quick else list(models)
    selected = collections.OrderedDict()  # type: Dict[str, Dict[str, Any]]
    for name in wanted:
        entry = models.get(name)
        if not entry:
            raise LadonError("%s lacks the LC model %s (re-export with `ladon-bench models`)" % (path, name))
        missing = [key for key in INDEX_KEYS if key not in entry]
        if missing or entry["task"] not in LC_TASKS:
            raise LadonError("%s: the entry of %s lacks %s or names an unknown task (re-export with `ladon-bench "
                             "models`)" % (path, name, ", ".join(missing) or "nothing"))
        model_path = os.path.join(models_dir, entry["file"])
        if not os.path.isfile(model_path):
            raise LadonError("%s names %s, which is missing" % (path, model_path))
        selected[name] = dict(entry, path=model_path)
    for task in LC_TASKS:
        if not any(entry["task"] == task for entry in selected.values()):
            raise LadonError("%s has no %s model" % (path, task))
    return selected


def lc_configurations(models: Dict[str, Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Every combination of one classifier, one detector and one segmenter (4 x 3 x 2 = 24 for the full set)."""
    by_task = dict((task, [name for name, entry in models.items() if entry["task"] == task]) for task in LC_TASKS)
    configurations = []
    for classifier in by_task["classification"]:
        for detector in by_task["detection"]:
            for segmenter in by_task["segmentation"]:
                chosen = [classifier, detector, segmenter]
                configurations.append({"name": "LC %s + %s + %s" % tuple(short_name(m) for m in chosen),
                                       "family": "LC", "models": chosen})
    return configurations


def short_name(name: str) -> str:
    # Compact, so that a configuration's three names fit a figure's tick label at 9 pt.
    table = {"mnasnet0_5": "MnasNet0.5", "mnasnet1_3": "MnasNet1.3", "mobilenet_v2": "MBv2",
             "mobilenet_v3_large": "MBv3-L", "fasterrcnn_mobilenet_v3_large_320_fpn": "FRCNN-MBv3-320",
             "ssd300_vgg16": "SSD300-VGG16", "ssdlite320_mobilenet_v3_large": "SSDLite320",
             "deeplabv3_mobilenet_v3_large": "DeepLabv3", "lraspp_mobilenet_v3_large": "LRASPP"}
    return table.get(name, name)


def split_configuration_names(bundle) -> Dict[str, str]:
    """The SC and Ladon configuration names of a bundle (one SC model per task the bundle serves)."""
    trunk = {"resnet50": "ResNet-50", "resnest269e": "ResNeSt-269e"}.get(bundle.manifest["architecture"],
                                                                        bundle.manifest["architecture"])
    return {"SC": "SC %s FP-%d x%d" % (trunk, int(bundle.manifest["bottleneck_channels"]), len(bundle.tasks)),
            "Ladon": "Ladon %s" % bundle.manifest["architecture"]}


def encoder_gmac(bundle, input_shape: Sequence[int]) -> Optional[float]:
    """The encoder's GMAC at one input shape: the figure ladon-export recorded in the manifest (the same on every
    stack), else counted here where the `onnx` package is installed (a bundle exported before the record), else
    None (reported as n/a)."""
    from ladon_deploy.gmac import count_gmac, gmac_from_record

    recorded = gmac_from_record(bundle.manifest["stages"]["encoder"].get("gmac"), input_shape)
    if recorded is not None:
        return recorded
    try:
        import onnx  # noqa: F401  (count_gmac reads graphs with it)
    except ImportError:
        return None
    return float(count_gmac(bundle.path("encoder"), {"image": tuple(int(d) for d in input_shape)}).total_gmac)


def measure_ladon(bundle, engine: str, settings: DeviceSettings, monitor: Any, progress: Progress) -> List[Dict]:
    from ladon_deploy.device.stage import DeviceStage

    stage = DeviceStage(bundle, engine=registry_engine(engine), threads=settings.threads)
    tasks = tuple(bundle.tasks)
    per_image = []
    try:
        for image in settings.images:
            progress("%s: Ladon device stage on %s" % (engine, os.path.basename(image)))
            for _ in range(settings.warmup):
                stage.run(image, tasks)
            stages = collections.OrderedDict()  # type: Dict[str, List[float]]
            started = time.monotonic()
            for _ in range(settings.repeats):
                sent = stage.run(image, tasks)
                for name, seconds in sent.timings.items():
                    stages.setdefault(name, []).append(seconds)
            finished = time.monotonic()
            shape = [int(d) for d in sent.image.tensor.shape]
            per_image.append({"image": os.path.basename(image), "input_shape": shape,
                              "payload_bytes": len(sent.payload), "latent_shape": list(sent.latent_shape),
                              "stages": dict((name, summarize(values)) for name, values in stages.items()),
                              "stage_engines": dict(sent.engines),
                              "power": monitor.window(started, finished, settings.repeats)})
    finally:
        stage.close()
    return per_image


def measure_lc_model(entry: Dict[str, Any], engine: str, settings: DeviceSettings, rgb_images: List[np.ndarray],
                     monitor: Any) -> List[Dict[str, Any]]:
    from ladon_deploy.bench.device_process import lc_input
    from ladon_deploy.engines.registry import open_runner

    runner = open_runner(entry["path"], lc_engine(engine), settings.threads,
                         cache_dir=lc_cache_dir(settings.models_dir))
    try:
        input_name = runner.input_names[0]
        shape = runner.input_shape(input_name)
        per_image = []
        for rgb in rgb_images:
            feed = {input_name: lc_input(rgb, entry["task"], shape)}
            for _ in range(settings.warmup):
                runner.run(feed)
            started = time.monotonic()
            samples = time_call(lambda: runner.run(feed), settings.repeats, 0)
            finished = time.monotonic()
            record = summarize(samples)
            record["power"] = monitor.window(started, finished, settings.repeats)
            per_image.append(record)
    finally:
        runner.close()
    return per_image


def measure_peak_memory(bundle_dir: str, image: str, engine: str, threads: Optional[int],
                        models: Dict[str, Dict[str, Any]], command_models: Optional[List[str]] = None,
                        copies: int = 1, models_dir: Optional[str] = None) -> float:
    """Peak RSS (MB) of a separate process running one configuration's device side (LC models or split stages)."""
    from ladon_deploy.bench import memory

    command = [sys.executable, "-m", "ladon_deploy.bench.device_process"]
    if command_models:
        command += ["lc", "--image", image, "--engine", lc_engine(engine)]
        for name in command_models:
            command += ["--model", "%s:%s" % (models[name]["path"], models[name]["task"])]
        cache = lc_cache_dir(models_dir)
        if cache:
            command += ["--cache-dir", cache]
    else:
        command += ["ladon", "--bundle", bundle_dir, "--image", image, "--copies", str(copies),
                    "--engine", registry_engine(engine)]
    if threads:
        command += ["--threads", str(threads)]
    peak = memory.measure(command)
    if peak.returncode != 0:
        raise LadonError("device process failed (%s): %s" % (" ".join(command[3:6]),
                                                             (peak.stderr.strip().splitlines() or ["?"])[-1]))
    return peak.peak_rss_mb


def steps_planned(settings: DeviceSettings, lc_count: int, configuration_count: int) -> int:
    per_engine = len(settings.images) + lc_count + (configuration_count if settings.measure_memory else 0)
    return len(settings.engines) * per_engine


def run_device_bench(settings: DeviceSettings, progress: Optional[Progress] = None,
                     models: Optional[Dict[str, Dict[str, Any]]] = None) -> Dict[str, Any]:
    """Measures the device side for every engine; returns the device file's content (see module docstring)."""
    from ladon_deploy.bench.identity import machine_identity
    from ladon_deploy.bench.power import open_monitor
    from ladon_deploy.bundle import open_bundle
    from ladon_deploy.device import preprocess

    progress = progress or (lambda message: None)
    bench_started = time.perf_counter()
    bundle = open_bundle(settings.bundle_dir)
    if models is None:
        if not settings.models_dir:
            raise LadonError("--models DIR is needed: the LC models exported by `ladon-bench models --out DIR`")
        models = read_models_index(settings.models_dir, settings.quick)
    configurations = lc_configurations(models)
    names = split_configuration_names(bundle)
    tasks = len(bundle.tasks)
    split = [{"name": names["SC"], "family": "SC", "copies": tasks}, {"name": names["Ladon"], "family": "Ladon",
                                                                      "copies": 1}]
    identity = machine_identity()
    monitor = open_monitor(settings.power)
    rgb_images = [np.asarray(preprocess.load_image(path)) for path in settings.images]
    engines = collections.OrderedDict()  # type: Dict[str, Any]
    try:
        for engine in settings.engines:
            ladon = measure_ladon(bundle, engine, settings, monitor, progress)
            lc = collections.OrderedDict()  # type: Dict[str, Any]
            for name, entry in models.items():
                progress("%s: LC model %s" % (engine, name))
                lc[name] = measure_lc_model(entry, engine, settings, rgb_images, monitor)
            memory_mb = collections.OrderedDict()  # type: Dict[str, Optional[float]]
            if settings.measure_memory:
                for config in configurations + split:
                    progress("%s: peak memory of %s" % (engine, config["name"]))
                    memory_mb[config["name"]] = measure_peak_memory(
                        settings.bundle_dir, settings.images[0], engine, settings.threads, models,
                        command_models=config.get("models"), copies=config.get("copies", 1),
                        models_dir=settings.models_dir)
            engines[engine] = {"engine": engine, "registry_engine": registry_engine(engine),
                               "lc_engine": lc_engine(engine), "cuda": is_cuda(engine),
                               "precision": precision_of(engine), "ladon": ladon, "lc": lc, "peak_memory_mb": memory_mb}
    finally:
        monitor.stop()
    gmac = [encoder_gmac(bundle, image["input_shape"]) for image in engines[settings.engines[0]]["ladon"]]
    return {
        "kind": KIND, "schema": SCHEMA, "toolkit_version": identity["toolkit_version"],
        "bundle_id": bundle.bundle_id,
        "bundle": {"directory": os.path.abspath(settings.bundle_dir), "architecture": bundle.manifest["architecture"],
                   "tasks": list(bundle.tasks), "beta": bundle.manifest.get("beta"),
                   "bottleneck_channels": int(bundle.manifest["bottleneck_channels"])},
        "identity": identity,
        "power_source": monitor.source,
        "settings": {"images": [os.path.basename(p) for p in settings.images], "repeats": settings.repeats,
                     "warmup": settings.warmup, "threads": settings.threads, "quick": settings.quick,
                     "engines": list(settings.engines), "memory_image": os.path.basename(settings.images[0])},
        "lc_models": dict((name, dict((k, v) for k, v in entry.items() if k != "path"))
                          for name, entry in models.items()),
        "lc_configurations": configurations,
        "split_configurations": split,
        "ladon_encoder_gmac": gmac,
        "engines": engines,
        "bench_seconds": time.perf_counter() - bench_started,
    }
