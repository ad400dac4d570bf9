"""ONNX Runtime runner (CPU by default; CUDA or TensorRT execution providers where the wheel has them)."""
from typing import Dict, List, Optional, Sequence

import numpy as np

from ladon_deploy.engines.base import Runner
from ladon_deploy.errors import EngineError


def available_providers() -> List[str]:
    import onnxruntime

    return list(onnxruntime.get_available_providers())


class OnnxRuntimeRunner(Runner):
    """Runs an ONNX file through an onnxruntime.InferenceSession.

    threads: intra-op threads (None lets ONNX Runtime choose: one per core).
    providers: execution providers in order of preference; the default is the CPU provider only, so that results do
    not depend on which onnxruntime wheel happens to be installed.
    """

    name = "onnxruntime"

    def __init__(self, path: str, threads: Optional[int] = None,
                 providers: Optional[Sequence[str]] = None) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        if threads:
            options.intra_op_num_threads = int(threads)
            options.inter_op_num_threads = 1
        options.log_severity_level = 3
        # The memory-pattern planner keeps a second copy of the activations after the first run (the encoder's peak
        # RSS grows from 123 to 175 MB over five runs with it, stays at 123 MB without), for no measurable speed-up.
        options.enable_mem_pattern = False
        # A split process holds several sessions (encoder, body, heads); threads that spin after their run starve
        # the next session's threads on a small CPU (the encoder took 44 ms instead of 14 ms next to idle heads).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        wanted = list(providers) if providers else ["CPUExecutionProvider"]
        missing = [p for p in wanted if p not in onnxruntime.get_available_providers()]
        if missing:
            raise EngineError("onnxruntime has no execution provider %s (available: %s)"
                              % (", ".join(missing), ", ".join(onnxruntime.get_available_providers())))
        try:
            self._session = onnxruntime.InferenceSession(str(path), sess_options=options, providers=wanted)
        except Exception as exc:  # onnxruntime raises its own untyped errors for unreadable models
            raise EngineError("cannot load %s with onnxruntime: %s" % (path, str(exc).splitlines()[0]))
        self.providers = self._session.get_providers()
        self._inputs = [i.name for i in self._session.get_inputs()]
        self._outputs = [o.name for o in self._session.get_outputs()]

    @property
    def input_names(self) -> List[str]:
        return list(self._inputs)

    @property
    def output_names(self) -> List[str]:
        return list(self._outputs)

    def input_shape(self, name: str) -> List[object]:
        """The declared shape of an input: ints for static dimensions, names (str) for dynamic ones."""
        for value in self._session.get_inputs():
            if value.name == name:
                return list(value.shape)
        raise EngineError("the model has no input %r" % name)

    def run(self, feeds: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        if self._session is None:
            raise EngineError("runner is closed")
        unknown = set(feeds) - set(self._inputs)
        missing = set(self._inputs) - set(feeds)
        if unknown or missing:
            raise EngineError("inputs do not match the model: missing %s, unexpected %s"
                              % (sorted(missing), sorted(unknown)))
        values = self._session.run(self._outputs, feeds)
        return dict(zip(self._outputs, values))

    def close(self) -> None:
        self._session = None
