"""Benchmark of the split runtime on one bundle: per-stage medians and the ratios that matter, measured in one run.

    python -m ladon_deploy.bench.runtime_bench --bundle demo-bundle --repeats 20

Prints the median (and p90) of every mobile and server stage over --repeats runs after warm-up, then:
  - the encoder through ONNX Runtime against the same encoder in PyTorch eager (and the whole mobile stage against a
    PyTorch-eager mobile stage: torchvision transform + encoder + EntropyBottleneck.compress);
  - the server stage (rANS decode, body once, three heads) against the authors' PyTorch pipeline in eager mode: the
    unsplit model's EntropyBottleneck.decompress, bottleneck decoder + ResNet layers, and the three heads;
  - entropy encode + decode against the encoder;
  - end-to-end against the sum of its stages (the glue's overhead);
  - peak RSS of a mobile-only process (a separate interpreter, measured by the OS) against a process that imports
    torch and compressai.
PyTorch-eager numbers use a randomly initialised model of the same architecture: time does not depend on weights
(detection's box count does: both sides keep torchvision's thresholds, and the eager heads see random weights).
"""
import argparse
import os
import statistics
import sys
import tempfile
import time
from typing import Dict, List, Optional, Sequence

from ladon_deploy.bench.device_bench import make_bench_image
from ladon_deploy.bench.memory import measure, python_command
from ladon_deploy.device.client import percentile

MOBILE_ONLY = """
import sys
from ladon_deploy.bundle import open_bundle
from ladon_deploy.device.stage import DeviceStage
bundle = open_bundle(sys.argv[1], verify=False)
stage = DeviceStage(bundle, threads=int(sys.argv[3]) if sys.argv[3] != '0' else None)
for _ in range(int(sys.argv[4])):
    result = stage.run(sys.argv[2], ('cls', 'det', 'seg'))
assert not any(m.split('.')[0] == 'torch' for m in sys.modules), 'torch was imported'
print(len(result.payload))
"""

TORCH_AND_COMPRESSAI = "import torch, compressai; print(torch.__version__)"


def torch_eager_mobile(bundle, image_path: str, threads: Optional[int], repeats: int,
                       warmup: int) -> Dict[str, List[float]]:
    """The same mobile stage in PyTorch eager: torchvision transform, sc2bench encoder, EntropyBottleneck.compress."""
    import torch
    from PIL import Image
    from torchvision.models.detection.transform import GeneralizedRCNNTransform
    from torchvision.transforms.functional import to_tensor

    from ladon_deploy.models.ladon import build_bottleneck

    if threads:
        torch.set_num_threads(threads)
    settings = bundle.preprocessing
    size = int(settings["input_size"])
    transform = GeneralizedRCNNTransform(size, size, list(settings["mean"]), list(settings["std"])).eval()
    bottleneck = build_bottleneck(int(bundle.manifest["bottleneck_channels"])).eval()
    bottleneck.update(force=True)
    samples: Dict[str, List[float]] = {"preprocess": [], "encoder": [], "compress": [], "total": []}
    with torch.no_grad():
        for index in range(warmup + repeats):
            started = time.perf_counter()
            image = to_tensor(Image.open(image_path).convert("RGB"))
            tensor = transform([image])[0].tensors
            preprocessed = time.perf_counter()
            latent = bottleneck.encoder(tensor)
            encoded = time.perf_counter()
            bottleneck.entropy_bottleneck.compress(latent)
            done = time.perf_counter()
            if index >= warmup:
                samples["preprocess"].append(preprocessed - started)
                samples["encoder"].append(encoded - preprocessed)
                samples["compress"].append(done - encoded)
                samples["total"].append(done - started)
    return samples


def torch_eager_server(bundle, image_path: str, threads: Optional[int], repeats: int,
                       warmup: int) -> Dict[str, List[float]]:
    """The server half in PyTorch eager, as the authors ran the unsplit model: decompress, body, the three heads."""
    import torch
    from PIL import Image
    from torchvision.models.detection.transform import GeneralizedRCNNTransform
    from torchvision.transforms.functional import to_tensor

    from ladon_deploy.models.ladon import LadonModel

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    settings = bundle.preprocessing
    size = int(settings["input_size"])
    model = LadonModel(bundle.manifest["architecture"], tuple(bundle.tasks)).eval()
    model.update_entropy_tables(force=True)
    transform = GeneralizedRCNNTransform(size, size, list(settings["mean"]), list(settings["std"])).eval()
    samples: Dict[str, List[float]] = {"entropy_decode": [], "body": [], "heads": [], "total": []}
    with torch.no_grad():
        images = transform([to_tensor(Image.open(image_path).convert("RGB"))])[0]
        padded = tuple(int(d) for d in images.tensors.shape[-2:])
        latent = model.encode(images.tensors)
        compressed = model.entropy_bottleneck.compress(latent)
        latent_shape = latent.shape[-2:]
        for index in range(warmup + repeats):
            started = time.perf_counter()
            latent_hat = model.entropy_bottleneck.decompress(compressed, latent_shape)
            decoded = time.perf_counter()
            features = model.body(latent_hat)
            bodied = time.perf_counter()
            if "cls" in model.tasks:
                model.classify(features["4"])
            if "det" in model.tasks:
                model.detection(features, padded, images.image_sizes)
            if "seg" in model.tasks:
                model.segmentation(features["4"], padded)
            done = time.perf_counter()
            if index >= warmup:
                samples["entropy_decode"].append(decoded - started)
                samples["body"].append(bodied - decoded)
                samples["heads"].append(done - bodied)
                samples["total"].append(done - started)
    return samples


def run(bundle_dir: Optional[str], repeats: int, warmup: int, threads: Optional[int], image: Optional[str],
        memory_repeats: int = 3) -> int:
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
    mobile = DeviceStage(bundle, threads=threads)
    server = ServerStage(bundle, threads=threads)
    tasks = tuple(bundle.tasks)

    samples: Dict[str, List[float]] = {}
    payload_bytes = 0
    for index in range(warmup + repeats):
        started = time.perf_counter()
        sent = mobile.run(image, tasks)
        result = server.run(sent.payload)
        wall = time.perf_counter() - started
        if index < warmup:
            continue
        payload_bytes = len(sent.payload)
        for name, seconds in sent.timings.items():
            samples.setdefault("mobile/" + name, []).append(seconds)
        for name, seconds in result.timings.items():
            samples.setdefault("server/" + name, []).append(seconds)
        samples.setdefault("mobile/total", []).append(sum(sent.timings.values()))
        samples.setdefault("server/total", []).append(sum(result.timings.values()))
        samples.setdefault("end_to_end (wall)", []).append(wall)
        samples.setdefault("sum of stages", []).append(sum(sent.timings.values()) + sum(result.timings.values()))

    eager = torch_eager_mobile(bundle, image, threads, repeats, warmup)
    for name, values in eager.items():
        samples["torch eager mobile/" + name] = values
    for name, values in torch_eager_server(bundle, image, threads, repeats, warmup).items():
        samples["torch eager server/" + name] = values

    mobile_peak = measure(python_command(MOBILE_ONLY, bundle_dir, image, str(threads or 0), str(memory_repeats)))
    if mobile_peak.returncode != 0:
        print(mobile_peak.stderr, file=sys.stderr)
        return 1
    torch_peak = measure(python_command(TORCH_AND_COMPRESSAI))

    median = {name: statistics.median(values) for name, values in samples.items()}
    print("Ladon split runtime, bundle %s (%s), image %dx%d, %d repeats after %d warm-up, threads %s, payload %d "
          "bytes" % (os.path.basename(os.path.abspath(bundle_dir)), bundle.bundle_id, size, size, repeats, warmup,
                     threads or "default", payload_bytes))
    print()
    print("| stage | median ms | p90 ms |")
    print("| --- | ---: | ---: |")
    for name, values in samples.items():
        print("| %s | %.2f | %.2f |" % (name, median[name] * 1e3, percentile(values, 90) * 1e3))
    coding = median["mobile/entropy_encode"] + median["server/entropy_decode"]
    glue = median["end_to_end (wall)"] - median["sum of stages"]
    print()
    print("| ratio (medians, same run) | value |")
    print("| --- | ---: |")
    print("| encoder: ONNX Runtime / PyTorch eager | %.3f |" % (median["mobile/encoder"] /
                                                              median["torch eager mobile/encoder"]))
    print("| mobile stage: ONNX Runtime + numpy / PyTorch eager + CompressAI | %.3f |" % (
        median["mobile/total"] / median["torch eager mobile/total"]))
    server_heads = sum(median.get("server/head_" + task, 0.0) for task in tasks)
    print("| server stage: ONNX Runtime + numpy / PyTorch eager + CompressAI | %.3f (%.1f ms / %.1f ms) |" % (
        median["server/total"] / median["torch eager server/total"], median["server/total"] * 1e3,
        median["torch eager server/total"] * 1e3))
    print("| server body: ONNX Runtime / PyTorch eager | %.3f |" % (median["server/body"] /
                                                                median["torch eager server/body"]))
    print("| server heads: ONNX Runtime / PyTorch eager | %.3f |" % (server_heads / median["torch eager server/heads"]))
    print("| entropy encode + decode / encoder | %.3f (%.2f ms / %.2f ms) |" % (
        coding / median["mobile/encoder"], coding * 1e3, median["mobile/encoder"] * 1e3))
    print("| end-to-end / sum of stages | %.4f (glue %.3f ms) |" % (
        median["end_to_end (wall)"] / median["sum of stages"], glue * 1e3))
    print("| peak RSS: mobile-only process / import torch + compressai | %.3f (%.1f MB / %.1f MB) |" % (
        mobile_peak.peak_rss_bytes / torch_peak.peak_rss_bytes, mobile_peak.peak_rss_mb, torch_peak.peak_rss_mb))
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", default=None, help="bundle directory (default: export the demo bundle first)")
    parser.add_argument("--image", default=None, help="image to run (default: a generated 416x416 image)")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    return run(args.bundle, args.repeats, args.warmup, args.threads, args.image)


if __name__ == "__main__":
    sys.exit(main())
