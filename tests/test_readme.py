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


def _section(text, heading):
    """The lines of a `## heading` section, up to the next `## `."""
    start = text.index("\n## " + heading + "\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end >= 0 else len(text)].strip("\n").splitlines()


def test_the_front_page_stays_short_and_its_index_reaches_every_docs_page():
    text = _text(README)
    assert len(text.splitlines()) <= 300
    index = "\n".join(_section(text, "Documentation"))
    pages = sorted(name for name in os.listdir(DOCS) if name.endswith(".md"))
    assert [page for page in pages if "(docs/%s)" % page not in index] == []
    # ladon-build's detail lives in docs/engines.md; the front page keeps one example per mode and the link.
    build = _section(text, "Engines: `ladon-build`")
    assert len(build) <= 15 and "(docs/engines.md)" in "\n".join(build)
    engines = _text(os.path.join(DOCS, "engines.md"))
    for heading in ("## `ladon-build`: engines per target", "### Building engines: profiles, timing cache, parity gate",
                    "### Running engines: `--engine`", "### TensorRT API generations", "### Engine benchmark",
                    "## `ladon-build --check`", "## `ladon-doctor`: what runs on this machine"):
        assert heading in engines, heading


def test_every_dependency_in_pyproject_is_in_the_dependencies_table():
    import tomllib

    with open(os.path.join(edge_install.ROOT, "pyproject.toml"), "rb") as handle:
        project = tomllib.load(handle)
    wanted = list(project["project"]["dependencies"]) + list(project["build-system"]["requires"])
    for extra in project["project"]["optional-dependencies"].values():
        wanted += extra
    names = {re.split(r"[\[<>=!~ ]", requirement, 1)[0].lower() for requirement in wanted}
    table = [line.split("|")[1].lower() for line in _section(_text(README), "Dependencies and why")
             if line.startswith("| ") and not line.startswith("| ---")]
    listed = {word for cell in table for word in re.findall(r"[a-z0-9][a-z0-9_.-]*", cell)}
    assert sorted(names - listed) == []


def test_tensorrt_8_2_is_never_said_to_ship_with_plain_jetpack_4_6():
    # JetPack 4.6 (L4T R32.6.1) has TensorRT 8.0.1, which the toolkit refuses; 8.2 came with JetPack 4.6.1.
    pages = [README] + [os.path.join(DOCS, name) for name in os.listdir(DOCS) if name.endswith(".md")]
    for page in pages:
        for line in _text(page).splitlines():
            if re.search(r"8\.2\b", line) and re.search(r"JetPack 4\.6(?![.\d])", line):
                assert re.search(r"(plain|8\.0)", line), (page, line)
