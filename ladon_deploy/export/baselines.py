"""Exporting the LC baselines (models/baselines.py) to ONNX and checking each export against torch.

Every model exports with the TorchScript exporter (``dynamo=False``) at the bundle's opset (13) and a fixed input size; detectors take one float32
image tensor, classifiers and segmenters a normalised batch of one (see models/baselines.py for the interfaces).
Parity: ONNX Runtime (CPU) against torch on a seeded input; dense outputs report the max abs difference (must be
<= 1e-3 of the largest output); detections must all be matched (same label, IoU >= 0.5) within 0.5 px.
"""
import os
import time
from collections import OrderedDict

from ladon_deploy.engines.ort_runner import OnnxRuntimeRunner
from ladon_deploy.export.parity import compare_detections
from ladon_deploy.export.pipeline import OPSET
from ladon_deploy.models.baselines import (build_lc_model, example_input, input_shape_for, io_names, lc_spec,
                                           wrap_for_export)

BOX_TOLERANCE_PX = 0.5


def verify_onnx_against_torch(name, module, onnx_path, x, threads=None):
    """Run the exported graph in ONNX Runtime (the runner every stage uses) and ``module`` in torch on ``x``."""
    import numpy as np
    import torch
    with OnnxRuntimeRunner(os.fspath(onnx_path), threads=threads) as runner:
        t0 = time.perf_counter()
        outputs = runner.run({runner.input_names[0]: x.numpy()})
        ort_s = time.perf_counter() - t0
        got = [outputs[n] for n in runner.output_names]
    with torch.no_grad():
        t0 = time.perf_counter()
        ref = module(x)
        torch_s = time.perf_counter() - t0
    ref = [r.numpy() for r in (ref if isinstance(ref, (tuple, list)) else (ref,))]
    task = lc_spec(name).task
    res = {"ort_run_s": ort_s, "torch_run_s": torch_s}
    if task == "detection":
        m = compare_detections(ref, got)
        res.update(m)
        # An LC export must reproduce every detection, not just the fraction a bundle export tolerates.
        res["ok"] = bool(m["detections_reference"] == m["detections_candidate"] == m["matched"]
                         and m["max_box_error_px"] <= BOX_TOLERANCE_PX)
    else:
        diff = max(float(np.abs(r.astype(np.float64) - g.astype(np.float64)).max()) for r, g in zip(ref, got))
        scale = max(float(np.abs(r).max()) for r in ref)
        res["max_abs_diff"] = diff
        res["max_abs_ref"] = scale
        res["ok"] = bool(diff <= 1e-3 * max(1.0, scale))
    return res


def export_lc_model(name, out_path, input_size=None, seed=0, verify=True, model=None, input_seed=1):
    """Export LC model ``name`` to ONNX at a fixed input size and (optionally) check it against torch.

    Args:
        name: registry name (see ``LC_MODELS``).
        out_path: path of the .onnx file to write (parent directories are created).
        input_size: (H, W); default: the registry's.
        seed: weight seed (``build_lc_model``); ignored when ``model`` is given.
        verify: run ONNX Runtime against torch on a seeded input (``example_input(seed=input_seed)``).
        model: an already built (unwrapped) torchvision model to export instead of building one.

    Returns:
        dict: name, task, path, input_name, input_shape, output_names, opset, exporter, export_s, file_bytes,
        ok, error (None or the reason the export failed), parity (the verification dict, or None).
    """
    import torch
    spec = lc_spec(name)
    size = tuple(input_size or spec.input_size)
    shape = input_shape_for(spec, size)
    in_names, out_names = io_names(name)
    out_path = os.fspath(out_path)
    parent = os.path.dirname(os.path.abspath(out_path))
    os.makedirs(parent, exist_ok=True)
    result = OrderedDict([("name", name), ("task", spec.task), ("path", out_path), ("input_name", in_names[0]),
                          ("input_shape", list(shape)), ("output_names", out_names), ("opset", OPSET),
                          ("exporter", "torchscript (dynamo=False)"), ("export_s", None), ("file_bytes", None),
                          ("ok", False), ("error", None), ("parity", None)])
    if model is None:
        model = build_lc_model(name, seed=seed, input_size=size)
    module = wrap_for_export(name, model.eval())
    x = example_input(name, size, seed=input_seed)
    t0 = time.perf_counter()
    try:
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with torch.no_grad():
                torch.onnx.export(module, (x,), out_path, dynamo=False, opset_version=OPSET,
                                  input_names=in_names, output_names=out_names, do_constant_folding=True)
    except Exception as exc:  # record why and move on: the caller decides whether that is fatal
        result["export_s"] = time.perf_counter() - t0
        result["error"] = "%s: %s" % (type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
        return result
    result["export_s"] = time.perf_counter() - t0
    result["file_bytes"] = os.path.getsize(out_path)
    if verify:
        try:
            result["parity"] = verify_onnx_against_torch(name, module, out_path, x)
        except Exception as exc:
            result["error"] = "ONNX Runtime check failed: %s: %s" % (type(exc).__name__, exc)
            return result
        result["ok"] = bool(result["parity"]["ok"])
        if not result["ok"]:
            result["error"] = "parity check failed: %s" % (result["parity"],)
    else:
        result["ok"] = True
    return result
