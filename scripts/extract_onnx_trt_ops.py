"""Regenerates the ONNX-parser operator tables that `ladon-build --check` uses, from onnx-tensorrt's docs/operators.md.

    # 1. read every release branch of a bare or normal clone of github.com/onnx/onnx-tensorrt, refresh the sources:
    python scripts/extract_onnx_trt_ops.py --git-dir /path/to/onnx-tensorrt.git
    # 2. (what the tests do) regenerate the table from the committed sources and compare:
    python scripts/extract_onnx_trt_ops.py --verify

Step 1 lists the repository's branches, keeps one per TensorRT release (`X.Y-GA`, or `X.Y` where a release has no
GA branch, e.g. 9.1-9.3; `release/X.Y-GA` branches are older snapshots of the same lines and EA branches are
previews, so both are left out), copies each branch's docs/operators.md into SOURCES_DIR and writes TABLE_PATH.
Step 2 rebuilds the table from SOURCES_DIR alone (no network, no git) and exits 1 if it differs from TABLE_PATH.
Every source file is tied to its upstream version by its git blob id, which the table records and the tests check.
"""
import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
from typing import Dict, List, Optional, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCES_DIR = os.path.join(ROOT, "tests", "engines", "data", "onnx_tensorrt_operators")
TABLE_PATH = os.path.join(ROOT, "ladon_deploy", "engines", "onnx_trt_operators.json")
REPOSITORY = "https://github.com/onnx/onnx-tensorrt"
DOC = "docs/operators.md"
OLDEST = (8, 0)  # the toolkit's TensorRT versions start at 8.x

_RELEASE_BRANCH = re.compile(r"^(\d+)\.(\d+)(-GA)?$")
_MAX_OPSET = re.compile(r"(?:up to Opset|to opset)\s+(\d+)", re.IGNORECASE)


def git_blob_id(data: bytes) -> str:
    """The id git gives a file's content (`git hash-object`): ties a committed source to the upstream tree."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def parse_operators(text: str) -> Dict[str, object]:
    """One docs/operators.md: the opset line, and per operator its Supported cell and Restrictions cell."""
    rows = {}  # type: Dict[str, Tuple[str, str]]
    listed_twice = []  # type: List[str]
    in_matrix = False
    for line in text.splitlines():
        if line.startswith("## "):
            in_matrix = line.strip() == "## Operator Support Matrix"
            continue
        if not in_matrix or not line.startswith("|"):
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if cells[0] in ("Operator", "") or set(cells[0]) <= set("-: "):
            continue
        supported = cells[1] if len(cells) > 1 else ""
        if not re.match(r"^[YN]\b", supported):
            raise ValueError("unreadable Supported cell for %s: %r" % (cells[0], supported))
        restrictions = cells[3] if len(cells) > 3 else ""
        if cells[0] in rows:
            # 8.4-GA lists HardSwish as N and again as Y; its importer (builtin_op_importers.cpp) defines
            # HardSwish, so a Y row wins and the operator is recorded as listed twice.
            listed_twice.append(cells[0])
            if rows[cells[0]][0].startswith("Y"):
                continue
        rows[cells[0]] = (supported, restrictions)
    if not rows:
        raise ValueError("no operator support matrix found")
    opset = _MAX_OPSET.search(text)
    if opset is None:
        raise ValueError("no 'up to Opset N' / 'to opset N' line found")
    return {
        "max_opset": int(opset.group(1)),
        "supported": sorted(op for op, (cell, _) in rows.items() if cell.startswith("Y")),
        "experimental": sorted(op for op, (cell, _) in rows.items() if cell.startswith("Y") and "EXPERIMENTAL"
                               in cell.upper()),
        "unsupported": sorted(op for op, (cell, _) in rows.items() if cell.startswith("N")),
        "restrictions": dict((op, text) for op, (_, text) in sorted(rows.items()) if text),
        "listed_twice": sorted(listed_twice),
    }


def trt_version(branch: str) -> Optional[Tuple[int, int]]:
    match = _RELEASE_BRANCH.match(branch)
    return (int(match.group(1)), int(match.group(2))) if match else None


def release_branches(names: List[str]) -> List[str]:
    """One branch per TensorRT release from OLDEST on: X.Y-GA where it exists, else X.Y; oldest first."""
    chosen = {}  # type: Dict[Tuple[int, int], str]
    for name in names:
        version = trt_version(name)
        if version is None or version < OLDEST:
            continue
        if version not in chosen or name.endswith("-GA"):
            chosen[version] = name
    return [chosen[version] for version in sorted(chosen)]


def source_path(branch: str) -> str:
    return os.path.join(SOURCES_DIR, "%s.operators.md" % branch)


def build_table(provenance: List[Dict[str, str]]) -> Dict[str, object]:
    """The table from the committed sources; `provenance` gives branch, commit, date and blob per source."""
    branches = []
    for entry in provenance:
        with open(source_path(entry["branch"]), "rb") as handle:
            data = handle.read()
        if git_blob_id(data) != entry["blob"]:
            raise ValueError("%s is not the upstream file (blob %s, recorded %s)"
                             % (source_path(entry["branch"]), git_blob_id(data), entry["blob"]))
        version = trt_version(entry["branch"])
        row = {"branch": entry["branch"], "trt": "%d.%d" % version, "commit": entry["commit"],
               "date": entry["date"], "blob": entry["blob"]}  # type: Dict[str, object]
        row.update(parse_operators(data.decode("utf-8")))
        branches.append(row)
    return {"repository": REPOSITORY, "file": DOC,
            "generated_by": "scripts/extract_onnx_trt_ops.py", "branches": branches}


def _git(git_dir: str, *args: str) -> bytes:
    return subprocess.run(["git", "--git-dir", git_dir] + list(args), stdout=subprocess.PIPE, check=True).stdout


def refresh_sources(git_dir: str) -> List[Dict[str, str]]:
    """Copies docs/operators.md of every release branch into SOURCES_DIR; returns their provenance."""
    names = _git(git_dir, "for-each-ref", "--format=%(refname:short)", "refs/heads", "refs/remotes")
    names_list = [name.split("/", 1)[1] if name.startswith("origin/") else name
                  for name in names.decode().split()]
    os.makedirs(SOURCES_DIR, exist_ok=True)
    provenance = []
    for branch in release_branches(names_list):
        commit = _git(git_dir, "rev-parse", branch + "^{commit}").decode().strip()
        date = _git(git_dir, "log", "-1", "--format=%cs", commit).decode().strip()
        data = _git(git_dir, "show", "%s:%s" % (commit, DOC))
        with open(source_path(branch), "wb") as handle:
            handle.write(data)
        provenance.append({"branch": branch, "commit": commit, "date": date, "blob": git_blob_id(data)})
    return provenance


def committed_provenance() -> List[Dict[str, str]]:
    with open(TABLE_PATH) as handle:
        table = json.load(handle)
    return [dict((key, row[key]) for key in ("branch", "commit", "date", "blob")) for row in table["branches"]]


def render(table: Dict[str, object]) -> str:
    return json.dumps(table, indent=1, sort_keys=True) + "\n"


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--git-dir", help="a clone of onnx/onnx-tensorrt: refresh the sources and the table")
    mode.add_argument("--verify", action="store_true", help="regenerate from the committed sources and compare")
    args = parser.parse_args(argv)
    try:
        if args.git_dir:
            table = build_table(refresh_sources(args.git_dir))
            with open(TABLE_PATH, "w") as handle:
                handle.write(render(table))
            for row in table["branches"]:
                print("%-8s TensorRT %-5s %s %s opset<=%d %d supported" % (
                    row["branch"], row["trt"], row["commit"][:12], row["date"], row["max_opset"],
                    len(row["supported"])))
            return 0
        table = build_table(committed_provenance())
        with open(TABLE_PATH) as handle:
            committed = handle.read()
    except (OSError, ValueError, subprocess.CalledProcessError) as exc:
        print("extract_onnx_trt_ops: %s" % exc, file=sys.stderr)
        return 2
    if render(table) != committed:
        print("extract_onnx_trt_ops: %s differs from what the sources in %s give" % (TABLE_PATH, SOURCES_DIR),
              file=sys.stderr)
        return 1
    print("%s matches %d sources" % (os.path.relpath(TABLE_PATH, ROOT), len(table["branches"])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
