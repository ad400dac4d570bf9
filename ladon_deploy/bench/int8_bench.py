"""Benchmark: FP32 against INT8 per stage on ONNX Runtime's CPU provider, measured in one run, plus the fidelity figures.

    python -m ladon_deploy.bench.int8_bench [--bundle B] [--calib-images DIR] [--calib-count 12] [--runs 20]

Without --bundle it exports the demo bundle (random weights) into a temporary directory; without --calib-images it
calibrates on the photographs scikit-image and matplotlib ship. It builds the cpu INT8 models (ladon_deploy.calibration,
accepting the fidelity verdict so that speed can be measured whatever it says; the verdict is printed), then times
every stage FP32 and INT8 on the same held-out image, alternating the two, medians of --runs after warm-up.
--forms also quantizes the encoder in every form onnxruntime.quantization offers on the same calibration ranges and
times them, which is how the cpu form (QOperator) was chosen.
"""
import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from typing import Any, Callable, Dict, List, Optional

import numpy as np

from ladon_deploy.bundle import open_bundle
from ladon_deploy.calibration import fidelity, int8
from ladon_deploy.calibration.data import preprocess_image, split_images
from ladon_deploy.device.entropy import EntropyCoder
from ladon_deploy.engines.ort_runner import OnnxRuntimeRunner


def alternate(first: Callable[[], Any], second: Callable[[], Any], runs: int, warmup: int = 2) -> List[float]:
    """Medians (ms) of two callables timed alternately, so that machine load shifts both alike."""
    for _ in range(warmup):
        first()
        second()
    a, b = [], []
    for _ in range(runs):
        started = time.perf_counter()
        first()
        a.append(time.perf_counter() - started)
        started = time.perf_counter()
        second()
        b.append(time.perf_counter() - started)
    return [statistics.median(a) * 1000.0, statistics.median(b) * 1000.0]


def stage_inputs(bundle_dir: str, image_path: str, threads: Optional[int]) -> Dict[str, Dict[str, np.ndarray]]:
    bundle = open_bundle(bundle_dir, verify=False)
    chain = int8.Fp32Chain(bundle, [s for s in int8.STAGE_OP_TYPES if s in bundle.manifest["stages"]], threads)
    try:
        image = preprocess_image(bundle, image_path)
        latent_hat = chain.coder.dequantize(chain.coder.quantize(chain.encode(image.tensor)))
        features = chain.runners["body"].run({"latent_hat": latent_hat})
        return {stage: int8.stage_feeds(stage, image, latent_hat, features) for stage in chain.runners}
    finally:
        chain.close()


def time_stages(bundle_dir: str, image_path: str, runs: int, threads: Optional[int]) -> List[Dict[str, Any]]:
    bundle = open_bundle(bundle_dir, verify=False)
    rows = []
    for stage, feeds in stage_inputs(bundle_dir, image_path, threads).items():
        fp32 = OnnxRuntimeRunner(bundle.path(stage), threads=threads)
        quantized = OnnxRuntimeRunner(bundle.engine_path("cpu", stage, "int8", "onnx"), threads=threads,
                                      quantized=True)
        fp32_ms, int8_ms = alternate(lambda: fp32.run(feeds), lambda: quantized.run(feeds), runs)
        rows.append({"stage": stage, "fp32_ms": fp32_ms, "int8_ms": int8_ms, "ratio": int8_ms / fp32_ms})
        fp32.close()
        quantized.close()
    return rows


FORM_VARIANTS = {
    # name: (Form, GDN kept FP32)
    "QOperator u8/s8 (cpu form)": (int8.CPU_FORM, False),
    "QOperator u8/s8, GDN fp32": (int8.CPU_FORM, True),
    "QDQ u8/s8 asymmetric": (int8.Form("qdq-u8", "QDQ uint8", "onnx", "QDQ", "QUInt8", False, "measure"), False),
    "QDQ s8 symmetric (TensorRT form)": (int8.TENSORRT_FORM, True),
}


def compare_forms(bundle_dir: str, images: List[str], held_out: str, runs: int, threads: Optional[int]
                  ) -> List[Dict[str, Any]]:
    """The encoder in each form, all from one set of calibration ranges, timed alternately against FP32."""
    import onnx

    bundle = open_bundle(bundle_dir, verify=False)
    chain = int8.Fp32Chain(bundle, ["encoder"], threads)
    coder = EntropyCoder.from_tables(bundle.load_entropy_tables())
    image = preprocess_image(bundle, held_out)
    feeds = {"image": image.tensor}
    reference = coder.quantize(chain.encode(image.tensor))
    rows = []
    with tempfile.TemporaryDirectory(prefix="int8-forms-") as work:
        prepared = os.path.join(work, "encoder.prepared.onnx")
        int8.preprocess_model(bundle.path("encoder"), prepared, "encoder")
        ranges = int8.calibrate_ranges(prepared, "encoder",
                                       int8.calibration_feeds(chain, "encoder", bundle, images, lambda m: None), work)
        blocks = [n for block in int8.gdn_blocks(onnx.load(prepared)) for n in block]
        fp32 = OnnxRuntimeRunner(bundle.path("encoder"), threads=threads)
        for name, (form, keep_gdn) in FORM_VARIANTS.items():
            path = os.path.join(work, "encoder.%d.onnx" % len(rows))
            feeds_again = None if ranges else int8.calibration_feeds(chain, "encoder", bundle, images, lambda m: None)
            int8.quantize_stage(prepared, path, form, "encoder", feeds_again, blocks if keep_gdn else [], ranges)
            runner = OnnxRuntimeRunner(path, threads=threads)
            fp32_ms, int8_ms = alternate(lambda: fp32.run(feeds), lambda: runner.run(feeds), runs)
            agreement = fidelity.symbol_agreement(coder.quantize(runner.run(feeds)["latent"]), reference)
            rows.append({"form": name, "fp32_ms": fp32_ms, "int8_ms": int8_ms, "ratio": int8_ms / fp32_ms,
                         "symbol_agreement": agreement})
            runner.close()
        fp32.close()
    chain.close()
    return rows


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", default=None, help="bundle directory (default: export the demo bundle)")
    parser.add_argument("--calib-images", default=None, help="calibration photographs (default: the sample photos)")
    parser.add_argument("--calib-count", type=int, default=12)
    parser.add_argument("--held-out", type=int, default=4)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--forms", action="store_true", help="also compare the encoder's quantization forms")
    parser.add_argument("--reuse", action="store_true", help="time the INT8 models already in the bundle")
    args = parser.parse_args(argv)

    work = tempfile.mkdtemp(prefix="int8-bench-")
    try:
        return run(args, work)
    finally:
        # The exported demo bundle and its INT8 models (~400 MB); a --bundle keeps its own engines area.
        shutil.rmtree(work, ignore_errors=True)


def run(args: argparse.Namespace, work: str) -> int:
    bundle_dir = args.bundle
    if bundle_dir is None:
        from ladon_deploy.export.pipeline import export_bundle
        from ladon_deploy.models.ladon import build_demo_model

        bundle_dir = os.path.join(work, "demo-bundle")
        print("exporting the demo bundle (random weights) to %s" % bundle_dir, file=sys.stderr)
        export_bundle(build_demo_model(), bundle_dir)
    images = args.calib_images
    if images is None:
        from ladon_deploy.calibration.samples import copy_sample_photos

        images = os.path.join(work, "photos")
        copy_sample_photos(images)
    report_path = int8.report_paths(open_bundle(bundle_dir, verify=False), "cpu")[0]
    if args.reuse and os.path.isfile(report_path):
        import json

        report = json.load(open(report_path))
    else:
        report = int8.build_int8(bundle_dir, "cpu", images, args.calib_count, accept_fidelity=True, force=True,
                                 progress=lambda m: print(m, file=sys.stderr), held_out=args.held_out,
                                 threads=args.threads)
    split = split_images(images, args.calib_count, report["images"]["seed"], args.held_out)
    image = split.held_out[0]
    print("INT8 vs FP32 on ONNX Runtime CPU, held-out image %s, medians of %d alternating runs, threads %s"
          % (os.path.basename(image), args.runs, args.threads or "default"))
    print("%-10s %10s %10s %12s" % ("stage", "fp32 ms", "int8 ms", "int8/fp32"))
    for row in time_stages(bundle_dir, image, args.runs, args.threads):
        print("%-10s %10.2f %10.2f %12.2f" % (row["stage"], row["fp32_ms"], row["int8_ms"], row["ratio"]))
    if args.forms:
        print()
        print("encoder quantization forms (same calibration ranges), medians of %d alternating runs" % args.runs)
        print("%-34s %10s %10s %10s %10s" % ("form", "fp32 ms", "int8 ms", "int8/fp32", "symbols"))
        for row in compare_forms(bundle_dir, split.calibration, image, args.runs, args.threads):
            print("%-34s %10.2f %10.2f %10.2f %10.4f" % (row["form"], row["fp32_ms"], row["int8_ms"], row["ratio"],
                                                          row["symbol_agreement"]))
    print()
    print("fidelity (%s)" % ("random-weight demo model: how far INT8 moves untrained outputs"
                             if report.get("random_weights") else "trained weights"))
    for check in report["checks"]:
        print("  %-34s %10.4f  %s %-8g %s" % (check["metric"], check["value"], check["comparison"], check["threshold"],
                                              "ok" if check["passed"] else "FAIL"))
    print("  verdict: %s" % report["verdict"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
