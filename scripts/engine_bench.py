"""One benchmark row per engine and stage: median and p90 latency of each bundle stage under each engine, with the
ratio against ONNX Runtime CPU measured in the same run on the same inputs.

    .venv/bin/python scripts/engine_bench.py --bundle B [--engines onnxruntime,onnxruntime-cuda,onnxruntime-tensorrt,tensorrt]
                                             [--repeats 20] [--size 416x416] [--threads N] [--json OUT]

The inputs are the parity gate's seeded chain (engines/parity.py: a smooth seeded image, then each stage's
ONNX Runtime output feeding the next). An engine that cannot run here gets a row saying why instead of figures.
`--engine tensorrt` rows name what actually ran each stage ("tensorrt fp16", or the ONNX Runtime fallback).
"""
import argparse
import json
import os
import statistics
import sys
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ladon_deploy.bundle import open_bundle  # noqa: E402
from ladon_deploy.engines.parity import ReferenceChain  # noqa: E402
from ladon_deploy.engines.registry import ENGINES, open_stage_runner  # noqa: E402
from ladon_deploy.errors import LadonError  # noqa: E402

BASELINE = "onnxruntime"
STAGES = ("encoder", "body", "head_cls", "head_det", "head_seg")


def time_runs(run: Any, repeats: int, warmup: int = 3) -> Tuple[float, float]:
    """(median, p90) milliseconds of `run()` over `repeats` calls after `warmup` unmeasured ones."""
    for _ in range(warmup):
        run()
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        samples.append((time.perf_counter() - started) * 1000.0)
    samples.sort()
    return statistics.median(samples), samples[min(len(samples) - 1, int(round(0.9 * (len(samples) - 1))))]


def measure(bundle_dir: str, engines: Sequence[str], repeats: int = 20, size: Tuple[int, int] = (416, 416),
            threads: Optional[int] = None, stages: Sequence[str] = STAGES) -> List[Dict[str, Any]]:
    bundle = open_bundle(bundle_dir)
    present = [s for s in stages if s in bundle.manifest["stages"]]
    chain = ReferenceChain(bundle, [size])
    rows = []  # type: List[Dict[str, Any]]
    try:
        for stage in present:
            feeds = chain.inputs(stage, size)
            baseline = None
            for engine in [BASELINE] + [e for e in engines if e != BASELINE]:
                row = {"stage": stage, "engine": engine, "size": list(size)}  # type: Dict[str, Any]
                try:
                    runner = open_stage_runner(bundle, stage, engine, threads)
                except LadonError as exc:
                    row["not_available"] = str(exc)
                    rows.append(row)
                    continue
                try:
                    row["ran_as"] = runner.engine_label
                    row["median_ms"], row["p90_ms"] = time_runs(lambda: runner.run(feeds), repeats)
                finally:
                    runner.close()
                if engine == BASELINE:
                    baseline = row["median_ms"]
                row["ratio_vs_onnxruntime_cpu"] = round(row["median_ms"] / baseline, 3) if baseline else None
                rows.append(row)
    finally:
        chain.close()
    return rows


def table(rows: Sequence[Dict[str, Any]]) -> str:
    lines = ["%-9s %-21s %-22s %10s %10s %9s" % ("stage", "engine", "ran as", "median ms", "p90 ms", "x cpu")]
    said = set()
    for row in rows:
        if "not_available" in row:
            reason = row["not_available"] if row["not_available"] not in said else "(as above)"
            said.add(row["not_available"])
            lines.append("%-9s %-21s not available: %s" % (row["stage"], row["engine"], reason))
            continue
        lines.append("%-9s %-21s %-22s %10.2f %10.2f %9.3f" % (row["stage"], row["engine"], row["ran_as"],
                                                                row["median_ms"], row["p90_ms"],
                                                                row["ratio_vs_onnxruntime_cpu"]))
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--engines", default=",".join(ENGINES))
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--size", default="416x416", help="padded image size HxW the chain starts from")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--stages", default=",".join(STAGES))
    parser.add_argument("--json", default=None, help="also write the rows as JSON")
    args = parser.parse_args(argv)
    height, width = (int(v) for v in args.size.lower().split("x"))
    rows = measure(args.bundle, [e for e in args.engines.split(",") if e], args.repeats, (height, width),
                   args.threads, [s for s in args.stages.split(",") if s])
    print(table(rows))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(rows, handle, indent=2)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except LadonError as exc:
        sys.stderr.write("engine_bench: error: %s\n" % exc)
        sys.exit(2)
