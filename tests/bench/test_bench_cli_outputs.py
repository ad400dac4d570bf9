"""ladon-bench's outputs are checked before any work: an existing file where a directory goes, a missing parent, or
an --images folder with no image is one line and exit 2, and leaves nothing behind."""
import os

import pytest

from ladon_deploy.bench.cli import PROG, main
from ladon_deploy.cli_support import run_command


def _bench(argv, capsys):
    code = run_command(PROG, main, argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    return code, lines


@pytest.mark.parametrize("command", [[], ["report", "--device", "d.json", "--server", "s.json"], ["models"]])
def test_an_existing_file_as_out_is_refused_up_front(command, tmp_path, demo_bundle, capsys):
    taken = tmp_path / "results"
    taken.write_text("mine")
    argv = command + (["--bundle", demo_bundle] if not command else []) + ["--out", str(taken)]
    code, lines = _bench(argv, capsys)
    assert code == 2 and len(lines) == 1 and "is an existing file" in lines[0], lines
    assert "internal error" not in lines[0] and taken.read_text() == "mine"
    code, lines = _bench(command + (["--bundle", demo_bundle] if not command else []) +
                         ["--out", str(tmp_path / "missing" / "results")], capsys)
    assert code == 2 and len(lines) == 1 and "does not exist" in lines[0], lines


def test_an_empty_images_folder_leaves_no_output_directory(tmp_path, demo_bundle, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "results"
    code, lines = _bench(["--bundle", demo_bundle, "--images", str(empty), "--out", str(out)], capsys)
    assert code == 2 and len(lines) == 1 and "holds no image" in lines[0], lines
    assert not os.path.exists(str(out))
