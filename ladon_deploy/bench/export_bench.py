"""How long `ladon-export --demo` takes, step by step: median over several fresh processes.

    python -m ladon_deploy.bench.export_bench --runs 3

Each run is a new interpreter (imports included), exporting the demo bundle to a temporary directory, exactly as a
user's first command does.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional, Sequence


def run_once(workdir: str, index: int) -> Dict[str, float]:
    out = os.path.join(workdir, "bundle-%d" % index)
    timings = os.path.join(workdir, "timings-%d.json" % index)
    started = time.perf_counter()
    completed = subprocess.run([sys.executable, "-m", "ladon_deploy.export.cli", "--demo", "--out", out, "--quiet",
                                "--timings-json", timings], capture_output=True, text=True)
    wall = time.perf_counter() - started
    if completed.returncode != 0:
        raise SystemExit("ladon-export failed: %s" % completed.stderr.strip())
    with open(timings) as handle:
        steps = json.load(handle)
    steps["process wall time (command)"] = wall
    return steps


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    runs: List[Dict[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="ladon-export-bench-") as workdir:
        for index in range(args.runs):
            runs.append(run_once(workdir, index))
    print("ladon-export --demo, %d fresh processes, %d cores" % (args.runs, os.cpu_count() or 0))
    print()
    print("| step | median s | min s | max s |")
    print("| --- | ---: | ---: | ---: |")
    for step in runs[0]:
        values = [run[step] for run in runs]
        print("| %s | %.3f | %.3f | %.3f |" % (step, statistics.median(values), min(values), max(values)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
