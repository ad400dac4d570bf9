"""ladon-serve's command line: bad options and an unusable port are one line and exit 2, before Triton starts."""
import os
import shutil
import socket
import subprocess
import sys
import tempfile

import pytest

from ladon_deploy.cli_support import run_command
from ladon_deploy.serve import cli


def _one_line(argv, capsys, pattern):
    code = run_command(cli.PROG, cli.main, argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("ladon-serve: error"), err
    assert pattern in lines[0], lines[0]


@pytest.mark.parametrize("extra,pattern", [
    (["--max-batch", "0"], "--max-batch must be at least 1"),
    (["--port", "70000"], "--port must be a TCP port"),
    (["--engine", "torch"], "unknown --engine 'torch'"),
    (["--max-request-bytes", "10"], "--max-request-bytes must be at least 1024"),
    (["--idle-timeout-s", "0"], "must be positive"),
    (["--max-queue-delay-ms", "-1"], "must not be negative"),
])
def test_bad_options(extra, pattern, capsys, tmp_path):
    _one_line(["--bundle", str(tmp_path)] + extra, capsys, pattern)


def test_missing_bundle_and_busy_port(demo_bundle, capsys, tmp_path):
    _one_line(["--bundle", str(tmp_path / "nowhere")], capsys, "nowhere")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        _one_line(["--bundle", demo_bundle, "--port", str(port)], capsys, "cannot listen on 127.0.0.1:%d" % port)


def test_stale_work_directories_of_killed_servers_are_removed():
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    made = {}
    for name, owner in (("dead", dead.pid), ("alive", os.getpid()), ("unowned", None)):
        path = tempfile.mkdtemp(prefix=cli.WORKDIR_PREFIX)
        if owner is not None:
            with open(os.path.join(path, cli.OWNER_FILE), "w") as handle:
                handle.write(str(owner))
        made[name] = path
    try:
        cli.remove_stale_workdirs()
        assert not os.path.exists(made["dead"])
        assert os.path.isdir(made["alive"]) and os.path.isdir(made["unowned"])
    finally:
        for path in made.values():
            shutil.rmtree(path, ignore_errors=True)
