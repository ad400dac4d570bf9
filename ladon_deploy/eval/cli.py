"""`ladon-eval`: task accuracy and bits per image of the deployed split pipeline; `ladon-eval report` for curves.

    ladon-eval --bundle B --imagenet val/ [--limit 5000 --seed 0] --json out.json          # top-1, top-5
    ladon-eval --bundle B --coco val2017/ --coco-annotations instances_val2017.json --json out.json   # mAP, AP50
    ladon-eval --bundle B --voc VOCdevkit/VOC2012/ --json out.json                           # mIoU
    ladon-eval ... --engine tensorrt --precision int8                                        # a deployed variant
    ladon-eval report out-b0.32.json out-b5.12.json --out figs/                              # plots, table, deltas

The CLI parses and delegates: datasets.py, run.py and report.py do the work.
"""
import os
import sys
from typing import Optional, Sequence

from ladon_deploy.atomic import check_writable_file
from ladon_deploy.cli_support import OneLineParser, UsageError, add_version_option, run_command
from ladon_deploy.engines.registry import ENGINES

PROG = "ladon-eval"
PRECISIONS = ("fp32", "fp16", "int8")


def build_parser() -> OneLineParser:
    parser = OneLineParser(prog=PROG, description="Evaluate a bundle's split pipeline, as deployed, on a dataset: "
                                                  "task accuracy and bits per image. `ladon-eval report FILES --out "
                                                  "DIR` plots results.")
    add_version_option(parser)
    parser.add_argument("--bundle", required=True, help="bundle directory written by ladon-export")
    data = parser.add_argument_group("dataset (one of)")
    data.add_argument("--imagenet", metavar="DIR|FILE", help="ImageNet val: a folder per wnid, or a text file of "
                                                             "'<file> <wnid>' lines")
    data.add_argument("--coco", metavar="DIR", help="COCO images folder (val2017/)")
    data.add_argument("--coco-annotations", metavar="JSON", help="COCO instances file for --coco")
    data.add_argument("--voc", metavar="DIR", help="VOCdevkit/VOC2012 (segmentation val split)")
    parser.add_argument("--limit", type=int, default=None, metavar="N", help="evaluate N images drawn with --seed")
    parser.add_argument("--seed", type=int, default=0, help="seed of the --limit subset")
    parser.add_argument("--engine", default="onnxruntime", help="engine: %s" % ", ".join(ENGINES))
    parser.add_argument("--precision", choices=PRECISIONS, default=None,
                        help="int8: the bundle's INT8 models on ONNX Runtime; with --engine tensorrt, which engines")
    parser.add_argument("--threads", type=int, default=None, help="engine threads (default: one per core)")
    parser.add_argument("--json", required=True, metavar="FILE",
                        help="result file (a FILE.journal next to it lets a killed run continue)")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    return parser


def build_report_parser() -> OneLineParser:
    parser = OneLineParser(prog=PROG + " report", description="Rate-accuracy plots, a table and curve differences "
                                                              "from ladon-eval result files.")
    parser.add_argument("results", nargs="+", metavar="RESULT.json")
    parser.add_argument("--out", required=True, metavar="DIR", help="folder for the figures and tables")
    return parser


def _report(argv: Sequence[str]) -> int:
    args = build_report_parser().parse_args(argv)
    from ladon_deploy.eval.report import describe, make_report

    report = make_report(args.results, args.out)
    for task, entry in report["tasks"].items():
        print("%s: %s" % (task, entry["figure"]))
        for difference in entry["differences"]:
            print("  %s against %s: %s" % (difference["curve"], difference["anchor"], describe(difference)))
    print("table: %s" % os.path.join(args.out, "table.md"))
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "report":
        return _report(argv[1:])
    args = build_parser().parse_args(argv)
    if args.engine not in ENGINES:
        raise UsageError("unknown --engine %r (known: %s)" % (args.engine, ", ".join(ENGINES)))
    if args.limit is not None and args.limit < 1:
        raise UsageError("--limit must be at least 1")
    if args.threads is not None and args.threads < 1:
        raise UsageError("--threads must be at least 1")
    if args.coco_annotations and not args.coco:
        raise UsageError("--coco-annotations goes with --coco DIR")
    check_writable_file(args.json)
    from ladon_deploy.eval import datasets, run

    dataset = datasets.open_dataset(args.imagenet, args.coco, args.coco_annotations, args.voc)
    document = run.evaluate(args.bundle, dataset, args.json, engine=args.engine, precision=args.precision,
                            threads=args.threads, limit=args.limit, seed=args.seed, progress=args.progress)
    summary = document["summary"]
    shown = ", ".join("%s %.4f" % (k, summary[k]) for k in ("top1", "top5", "map", "ap50", "miou")
                      if summary[k] is not None)
    print("%s: %d images, %s, %.1f bits/image (%.3f KB), %.4f bits/pixel%s -> %s"
          % (dataset.kind, summary["images"], shown or "no metric", summary["bits_per_image"],
             summary["kb_per_image"], summary["bits_per_pixel"],
             "; random weights" if document["bundle"]["random_weights"] else "", args.json))
    return 0


def entry_point() -> None:
    sys.exit(run_command(PROG, main))


if __name__ == "__main__":
    entry_point()
