"""`ladon-doctor`: what runs on this machine, with parity and timings, in one JSON and a short report.

    ladon-doctor [--bundle B] [--json report.json] [--timeout 600] [--repeats 5]

Exit 0 when nothing that is installed failed (absent engines are findings, not failures), 1 when a present engine
failed to build, load or run, or missed parity, 2 for a bad command line or an unreadable bundle, 124 when a call
hung past the timeout (the JSON then holds what was measured, marked stopped). The work is
ladon_deploy.engines.doctor.

Edge subset: Python 3.6-clean, never imports torch.
"""
import sys
from typing import Optional, Sequence

from ladon_deploy.atomic import check_writable_file
from ladon_deploy.cli_support import OneLineParser, UsageError, add_version_option, run_command
from ladon_deploy.engines import doctor

PROG = "ladon-doctor"
DEFAULT_TIMEOUT = 600.0
DEFAULT_REPEATS = 5


def build_parser() -> OneLineParser:
    parser = OneLineParser(prog=PROG, description="Record this machine's stack and run every engine path it has on "
                                                  "a bundle, with parity against ONNX Runtime CPU and timings.")
    parser.add_argument("--bundle", default=None, help="bundle to run (default: the built-in tiny bundle)")
    parser.add_argument("--json", default=None, metavar="PATH", help="write the full report here (atomically)")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, metavar="SECONDS",
                        help="no step starts after this many seconds")
    parser.add_argument("--repeats", type=int, default=DEFAULT_REPEATS, metavar="N", help="timed runs per stage")
    parser.add_argument("--quiet", action="store_true", help="print only the final report")
    add_version_option(parser)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.timeout > 0:
        raise UsageError("--timeout must be a positive number of seconds")
    if args.repeats < 1:
        raise UsageError("--repeats must be at least 1")
    if args.json:
        check_writable_file(args.json)
    report = {}  # type: dict
    watchdog = doctor.start_watchdog(args.timeout + doctor.WATCHDOG_GRACE_SECONDS, args.json, report)
    try:
        progress = (lambda line: None) if args.quiet else (lambda line: sys.stderr.write("%s: %s\n" % (PROG, line)))
        doctor.run_doctor(args.bundle, args.timeout, args.repeats, progress, report)
    finally:
        watchdog.cancel()
    if args.json:
        doctor.write_report(args.json, report)
    print(doctor.render_text(report))
    if args.json:
        print("written: %s" % args.json)
    return 1 if report["summary"]["failed"] else 0


def entry_point() -> None:
    sys.exit(run_command(PROG, main))


if __name__ == "__main__":
    entry_point()
