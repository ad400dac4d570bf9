"""`ladon-build`: engines for a target from a bundle, or (`--check`) what would run in TensorRT there and why not.

    ladon-build --bundle B --target jetson-nano --precision fp16           # on the Nano: encoder engine, TensorRT 8.2
    ladon-build --bundle B --target xavier-nx --precision fp16 --dla 0     # on the Xavier NX, DLA core 0
    ladon-build --bundle B --target server --precision fp16                # on the CUDA server: body and heads
    ladon-build --target jetson-nano --check --bundle B [--json]           # anywhere, no TensorRT needed
    ladon-build --target jetson-nano --check --onnx model.onnx [--json]
    ladon-build --bundle B --target triton --out DIR [--backend tensorrt|onnxruntime|python] [--instances 2] \
                [--max-batch 8] [--max-queue-delay-ms 5]          # a Triton model repository of the server half

The CLI parses and validates; the check is ladon_deploy.engines.check, the build ladon_deploy.engines.build, the
Triton repository ladon_deploy.serve.repository (server side: imported only for --target triton).

Edge subset (the Nano builds its own engine on Python 3.6): Python 3.6-clean, never imports torch.
"""
import json
import os
import sys
from typing import Optional, Sequence

from ladon_deploy.cli_support import OneLineParser, UsageError, add_version_option, run_command
from ladon_deploy.engines.targets import TARGETS, get_target
from ladon_deploy.errors import BundleError, EngineError

PROG = "ladon-build"
TRITON_TARGET = "triton"
PRECISIONS = ("fp32", "fp16", "int8")
DEFAULT_CALIB_COUNT = 512


def build_parser() -> OneLineParser:
    parser = OneLineParser(prog=PROG, description="Build TensorRT engines of a Ladon bundle for one target, or check "
                                                  "(--check) which stages its TensorRT can import.")
    add_version_option(parser)
    parser.add_argument("--bundle", default=None, help="bundle directory written by ladon-export")
    parser.add_argument("--target", default=None, help="target: %s, or %s (a model repository)"
                                                         % (", ".join(TARGETS), TRITON_TARGET))
    parser.add_argument("--precision", default=None, choices=PRECISIONS,
                        help="engine precision (default: fp16 where the target has it, else fp32)")
    parser.add_argument("--dla", type=int, default=None, metavar="N",
                        help="build for DLA core N with GPU fallback (Xavier NX: 0 or 1)")
    parser.add_argument("--workspace-mb", type=int, default=None, metavar="N",
                        help="builder workspace limit in MiB (default: the builder's, sized per target)")
    parser.add_argument("--force", action="store_true", help="replace engines already built for this target")
    parser.add_argument("--trt", default=None, metavar="VERSION",
                        help="TensorRT version to check against (default: the target's)")
    parser.add_argument("--check", action="store_true",
                        help="build nothing: report which stages the target's TensorRT can import, and why not")
    parser.add_argument("--onnx", default=None, metavar="FILE", help="with --check: check this ONNX file instead of "
                                                                     "a bundle")
    parser.add_argument("--json", action="store_true", help="with --check: print one JSON document")
    parser.add_argument("--calib-images", default=None, metavar="DIR", help="INT8: calibration images")
    parser.add_argument("--calib-count", type=int, default=DEFAULT_CALIB_COUNT, metavar="N",
                        help="INT8: number of calibration images to use")
    parser.add_argument("--gate-on", default=None, metavar="EVAL.json",
                        help="build nothing: judge this target's --precision build by its own ladon-eval result "
                             "against --gate-reference (FP32); exit 2 if it loses more than --max-accuracy-loss")
    parser.add_argument("--gate-reference", default=None, metavar="EVAL.json", help="--gate-on: the FP32 result")
    parser.add_argument("--max-accuracy-loss", type=float, default=0.01, metavar="FRACTION",
                        help="--gate-on: largest loss of top-1 / mAP / mIoU allowed (0.01 = one point)")
    parser.add_argument("--accept-fidelity", action="store_true",
                        help="INT8: keep an engine that misses the fidelity gate (recorded in its sidecar)")
    triton = parser.add_argument_group("--target triton")
    triton.add_argument("--out", default=None, metavar="DIR", help="the model repository to write")
    triton.add_argument("--backend", default="onnxruntime", choices=("tensorrt", "onnxruntime", "python"),
                        help="what runs the body and heads: TensorRT plans (from --target server builds), Triton's "
                             "ONNX Runtime backend, or Python-backend models running ONNX Runtime (default: "
                             "onnxruntime)")
    triton.add_argument("--instances", type=int, default=1, metavar="N", help="instances per model (default: 1)")
    triton.add_argument("--instance-kind", default=None, choices=("gpu", "cpu"),
                        help="instance group kind of the body and heads (default: gpu, cpu for --backend python)")
    triton.add_argument("--max-batch", type=int, default=8, metavar="N",
                        help="largest dynamic batch of the body and heads (default: 8; 1 disables batching)")
    triton.add_argument("--max-queue-delay-ms", type=float, default=5.0, metavar="MS",
                        help="how long Triton may hold a request to fill a batch (default: 5)")
    triton.add_argument("--plans-from", action="append", default=[], metavar="DIR",
                        help="--backend tensorrt: another engines/server folder, with plans built on a GPU of "
                             "another compute capability (repeatable)")
    return parser


def _triton(args) -> int:
    if args.bundle is None or args.out is None:
        raise UsageError("--target triton needs --bundle DIR and --out DIR")
    if args.check or args.onnx is not None or args.json:
        raise UsageError("--check, --onnx and --json are not for --target triton")
    from ladon_deploy.serve.repository import RepositoryOptions, write_repository

    options = RepositoryOptions(args.backend, args.instances, args.max_batch, args.max_queue_delay_ms,
                                args.instance_kind, args.precision, args.plans_from)
    for line in write_repository(args.bundle, args.out, options, force=args.force).lines():
        print(line)
    return 0


def _check(args) -> int:
    from ladon_deploy.engines.check import check_bundle, check_onnx

    if args.onnx is not None:
        if args.bundle is not None:
            raise UsageError("--check takes --bundle or --onnx, not both")
        report = check_onnx(args.onnx, args.target, args.trt)
    elif args.bundle is not None:
        report = check_bundle(args.bundle, args.target, args.trt)
    else:
        raise UsageError("--check needs --bundle DIR or --onnx FILE")
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        print(report.table())
    return 0


def _progress(line: str) -> None:
    sys.stderr.write("%s: %s\n" % (PROG, line))
    sys.stderr.flush()


def _gate(args) -> int:
    if args.gate_reference is None:
        raise UsageError("--gate-on needs --gate-reference FP32.json (ladon-eval's result of the FP32 pipeline)")
    if args.precision == "fp32":
        raise UsageError("--gate-on judges an fp16 or int8 build against FP32: give --precision fp16 or int8")
    # The composer imports the evaluation side only here: engines stay below eval for every other use.
    from ladon_deploy.eval.gate import gate_build

    print(gate_build(args.gate_on, args.gate_reference, args.max_accuracy_loss, args.precision, args.bundle))
    return 0


def _build(args) -> int:
    target = get_target(args.target)
    if args.bundle is None:
        raise UsageError("building engines needs --bundle DIR")
    if not os.path.isdir(args.bundle):
        raise BundleError("bundle directory not found: %s" % args.bundle)
    target.check_precision(args.precision)
    target.check_dla(args.dla)
    if args.calib_count < 1:
        raise UsageError("--calib-count must be at least 1")
    if args.calib_images is not None:
        if args.precision != "int8":
            raise UsageError("--calib-images is for --precision int8")
        if not os.path.isdir(args.calib_images):
            raise EngineError("calibration image directory not found: %s" % args.calib_images)
    if args.trt is not None:
        raise UsageError("--trt is for --check: a build uses the TensorRT installed here")
    try:
        from ladon_deploy.engines.build import build_engines
    except ImportError as exc:
        if "ladon_deploy.engines.build" not in str(exc) and "build_engines" not in str(exc):
            raise
        raise EngineError("this installation has no engine builder (ladon_deploy.engines.build)")
    build_engines(args.bundle, target.name, args.precision, args.dla, args.workspace_mb, args.force, _progress,
                  calib_images=args.calib_images, calib_count=args.calib_count, accept_fidelity=args.accept_fidelity)
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    known = ", ".join(list(TARGETS) + [TRITON_TARGET])
    if args.target is None:
        raise UsageError("--target is required (one of: %s)" % known)
    if args.target == TRITON_TARGET:
        args.precision = args.precision or "fp16"  # the --backend tensorrt plans it takes
        return _triton(args)
    if args.target not in TARGETS:
        raise UsageError("unknown target %r (known: %s)" % (args.target, known))
    target = get_target(args.target)
    if args.precision is None:
        args.precision = "fp16" if "fp16" in target.precisions else "fp32"
    if args.check:
        return _check(args)
    if args.onnx is not None or args.json:
        raise UsageError("--onnx and --json go with --check")
    if args.gate_on is not None:
        return _gate(args)
    return _build(args)


def entry_point() -> None:
    sys.exit(run_command(PROG, main))


if __name__ == "__main__":
    entry_point()
