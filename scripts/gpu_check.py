"""What a machine with an NVIDIA GPU can do with the toolkit, in one JSON (run by scripts/gpu_check.sh).

1. Records what is there: nvidia-smi, tensorrt, onnxruntime and its providers, pycuda / cuda-python (and the GPU
   they see), torch and its CUDA.
2. A bundle: --bundle B, or the demo bundle exported here when torch and the export dependencies are installed.
3. With tensorrt and a CUDA binding: `ladon-build --target server` (fp16, then fp32 if time allows), parity included,
   into a copy of the bundle's engines area; the sidecars go into the JSON.
4. Per-stage timings of every engine that can run (tensorrt, onnxruntime-tensorrt, onnxruntime-cuda) against
   onnxruntime CPU, same run, same inputs (scripts/engine_bench.py).
5. Where torch has CUDA: the server half of the demo model (body, head_cls, head_seg) in torch on CUDA, eager fp32,
   eager fp16 (autocast) and replayed CUDA graphs (static shapes), against onnxruntime CPU on the same inputs, with
   the relative L2 of each output.

Every step has a time budget (the whole run stays under --budget seconds, 540 by default) and records either its
figures or the one line that stopped it. Runs from the working tree alone (no install): PYTHONPATH is the repository.
"""
import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from typing import Any, Callable, Dict, List, Optional

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPOSITORY)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

SERVER_STAGES = ("body", "head_cls", "head_seg", "head_det")
SIZE = (416, 416)


class Budget(object):
    def __init__(self, seconds: float) -> None:
        self.deadline = time.monotonic() + seconds

    def left(self) -> float:
        return self.deadline - time.monotonic()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return "%s: %s" % (type(exc).__name__, text[0] if text else "")


def step(record: Dict[str, Any], name: str, budget: Budget, needs_seconds: float, work: Callable[[], Any]) -> Any:
    """Runs one step into record[name]; a failure or a spent budget is recorded as one line, never raised."""
    if budget.left() < needs_seconds:
        record[name] = {"skipped": "time budget: %.0f s left, the step needs about %.0f s"
                                   % (budget.left(), needs_seconds)}
        return None
    started = time.monotonic()
    try:
        result = work()
        record[name] = {"seconds": round(time.monotonic() - started, 2), "result": result}
        return result
    except Exception as exc:  # every failure is a finding of this script, recorded as one line
        record[name] = {"seconds": round(time.monotonic() - started, 2), "error": _first_line(exc)}
        if os.environ.get("LADON_DEBUG"):
            traceback.print_exc()
        return None


def _command(argv: List[str]) -> Dict[str, Any]:
    try:
        done = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True,
                              timeout=30)
        return {"rc": done.returncode, "output": done.stdout.strip().splitlines()[:20]}
    except (OSError, subprocess.SubprocessError) as exc:
        return {"error": _first_line(exc)}


def _module_version(name: str) -> Dict[str, Any]:
    try:
        module = __import__(name)
        return {"version": str(getattr(module, "__version__", "?"))}
    except Exception as exc:  # ImportError, or a broken install raising anything else
        return {"missing": _first_line(exc)}


def environment() -> Dict[str, Any]:
    facts = {"platform": platform.platform(), "machine": platform.machine(), "python": sys.version.split()[0],
             "cpu_count": os.cpu_count(),
             "nvidia_smi": _command(["nvidia-smi", "--query-gpu=name,compute_cap,driver_version,memory.total",
                                     "--format=csv,noheader"]),
             "tensorrt": _module_version("tensorrt"), "onnxruntime": _module_version("onnxruntime"),
             "pycuda": _module_version("pycuda"), "torch": _module_version("torch")}  # type: Dict[str, Any]
    try:
        import onnxruntime

        facts["onnxruntime"]["providers"] = list(onnxruntime.get_available_providers())
    except ImportError:
        pass
    from ladon_deploy.engines import tensorrt_api

    try:
        binding = tensorrt_api.open_cuda("server")
        try:
            name, capability = binding.gpu()
            facts["cuda_binding"] = {"name": binding.name, "gpu": name, "compute_capability": capability}
        finally:
            binding.close()
    except Exception as exc:
        facts["cuda_binding"] = {"error": _first_line(exc)}
    try:
        import torch

        facts["torch"]["cuda_available"] = bool(torch.cuda.is_available())
        if torch.cuda.is_available():
            facts["torch"]["device"] = torch.cuda.get_device_name(0)
            facts["torch"]["compute_capability"] = "%d.%d" % torch.cuda.get_device_capability(0)
            facts["torch"]["cuda"] = torch.version.cuda
    except ImportError:
        pass
    return facts


def export_demo(directory: str) -> Dict[str, Any]:
    from ladon_deploy.export.pipeline import export_bundle
    from ladon_deploy.models.ladon import build_demo_model

    model = build_demo_model()
    export_bundle(model, directory)
    return {"bundle": directory, "model": model}


def build_server_engines(bundle_dir: str, precision: str) -> List[Dict[str, Any]]:
    from ladon_deploy.engines.build import build_engines

    lines = []  # type: List[str]
    documents = build_engines(bundle_dir, "server", precision, force=True, progress=lines.append)
    return [{"stage": d["stage"], "engine": d["engine"], "tensorrt": d.get("tensorrt"), "gpu": d.get("gpu"),
             "build_seconds": d.get("build_seconds"), "profile": d.get("profile"),
             "parity": {k: v for k, v in (d.get("parity") or {}).items() if k != "per_input_size"},
             "why": d.get("why"), "log": lines} for d in documents]


def engine_timings(bundle_dir: str, repeats: int) -> List[Dict[str, Any]]:
    from engine_bench import measure

    return measure(bundle_dir, ["onnxruntime", "onnxruntime-cuda", "onnxruntime-tensorrt", "tensorrt"], repeats,
                   SIZE, stages=SERVER_STAGES)


def torch_cuda_server_half(model: Any, bundle_dir: str, repeats: int) -> Dict[str, Any]:
    """body, head_cls, head_seg of the demo model on CUDA (eager fp32, eager fp16 autocast, CUDA graphs) against
    ONNX Runtime CPU on the bundle exported from the same model, on the parity chain's inputs."""
    import numpy as np
    import torch

    from engine_bench import time_runs
    from ladon_deploy.bundle import open_bundle
    from ladon_deploy.engines.ort_runner import OnnxRuntimeRunner
    from ladon_deploy.engines.parity import ReferenceChain, relative_l2
    from ladon_deploy.export.stages import stage_specs

    if not torch.cuda.is_available():
        raise RuntimeError("torch has no CUDA here")
    bundle = open_bundle(bundle_dir)
    chain = ReferenceChain(bundle, [SIZE])
    specs = {spec.name: spec for spec in stage_specs(model)}
    results = {}  # type: Dict[str, Any]
    device = torch.device("cuda")
    for name in ("body", "head_cls", "head_seg"):
        if name not in specs or name not in bundle.manifest["stages"]:
            continue
        spec = specs[name]
        feeds = chain.inputs(name, SIZE)
        reference = chain.reference(name, SIZE)
        module = spec.module.to(device).eval()
        inputs = [torch.from_numpy(np.ascontiguousarray(feeds[n])).to(device) for n in spec.inputs]
        row = {}  # type: Dict[str, Any]
        with OnnxRuntimeRunner(bundle.path(name)) as cpu:
            row["onnxruntime_cpu_ms"] = time_runs(lambda: cpu.run(feeds), max(3, repeats // 4), warmup=1)[0]

        def eager() -> Any:
            with torch.no_grad():
                out = module(*inputs)
            torch.cuda.synchronize()
            return out

        def eager_fp16() -> Any:
            with torch.no_grad(), torch.autocast("cuda", dtype=torch.float16):
                out = module(*inputs)
            torch.cuda.synchronize()
            return out

        for label, run in (("eager_fp32", eager), ("eager_fp16_autocast", eager_fp16)):
            median, p90 = time_runs(run, repeats)
            outputs = run()
            outputs = outputs if isinstance(outputs, (tuple, list)) else (outputs,)
            row[label] = {"median_ms": median, "p90_ms": p90,
                          "ratio_vs_onnxruntime_cpu": round(median / row["onnxruntime_cpu_ms"], 4),
                          "rel_l2_vs_onnxruntime_cpu": {o: relative_l2(reference[o], t.float().cpu().numpy())
                                                        for o, t in zip(spec.outputs, outputs)}}
        try:
            static = [t.clone() for t in inputs]
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream), torch.no_grad():
                for _ in range(3):
                    module(*static)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph), torch.no_grad():
                captured = module(*static)

            def replay() -> None:
                graph.replay()
                torch.cuda.synchronize()

            median, p90 = time_runs(replay, repeats)
            captured = captured if isinstance(captured, (tuple, list)) else (captured,)
            row["cuda_graph_fp32"] = {"median_ms": median, "p90_ms": p90,
                                      "ratio_vs_onnxruntime_cpu": round(median / row["onnxruntime_cpu_ms"], 4),
                                      "rel_l2_vs_onnxruntime_cpu": {o: relative_l2(reference[o], t.cpu().numpy())
                                                                    for o, t in zip(spec.outputs, captured)}}
        except Exception as exc:  # data-dependent control flow cannot be captured: recorded, not fatal
            row["cuda_graph_fp32"] = {"error": _first_line(exc)}
        results[name] = row
    chain.close()
    return results


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="gpu_check.json")
    parser.add_argument("--bundle", default=None, help="a bundle to use (default: export the demo bundle here)")
    parser.add_argument("--budget", type=float, default=540.0, help="seconds for the whole run")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--no-export", action="store_true", help="never export a bundle (record the machine only)")
    args = parser.parse_args(argv)
    budget = Budget(args.budget)
    record = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "steps": {}}  # type: Dict[str, Any]
    steps = record["steps"]
    step(steps, "environment", budget, 0, environment)
    workdir = tempfile.mkdtemp(prefix="ladon-gpu-check-")
    model = None
    bundle_dir = None
    try:
        if args.bundle:
            bundle_dir = os.path.join(workdir, "bundle")
            shutil.copytree(args.bundle, bundle_dir, ignore=shutil.ignore_patterns("engines"))
        elif not args.no_export:
            exported = step(steps, "export_demo_bundle", budget, 120, lambda: export_demo(os.path.join(workdir, "b")))
            if exported:
                bundle_dir, model = exported["bundle"], exported.pop("model")
                steps["export_demo_bundle"]["result"] = {"bundle": "demo (seed 0, random weights)"}
        if bundle_dir:
            for precision in ("fp16", "fp32"):
                step(steps, "build_server_" + precision, budget, 90,
                     lambda p=precision: build_server_engines(bundle_dir, p))
            step(steps, "engine_timings", budget, 60, lambda: engine_timings(bundle_dir, args.repeats))
            if model is not None:
                step(steps, "torch_cuda_server_half", budget, 60,
                     lambda: torch_cuda_server_half(model, bundle_dir, args.repeats))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    record["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    with open(args.out, "w") as handle:
        json.dump(record, handle, indent=2, default=str)
    for name, outcome in steps.items():
        status = outcome.get("error") or outcome.get("skipped") or "ok (%.1f s)" % outcome.get("seconds", 0)
        print("%-24s %s" % (name, status))
    print("written: %s" % args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
