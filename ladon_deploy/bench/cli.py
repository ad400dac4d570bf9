"""`ladon-bench`: the Ladon paper's comparison on this machine.

    ladon-bench --bundle demo-bundle --images DIR --rates 100kbps,37.5kbps --device cpu --out results/

Writes results.json (every raw measurement), results.csv and results.md (one row per configuration and rate), and
PNG plots: stacked end-to-end latency per configuration for each rate, local GMAC and peak local memory per
configuration. `--quick` measures one LC configuration (MobileNetV3-Large + SSDLite320 + LR-ASPP), one image and 3
repeats.
"""
import json
import os
import shutil
import sys
import warnings
from typing import List, Optional, Sequence

from ladon_deploy.atomic import make_staging_directory
from ladon_deploy.cli_support import OneLineParser, UsageError, run_command

PROG = "ladon-bench"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def build_parser() -> OneLineParser:
    parser = OneLineParser(prog=PROG, description="LC vs SC vs Ladon: latency, local GMAC, peak local memory.")
    parser.add_argument("--bundle", required=True, help="Ladon bundle directory (ladon-export)")
    parser.add_argument("--images", default=None,
                        help="directory of images (default: two generated images, 416x416 and 480x640)")
    parser.add_argument("--rates", default="100kbps,37.5kbps", help="comma-separated link rates (bps, kbps, Mbps)")
    parser.add_argument("--rtt", default="0", help="round-trip time added to every transfer, e.g. 20ms")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda (needs onnxruntime-gpu and a GPU)")
    parser.add_argument("--repeats", type=int, default=20, help="timed runs per model and image (default 20)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed runs first (default 3)")
    parser.add_argument("--threads", type=int, default=None, help="engine threads (default: one per core)")
    parser.add_argument("--sizes", default=None,
                        help='JSON file of payload bytes: {"ladon": N, "sc_cls": N, "sc_det": N, "sc_seg": N}')
    parser.add_argument("--quick", action="store_true",
                        help="one LC configuration, one image, 3 repeats, 1 warm-up (a couple of minutes)")
    parser.add_argument("--cache", default=None, help="where exported LC models are kept (default OUT/models)")
    parser.add_argument("--out", required=True, help="results directory")
    return parser


def read_sizes(path: str) -> dict:
    try:
        with open(path) as handle:
            sizes = json.load(handle)
    except (OSError, ValueError) as exc:
        raise UsageError("cannot read --sizes %s: %s" % (path, exc))
    missing = [k for k in ("ladon", "sc_cls", "sc_det", "sc_seg") if not isinstance(sizes.get(k), int)]
    if missing:
        raise UsageError("--sizes %s lacks integer byte counts for %s" % (path, ", ".join(missing)))
    return sizes


def find_images(directory: str) -> List[str]:
    if not os.path.isdir(directory):
        raise UsageError("--images %s is not a directory" % directory)
    images = sorted(os.path.join(directory, name) for name in os.listdir(directory)
                    if name.lower().endswith(IMAGE_SUFFIXES))
    if not images:
        raise UsageError("--images %s holds no image (%s)" % (directory, ", ".join(IMAGE_SUFFIXES)))
    return images


def generated_images(directory: str) -> List[str]:
    from ladon_deploy.bench.runtime_bench import make_bench_image

    os.makedirs(directory, exist_ok=True)
    return [make_bench_image(os.path.join(directory, "generated-416x416.png"), 416, seed=1),
            make_bench_image(os.path.join(directory, "generated-480x640.png"), 480, seed=2, width=640)]


class ProgressBar(object):
    """A tqdm bar over the measurement steps, labelled with what runs now; one line per step when not on a terminal
    (CI logs), where a redrawn bar would only pile up carriage returns."""

    def __init__(self, total: int) -> None:
        from tqdm import tqdm

        self.total = total
        self.done = 0
        self.interactive = sys.stderr.isatty()
        self.bar = tqdm(total=total, file=sys.stderr, unit="step", dynamic_ncols=True, leave=True,
                        disable=not self.interactive)
        self.running = False

    def __call__(self, message: str) -> None:
        # A step is counted when the next one starts, so the bar shows what runs now and what is finished.
        if self.running:
            self.bar.update(1)
            self.done += 1
        self.running = True
        self.bar.set_description(message[:60])
        if not self.interactive:
            sys.stderr.write("[ladon-bench %d/%d] %s\n" % (self.done + 1, self.total, message))
            sys.stderr.flush()

    def close(self) -> None:
        if self.running:
            self.bar.update(1)
        self.bar.close()


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    from ladon_deploy.device import link

    rates = [r.strip() for r in args.rates.split(",") if r.strip()]
    if not rates:
        raise UsageError("--rates needs at least one rate")
    for rate in rates:
        link.parse_rate(rate)
    rtt = link.parse_duration(args.rtt)
    if args.device not in ("cpu", "cuda"):
        raise UsageError("unknown --device %r (cpu or cuda)" % args.device)
    if args.repeats < 1 or args.warmup < 0:
        raise UsageError("--repeats must be >= 1 and --warmup >= 0")
    if args.device == "cuda":
        from ladon_deploy.engines.ort_runner import available_providers

        if "CUDAExecutionProvider" not in available_providers():
            raise UsageError("--device cuda: this onnxruntime has no CUDA execution provider (install onnxruntime-gpu "
                             "on a machine with an NVIDIA GPU)")
    from ladon_deploy.bundle import open_bundle

    open_bundle(args.bundle)
    sizes = read_sizes(args.sizes) if args.sizes else None
    out_dir = os.path.abspath(args.out)
    os.makedirs(out_dir, exist_ok=True)
    images = find_images(args.images) if args.images else generated_images(os.path.join(out_dir, "images"))
    repeats, warmup = args.repeats, args.warmup
    if args.quick:
        images, repeats, warmup = images[:1], min(repeats, 3), min(warmup, 1)

    if not os.environ.get("LADON_DEBUG"):
        warnings.simplefilter("ignore")
    from ladon_deploy.bench import report, suite

    settings = suite.BenchSettings(args.bundle, images, rates, out_dir, device=args.device, repeats=repeats,
                                   warmup=warmup, rtt=rtt, threads=args.threads, sizes=sizes, quick=args.quick,
                                   cache_dir=args.cache)
    bar = ProgressBar(total=suite.steps_planned(settings))
    try:
        result = suite.run_suite(settings, bar)
    finally:
        bar.close()

    # Everything is written to a staging directory first, so an interrupted run never leaves half a report.
    staging = make_staging_directory(os.path.join(out_dir, "results"))
    try:
        suite.write_json(result, os.path.join(staging, "results.json"))
        written = report.write_reports(result, staging)
        for path in [os.path.join(staging, "results.json")] + written:
            os.replace(path, os.path.join(out_dir, os.path.basename(path)))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    with open(os.path.join(out_dir, "results.md")) as handle:
        print(handle.read())
    print("wrote %s (%.0f s)" % (out_dir, result["bench_seconds"]))
    return 0


def entry_point() -> None:
    sys.exit(run_command(PROG, main))


if __name__ == "__main__":
    entry_point()
