"""The README as a front page: the Quick start's two commands as CI runs them, its Python example run as written,
every link it makes leading to a file, and no reference to design notes that are not in the repository."""
import os
import re
import subprocess
import sys

import edge_install
from images import make_image

README = os.path.join(edge_install.ROOT, "README.md")
DOCS = os.path.join(edge_install.ROOT, "docs")


def _text(path):
    with open(path) as handle:
        return handle.read()


def test_quick_start_keeps_its_two_commands():
    assert ("```\n./setup.sh && .venv/bin/ladon-export --demo --out demo-bundle --force\n"
            "./setup.sh && .venv/bin/python -m pytest -q -rs\n```") in _text(README)
    ci = os.path.join(edge_install.ROOT, ".ci", "run")
    if os.path.isfile(ci):
        assert "./setup.sh && .venv/bin/python -m pytest -q -rs" in _text(ci)


def test_every_relative_link_leads_to_a_file_and_nothing_cites_design_notes():
    pages = [README] + [os.path.join(DOCS, name) for name in os.listdir(DOCS) if name.endswith(".md")]
    for page in pages:
        text = _text(page)
        assert "DESIGN.md" not in text, page
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
            if "://" in target:
                continue
            assert os.path.exists(os.path.join(os.path.dirname(page), target)), (page, target)


def test_the_python_example_runs_as_written(demo_bundle, tmp_path):
    blocks = re.findall(r"```python\n(.*?)```", _text(README), re.S)
    assert len(blocks) == 1
    os.symlink(demo_bundle, str(tmp_path / "demo-bundle"))
    make_image(tmp_path / "street.png", 240, 320, 3)
    finished = subprocess.run([sys.executable, "-c", blocks[0]], cwd=str(tmp_path), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, universal_newlines=True, timeout=300)
    assert finished.returncode == 0, finished.stderr
    size, top = finished.stdout.split(" ", 1)
    assert int(size) > 31 and top.startswith("[")
