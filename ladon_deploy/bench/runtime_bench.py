"""Benchmark of the split runtime on one bundle: per-stage medians and the ratios that matter, measured in one run.

    python -m ladon_deploy.bench.runtime_bench --bundle demo-bundle --repeats 20 --threads 2

The two pipelines are interleaved: every repeat runs ours and the authors' PyTorch pipeline back to back, in an
order that alternates (ours first, then theirs first), so that whatever else loads the machine meets both alike;
each pair gives a ratio, and the table reports the median ratio with its interquartile range and its min-max next
to the ratio of medians. Both sides get the same number of threads (torch.set_num_threads and ONNX Runtime's
intra-op threads; printed). Reported:
  - per-stage medians (and p90) of the mobile and server stages, and of the PyTorch-eager pipelines;
  - the device stage (preprocess, encoder, quantize, rANS, framing; ONNX Runtime + numpy) against the authors'
    mobile pipeline (torchvision transform + PyTorch eager encoder + EntropyBottleneck.compress), and the encoder
    alone against the PyTorch eager encoder;
  - the server stage (rANS decode, body once, three heads) against the authors' PyTorch pipeline in eager mode: the
    unsplit model's EntropyBottleneck.decompress, bottleneck decoder + ResNet layers, and the three heads;
  - entropy encode + decode against the encoder; end-to-end against the sum of its stages (the glue's overhead);
  - peak RSS of `ladon-run mobile` (a separate process, measured by the OS; bench/memory.py) against a process that
    imports torch and compressai.
PyTorch-eager numbers use a randomly initialised model of the same architecture: time does not depend on weights
(detection's box count does: both sides keep torchvision's thresholds, and the eager heads see random weights).
"""
import argparse
import os
import statistics
import sys
import tempfile
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from ladon_deploy.bench.device_bench import make_bench_image
from ladon_deploy.bench.memory import device_peak, measure, payload_symbols, python_command
from ladon_deploy.device.client import percentile


TORCH_AND_COMPRESSAI = "import torch, compressai; print(torch.__version__)"

Timings = Dict[str, float]


def pin_torch_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass  # only settable before torch's first parallel work; intra-op threads are what the encoder uses


class TorchEagerMobile:
    """The same mobile stage in PyTorch eager: torchvision transform, sc2bench encoder, EntropyBottleneck.compress."""

    def __init__(self, bundle, image_path: str) -> None:
        from torchvision.models.detection.transform import GeneralizedRCNNTransform

        from ladon_deploy.models.ladon import build_bottleneck

        settings = bundle.preprocessing
        size = int(settings["input_size"])
        self.image_path = image_path
        self.transform = GeneralizedRCNNTransform(size, size, list(settings["mean"]), list(settings["std"])).eval()
        self.bottleneck = build_bottleneck(int(bundle.manifest["bottleneck_channels"])).eval()
        self.bottleneck.update(force=True)

    def run(self) -> Timings:
        import torch
        from PIL import Image
        from torchvision.transforms.functional import to_tensor

        with torch.no_grad():
            started = time.perf_counter()
            image = to_tensor(Image.open(self.image_path).convert("RGB"))
            tensor = self.transform([image])[0].tensors
            preprocessed = time.perf_counter()
            latent = self.bottleneck.encoder(tensor)
            encoded = time.perf_counter()
            self.bottleneck.entropy_bottleneck.compress(latent)
            done = time.perf_counter()
        return {"preprocess": preprocessed - started, "encoder": encoded - preprocessed, "compress": done - encoded,
                "total": done - started}


class TorchEagerServer:
    """The server half in PyTorch eager, as the authors ran the unsplit model: decompress, body, the three heads."""

    def __init__(self, bundle, image_path: str) -> None:
        import torch
        from PIL import Image
        from torchvision.models.detection.transform import GeneralizedRCNNTransform
        from torchvision.transforms.functional import to_tensor

        from ladon_deploy.models.ladon import LadonModel

        torch.manual_seed(0)
        settings = bundle.preprocessing
        size = int(settings["input_size"])
        self.model = LadonModel(bundle.manifest["architecture"], tuple(bundle.tasks)).eval()
        self.model.update_entropy_tables(force=True)
        transform = GeneralizedRCNNTransform(size, size, list(settings["mean"]), list(settings["std"])).eval()
        with torch.no_grad():
            self.images = transform([to_tensor(Image.open(image_path).convert("RGB"))])[0]
            self.padded = tuple(int(d) for d in self.images.tensors.shape[-2:])
            latent = self.model.encode(self.images.tensors)
            self.compressed = self.model.entropy_bottleneck.compress(latent)
            self.latent_shape = latent.shape[-2:]

    def run(self) -> Timings:
        import torch

        model = self.model
        with torch.no_grad():
            started = time.perf_counter()
            latent_hat = model.entropy_bottleneck.decompress(self.compressed, self.latent_shape)
            decoded = time.perf_counter()
            features = model.body(latent_hat)
            bodied = time.perf_counter()
            if "cls" in model.tasks:
                model.classify(features["4"])
            if "det" in model.tasks:
                model.detection(features, self.padded, self.images.image_sizes)
            if "seg" in model.tasks:
                model.segmentation(features["4"], self.padded)
            done = time.perf_counter()
        return {"entropy_decode": decoded - started, "body": bodied - decoded, "heads": done - bodied,
                "total": done - started}


def interleave(ours: Callable[[], Timings], theirs: Callable[[], Timings], repeats: int,
               warmup: int) -> Tuple[Dict[str, List[float]], Dict[str, List[float]]]:
    """Runs the two pipelines in pairs, alternating which goes first; per-stage samples of each after warm-up."""
    samples: Tuple[Dict[str, List[float]], Dict[str, List[float]]] = ({}, {})
    for index in range(warmup + repeats):
        order = (0, 1) if index % 2 == 0 else (1, 0)
        for side in order:
            timings = (ours, theirs)[side]()
            if index >= warmup:
                for name, seconds in timings.items():
                    samples[side].setdefault(name, []).append(seconds)
    return samples


def profile_encoder(path: str, threads: int, image, repeats: int) -> List[Tuple[str, str, float]]:
    """ONNX Runtime's profiler on the encoder alone: (op type, node, median ms) per node, slowest first."""
    import json

    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.enable_mem_pattern = False  # as the toolkit's runner sets them (engines/ort_runner.py)
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.enable_profiling = True
    options.profile_file_prefix = os.path.join(tempfile.mkdtemp(prefix="ladon-profile-"), "encoder")
    session = onnxruntime.InferenceSession(path, sess_options=options, providers=["CPUExecutionProvider"])
    for _ in range(repeats):
        session.run(None, {"image": image})
    with open(session.end_profiling()) as handle:
        events = json.load(handle)
    durations: Dict[Tuple[str, str], List[float]] = {}
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            key = (event["args"].get("op_name", "?"), event["name"][:-len("_kernel_time")])
            durations.setdefault(key, []).append(event["dur"] / 1e3)
    rows = [(op, node, statistics.median(values)) for (op, node), values in durations.items()]
    return sorted(rows, key=lambda row: -row[2])


def ratio_spread(numerator: Sequence[float], denominator: Sequence[float]) -> Dict[str, float]:
    """Median, quartiles and extremes of the per-pair ratios, and the ratio of the medians."""
    ratios = sorted(a / b for a, b in zip(numerator, denominator))
    return {"median_of_medians": statistics.median(numerator) / statistics.median(denominator),
            "median": statistics.median(ratios), "q1": percentile(ratios, 25), "q3": percentile(ratios, 75),
            "min": ratios[0], "max": ratios[-1]}


def run(bundle_dir: Optional[str], repeats: int, warmup: int, threads: int, image: Optional[str],
        band_rows: Optional[int] = None, precision: Optional[str] = None,
        device_only: bool = False, profile: bool = False) -> int:
    from ladon_deploy.bundle import open_bundle
    from ladon_deploy.device.stage import DeviceStage
    from ladon_deploy.server.stage import ServerStage

    workdir = tempfile.mkdtemp(prefix="ladon-bench-")
    if bundle_dir is None:
        from ladon_deploy.export.pipeline import export_bundle
        from ladon_deploy.models.ladon import build_demo_model

        bundle_dir = os.path.join(workdir, "demo-bundle")
        print("exporting the demo bundle to %s ..." % bundle_dir, file=sys.stderr)
        export_bundle(build_demo_model(), bundle_dir)
    size = 416
    bundle = open_bundle(bundle_dir)
    image = image or make_bench_image(os.path.join(workdir, "bench-%d.png" % size), size)
    pin_torch_threads(threads)
    mobile = DeviceStage(bundle, threads=threads, band_rows=band_rows, precision=precision)
    server = None if device_only else ServerStage(bundle, threads=threads, precision=precision)
    tasks = tuple(bundle.tasks)
    sent = mobile.run(image, tasks)

    def ours_mobile() -> Timings:
        result = mobile.run(image, tasks)
        timings = dict(result.timings)
        timings["total"] = sum(result.timings.values())
        return timings

    def ours_server() -> Timings:
        result = server.run(sent.payload)
        timings = dict(result.timings)
        timings["total"] = sum(result.timings.values())
        return timings

    mobile_samples, eager_mobile = interleave(ours_mobile, TorchEagerMobile(bundle, image).run, repeats, warmup)
    server_samples, eager_server = ({}, {}) if device_only else interleave(
        ours_server, TorchEagerServer(bundle, image).run, repeats, warmup)
    samples: Dict[str, List[float]] = {}
    for prefix, group in (("mobile/", mobile_samples), ("server/", server_samples),
                          ("torch eager mobile/", eager_mobile), ("torch eager server/", eager_server)):
        for name, values in group.items():
            samples[prefix + name] = values

    for _ in range(0 if device_only else repeats):  # the glue between the stages: ours alone, against our own numbers
        started = time.perf_counter()
        device = mobile.run(image, tasks)
        split = server.run(device.payload)
        samples.setdefault("end_to_end (wall)", []).append(time.perf_counter() - started)
        samples.setdefault("sum of stages", []).append(sum(device.timings.values()) + sum(split.timings.values()))

    try:  # the device process as bench/memory.py measures it: `ladon-run mobile`, torch unimportable
        mobile_peak_bytes = device_peak(bundle_dir, image, ["--threads", str(threads)])["peak_rss_bytes"]
    except RuntimeError as exc:
        print(exc, file=sys.stderr)
        return 1
    torch_peak = measure(python_command(TORCH_AND_COMPRESSAI))

    median = {name: statistics.median(values) for name, values in samples.items()}
    print("Ladon split runtime, bundle %s (%s), image %dx%d, %d interleaved pairs after %d warm-up, threads: torch %d "
          "(set_num_threads), ONNX Runtime intra-op %d, encoder %s, band rows %s, payload %d bytes" % (
              os.path.basename(os.path.abspath(bundle_dir)), bundle.bundle_id, size, size, repeats, warmup,
              threads, threads, mobile.engines["encoder"], mobile.band_rows or "0 (whole image)", len(sent.payload)))
    if precision == "int8":  # what the speed costs: the payload's symbols against the FP32 encoder's, this image
        from ladon_deploy.calibration.fidelity import symbol_agreement

        reference = DeviceStage(bundle, threads=threads, band_rows=band_rows)
        agreement = symbol_agreement(payload_symbols(mobile, sent), payload_symbols(reference,
                                                                                     reference.run(image, tasks)))
        reference.close()
        print("INT8 encoder: symbol agreement with the FP32 encoder on this image %.5f" % agreement)
    load = os.getloadavg()[0]
    cores = os.cpu_count() or 1
    print("load average %.1f on %d cores at the end%s" % (load, cores, (
        ": loaded; PyTorch's OpenMP threads spin while waiting and lose more than ONNX Runtime's (no spinning) when "
        "the cores are oversubscribed, so with more than one thread the ratios favour ONNX Runtime: prefer "
        "--threads 1 or an idle machine") if load > cores and threads > 1 else ""))
    print()
    print("| stage | median ms | p90 ms |")
    print("| --- | ---: | ---: |")
    for name, values in samples.items():
        print("| %s | %.2f | %.2f |" % (name, median[name] * 1e3, percentile(values, 90) * 1e3))
    print()
    print("| ratio, same run (ours / authors') | ratio of medians | median per-pair ratio | IQR | min-max |")
    print("| --- | ---: | ---: | --- | --- |")
    rows = [("device stage: ONNX Runtime + numpy / PyTorch eager + CompressAI", "mobile/total",
             "torch eager mobile/total"),
            ("encoder: ONNX Runtime / PyTorch eager", "mobile/encoder", "torch eager mobile/encoder"),
            ("preprocess: numpy + Pillow / torchvision", "mobile/preprocess", "torch eager mobile/preprocess"),
            ("server stage: ONNX Runtime + numpy / PyTorch eager + CompressAI", "server/total",
             "torch eager server/total"),
            ("server body: ONNX Runtime / PyTorch eager", "server/body", "torch eager server/body")]
    for label, ours, theirs in rows[:3 if device_only else None]:
        spread = ratio_spread(samples[ours], samples[theirs])
        print("| %s | %.3f | %.3f | %.3f-%.3f | %.3f-%.3f |" % (label, spread["median_of_medians"], spread["median"],
                                                             spread["q1"], spread["q3"], spread["min"],
                                                             spread["max"]))
    if not device_only:
        print_server_ratios(median, tasks)
    if profile:
        from ladon_deploy.engines.registry import int8_model

        encoder_path = int8_model(bundle, "encoder") if precision == "int8" else bundle.path("encoder")
        nodes = profile_encoder(encoder_path, threads, mobile.preprocess(image).tensor, repeats)
        total = sum(row[2] for row in nodes)
        print()
        print("| encoder node (%s, whole image, ONNX Runtime profiler) | op | median ms | share |"
              % ("INT8" if precision == "int8" else "FP32"))
        print("| --- | --- | ---: | ---: |")
        for op, node, milliseconds in nodes:
            print("| %s | %s | %.2f | %.1f%% |" % (node, op, milliseconds, 100.0 * milliseconds / total))
    print()
    print("| peak RSS (`ladon-run mobile`, FP32, default bands, one image) | value |")
    print("| --- | ---: |")
    print("| device process / a process that imports torch + compressai | %.3f (%.1f MB / %.1f MB) |" % (
        mobile_peak_bytes / torch_peak.peak_rss_bytes, mobile_peak_bytes / 1e6, torch_peak.peak_rss_mb))
    return 0


def print_server_ratios(median: Dict[str, float], tasks: Sequence[str]) -> None:
    coding = median["mobile/entropy_encode"] + median["server/entropy_decode"]
    server_heads = sum(median.get("server/head_" + task, 0.0) for task in tasks)
    print()
    print("| other ratio (medians, same run) | value |")
    print("| --- | ---: |")
    print("| server heads: ONNX Runtime / PyTorch eager | %.3f |" % (server_heads / median["torch eager server/heads"]))
    print("| entropy encode + decode / encoder | %.3f (%.2f ms / %.2f ms) |" % (
        coding / median["mobile/encoder"], coding * 1e3, median["mobile/encoder"] * 1e3))
    print("| end-to-end / sum of stages | %.4f (glue %.3f ms) |" % (
        median["end_to_end (wall)"] / median["sum of stages"],
        (median["end_to_end (wall)"] - median["sum of stages"]) * 1e3))


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", default=None, help="bundle directory (default: export the demo bundle first)")
    parser.add_argument("--image", default=None, help="image to run (default: a generated 416x416 image)")
    parser.add_argument("--repeats", type=int, default=20, help="interleaved pairs per pipeline")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="threads of both sides (default 2)")
    parser.add_argument("--band-rows", type=int, default=None,
                        help="latent rows per encoder band (default: the device stage's; 0: whole image)")
    parser.add_argument("--device-only", action="store_true",
                        help="only the device stage against the authors' mobile pipeline (no server half)")
    parser.add_argument("--profile", action="store_true",
                        help="also ONNX Runtime's profiler on the encoder (the --precision one, whole image): time "
                             "per node")
    parser.add_argument("--precision", choices=["fp32", "int8"], default=None,
                        help="int8: the bundle's INT8 models (ladon-build --target cpu --precision int8)")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    if args.threads < 1:
        parser.error("--threads must be at least 1")
    return run(args.bundle, args.repeats, args.warmup, args.threads, args.image, band_rows=args.band_rows,
               precision=args.precision, device_only=args.device_only, profile=args.profile)


if __name__ == "__main__":
    sys.exit(main())
