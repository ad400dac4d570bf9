"""`ladon-run`: the command that runs either half of the split, or both with a simulated link.

The device half lives in ladon_deploy.device, the server half in ladon_deploy.server; this package only composes
them. Its CLI is on the device's import path (`ladon-run mobile`), so it stays Python 3.6-clean and imports the
server half only for the commands that need it.
"""
import sys
from typing import List, Optional, Sequence


def run(argv: Sequence[str]) -> int:
    """`ladon-run ARGV` in this process, returning its exit code. For `mobile` it first leaves OpenSSL and numpy's
    unused subpackages out of the process (ladon_deploy/device/footprint.py), which works only before numpy is
    imported: this module and __main__.py import nothing of the toolkit's at the top."""
    argv = list(argv)  # type: List[str]
    if argv[:1] == ["mobile"]:
        from ladon_deploy.device.footprint import slim_device_process

        slim_device_process()
    from ladon_deploy.cli_support import run_command
    from ladon_deploy.runtime.cli import PROG, main

    return run_command(PROG, main, argv)


def entry_point(argv: Optional[Sequence[str]] = None) -> None:
    """The `ladon-run` console script."""
    sys.exit(run(sys.argv[1:] if argv is None else argv))
