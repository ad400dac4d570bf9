"""Deployment targets in one table: where an engine runs, which TensorRT generation it has, which stages of a bundle
it runs and in which precisions.

An engine is bound to its TensorRT version and GPU (DESIGN.md section 8), so each target's engines are built on the
target itself; `cpu` has nothing to build but takes the same check and writes the same sidecar.

Edge subset: Python 3.6-clean, standard library only.
"""
from typing import Dict, Optional, Tuple

from ladon_deploy.errors import LadonError

DEVICE_STAGES = ("encoder",)
SERVER_STAGES = ("body", "head_cls", "head_det", "head_seg")


class Target(object):
    """One row of the targets table.

    trt: the TensorRT version `--check` assumes (the one the target ships, or the newest a server is expected to run);
    trt_supported: (oldest, newest) TensorRT major.minor a build on this target accepts, None where nothing is built;
    compute_capability: the GPU's SM version, None where any GPU (or none) may run it;
    machine: the platform.machine() a build must run on, None for any.
    """

    def __init__(self, name: str, description: str, trt: Optional[str], trt_supported: Optional[Tuple[str, str]],
                 stages: Tuple[str, ...], precisions: Tuple[str, ...], compute_capability: Optional[str],
                 python: str, machine: Optional[str], dla_cores: Tuple[int, ...] = (), jetpack: Optional[str] = None,
                 refusals: Optional[Dict[str, str]] = None) -> None:
        self.name = name
        self.description = description
        self.trt = trt
        self.trt_supported = trt_supported
        self.stages = stages
        self.precisions = precisions
        self.compute_capability = compute_capability
        self.python = python
        self.machine = machine
        self.dla_cores = dla_cores
        self.jetpack = jetpack
        self.refusals = dict(refusals or {})  # precision -> why this target refuses it

    @property
    def builds_engines(self) -> bool:
        return self.trt is not None

    def check_precision(self, precision: str) -> None:
        if precision in self.refusals:
            raise LadonError(self.refusals[precision])
        if precision not in self.precisions:
            raise LadonError("target %s builds %s, not %s" % (self.name, "/".join(self.precisions), precision))

    def check_dla(self, core: Optional[int]) -> None:
        if core is not None and core not in self.dla_cores:
            if not self.dla_cores:
                raise LadonError("target %s has no DLA cores" % self.name)
            raise LadonError("target %s has DLA cores %s, not %d"
                             % (self.name, ",".join(str(c) for c in self.dla_cores), core))


TARGETS = {
    "jetson-nano": Target(
        "jetson-nano", "Jetson Nano, JetPack 4.6.1-4.6.x (L4T R32.7), TensorRT 8.2.1, CUDA 10.2, Python 3.6",
        trt="8.2", trt_supported=("8.2", "8.2"), stages=DEVICE_STAGES, precisions=("fp32", "fp16"),
        compute_capability="5.3", python="3.6", machine="aarch64", jetpack="4.6.1",
        refusals={"int8": "the Jetson Nano (sm_53) has no INT8 hardware and its TensorRT refuses INT8/Q-DQ networks: "
                          "use --precision fp16"}),
    "xavier-nx": Target(
        "xavier-nx", "Jetson Xavier NX, JetPack 5.1 (L4T R35), TensorRT 8.5, CUDA 11.4, Python 3.8",
        trt="8.5", trt_supported=("8.5", "8.5"), stages=DEVICE_STAGES, precisions=("fp32", "fp16", "int8"),
        compute_capability="7.2", python="3.8", machine="aarch64", dla_cores=(0, 1), jetpack="5.1"),
    "server": Target(
        "server", "CUDA laptop or server, TensorRT 8.5 to 10.x (11.x where its API allows)",
        trt="10.0", trt_supported=("8.5", "11.99"), stages=SERVER_STAGES, precisions=("fp32", "fp16", "int8"),
        compute_capability=None, python="3.8", machine=None),
    "cpu": Target(
        "cpu", "ONNX Runtime CPU execution provider (nothing to build)",
        trt=None, trt_supported=None, stages=DEVICE_STAGES + SERVER_STAGES, precisions=("fp32", "int8"),
        compute_capability=None, python="3.6", machine=None),
}


def get_target(name: str) -> Target:
    try:
        return TARGETS[name]
    except KeyError:
        raise LadonError("unknown target %r (known: %s)" % (name, ", ".join(TARGETS)))
