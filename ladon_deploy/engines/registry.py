"""Choosing a runner for a stage file: one place that knows which engine kinds exist."""
from typing import Optional

from ladon_deploy.engines.base import Runner
from ladon_deploy.errors import EngineError

ENGINES = ("onnxruntime", "onnxruntime-cuda")


def open_runner(path: str, engine: str = "onnxruntime", threads: Optional[int] = None) -> Runner:
    """Loads `path` with the named engine. ONNX files run on ONNX Runtime (CPU, or CUDA where the wheel has it)."""
    if engine == "onnxruntime":
        from ladon_deploy.engines.ort_runner import OnnxRuntimeRunner

        return OnnxRuntimeRunner(path, threads=threads)
    if engine == "onnxruntime-cuda":
        from ladon_deploy.engines.ort_runner import OnnxRuntimeRunner

        return OnnxRuntimeRunner(path, threads=threads, providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    raise EngineError("unknown engine %r (known: %s)" % (engine, ", ".join(ENGINES)))
