"""`ladon-bench`: the Ladon paper's comparison, measured where each side runs.

    ladon-bench models --out lc-models/                                   # torch machine: export the LC baselines
    ladon-bench device --bundle B --models lc-models --engines cpu,tensorrt --out nano.json     # on the device
    ladon-bench server --bundle B --engines tensorrt --out laptop.json                         # on the server
    ladon-bench report --device nano.json --server laptop.json --rates 100kbps,37.5kbps --out figs/
    ladon-bench live --bundle B --images DIR --server http://laptop:8000 --rate 37.5kbps --out live.json
    ladon-bench --bundle B --out results/                                 # one machine, both sides

Engines: `cpu` (ONNX Runtime on the CPU: the paper's CUDA off), `tensorrt`, `onnxruntime-cuda`,
`onnxruntime-tensorrt` (CUDA on). `device` never imports torch (a Jetson has none): it is in the edge subset, and so
is this module's parsing; the other subcommands import their torch-side modules lazily.
"""
import json
import os
import shutil
import sys
import tempfile
import warnings
from typing import Any, Dict, List, Optional, Sequence

from ladon_deploy.cli_support import OneLineParser, UsageError, add_version_option, run_command

PROG = "ladon-bench"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
SUBCOMMANDS = ("models", "device", "server", "report", "live")
QUICK_HELP = ("one LC configuration, one image, 3 repeats, 1 warm-up (the one-machine run: about 30 s on an idle "
              "2-core CPU, plus about 30 s the first time to export its 3 LC models)")


def _measurement_options(parser: OneLineParser, engines_default: str = "cpu") -> None:
    parser.add_argument("--bundle", required=True, help="Ladon bundle directory (ladon-export)")
    parser.add_argument("--images", default=None,
                        help="directory of images (default: two generated images, 416x416 and 480x640)")
    parser.add_argument("--engines", default=engines_default,
                        help="comma-separated: cpu (CUDA off), tensorrt, onnxruntime-cuda, onnxruntime-tensorrt "
                             "(default %s)" % engines_default)
    parser.add_argument("--repeats", type=int, default=20, help="timed runs per model and image (default 20)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed runs first (default 3)")
    parser.add_argument("--threads", type=int, default=None, help="engine threads (default: one per core)")
    parser.add_argument("--quick", action="store_true", help=QUICK_HELP)


def _link_options(parser: OneLineParser) -> None:
    parser.add_argument("--links", "--rates", dest="rates", default="100kbps,37.5kbps",
                        help="comma-separated links: rates (ideal pipes: 100kbps, 37.5kbps) or link profiles "
                             "(lora-sf6-bw500, eu868-dr5, ...: `ladon-run link --list`)")
    parser.add_argument("--rtt", default="0", help="round-trip time added to every transfer, e.g. 20ms")
    parser.add_argument("--sizes", default=None,
                        help='JSON file of payload bytes: {"ladon": N, "sc_cls": N, "sc_det": N, "sc_seg": N}')


def build_parser() -> OneLineParser:
    """The one-machine command (no subcommand), as before the two-machine subcommands existed."""
    parser = OneLineParser(prog=PROG, description="LC vs SC vs Ladon on one machine: latency, local GMAC, peak local "
                                                  "memory, energy. Subcommands: %s." % ", ".join(SUBCOMMANDS))
    _measurement_options(parser)
    _link_options(parser)
    parser.add_argument("--power", default="auto", help="power source: auto, tegrastats, jtop, ina3221, none")
    parser.add_argument("--cache", default=None, help="where exported LC models are kept (default OUT/models)")
    parser.add_argument("--out", required=True, help="results directory")
    add_version_option(parser)
    return parser


def check_out_directory(path: str) -> str:
    """An output directory given with --out, refused before any work if a file holds its name; returned absolute."""
    if os.path.lexists(path) and not os.path.isdir(path):
        raise UsageError("--out %s is an existing file; results go into a directory (give another --out)" % path)
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise UsageError("--out %s: directory %s does not exist" % (path, parent))
    return os.path.abspath(path)


def build_subcommand_parser(command: str) -> OneLineParser:
    parser = OneLineParser(prog="%s %s" % (PROG, command))
    if command == "models":
        parser.description = "Export the LC baselines to ONNX (torch machine) for `ladon-bench device --models`."
        parser.add_argument("--out", required=True, help="directory of exported models (models.json + .onnx files)")
        parser.add_argument("--quick", action="store_true", help="only the --quick configuration's three models")
    elif command == "device":
        parser.description = "Measure the device side (Ladon, SC, LC) per engine; no torch needed."
        _measurement_options(parser)
        parser.add_argument("--models", required=True, help="LC models exported by `ladon-bench models`")
        parser.add_argument("--power", default="auto", help="power source: auto, tegrastats, jtop, ina3221, none")
        parser.add_argument("--no-memory", action="store_true", help="skip the per-configuration peak-memory runs")
        parser.add_argument("--out", required=True, help="device result file (JSON), e.g. nano.json")
    elif command == "server":
        parser.description = "Measure the server side (SC and Ladon) per engine."
        _measurement_options(parser)
        parser.add_argument("--out", required=True, help="server result file (JSON), e.g. laptop.json")
    elif command == "report":
        parser.description = "Combine device files and one server file into the paper's figures and tables."
        parser.add_argument("--device", action="append", required=True, help="device result file (repeat)")
        parser.add_argument("--server", required=True, help="server result file")
        parser.add_argument("--server-engine", default=None, help="server engine to combine (default: a CUDA one)")
        _link_options(parser)
        parser.add_argument("--out", required=True, help="report directory")
    elif command == "live":
        parser.description = ("End-to-end through ladon-serve with the client's link shaping, next to the analytic "
                              "figure.")
        parser.add_argument("--bundle", required=True)
        parser.add_argument("--images", default=None, help="directory of images (default: the two generated images)")
        parser.add_argument("--server", required=True, help="ladon-serve URL, e.g. http://laptop:8000")
        parser.add_argument("--rate", default="37.5kbps", help="link rate the client shapes to")
        parser.add_argument("--rtt", default="0", help="round-trip time the client adds, e.g. 20ms")
        parser.add_argument("--engine", default="cpu", help="device engine (cpu, tensorrt, ...)")
        parser.add_argument("--repeats", type=int, default=3, help="requests per image (default 3)")
        parser.add_argument("--timeout", type=float, default=120.0, help="seconds per request (default 120)")
        parser.add_argument("--token-file", default=None, metavar="FILE",
                            help="token of a server started with ladon-serve --token-file, sent as "
                                 "'Authorization: Bearer <token>'")
        parser.add_argument("--out", required=True, help="live result file (JSON)")
    return parser


def read_sizes(path: str) -> Dict[str, int]:
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


def parse_rates(text: str) -> List[str]:
    from ladon_deploy.link.profiles import get_profile

    rates = [r.strip() for r in text.split(",") if r.strip()]
    if not rates:
        raise UsageError("--links needs at least one rate or link profile")
    for rate in rates:
        get_profile(rate)
    return rates


class ProgressBar(object):
    """A tqdm bar over the measurement steps, labelled with what runs now; one line per step when not on a terminal
    (CI logs) or when tqdm is not installed (a Jetson), where a redrawn bar would only pile up carriage returns."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.done = 0
        self.running = False
        self.bar = None  # type: Any
        if sys.stderr.isatty():
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=total, file=sys.stderr, unit="step", dynamic_ncols=True, leave=True)
            except ImportError:
                self.bar = None

    def __call__(self, message: str) -> None:
        # A step is counted when the next one starts, so the bar shows what runs now and what is finished.
        if self.running:
            self.done += 1
            if self.bar is not None:
                self.bar.update(1)
        self.running = True
        if self.bar is not None:
            self.bar.set_description(message[:60])
        else:
            sys.stderr.write("[%s %d/%d] %s\n" % (PROG, self.done + 1, max(self.total, self.done + 1), message))
            sys.stderr.flush()

    def close(self) -> None:
        if self.bar is not None:
            if self.running:
                self.bar.update(1)
            self.bar.close()


def _check_counts(args: Any) -> None:
    if args.repeats < 1 or args.warmup < 0:
        raise UsageError("--repeats must be >= 1 and --warmup >= 0")


def _images_and_counts(args: Any, scratch: str):
    from ladon_deploy.bench.device_bench import generated_images

    images = find_images(args.images) if args.images else generated_images(scratch)
    repeats, warmup = args.repeats, args.warmup
    if args.quick:
        images, repeats, warmup = images[:1], min(repeats, 3), min(warmup, 1)
    return images, repeats, warmup


def _write_json(document: Dict[str, Any], path: str) -> None:
    from ladon_deploy.atomic import write_text_atomically

    write_text_atomically(path, json.dumps(document, indent=1) + "\n")


def _quiet_warnings() -> None:
    if not os.environ.get("LADON_DEBUG"):
        warnings.simplefilter("ignore")


def run_device(args: Any) -> int:
    from ladon_deploy.atomic import check_writable_file
    from ladon_deploy.bench import device_bench
    from ladon_deploy.bundle import open_bundle

    _check_counts(args)
    engines = device_bench.parse_engines(args.engines)
    open_bundle(args.bundle)
    check_writable_file(args.out)
    models = device_bench.read_models_index(args.models, args.quick)
    scratch = tempfile.mkdtemp(prefix="ladon-bench-images-")
    try:
        images, repeats, warmup = _images_and_counts(args, scratch)
        settings = device_bench.DeviceSettings(args.bundle, images, engines, args.models, repeats=repeats,
                                               warmup=warmup, threads=args.threads, quick=args.quick,
                                               measure_memory=not args.no_memory, power=args.power)
        configurations = len(device_bench.lc_configurations(models)) + 2
        bar = ProgressBar(device_bench.steps_planned(settings, len(models), configurations))
        try:
            result = device_bench.run_device_bench(settings, bar, models=models)
        finally:
            bar.close()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    _write_json(result, args.out)
    print("wrote %s (%s, engines %s, power %s, %.0f s)" % (args.out, result["identity"]["device_model"]
                                                           or result["identity"]["cpu"], ",".join(engines),
                                                           result["power_source"] or "absent",
                                                           result["bench_seconds"]))
    return 0


def run_server(args: Any) -> int:
    from ladon_deploy.atomic import check_writable_file
    from ladon_deploy.bench import device_bench, server_bench
    from ladon_deploy.bundle import open_bundle

    _check_counts(args)
    engines = device_bench.parse_engines(args.engines, with_lc=False)
    open_bundle(args.bundle)
    check_writable_file(args.out)
    _quiet_warnings()
    scratch = tempfile.mkdtemp(prefix="ladon-bench-images-")
    try:
        images, repeats, warmup = _images_and_counts(args, scratch)
        settings = server_bench.ServerSettings(args.bundle, images, engines, repeats=repeats, warmup=warmup,
                                               threads=args.threads)
        bar = ProgressBar(len(engines) * len(images))
        try:
            result = server_bench.run_server_bench(settings, bar)
        finally:
            bar.close()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    _write_json(result, args.out)
    print("wrote %s (engines %s, %.0f s)" % (args.out, ",".join(engines), result["bench_seconds"]))
    return 0


def write_report_directory(report: Dict[str, Any], out_dir: str, extra: Optional[Dict[str, Any]] = None) -> None:
    """results.json, results.csv, results.md and the figures, staged so that an interrupted run leaves nothing half."""
    from ladon_deploy.atomic import make_staging_directory
    from ladon_deploy.bench import report as report_files

    os.makedirs(out_dir, exist_ok=True)
    staging = make_staging_directory(os.path.join(out_dir, "results"))
    try:
        document = dict(report, **(extra or {}))
        with open(os.path.join(staging, "results.json"), "w") as handle:
            json.dump(document, handle, indent=1)
            handle.write("\n")
        written = report_files.write_reports(report, staging)
        for path in [os.path.join(staging, "results.json")] + written:
            os.replace(path, os.path.join(out_dir, os.path.basename(path)))
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def run_report(args: Any) -> int:
    from ladon_deploy.bench import combine
    from ladon_deploy.device import link

    rates = parse_rates(args.rates)
    rtt = link.parse_duration(args.rtt)
    sizes = read_sizes(args.sizes) if args.sizes else None
    out_dir = check_out_directory(args.out)
    report = combine.combine(args.device, args.server, rates, rtt, sizes, args.server_engine)
    _quiet_warnings()
    write_report_directory(report, out_dir)
    with open(os.path.join(args.out, "results.md")) as handle:
        print(handle.read())
    return 0


def run_models(args: Any) -> int:
    from ladon_deploy.bench import lc_models

    check_out_directory(args.out)
    _quiet_warnings()
    bar = ProgressBar(lc_models.exports_needed(args.out, args.quick))
    try:
        models = lc_models.export_models(args.out, args.quick, bar)
    finally:
        bar.close()
    print("wrote %s: %d LC models (copy this directory to the device: ladon-bench device --models DIR)"
          % (args.out, len(models)))
    return 0


def run_live(args: Any) -> int:
    from ladon_deploy.bench import live

    return live.main(args)


def run_one_machine(args: Any) -> int:
    from ladon_deploy.bench import device_bench
    from ladon_deploy.bundle import open_bundle
    from ladon_deploy.device import link

    rates = parse_rates(args.rates)
    rtt = link.parse_duration(args.rtt)
    _check_counts(args)
    engines = device_bench.parse_engines(args.engines)
    open_bundle(args.bundle)
    sizes = read_sizes(args.sizes) if args.sizes else None
    out_dir = check_out_directory(args.out)
    if args.cache:
        check_out_directory(args.cache)
    if args.images:
        find_images(args.images)  # an empty or missing folder is refused before the output directory is made
    os.makedirs(out_dir, exist_ok=True)
    images, repeats, warmup = _images_and_counts(args, os.path.join(out_dir, "images"))
    _quiet_warnings()
    from ladon_deploy.bench import suite

    settings = suite.BenchSettings(args.bundle, images, rates, args.cache or os.path.join(out_dir, "models"),
                                   engines=engines, repeats=repeats, warmup=warmup, rtt=rtt, threads=args.threads,
                                   sizes=sizes, quick=args.quick, power=args.power)
    bar = ProgressBar(total=suite.steps_planned(settings))
    try:
        report = suite.run_suite(settings, bar)
    finally:
        bar.close()
    write_report_directory(report, out_dir)
    with open(os.path.join(out_dir, "results.md")) as handle:
        print(handle.read())
    print("wrote %s (%.0f s)" % (out_dir, report["bench_seconds"]))
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in SUBCOMMANDS:
        command = argv[0]
        args = build_subcommand_parser(command).parse_args(argv[1:])
        handler = {"models": run_models, "device": run_device, "server": run_server, "report": run_report,
                   "live": run_live}[command]
        return handler(args)
    return run_one_machine(build_parser().parse_args(argv))


def entry_point() -> None:
    sys.exit(run_command(PROG, main))


if __name__ == "__main__":
    entry_point()
