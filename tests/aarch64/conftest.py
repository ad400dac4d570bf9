"""A terminal summary with its times (pytest -q shows no
prints of passing tests; the CI log must show that tests/aarch64 ran and how long the emulated device stage
took)."""
import os
import sys

import pytest

import edge_install

sys.path.insert(0, os.path.join(edge_install.ROOT, "scripts", "aarch64"))

import environment  # noqa: E402  (scripts/aarch64/environment.py)

REPORT = pytest.StashKey()


@pytest.fixture(scope="session")
def aarch64_report(request):
    """Lines for the terminal summary."""
    return request.config.stash.setdefault(REPORT, [])


def pytest_terminal_summary(terminalreporter, config):
    lines = config.stash.get(REPORT, [])
    if lines:
        terminalreporter.write_sep("-", "emulated aarch64 (QEMU -cpu %s; times are QEMU's, not a Jetson's)"
                                   % environment.CPU)
        for line in lines:
            terminalreporter.write_line(line)
