"""The JSON sidecar next to each built engine: what it was built from, with what, for what, and how close it came.

An engine (plan) loads only with the exact TensorRT version it was built with, on a GPU of the same compute
capability (DESIGN.md section 8), and it silently goes stale when the bundle's ONNX is re-exported. The sidecar keeps
the facts that decide this, so that every refusal happens on the JSON, before a byte of the plan is deserialized.
The plan itself stays a raw TensorRT plan (trtexec, Triton and Polygraphy can read it).

A stage the target's TensorRT cannot import gets a sidecar too (engine "onnxruntime", no file): the per-stage choice
at run time reads the verdict from it.

Edge subset: Python 3.6-clean, standard library only.
"""
import collections
import json
import os
from typing import Any, Dict, Optional

from ladon_deploy.atomic import write_text_atomically
from ladon_deploy.bundle import Bundle, engine_name, sha256_of
from ladon_deploy.engines.tensorrt_api import MachineFacts
from ladon_deploy.errors import EngineError

FORMAT_NAME = "ladon-engine"
FORMAT_VERSION = 1
ENGINE_KINDS = ("tensorrt", "onnxruntime")
PLAN_EXTENSION = "plan"
SIDECAR_EXTENSION = "json"

REQUIRED = ("format", "format_version", "target", "stage", "engine", "precision", "dla_core", "source", "machine",
            "bundle_id")
REQUIRED_TENSORRT = ("file", "engine_sha256", "tensorrt", "gpu", "profile", "build_options", "build_seconds",
                     "parity")


def sidecar_path(bundle: Bundle, target: str, stage: str, precision: str, dla_core: Optional[int] = None) -> str:
    return bundle.engine_path(target, stage, precision, SIDECAR_EXTENSION, dla_core)


def plan_path(bundle: Bundle, target: str, stage: str, precision: str, dla_core: Optional[int] = None) -> str:
    return bundle.engine_path(target, stage, precision, PLAN_EXTENSION, dla_core)


def new_sidecar(bundle: Bundle, target: str, stage: str, engine: str, precision: str, dla_core: Optional[int],
                machine: str) -> Dict[str, Any]:
    """The fields every sidecar has; the builder adds the TensorRT ones."""
    document = collections.OrderedDict()  # type: Dict[str, Any]
    document["format"] = FORMAT_NAME
    document["format_version"] = FORMAT_VERSION
    document["target"] = target
    document["stage"] = stage
    document["engine"] = engine
    document["precision"] = precision
    document["dla_core"] = dla_core
    document["bundle_id"] = bundle.bundle_id
    document["source"] = {"file": bundle.stage(stage)["file"], "sha256": bundle.stage(stage)["sha256"]}
    document["machine"] = machine
    return document


def write_sidecar(path: str, document: Dict[str, Any]) -> None:
    validate_sidecar(document, path)
    write_text_atomically(path, json.dumps(document, indent=2) + "\n")


def _require(condition: bool, path: str, message: str) -> None:
    if not condition:
        raise EngineError("engine sidecar %s: %s" % (path, message))


def validate_sidecar(document: Any, path: str) -> Dict[str, Any]:
    """Checks the structure of a sidecar (not whether it suits this machine: see check_runnable)."""
    _require(isinstance(document, dict), path, "not a JSON object")
    _require(document.get("format") == FORMAT_NAME, path, "not a Ladon engine sidecar")
    _require(document.get("format_version") == FORMAT_VERSION, path,
             "format version %r is not supported (this toolkit reads %d)"
             % (document.get("format_version"), FORMAT_VERSION))
    missing = [key for key in REQUIRED if key not in document]
    _require(not missing, path, "lacks %s" % ", ".join(missing))
    _require(document["engine"] in ENGINE_KINDS, path, "unknown engine %r" % document["engine"])
    source = document["source"]
    _require(isinstance(source, dict) and "sha256" in source and "file" in source, path, "source lacks file/sha256")
    if document["engine"] == "tensorrt":
        missing = [key for key in REQUIRED_TENSORRT if key not in document]
        _require(not missing, path, "lacks %s" % ", ".join(missing))
        _require(isinstance(document["file"], str) and os.path.basename(document["file"]) == document["file"], path,
                 "engine file must be a name inside the engines folder")
        _require(isinstance(document["tensorrt"], dict) and "version" in document["tensorrt"], path,
                 "tensorrt lacks version")
        _require(isinstance(document["gpu"], dict) and "compute_capability" in document["gpu"], path,
                 "gpu lacks compute_capability")
        profile = document["profile"]
        _require(isinstance(profile, dict) and profile, path, "profile is empty")
        for name, shapes in profile.items():
            _require(isinstance(shapes, dict) and all(k in shapes for k in ("min", "opt", "max")), path,
                     "profile of %s lacks min/opt/max" % name)
    return document


def read_sidecar(path: str) -> Dict[str, Any]:
    try:
        with open(path, "r") as handle:
            document = json.load(handle)
    except (IOError, OSError, ValueError) as exc:
        raise EngineError("cannot read engine sidecar %s: %s" % (path, exc))
    return validate_sidecar(document, path)


def check_source(sidecar: Dict[str, Any], bundle: Bundle, path: str) -> None:
    """The engine was built from the ONNX this bundle now holds (its manifest's sha256, and the file on disk)."""
    stage = sidecar["stage"]
    expected = bundle.stage(stage)["sha256"]
    if sidecar["source"]["sha256"] != expected:
        raise EngineError("engine %s was built from another %s (sha256 %s..., the bundle's is %s...): rebuild it "
                          "with ladon-build --bundle %s --target %s --force"
                          % (path, bundle.stage(stage)["file"], sidecar["source"]["sha256"][:12], expected[:12],
                             bundle.directory, sidecar["target"]))


def check_runnable(sidecar: Dict[str, Any], bundle: Bundle, facts: MachineFacts, path: str) -> None:
    """Refuses, on the JSON alone, an engine this machine cannot load or that no longer matches the bundle."""
    check_source(sidecar, bundle, path)
    if sidecar["engine"] != "tensorrt":
        return
    if sidecar["machine"] != facts.machine:
        raise EngineError("engine %s was built on %s, this machine is %s: build it here with ladon-build"
                          % (path, sidecar["machine"], facts.machine))
    built_with = sidecar["tensorrt"]["version"]
    if facts.trt_version is not None and built_with != facts.trt_version:
        raise EngineError("engine %s was built by TensorRT %s, this machine has TensorRT %s: an engine loads only with "
                          "the version that built it; rebuild with ladon-build --force"
                          % (path, built_with, facts.trt_version))
    built_for = str(sidecar["gpu"]["compute_capability"])
    if facts.compute_capability is not None and built_for != facts.compute_capability:
        raise EngineError("engine %s was built for compute capability %s (%s), this GPU is %s (%s): rebuild it here"
                          % (path, built_for, sidecar["gpu"].get("name", "?"), facts.compute_capability,
                             facts.gpu_name or "?"))


def check_engine_file(sidecar: Dict[str, Any], directory: str, path: str) -> str:
    """The plan the sidecar names exists and is the one it describes (a plan replaced behind its back is refused)."""
    plan = os.path.join(directory, sidecar["file"])
    if not os.path.isfile(plan):
        raise EngineError("engine sidecar %s names %s, which does not exist" % (path, plan))
    if sha256_of(plan) != sidecar["engine_sha256"]:
        raise EngineError("engine %s does not match the sha256 in its sidecar %s" % (plan, path))
    return plan


# Which built variant a run picks when several exist: fp16 before fp32 (the reason to build fp16 at all); INT8
# only when asked for; GPU before DLA cores.
RUN_PRECISION_ORDER = ("fp16", "fp32")


def find_stage_sidecar(bundle: Bundle, target: str, stage: str,
                       precision: Optional[str] = None) -> Optional[str]:
    """The sidecar a run of `stage` uses on `target`, or None when none was built."""
    directory = bundle.engines_dir(target)
    precisions = (precision,) if precision else RUN_PRECISION_ORDER
    for wanted in precisions:
        for dla_core in (None, 0, 1):
            path = os.path.join(directory, engine_name(stage, wanted, dla_core) + "." + SIDECAR_EXTENSION)
            if os.path.isfile(path):
                return path
    return None
