"""Safe loading of Ladon checkpoints: torchdistill files, bare state_dicts and the merged multi-task format.

Checkpoints are untrusted input. They are read with `torch.load(weights_only=True)` and a short allow-list of the
plain classes torchdistill stores next to the weights (argparse.Namespace, pathlib paths); a pickle that would build
any other object, let alone run code, is refused before anything runs.

Every file is mapped onto LadonModel's canonical key layout (see models/ladon.py):
    classification  bottleneck_layer.* layer2-4.* fc.*
    detection       backbone.body.* -> trunk, backbone.fpn.* -> detection.fpn.*, rpn.*/roi_heads.* -> detection.*
    segmentation    backbone.* -> trunk, classifier.*/aux_classifier.* -> segmentation.*
    merged          already canonical (written by save_merged)
The trunk of Ladon is frozen after training step 2, so every file's copy of it must agree tensor by tensor.
"""
import argparse
import os
import pathlib
import pickle
import re
import struct
import zipfile
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import torch

from ladon_deploy.atomic import write_file_atomically
from ladon_deploy.errors import CheckpointError
from ladon_deploy.models.ladon import ARCHITECTURES, TASKS, LadonModel

MERGED_FORMAT = "ladon-merged"
MERGED_FORMAT_VERSION = 1

SAFE_GLOBALS = [argparse.Namespace, pathlib.PosixPath, pathlib.WindowsPath, pathlib.PurePosixPath,
                pathlib.PureWindowsPath]

TRUNK_PREFIXES = ("bottleneck_layer.", "layer2.", "layer3.", "layer4.")
ENTROPY_TABLE_SUFFIXES = ("entropy_bottleneck._offset", "entropy_bottleneck._quantized_cdf",
                          "entropy_bottleneck._cdf_length")
# Buffers fixed by construction (bounds, pedestals, BatchNorm's step counter): older CompressAI releases and
# FrozenBatchNorm2d-based detection files do not store them, and their values never depend on training.
CONSTANT_BUFFER_SUFFIXES = ("num_batches_tracked", "entropy_bottleneck.target",
                            "likelihood_lower_bound.bound", "reparam.pedestal", "reparam.lower_bound.bound")

_OLD_COMPRESSAI_NAME = re.compile(r"entropy_bottleneck\._(matrix|bias|factor)(\d+)$")
_OLD_TO_NEW = {"matrix": "matrices", "bias": "biases", "factor": "factors"}
_BETA_IN_NAME = re.compile(r"beta(\d+(?:\.\d+)?)")


def read_checkpoint_file(path: str) -> Any:
    """torch.load with weights_only=True and the allow-list; every failure becomes a one-line CheckpointError."""
    path = str(path)
    if not os.path.exists(path):
        raise CheckpointError("checkpoint not found: %s" % path)
    if not os.path.isfile(path):
        raise CheckpointError("checkpoint is not a file: %s" % path)
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except OSError as exc:
        raise CheckpointError("cannot read checkpoint %s: %s" % (path, exc.strerror or exc))
    except _MALFORMED_FILE_ERRORS as exc:
        if isinstance(exc, (RuntimeError, AttributeError, TypeError)) and not _from_torch_reading_a_file(exc):
            raise  # not a verdict on the file: a bug, reported as one
        # torch words the refusal of a non-allow-listed class in two ways, depending on the module it names.
        match = re.search(r"(?:Unsupported global: GLOBAL|unsupported GLOBAL) ([\w.]+)", str(exc))
        if match:
            raise CheckpointError("refusing %s: its pickle would build %s (untrusted checkpoint, nothing was run)"
                                  % (path, match.group(1)))
        raise CheckpointError("%s is not a readable PyTorch checkpoint (%s: %s)" % (path, type(exc).__name__,
                                                                                      _reason(exc)))


# What torch.load raises on a file that is not a well-formed checkpoint (measured on truncated, bit-flipped and
# random files): the weights-only unpickler's refusals, the zip reader's RuntimeError, and whatever a malformed
# pickle stream makes the unpickler trip over. RuntimeError, AttributeError and TypeError are also what bugs raise,
# so those three count as the file's fault only when torch's reading code raised them (_from_torch_reading_a_file).
_MALFORMED_FILE_ERRORS = (pickle.UnpicklingError, EOFError, struct.error, zipfile.BadZipFile, ValueError, IndexError,
                          KeyError, RuntimeError, AttributeError, TypeError)
_TORCH_READERS = ("serialization.py", "_weights_only_unpickler.py", "_utils.py")


def _from_torch_reading_a_file(exc: BaseException) -> bool:
    """Whether the innermost frame that raised `exc` is torch's checkpoint reader (not our code, not elsewhere)."""
    if isinstance(exc, RuntimeError) and "PytorchStreamReader" in str(exc):
        return True
    frame = exc.__traceback__
    if frame is None:
        return False
    while frame.tb_next is not None:
        frame = frame.tb_next
    filename = frame.tb_frame.f_code.co_filename
    torch_directory = os.path.dirname(os.path.abspath(torch.__file__))
    return filename.startswith(torch_directory) and os.path.basename(filename) in _TORCH_READERS


def _reason(exc: BaseException) -> str:
    text = str(exc)
    # The weights-only refusal opens with paragraphs about torch's defaults; the reason is after this marker.
    marker = "WeightsUnpickler error: "
    if marker in text:
        text = text[text.index(marker) + len(marker):]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    reason = lines[0] if lines else "no detail"
    return reason if len(reason) <= 160 else reason[:157] + "..."


def _state_dict_of(obj: Any, path: str) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    """Returns (state_dict, metadata) for the three container formats."""
    meta: Dict[str, Any] = {}
    if isinstance(obj, dict) and obj.get("format") == MERGED_FORMAT:
        if obj.get("format_version") != MERGED_FORMAT_VERSION:
            raise CheckpointError("%s: merged checkpoint version %r is not supported" % (path, obj.get("format_version")))
        meta = {"merged": True, "arch": obj.get("architecture"), "beta": obj.get("beta"), "tasks": obj.get("tasks")}
        state = obj.get("model")
    elif isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        state = obj["model"]
        args = obj.get("args")
        meta["args"] = vars(args) if isinstance(args, argparse.Namespace) else None
    else:
        state = obj
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError("%s holds no model state_dict" % path)
    return dict(state), meta


def rename_compressai_keys(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """CompressAI <= 1.2.6 names (`_matrix0`, `_bias0`, `_factor0`) -> >= 1.2.7 names (`matrices.0`, ...)."""
    renamed = {}
    for key, value in state.items():
        match = _OLD_COMPRESSAI_NAME.search(key)
        if match:
            key = key[:match.start()] + "entropy_bottleneck.%s.%s" % (_OLD_TO_NEW[match.group(1)], match.group(2))
        renamed[key] = value
    return renamed


def detect_task(state: Dict[str, torch.Tensor], path: str) -> str:
    """'cls', 'det', 'seg' or 'merged' from the key layout; a non-Ladon state_dict is refused with the reason."""
    keys = list(state)

    def has(prefix: str) -> bool:
        return any(k.startswith(prefix) for k in keys)

    if has("detection.") or has("segmentation.") or (has("bottleneck_layer.") and not has("fc.")
                                                      and not has("backbone.")):
        return "merged"
    if has("backbone.body.bottleneck_layer.") and has("rpn.") and has("roi_heads."):
        return "det"
    if has("backbone.bottleneck_layer.") and has("classifier."):
        return "seg"
    if has("bottleneck_layer.") and has("fc."):
        return "cls"
    if has("conv1.") and has("layer1."):
        raise CheckpointError("%s is a plain ResNet-style state_dict (conv1/layer1, no bottleneck_layer): not a Ladon "
                              "checkpoint" % path)
    if has("backbone.body.conv1.") or has("backbone.conv1."):
        raise CheckpointError("%s is a detection/segmentation model with a plain backbone (no bottleneck_layer): not "
                              "a Ladon checkpoint" % path)
    raise CheckpointError("%s is not a Ladon checkpoint: no bottleneck_layer tensors found" % path)


def to_canonical(state: Dict[str, torch.Tensor], task: str) -> Dict[str, torch.Tensor]:
    if task in ("cls", "merged"):
        mapping: List[Tuple[str, str]] = []
    elif task == "det":
        mapping = [("backbone.body.", ""), ("backbone.fpn.", "detection.fpn."), ("rpn.", "detection.rpn."),
                   ("roi_heads.", "detection.roi_heads.")]
    else:
        mapping = [("backbone.", ""), ("classifier.", "segmentation.classifier."),
                   ("aux_classifier.", "segmentation.aux_classifier.")]
    canonical = {}
    for key, value in state.items():
        for old, new in mapping:
            if key.startswith(old):
                key = new + key[len(old):]
                break
        canonical[key] = value
    return canonical


def tasks_in(canonical: Dict[str, torch.Tensor]) -> List[str]:
    found = []
    if "fc.weight" in canonical:
        found.append("cls")
    if any(k.startswith("detection.") for k in canonical):
        found.append("det")
    if any(k.startswith("segmentation.") for k in canonical):
        found.append("seg")
    return found


def detect_architecture(canonical: Dict[str, torch.Tensor], path: str) -> str:
    weight = canonical.get("bottleneck_layer.encoder.4.weight")
    if weight is None or weight.dim() != 4:
        raise CheckpointError("%s: bottleneck encoder tensors are missing or malformed" % path)
    channels = int(weight.shape[0])
    for arch, (bottleneck_channels, _) in ARCHITECTURES.items():
        if channels != bottleneck_channels:
            continue
        # ResNeSt blocks carry split-attention convs; ResNet-50 blocks do not.
        is_resnest = any(".attn." in k or ".conv2.fc1." in k for k in canonical if k.startswith("layer2."))
        if (arch == "resnest269e") == is_resnest:
            return arch
    raise CheckpointError("%s: %d bottleneck channels match no supported architecture (%s)"
                          % (path, channels, ", ".join("%s: %d" % (a, c) for a, (c, _) in ARCHITECTURES.items())))


def beta_of(path: str, meta: Dict[str, Any]) -> Optional[float]:
    if meta.get("beta") is not None:
        return float(meta["beta"])
    candidates = [os.path.basename(path)]
    args = meta.get("args") or {}
    for key in ("config", "config_path"):
        if isinstance(args.get(key), (str, pathlib.PurePath)):
            candidates.append(os.path.basename(str(args[key])))
    for text in candidates:
        match = _BETA_IN_NAME.search(text)
        if match:
            return float(match.group(1).rstrip("."))
    return None


def _is_table(key: str) -> bool:
    return key.endswith(ENTROPY_TABLE_SUFFIXES)


def first_trunk_difference(a: Dict[str, torch.Tensor], b: Dict[str, torch.Tensor]) -> Optional[str]:
    """Name of the first shared-trunk tensor on which two canonical state_dicts disagree, or None."""
    trunk_a = {k for k in a if k.startswith(TRUNK_PREFIXES) and not k.endswith("num_batches_tracked")}
    trunk_b = {k for k in b if k.startswith(TRUNK_PREFIXES) and not k.endswith("num_batches_tracked")}
    for key in sorted(trunk_a | trunk_b):
        if key not in a or key not in b:
            if _is_table(key) or key.endswith(CONSTANT_BUFFER_SUFFIXES):
                continue
            return key
        x, y = a[key], b[key]
        if _is_table(key) and (x.numel() == 0 or y.numel() == 0):
            continue  # one file was saved before update(): tables are recomputed at export anyway
        if x.shape != y.shape or x.dtype != y.dtype or not torch.equal(x, y):
            return key
    return None


class LoadedLadon:
    """A LadonModel assembled from one or more checkpoint files, with what was learned while loading."""

    def __init__(self, model: LadonModel, beta: Optional[float], sources: Dict[str, str],
                 tables_computed: bool, filled_keys: List[str]) -> None:
        self.model = model
        self.beta = beta
        self.sources = sources  # task -> file it came from
        self.tables_computed = tables_computed
        self.filled_keys = filled_keys

    @property
    def arch(self) -> str:
        return self.model.arch

    @property
    def tasks(self) -> Tuple[str, ...]:
        return self.model.tasks


def _prepare_entropy_buffers(model: LadonModel, state: Dict[str, torch.Tensor]) -> None:
    """Resizes the table buffers to the incoming shapes: load_state_dict cannot resize buffers itself."""
    bottleneck = model.entropy_bottleneck
    for suffix in ENTROPY_TABLE_SUFFIXES:
        key = "bottleneck_layer." + suffix
        if key in state:
            name = suffix.split(".")[-1]
            setattr(bottleneck, name, torch.zeros_like(state[key]))


def load_into_model(model: LadonModel, state: Dict[str, torch.Tensor], where: str) -> List[str]:
    """Strict load that tolerates only constant buffers being absent; returns the keys left at their defaults."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    not_fillable = [k for k in missing if not k.endswith(CONSTANT_BUFFER_SUFFIXES)]
    if unexpected:
        raise CheckpointError("%s: unexpected tensor %s (and %d more): not this architecture"
                              % (where, unexpected[0], len(unexpected) - 1))
    if not_fillable:
        raise CheckpointError("%s: missing tensor %s (and %d more)" % (where, not_fillable[0], len(not_fillable) - 1))
    for key, value in state.items():
        if not _is_table(key) and tuple(value.shape) != tuple(expected[key].shape):
            raise CheckpointError("%s: tensor %s has shape %s, the model expects %s"
                                  % (where, key, tuple(value.shape), tuple(expected[key].shape)))
    full = dict(expected)
    full.update(state)
    _prepare_entropy_buffers(model, full)
    model.load_state_dict(full, strict=True)
    return sorted(missing)


def load_ladon(paths: Sequence[str], tasks: Optional[Iterable[str]] = None) -> LoadedLadon:
    """Loads one merged file or one file per task into a single LadonModel (eval mode, entropy tables ready)."""
    if not paths:
        raise CheckpointError("no checkpoint given")
    merged: Dict[str, torch.Tensor] = {}
    sources: Dict[str, str] = {}
    arch: Optional[str] = None
    beta: Optional[float] = None
    beta_source: Optional[str] = None
    for path in paths:
        state, meta = _state_dict_of(read_checkpoint_file(path), path)
        state = rename_compressai_keys(state)
        kind = detect_task(state, path)
        canonical = to_canonical(state, kind)
        file_arch = detect_architecture(canonical, path)
        if arch is not None and file_arch != arch:
            raise CheckpointError("%s is a %s model but %s is %s" % (path, file_arch, paths[0], arch))
        arch = file_arch
        file_beta = beta_of(path, meta)
        if file_beta is not None:
            if beta is not None and abs(file_beta - beta) > 1e-9:
                raise CheckpointError("checkpoints come from different betas: %s (beta %g) and %s (beta %g)"
                                      % (beta_source, beta, path, file_beta))
            beta, beta_source = file_beta, path
        for task in tasks_in(canonical):
            if task in sources:
                raise CheckpointError("task %s is in both %s and %s" % (task, sources[task], path))
            sources[task] = path
        if merged:
            differing = first_trunk_difference(merged, canonical)
            if differing is not None:
                raise CheckpointError("%s and %s disagree on shared tensor %s: not the same Ladon model"
                                      % (paths[0], path, differing))
        for key, value in canonical.items():
            if key in merged and _is_table(key) and value.numel() == 0:
                continue
            merged[key] = value
    present = [t for t in TASKS if t in sources]
    wanted = present if tasks is None else [t for t in TASKS if t in set(tasks)]
    absent = [t for t in wanted if t not in present]
    if absent:
        raise CheckpointError("no checkpoint provides task %s (found: %s)" % (", ".join(absent), ", ".join(present)))
    if not wanted:
        raise CheckpointError("the checkpoints hold no task head (found only the trunk)")
    dropped = ("fc.",) if "cls" not in wanted else ()
    dropped += ("detection.",) if "det" not in wanted else ()
    dropped += ("segmentation.",) if "seg" not in wanted else ()
    state = {k: v for k, v in merged.items() if not (dropped and k.startswith(dropped))}
    model = LadonModel(arch, wanted)
    filled = load_into_model(model, state, ", ".join(str(p) for p in paths))
    model.eval()
    tables_computed = False
    if not model.has_entropy_tables():
        tables_computed = model.update_entropy_tables(force=True)
    return LoadedLadon(model, beta, {t: str(sources[t]) for t in wanted}, tables_computed, filled)


def save_merged(loaded: LoadedLadon, path: str) -> None:
    """Writes the merged multi-task file atomically: a dict of plain values and tensors, loadable weights_only."""
    payload = {
        "format": MERGED_FORMAT,
        "format_version": MERGED_FORMAT_VERSION,
        "architecture": loaded.arch,
        "beta": loaded.beta,
        "tasks": list(loaded.tasks),
        "model": {k: v.detach().clone() for k, v in loaded.model.state_dict().items()},
    }
    write_file_atomically(str(path), lambda temporary: torch.save(payload, temporary))
