"""What every ladon-* command shares: one-line errors, exit codes, step timing tables.

On the edge import path (ladon-run mobile runs on the device): Python 3.6-clean, standard library only.
"""
import argparse
import os
import sys
import time
import traceback
from typing import Callable, List, Optional, Sequence, Tuple

from ladon_deploy.errors import LadonError

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class UsageError(LadonError):
    """A command line that cannot be run as given."""


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default in --help, except where there is none to show (None, False, an empty list) or
    the help text already says it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        help_text = action.help or ""
        nothing_to_show = action.default is None or action.default is False or action.default == [] \
            or action.default == argparse.SUPPRESS
        if nothing_to_show or "default" in help_text:
            return help_text
        return super(DefaultsHelpFormatter, self)._get_help_string(action)


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad command line as one line (through UsageError) instead of usage + message,
    and shows defaults in --help."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", DefaultsHelpFormatter)
        super(OneLineParser, self).__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(message)


def run_command(prog: str, main: Callable[[Optional[Sequence[str]]], int],
                argv: Optional[Sequence[str]] = None) -> int:
    """Runs a command's main, turning every failure into one line on stderr and an exit code.

    LadonError (bad input) -> 2; KeyboardInterrupt -> 130; anything else is a bug -> 1 (LADON_DEBUG=1 shows it).
    """
    try:
        return int(main(argv) or EXIT_OK)
    except SystemExit as exc:  # --help and --version end parsing this way, with nothing more to report
        return exc.code if isinstance(exc.code, int) else EXIT_OK
    except LadonError as exc:
        sys.stderr.write("%s: error: %s\n" % (prog, str(exc).splitlines()[0] if str(exc) else type(exc).__name__))
        return EXIT_USAGE
    except BrokenPipeError:
        # The reader went away (`| head`); nothing more can be printed and there is nothing to report.
        sys.stderr.close()
        return EXIT_OK
    except KeyboardInterrupt:
        sys.stderr.write("%s: interrupted\n" % prog)
        return EXIT_INTERRUPTED
    except Exception as exc:
        if os.environ.get("LADON_DEBUG"):
            traceback.print_exc()
        first_line = str(exc).splitlines()[0] if str(exc) else ""
        sys.stderr.write("%s: internal error: %s: %s (set LADON_DEBUG=1 for the traceback)\n"
                         % (prog, type(exc).__name__, first_line))
        return EXIT_INTERNAL


class StepTimer(object):
    """Collects named wall-clock durations and renders them as a table."""

    def __init__(self) -> None:
        self.steps = []  # type: List[Tuple[str, float]]

    def add(self, name: str, seconds: float) -> None:
        self.steps.append((name, seconds))

    def measure(self, name: str):
        timer = self

        class _Measure(object):
            def __enter__(self):
                self.started = time.perf_counter()
                return self

            def __exit__(self, *_exc_info):
                timer.add(name, time.perf_counter() - self.started)

        return _Measure()

    def table(self, unit: str = "s") -> str:
        scale = 1000.0 if unit == "ms" else 1.0
        width = max([len(name) for name, _ in self.steps] + [5])
        lines = ["%-*s  %10s" % (width, "step", unit)]
        for name, seconds in self.steps:
            lines.append("%-*s  %10.3f" % (width, name, seconds * scale))
        lines.append("%-*s  %10.3f" % (width, "total", sum(s for _, s in self.steps) * scale))
        return "\n".join(lines)


def add_version_option(parser: argparse.ArgumentParser) -> None:
    """`--version`: prints `<command> <toolkit version>` and exits 0, the same for every ladon-* command."""
    from ladon_deploy import __version__

    parser.add_argument("--version", action="version", version="%(prog)s " + __version__)


MIN_TOKEN_BYTES = 16


def read_token(path: Optional[str], option: str = "--token-file") -> Optional[bytes]:
    """The shared token in a file (surrounding whitespace dropped), or None without a file. The server that checks
    it (`ladon-serve --token-file`) and the clients that send it (`ladon-run mobile --server`, `ladon-bench live`)
    read it here, so that a file one accepts the other accepts too."""
    if path is None:
        return None
    try:
        with open(path, "rb") as handle:
            token = handle.read(4096).strip()
    except OSError as exc:
        raise UsageError("cannot read %s %s: %s" % (option, path, exc.strerror or exc))
    if len(token) < MIN_TOKEN_BYTES:
        raise UsageError("%s %s holds %d bytes of token; use at least %d (e.g. python -c 'import secrets; "
                         "print(secrets.token_urlsafe(32))')" % (option, path, len(token), MIN_TOKEN_BYTES))
    if any(byte < 33 or byte > 126 for byte in bytearray(token)):
        raise UsageError("%s %s: a token is printable ASCII without spaces (one line)" % (option, path))
    return token
