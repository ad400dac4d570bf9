"""The bundle on disk: its layout, its manifest and how to open one safely.

A bundle is a directory holding manifest.json and one file per stage:

    encoder.onnx   image -> latent y (float32, before quantization)
    entropy.npz    quantized_cdf, cdf_length, offset, medians: the entropy tables both ends share
    body.onnx      dequantized latent -> feat1..feat4
    head_cls.onnx  feat4 -> probabilities
    head_det.onnx  feat1..feat4 + image_size -> boxes, scores, labels (boxes in resized-image pixels)
    head_seg.onnx  feat4 -> logits at the padded input size
    engines/       built by ladon-build, one folder per target (engines/<target>/), each engine a raw file next to a
                   JSON sidecar of the same name: <stage>.<precision>[.dla<N>].plan|onnx and .json

This module is on the edge import path (the mobile device opens bundles): Python 3.6-clean, numpy and the standard
library only.
"""
import hashlib
import json
import os
from typing import Any, Dict, List, Optional

from ladon_deploy.errors import BundleError

MANIFEST_NAME = "manifest.json"
FORMAT_NAME = "ladon-bundle"
FORMAT_VERSION = 1

STAGE_FILES = {
    "encoder": "encoder.onnx",
    "entropy": "entropy.npz",
    "body": "body.onnx",
    "head_cls": "head_cls.onnx",
    "head_det": "head_det.onnx",
    "head_seg": "head_seg.onnx",
}
TASK_HEADS = {"cls": "head_cls", "det": "head_det", "seg": "head_seg"}
TASKS = ("cls", "det", "seg")

ENTROPY_ARRAYS = ("quantized_cdf", "cdf_length", "offset", "medians")
ENGINES_DIR = "engines"
SIDECAR_SUFFIX = ".json"


def engine_name(stage: str, precision: str, dla_core: Optional[int] = None) -> str:
    """The file stem of one built engine: 'encoder.fp16', 'encoder.int8.dla0'."""
    return "%s.%s%s" % (stage, precision, "" if dla_core is None else ".dla%d" % dla_core)


def sha256_of(path: str, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while True:
            block = handle.read(chunk)
            if not block:
                break
            digest.update(block)
    return digest.hexdigest()


def bundle_id_from_hashes(stage_hashes: Dict[str, str]) -> str:
    """A short identity of the bundle, carried in every payload: 8 hex digits over the encoder and entropy tables.

    Two bundles whose encoder and tables agree produce interchangeable payloads, so only those two enter the id.
    """
    digest = hashlib.sha256()
    for stage in ("encoder", "entropy"):
        digest.update(stage.encode("ascii"))
        digest.update(stage_hashes[stage].encode("ascii"))
    return digest.hexdigest()[:8]


class Bundle(object):
    """An opened bundle: its directory and its validated manifest."""

    def __init__(self, directory: str, manifest: Dict[str, Any]) -> None:
        self.directory = directory
        self.manifest = manifest

    @property
    def bundle_id(self) -> str:
        return self.manifest["bundle_id"]

    @property
    def tasks(self) -> List[str]:
        return list(self.manifest["tasks"])

    @property
    def preprocessing(self) -> Dict[str, Any]:
        return self.manifest["preprocessing"]

    def stage(self, name: str) -> Dict[str, Any]:
        stages = self.manifest["stages"]
        if name not in stages:
            raise BundleError("bundle %s has no stage %r" % (self.directory, name))
        return stages[name]

    def path(self, name: str) -> str:
        return os.path.join(self.directory, self.stage(name)["file"])

    def engines_dir(self, target: str) -> str:
        """Where ladon-build keeps the engines of one target (it may not exist yet)."""
        return os.path.join(self.directory, ENGINES_DIR, target)

    def engine_path(self, target: str, stage: str, precision: str, extension: str,
                    dla_core: Optional[int] = None) -> str:
        return os.path.join(self.engines_dir(target), engine_name(stage, precision, dla_core) + "." + extension)

    def verify(self, names: Optional[List[str]] = None) -> None:
        """Checks the sha256 of the named stage files (all of them by default) against the manifest."""
        for name in names or list(self.manifest["stages"]):
            expected = self.stage(name)["sha256"]
            path = self.path(name)
            if not os.path.isfile(path):
                raise BundleError("bundle %s is missing %s" % (self.directory, self.stage(name)["file"]))
            if sha256_of(path) != expected:
                raise BundleError("bundle file %s does not match its sha256 in the manifest" % path)

    def load_entropy_tables(self) -> Dict[str, Any]:
        return read_entropy_tables(self.path("entropy"))


def read_entropy_tables(path: str) -> Dict[str, Any]:
    """The entropy tables of entropy.npz (never unpickled: numpy's allow_pickle is off)."""
    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as data:
            return {key: data[key] for key in ENTROPY_ARRAYS}
    except (OSError, ValueError, KeyError) as exc:
        raise BundleError("cannot read entropy tables %s: %s" % (path, exc))


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise BundleError(message)


def validate_manifest(manifest: Any, where: str) -> Dict[str, Any]:
    _require(isinstance(manifest, dict), "%s: manifest is not a JSON object" % where)
    _require(manifest.get("format") == FORMAT_NAME, "%s: not a Ladon bundle manifest" % where)
    version = manifest.get("format_version")
    _require(version == FORMAT_VERSION,
             "%s: bundle format version %r is not supported (this toolkit reads %d)" % (where, version, FORMAT_VERSION))
    for key in ("bundle_id", "architecture", "tasks", "preprocessing", "stages", "parity"):
        _require(key in manifest, "%s: manifest lacks %r" % (where, key))
    stages = manifest["stages"]
    _require(isinstance(stages, dict), "%s: manifest 'stages' is not an object" % where)
    for required in ("encoder", "entropy", "body"):
        _require(required in stages, "%s: manifest has no %r stage" % (where, required))
    for task in manifest["tasks"]:
        _require(task in TASK_HEADS, "%s: unknown task %r in manifest" % (where, task))
        _require(TASK_HEADS[task] in stages, "%s: task %r has no head stage" % (where, task))
    for name, stage in stages.items():
        _require(isinstance(stage, dict) and "file" in stage and "sha256" in stage,
                 "%s: stage %r lacks file or sha256" % (where, name))
        _require(os.path.basename(stage["file"]) == stage["file"],
                 "%s: stage %r points outside the bundle" % (where, name))
    return manifest


def open_bundle(directory: str, verify: bool = True) -> Bundle:
    """Opens a bundle directory, validates its manifest and (by default) the sha256 of every stage file."""
    directory = str(directory)
    manifest_path = os.path.join(directory, MANIFEST_NAME)
    if not os.path.isdir(directory):
        raise BundleError("bundle directory not found: %s" % directory)
    if not os.path.isfile(manifest_path):
        raise BundleError("%s is not a bundle: it has no %s" % (directory, MANIFEST_NAME))
    try:
        with open(manifest_path, "r") as handle:
            manifest = json.load(handle)
    except (OSError, ValueError) as exc:
        raise BundleError("cannot read %s: %s" % (manifest_path, exc))
    bundle = Bundle(directory, validate_manifest(manifest, directory))
    if verify:
        bundle.verify()
    return bundle
