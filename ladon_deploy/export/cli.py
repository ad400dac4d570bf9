"""`ladon-export`: checkpoint(s) -> verified bundle directory.

    ladon-export --ckpt cls.pt --ckpt det.pt --ckpt seg.pt --split bottleneck --out bundles/ladon-r50-b5.12
    ladon-export --ckpt ladon.pt --split bottleneck --out bundle        (one merged multi-task file)
    ladon-export --demo --out demo-bundle                               (seeded random Ladon ResNet-50)
"""
import os
import sys
import time
import warnings
from typing import Optional, Sequence

from ladon_deploy.atomic import check_writable_file, write_text_atomically
from ladon_deploy.cli_support import OneLineParser, StepTimer, UsageError, add_version_option, run_command

PROG = "ladon-export"


def build_parser() -> OneLineParser:
    parser = OneLineParser(prog=PROG, description="Split Ladon at the bottleneck and export a verified ONNX bundle.")
    add_version_option(parser)
    source = parser.add_argument_group("model source (one of)")
    source.add_argument("--ckpt", action="append", default=[], metavar="PATH",
                        help="checkpoint file; repeat for one file per task (torchdistill, bare state_dict or merged)")
    source.add_argument("--demo", action="store_true",
                        help="export a seeded, randomly initialised Ladon (no checkpoint needed)")
    parser.add_argument("--arch", default="resnet50", help="architecture for --demo: resnet50 or resnest269e")
    parser.add_argument("--seed", type=int, default=0, help="seed for --demo weights and the parity inputs")
    parser.add_argument("--split", default="bottleneck", help="where to split the model (only: bottleneck)")
    parser.add_argument("--out", metavar="DIR", help="bundle directory to write")
    parser.add_argument("--force", action="store_true", help="replace an existing bundle directory")
    parser.add_argument("--tasks", default=None, help="comma-separated subset of cls,det,seg (default: all present)")
    parser.add_argument("--resize", default="longer_side",
                        help="preprocessing: longer_side (Faster R-CNN transform, keeps aspect, pads to 32; default) "
                             "or square (plain resize to input-size x input-size)")
    parser.add_argument("--input-size", type=int, default=416, help="input size in pixels (default 416)")
    parser.add_argument("--threads", type=int, default=None, help="ONNX Runtime threads for the parity check")
    parser.add_argument("--save-merged", metavar="PATH", help="also write the loaded model as one merged file")
    parser.add_argument("--quiet", action="store_true", help="print only errors")
    parser.add_argument("--timings-json", metavar="PATH", help="also write the step timings (seconds) as JSON")
    return parser


def _parse_tasks(text: Optional[str]):
    if text is None:
        return None
    tasks = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [t for t in tasks if t not in ("cls", "det", "seg")]
    if unknown or not tasks:
        raise UsageError("--tasks takes a comma-separated subset of cls,det,seg (got %r)" % text)
    return tasks


def _check_outputs(args) -> None:
    """Refuses unwritable outputs before the model is built or loaded (that takes 10 s or more)."""
    if args.out:
        if os.path.exists(args.out) and not args.force:
            raise UsageError("%s already exists (pass --force to replace it)" % args.out)
        parent = os.path.dirname(os.path.abspath(args.out))
        if not os.path.isdir(parent):
            raise UsageError("cannot write %s: directory %s does not exist" % (args.out, parent))
    for path in (args.save_merged, args.timings_json):
        if path:
            check_writable_file(path)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.split != "bottleneck":
        raise UsageError("unknown --split %r: Ladon splits only at the bottleneck (--split bottleneck)" % args.split)
    if bool(args.ckpt) == bool(args.demo):
        raise UsageError("give either --ckpt PATH (one or more) or --demo")
    if not args.out and not args.save_merged:
        raise UsageError("--out DIR is required")
    if args.resize not in ("longer_side", "square"):
        raise UsageError("unknown --resize %r (choose longer_side or square)" % args.resize)
    if args.input_size <= 0 or args.input_size % 32:
        raise UsageError("--input-size must be a positive multiple of 32 (got %d)" % args.input_size)
    tasks = _parse_tasks(args.tasks)
    _check_outputs(args)

    def say(message: str) -> None:
        if not args.quiet:
            sys.stderr.write("[ladon-export] %s\n" % message)
            sys.stderr.flush()

    if not os.environ.get("LADON_DEBUG"):
        # torch, sc2bench and the ONNX exporter warn about their own deprecations on every run; nothing to act on.
        warnings.simplefilter("ignore")
    timer = StepTimer()
    # torch and the model code load only now, so that --help and bad command lines answer at once.
    with timer.measure("import torch + models"):
        from ladon_deploy.export.pipeline import export_bundle
        from ladon_deploy.models.checkpoint import LoadedLadon, load_ladon, save_merged
        from ladon_deploy.models.ladon import ARCHITECTURES, TASKS, build_demo_model

    with timer.measure("build model" if args.demo else "load checkpoints"):
        if args.demo:
            if args.arch not in ARCHITECTURES:
                raise UsageError("unknown --arch %r (choose from %s)" % (args.arch, ", ".join(ARCHITECTURES)))
            say("building a seeded random Ladon %s (seed %d)" % (args.arch, args.seed))
            model = build_demo_model(args.arch, tasks or TASKS, seed=args.seed)
            loaded = LoadedLadon(model, None, {}, True, [])
        else:
            say("loading %s" % ", ".join(args.ckpt))
            loaded = load_ladon(args.ckpt, tasks)
            if loaded.tables_computed:
                say("entropy tables were empty in the checkpoint: computed them with update()")
    say("model: %s, tasks %s, beta %s" % (loaded.arch, ",".join(loaded.tasks),
                                          "unknown" if loaded.beta is None else "%g" % loaded.beta))

    if args.save_merged:
        with timer.measure("save merged checkpoint"):
            save_merged(loaded, args.save_merged)
        say("wrote merged checkpoint %s" % args.save_merged)

    if args.out:
        started = time.perf_counter()
        manifest = export_bundle(loaded.model, args.out, beta=loaded.beta, sources=loaded.sources,
                                 resize_policy=args.resize, input_size=args.input_size, threads=args.threads,
                                 force=args.force, progress=say, seed=args.seed)
        for step, seconds in manifest["export_seconds"].items():
            timer.add(step, seconds)
        timer.add("write bundle (hash, manifest)",
                  max(0.0, time.perf_counter() - started - sum(manifest["export_seconds"].values())))
        if not args.quiet:
            sys.stderr.write(timer.table() + "\n")
            for stage, check in manifest["parity"].items():
                if check["metric"] == "rel_l2":
                    figure = "rel L2 %.2e, max abs %.2e" % (check["rel_l2"], check["max_abs"])
                else:
                    figure = "%d/%d matched, boxes %.2e px, scores %.2e" % (
                        check["matched"], check["detections_reference"], check["max_box_error_px"],
                        check["max_score_error"])
                sys.stderr.write("parity %-9s %s  ok\n" % (stage, figure))
        print(args.out)
    if args.timings_json:
        import json

        write_text_atomically(args.timings_json, json.dumps(dict(timer.steps), indent=1))
    return 0


def entry_point() -> None:
    sys.exit(run_command(PROG, main))


if __name__ == "__main__":
    entry_point()
