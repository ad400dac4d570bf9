"""`ladon-bench models`: the LC baselines exported once on a torch machine, for devices that have no torch.

    ladon-bench models --out lc-models/          # then copy lc-models/ to the Jetson: ladon-bench device --models

Writes one ONNX file per model (at the bundles' opset, so the same runtimes read them) and DIR/models.json with each
model's file, task, input size, weight bytes and GMAC (counted here, where onnx is installed). Models already in the
directory are kept.
"""
import collections
import json
import os
from typing import Any, Callable, Dict, List, Optional

from ladon_deploy.bench.device_bench import MODELS_INDEX, QUICK_LC

Progress = Callable[[str], None]


def lc_model_names(quick: bool) -> Dict[str, List[str]]:
    from ladon_deploy.models.baselines import lc_model_names as names

    if quick:
        return QUICK_LC
    return collections.OrderedDict((task, names(task)) for task in ("classification", "detection", "segmentation"))


def model_file(name: str) -> str:
    from ladon_deploy.export.pipeline import OPSET

    return "%s-opset%d.onnx" % (name, OPSET)


def exports_needed(out_dir: str, quick: bool) -> int:
    return sum(1 for names in lc_model_names(quick).values() for name in names
               if not os.path.isfile(os.path.join(out_dir, model_file(name))))


def onnx_weight_bytes(path: str) -> int:
    import onnx

    model = onnx.load(path, load_external_data=False)
    return int(sum(onnx.numpy_helper.to_array(t).nbytes for t in model.graph.initializer))


def export_models(out_dir: str, quick: bool = False, progress: Optional[Progress] = None) -> Dict[str, Dict[str, Any]]:
    """Exports the LC models missing from out_dir and (re)writes its index; returns the index's models."""
    from ladon_deploy.atomic import write_file_atomically, write_text_atomically
    from ladon_deploy.gmac import count_gmac
    from ladon_deploy.export.baselines import export_lc_model
    from ladon_deploy.export.pipeline import OPSET
    from ladon_deploy.models.baselines import LC_MODELS

    progress = progress or (lambda message: None)
    os.makedirs(out_dir, exist_ok=True)
    index_path = os.path.join(out_dir, MODELS_INDEX)
    try:
        with open(index_path) as handle:
            models = json.load(handle).get("models", {})
    except (OSError, ValueError, AttributeError):
        models = {}
    for task, names in lc_model_names(quick).items():
        for name in names:
            path = os.path.join(out_dir, model_file(name))
            if not os.path.isfile(path):
                progress("exporting LC model %s" % name)

                def export(temporary: str, name: str = name) -> None:
                    result = export_lc_model(name, temporary, verify=False)
                    if result["error"]:
                        raise RuntimeError("cannot export %s: %s" % (name, result["error"]))

                write_file_atomically(path, export)
            if name in models and models[name].get("file") == model_file(name) and "gmac" in models[name]:
                continue
            import onnxruntime

            session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
            graph_input = session.get_inputs()[0]
            shape = tuple(int(d) for d in graph_input.shape)
            report = count_gmac(path, {graph_input.name: shape}, unknown_dim=150)
            spec = LC_MODELS[name]
            models[name] = {"task": task, "file": model_file(name), "input_size": list(spec.input_size),
                            "input_shape": list(shape), "description": spec.description,
                            "weight_bytes": onnx_weight_bytes(path), "gmac": float(report.total_gmac),
                            "gmac_complete": bool(report.complete), "opset": OPSET}
    write_text_atomically(index_path, json.dumps({"models": models}, indent=1) + "\n")
    wanted = [name for names in lc_model_names(quick).values() for name in names]
    return collections.OrderedDict((name, dict(models[name], path=os.path.join(out_dir, models[name]["file"])))
                                   for name in wanted)
