"""The runner interface every engine implements.

A runner owns one loaded engine (an ONNX Runtime session, a TensorRT execution context, a torch module) and runs it
on named numpy arrays. Loading an engine file and running it are kept apart, as in Polygraphy: a runner is built from
an already-validated path, and `run` only moves arrays in and out.
"""
from typing import Dict, List

import numpy as np


class Runner(object):
    """Runs one model on named numpy arrays and returns named numpy arrays."""

    name = "abstract"

    @property
    def input_names(self) -> List[str]:
        raise NotImplementedError

    @property
    def output_names(self) -> List[str]:
        raise NotImplementedError

    def run(self, feeds: Dict[str, np.ndarray], release_memory: bool = False) -> Dict[str, np.ndarray]:
        """The outputs for `feeds`. release_memory: once this run ends, hand the memory the engine keeps for
        activations between runs back to the system (the next run allocates it again); engines that hold theirs for
        their whole life (TensorRT) ignore it."""
        raise NotImplementedError

    def close(self) -> None:
        """Releases the engine; the runner cannot run afterwards."""

    def __enter__(self):
        return self

    def __exit__(self, *_exc_info):
        self.close()
