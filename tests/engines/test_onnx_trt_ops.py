"""The ONNX-parser operator tables of `ladon-build --check` against what onnx-tensorrt's docs/operators.md says.

The tables are regenerated here, with no network, from the docs/operators.md of each release branch committed under
tests/engines/data/onnx_tensorrt_operators (each tied to its upstream version by its git blob id), by the same code
that wrote them (scripts/extract_onnx_trt_ops.py). The per-stage verdicts that docs/engines.md prints for the demo
bundle are regenerated on the demo bundle and compared cell by cell.
"""
import collections
import importlib.util
import json
import os
import re
import shutil
import subprocess

import pytest
from onnx import TensorProto, helper

from ladon_deploy.engines import onnx_trt_support as support
from ladon_deploy.engines.check import check_bundle, check_onnx

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ENGINES_DOC = os.path.join(ROOT, "docs", "engines.md")
STAGES = ("encoder", "body", "head_cls", "head_det", "head_seg")


def _load_script():
    spec = importlib.util.spec_from_file_location("extract_onnx_trt_ops",
                                                  os.path.join(ROOT, "scripts", "extract_onnx_trt_ops.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


extract = _load_script()


@pytest.fixture(scope="module")
def regenerated():
    """The table as the committed sources give it, branch -> row."""
    table = extract.build_table(extract.committed_provenance())
    return collections.OrderedDict((row["branch"], row) for row in table["branches"])


def _differences(check_tables, check_opsets, regenerated):
    """What the check's tables say that the regenerated sources do not, one line each."""
    lines = []
    for branch, supported in check_tables.items():
        if branch not in regenerated:
            lines.append("%s: no such release branch" % branch)
            continue
        source = set(regenerated[branch]["supported"])
        lines += ["%s: %s marked supported, docs/operators.md says not" % (branch, op)
                  for op in sorted(supported - source)]
        lines += ["%s: %s missing, docs/operators.md marks it Y" % (branch, op) for op in sorted(source - supported)]
        if check_opsets[branch] != regenerated[branch]["max_opset"]:
            lines.append("%s: opset %d, docs/operators.md says %d"
                         % (branch, check_opsets[branch], regenerated[branch]["max_opset"]))
    return lines


def test_committed_table_is_what_the_committed_sources_give(regenerated, capsys):
    assert extract.main(["--verify"]) == 0
    with open(extract.TABLE_PATH) as handle:
        committed = json.load(handle)
    assert [row["branch"] for row in committed["branches"]] == list(regenerated)
    assert committed == extract.build_table(extract.committed_provenance())


def test_the_release_branches_found(regenerated):
    # Every release line of onnx/onnx-tensorrt from 8.0 on in the fetched snapshot (its newest branch is 10.1-GA).
    assert [(branch, row["trt"]) for branch, row in regenerated.items()] == [
        ("8.0-GA", "8.0"), ("8.2-GA", "8.2"), ("8.4-GA", "8.4"), ("8.5-GA", "8.5"), ("8.6-GA", "8.6"),
        ("9.0-GA", "9.0"), ("9.1", "9.1"), ("9.2", "9.2"), ("9.3", "9.3"), ("10.0-GA", "10.0"), ("10.1-GA", "10.1")]
    assert all(re.match(r"^[0-9a-f]{40}$", row["commit"]) for row in regenerated.values())


def test_the_check_uses_exactly_the_regenerated_tables(regenerated):
    assert _differences(support.SUPPORTED_OPS, support.MAX_OPSET, regenerated) == []
    assert [branch for _, branch in support.TABLE_BRANCHES] == \
        [branch for branch, row in regenerated.items() if extract.trt_version(branch) >= support.CHECKED_FROM]


def test_which_table_each_tensorrt_version_is_checked_against():
    from ladon_deploy.errors import EngineError

    expected = {(8, 2): "8.2-GA", (8, 3): "8.2-GA", (8, 4): "8.4-GA", (8, 5): "8.5-GA", (8, 6): "8.6-GA",
                (9, 0): "9.0-GA", (9, 3): "9.3", (10, 0): "10.0-GA", (10, 1): "10.1-GA", (10, 16): "10.1-GA",
                (11, 1): "10.1-GA"}
    assert dict((version, support.table_branch(version)) for version in expected) == expected
    with pytest.raises(EngineError, match="TensorRT 8.0: the tables cover 8.2 and later"):
        support.table_branch((8, 0))  # plain JetPack 4.6: its table is recorded, the check does not cover it


def test_an_operator_wrongly_marked_supported_is_caught(regenerated):
    planted = dict(support.SUPPORTED_OPS)
    planted["8.2-GA"] = planted["8.2-GA"] | {"HardSwish"}
    assert _differences(planted, support.MAX_OPSET, regenerated) == \
        ["8.2-GA: HardSwish marked supported, docs/operators.md says not"]
    dropped = dict(support.SUPPORTED_OPS)
    dropped["8.5-GA"] = dropped["8.5-GA"] - {"NonZero"}
    assert _differences(dropped, support.MAX_OPSET, regenerated) == \
        ["8.5-GA: NonZero missing, docs/operators.md marks it Y"]
    opsets = dict(support.MAX_OPSET, **{"8.4-GA": 13})
    assert _differences(support.SUPPORTED_OPS, opsets, regenerated) == ["8.4-GA: opset 13, docs/operators.md says 17"]


def test_hardswish_goes_to_tensorrt_from_8_4(tmp_path):
    path = str(tmp_path / "hardswish.onnx")
    graph = helper.make_graph([helper.make_node("HardSwish", ["x"], ["y"], name="hs")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    import onnx

    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    on_8_2 = check_onnx(path, "server", "8.2").stages[0]
    assert on_8_2.verdict == "onnxruntime" and "supported from 8.4-GA" in on_8_2.unsupported[0].why
    assert check_onnx(path, "server", "8.4").stages[0].verdict == "tensorrt"


def test_restriction_rules_follow_what_each_table_states():
    # Derived from the Restrictions cells; a source edit or a reworded cell that moves a rule shows here.
    assert support.RESTRICTION_BRANCHES == {
        "conv_weights_initializer": ("8.2-GA", "8.4-GA"),
        "topk_k_initializer": ("8.2-GA", "8.4-GA", "8.5-GA"),
        "topk_sorted_and_k_limit": ("10.1-GA",),
        "nms_experimental": ("8.2-GA", "8.4-GA"),
        "instancenorm_initializers": ("8.2-GA", "8.4-GA", "8.5-GA"),
        "range_float_initializers": ("8.2-GA",),
        "pad_axes_initializer": ("10.0-GA", "10.1-GA"),
        "dropout_not_training": ("10.1-GA",),
    }


def test_a_source_that_is_not_the_upstream_file_is_refused(tmp_path, monkeypatch):
    sources = tmp_path / "sources"
    shutil.copytree(extract.SOURCES_DIR, str(sources))
    table = tmp_path / "table.json"
    shutil.copy(extract.TABLE_PATH, str(table))
    monkeypatch.setattr(extract, "SOURCES_DIR", str(sources))
    monkeypatch.setattr(extract, "TABLE_PATH", str(table))
    assert extract.main(["--verify"]) == 0
    # The table edited by hand: HardSwish on 8.2.
    edited = json.loads(table.read_text())
    assert edited["branches"][1]["branch"] == "8.2-GA"
    edited["branches"][1]["supported"] = sorted(edited["branches"][1]["supported"] + ["HardSwish"])
    table.write_text(extract.render(edited))
    assert extract.main(["--verify"]) == 1
    # A source edited by hand: Reciprocal marked Y on 8.2.
    shutil.copy(os.path.join(ROOT, "ladon_deploy", "engines", "onnx_trt_operators.json"), str(table))
    path = sources / "8.2-GA.operators.md"
    text = path.read_text()
    assert text.count("| Reciprocal                | N") == 1
    path.write_text(text.replace("| Reciprocal                | N", "| Reciprocal                | Y"))
    with pytest.raises(ValueError, match="8.2-GA.operators.md is not the upstream file"):
        extract.build_table(extract.committed_provenance())
    assert extract.main(["--verify"]) == 2


MATRIX = """# Supported ONNX Operators

TensorRT 8.4 supports operators up to Opset 17.

## Operator Support Matrix

| Operator | Supported | Supported Types | Restrictions |
|----------|-----------|-----------------|--------------|
| Abs      | Y         | FP32 |
| HardSwish | N        |
| HardSwish | Y        | FP32 | |
| NonMaxSuppression | Y [EXPERIMENTAL] | FP32 | `iou_threshold` must be an initializer |
| Unique   | N         |

## Other

| Not | An operator |
"""


def test_parse_operators_reads_cells_and_refuses_what_it_cannot_read():
    parsed = extract.parse_operators(MATRIX)
    assert parsed == {"max_opset": 17, "supported": ["Abs", "HardSwish", "NonMaxSuppression"],
                      "experimental": ["NonMaxSuppression"], "unsupported": ["Unique"],
                      "restrictions": {"NonMaxSuppression": "`iou_threshold` must be an initializer"},
                      "listed_twice": ["HardSwish"]}
    assert extract.parse_operators(MATRIX.replace("up to Opset 17", "in the inclusive range of opset 9 to opset 20"))[
        "max_opset"] == 20
    with pytest.raises(ValueError, match="Supported cell for Abs"):
        extract.parse_operators(MATRIX.replace("| Abs      | Y", "| Abs      | maybe"))
    with pytest.raises(ValueError, match="no operator support matrix"):
        extract.parse_operators(MATRIX.replace("## Operator Support Matrix", "## Something else"))
    with pytest.raises(ValueError, match="Opset"):
        extract.parse_operators(MATRIX.replace("up to Opset 17", "up to the newest"))


def test_release_branches_prefers_ga_and_skips_previews_and_old_lines():
    names = ["7.2.1", "8.0-EA", "8.0-GA", "8.2-EA", "8.2-GA", "release/8.2-GA", "9.1", "9.0-GA", "10.1-GA",
             "10.0-EA", "main", "dev/integrate-8.4"]
    assert extract.release_branches(names) == ["8.0-GA", "8.2-GA", "9.0-GA", "9.1", "10.1-GA"]


def test_git_blob_id_is_gits():
    assert extract.git_blob_id(b"") == "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391"  # `git hash-object /dev/null`


def test_sources_are_the_upstream_files(regenerated):
    # `git rev-parse 8.2-GA:docs/operators.md` in a clone of onnx/onnx-tensorrt.
    assert regenerated["8.2-GA"]["blob"] == "49984e5deb9ca6f351201aed0dda8884bddefdfd"
    for branch, row in regenerated.items():
        with open(extract.source_path(branch), "rb") as handle:
            assert extract.git_blob_id(handle.read()) == row["blob"], branch


# -- the verdict table in docs/engines.md ---------------------------------------------------------------------


def verdict_cell(stage_check):
    """How docs/engines.md writes one stage's verdict: `tensorrt`, or `onnxruntime (N): Op xK, ...` (by count)."""
    if not stage_check.unsupported:
        return "tensorrt"
    counts = collections.Counter(finding.op for finding in stage_check.unsupported)
    ops = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return "onnxruntime (%d): %s" % (len(stage_check.unsupported), ", ".join("%s x%d" % item for item in ops))


def documented_verdicts(path=ENGINES_DOC):
    """The rows of the table under '<!-- verdicts: demo bundle -->': (target, trt or None, trt shown, cells)."""
    with open(path) as handle:
        text = handle.read()
    marker = text.index("<!-- verdicts: demo bundle -->")
    rows = []
    for line in text[marker:].splitlines()[1:]:
        if not line.startswith("|"):
            if rows:
                break
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        command = re.match(r"^`--target (\S+)(?: --trt (\S+))?`$", cells[0])
        if command:
            rows.append((command.group(1), command.group(2), cells[1], dict(zip(STAGES, cells[2:]))))
    return rows


def regenerated_verdicts(bundle, target, trt):
    """(the TensorRT version checked, stage -> cell), an empty cell for each stage the target does not run."""
    report = check_bundle(bundle, target, trt)
    cells = dict((stage, "") for stage in STAGES)
    cells.update((stage.stage, verdict_cell(stage)) for stage in report.stages)
    return report.trt, cells


@pytest.mark.slow  # the check on every stage of the demo bundle, five times: ~20 s on 2 cores
def test_docs_verdict_table_is_what_the_check_gives_on_the_demo_bundle(demo_bundle):
    rows = documented_verdicts()
    assert [(target, trt) for target, trt, _, _ in rows] == [
        ("jetson-nano", None), ("xavier-nx", None), ("server", None), ("server", "8.5"), ("cpu", "8.2"),
        ("cpu", "10.0")]
    for target, trt, shown_trt, cells in rows:
        assert (shown_trt, cells) == regenerated_verdicts(demo_bundle, target, trt), (target, trt)


def test_documented_verdicts_reads_the_table(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("x\n<!-- verdicts: demo bundle -->\n\n| command | TensorRT | encoder | body | head_cls | head_det "
                    "| head_seg |\n| --- | --- | --- | --- | --- | --- | --- |\n| `--target cpu --trt 8.2` | 8.2 | "
                    "tensorrt | onnxruntime (37): Conv x37 | tensorrt | | |\n\nafter\n| `--target server` | 10.0 |\n")
    assert documented_verdicts(str(page)) == [("cpu", "8.2", "8.2", {
        "encoder": "tensorrt", "body": "onnxruntime (37): Conv x37", "head_cls": "tensorrt", "head_det": "",
        "head_seg": ""})]


def test_git_dir_mode_reads_each_release_branch(tmp_path, monkeypatch):
    repo = tmp_path / "onnx-tensorrt"
    (repo / "docs").mkdir(parents=True)

    def git(*args):
        return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(repo)] + list(args),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True,
                              check=True).stdout.strip()

    git("init", "-q", "-b", "main")
    for branch, text in (("8.2-GA", MATRIX.replace("8.4", "8.2").replace("up to Opset 17", "up to Opset 13")),
                         ("8.4-GA", MATRIX)):
        git("checkout", "-q", "-b", branch)
        (repo / "docs" / "operators.md").write_text(text)
        git("add", "docs/operators.md")
        git("commit", "-q", "-m", branch)
    git("branch", "release/8.2-GA", "8.2-GA")
    git("branch", "8.4-EA", "8.4-GA")
    monkeypatch.setattr(extract, "SOURCES_DIR", str(tmp_path / "sources"))
    monkeypatch.setattr(extract, "TABLE_PATH", str(tmp_path / "table.json"))
    assert extract.main(["--git-dir", str(repo / ".git")]) == 0
    table = json.loads((tmp_path / "table.json").read_text())
    assert [(row["branch"], row["trt"], row["max_opset"]) for row in table["branches"]] == [
        ("8.2-GA", "8.2", 13), ("8.4-GA", "8.4", 17)]
    for row in table["branches"]:
        assert row["commit"] == git("rev-parse", row["branch"])
        assert row["blob"] == git("rev-parse", "%s:docs/operators.md" % row["branch"])
    assert extract.main(["--verify"]) == 0
    assert extract.main(["--git-dir", str(tmp_path / "nothing")]) == 2


PYTHON36 = os.path.join(ROOT, ".venv36", "bin", "python")


@pytest.mark.skipif(not os.path.exists(PYTHON36), reason="no .venv36 (setup.sh found no Python 3.6 interpreter)")
def test_the_tables_load_the_same_on_python36():
    code = ("import json; from ladon_deploy.engines import onnx_trt_support as s; print(json.dumps({'branches': "
            "[b for _, b in s.TABLE_BRANCHES], 'ops': dict((b, sorted(o)) for b, o in s.SUPPORTED_OPS.items()), "
            "'rules': s.RESTRICTION_BRANCHES}))")
    output = subprocess.run([PYTHON36, "-c", code], stdout=subprocess.PIPE, universal_newlines=True, check=True,
                            env=dict(os.environ, PYTHONPATH=ROOT), timeout=60).stdout
    loaded = json.loads(output)
    assert loaded["branches"] == [branch for _, branch in support.TABLE_BRANCHES]
    assert loaded["ops"] == dict((branch, sorted(ops)) for branch, ops in support.SUPPORTED_OPS.items())
    assert loaded["rules"] == dict((rule, list(branches)) for rule, branches in support.RESTRICTION_BRANCHES.items())
