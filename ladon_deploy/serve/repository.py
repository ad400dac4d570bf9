"""The server half as a Triton model repository: `ladon-build --bundle B --target triton --out DIR` (served here by
ladon_deploy/serve/repository_server.py).

One ensemble, `ladon`, with exactly ladon-serve's interface (BYTES `payload` dims [1] in, BYTES `result` dims [1]
out, a request carries shape [1, 1]), so the device client talks to a pool of stock tritonservers unchanged:

    payload --ladon_decode--> latent_hat (+ image_size) --ladon_body--> feat1..feat4 --ladon_head_<task>--> raw
    outputs --ladon_results (+ payload)--> result

- ladon_decode (Python backend): the toolkit's own coder: unframe, rANS decode, dequantize; one payload at a time.
- ladon_body, ladon_head_<task>: per backend
    onnxruntime  platform onnxruntime_onnx, the bundle's ONNX files;
    tensorrt     platform tensorrt_plan, the plans `ladon-build --target server` left in the bundle's engines area,
                 one per compute capability through cc_model_filenames; a stage without a plan (detection, whose
                 graph TensorRT's parser cannot take) stays onnxruntime_onnx with the TensorRT execution accelerator;
    python       Python-backend models running the same ONNX files through ONNX Runtime (what the tritonserver
                 bundled in nvidia-pytriton can load: it has no other backend).
- ladon_results (Python backend): the results document, the same JSON as ServerResult.to_json.

Batching. The bundle's ONNX files have a fixed batch of 1, and Triton's batching backends need the first dimension
dynamic, so the repository's copies of the body and the classification and segmentation heads get a dynamic first
dimension (their graphs are per-sample convolutions: batched results equal unbatched ones, tests check it). The
detection head is one image per run (its NMS and image_size are per image): its copy gets a leading batch dimension
of 1 on every input and output and max_batch_size 1. The ensemble itself has max_batch_size 1 (one payload per
request); each composing model batches requests from different devices on its own (dynamic batching, same latent
shape only, as Triton batches only equal shapes). Decoding and the results document are per request.

Dims and types come from the bundle's manifest (symbolic dimensions are -1). The repository is assembled in a staging
directory and moved into place in one step; its root holds ladon_repository.json (bundle id, backend, options,
toolkit version), and the ensemble and every step carry the bundle id as a config parameter.

The Python-backend steps are the files in ladon_deploy/serve/triton_python/, copied as <model>/1/model.py. They
import ladon_deploy from the installed package (the Python that runs Triton's Python-backend stub must have
`pip install ladon-deploy`, with onnxruntime for the python variant): the coder has a compiled part, which cannot
be copied into a repository for an unknown interpreter.
"""
import collections
import json
import os
import shutil
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ladon_deploy import __version__ as TOOLKIT_VERSION
from ladon_deploy.atomic import make_staging_directory, replace_directory
from ladon_deploy.bundle import SIDECAR_SUFFIX, STAGE_FILES, TASK_HEADS, Bundle, engine_name, open_bundle
from ladon_deploy.device import wire
from ladon_deploy.errors import BundleError, EngineError, LadonError

BACKENDS = ("onnxruntime", "tensorrt", "python")
INSTANCE_KINDS = {"gpu": "KIND_GPU", "cpu": "KIND_CPU"}
DEFAULT_INSTANCE_KIND = {"onnxruntime": "gpu", "tensorrt": "gpu", "python": "cpu"}

ENSEMBLE_MODEL = "ladon"
DECODE_MODEL = "ladon_decode"
RESULTS_MODEL = "ladon_results"
REPOSITORY_INFO = "ladon_repository.json"
VERSION_DIR = "1"

ENSEMBLE_INPUT = "payload"
ENSEMBLE_OUTPUT = "result"
TASK_MASK = "task_mask"
"""ladon_decode -> the python variant's heads: the payload's task bitmask (wire.TASK_BITS)."""
DECODE_TIMINGS = "decode_timings"
"""ladon_decode -> ladon_results: [wall-clock start, unframe s, entropy_decode s, dequantize s] of each request."""

PYTHON_STEPS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "triton_python")
PYTHON_STEP_FILES = {DECODE_MODEL: "ladon_decode.py", RESULTS_MODEL: "ladon_results.py", "stage": "ladon_onnx.py"}

# Config data types of the manifest's dtypes (Triton's model_config.proto DataType).
TRITON_TYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "float64": "TYPE_FP64", "int64": "TYPE_INT64",
                "int32": "TYPE_INT32", "int8": "TYPE_INT8", "uint8": "TYPE_UINT8", "bool": "TYPE_BOOL"}

SERVER_TARGET = "server"


def stage_model_name(stage: str) -> str:
    return "ladon_" + stage


def task_of_head(stage: str) -> str:
    return [task for task, head in TASK_HEADS.items() if head == stage][0]


def head_tensor_name(task: str, output: str) -> str:
    """The ensemble's name for one head output, which is also ladon_results' input name: 'cls_probabilities'."""
    return "%s_%s" % (task, output)


class TensorSpec:
    """One input or output of a repository model: name, Triton type and dims without the batch dimension."""

    def __init__(self, name: str, data_type: str, dims: Sequence[int]) -> None:
        self.name = name
        self.data_type = data_type
        self.dims = [int(d) for d in dims]


def _dim(value: Any) -> int:
    return int(value) if isinstance(value, int) else -1


def _triton_type(dtype: str, where: str) -> str:
    if dtype not in TRITON_TYPES:
        raise BundleError("%s has dtype %r, which has no Triton type here (known: %s)"
                          % (where, dtype, ", ".join(sorted(TRITON_TYPES))))
    return TRITON_TYPES[dtype]


def carries_batch(stage: Dict[str, Any]) -> bool:
    """Whether every input of a stage leads with its batch of 1 (body, classification, segmentation), as opposed to
    a per-image stage whose inputs include per-image tensors (detection's image_size [2])."""
    return all(len(t["shape"]) >= 2 and t["shape"][0] == 1 for t in stage["inputs"])


def stage_tensors(stage: Dict[str, Any], where: str) -> Tuple[List[TensorSpec], List[TensorSpec]]:
    """The config dims of a stage's inputs and outputs, batch dimension removed.

    Batched stages: every tensor's first dimension is the batch. Per-image stages: tensors that lead with a batch
    of 1 drop it; the others (image_size, the detections) are wrapped in a batch of 1 by `add_unit_batch`.
    """
    batched = carries_batch(stage)

    def spec(tensor: Dict[str, Any]) -> TensorSpec:
        shape = list(tensor["shape"])
        leading_batch = batched or (len(shape) >= 2 and shape[0] == 1)
        dims = shape[1:] if leading_batch else shape
        return TensorSpec(tensor["name"], _triton_type(tensor["dtype"], "%s tensor %s" % (where, tensor["name"])),
                          [_dim(d) for d in dims])

    return [spec(t) for t in stage["inputs"]], [spec(t) for t in stage["outputs"]]


# --- ONNX copies with a batch dimension Triton can use ----------------------------------------------------------

def _onnx():
    try:
        import onnx
    except ImportError:
        raise LadonError("writing a Triton repository needs the onnx package: pip install onnx")
    return onnx


def _rename_uses(graph: Any, old: str, new: str, outputs: bool = False) -> None:
    """Renames the uses of a tensor in a graph and its subgraphs (If and Loop bodies read outer-scope tensors by
    name); outputs=True renames its production too (top level only: that is where graph outputs are produced)."""
    for node in graph.node:
        node.input[:] = [new if name == old else name for name in node.input]
        if outputs:
            node.output[:] = [new if name == old else name for name in node.output]
        for attribute in node.attribute:
            for subgraph in list(attribute.graphs) + ([attribute.g] if attribute.HasField("g") else []):
                _rename_uses(subgraph, old, new)


def add_unit_batch(model: Any) -> Any:
    """Gives a per-image graph a leading batch dimension (of 1) on every input and output that lacks one.

    Inputs that already lead with 1 are declared 'batch' (Triton requires a dynamic first dimension; max_batch_size
    1 keeps it 1). Other inputs become [batch] + shape and are reshaped back to their shape in front of the graph;
    every output gets an Unsqueeze on axis 0 behind it.
    """
    onnx = _onnx()
    from onnx import helper, numpy_helper
    import numpy as np

    graph = model.graph
    opset = max([o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] or [13])
    initializer_names = set(i.name for i in graph.initializer)
    front = []
    for value in graph.input:
        if value.name in initializer_names:
            continue
        dims = value.type.tensor_type.shape.dim
        if len(dims) >= 2 and dims[0].HasField("dim_value") and dims[0].dim_value == 1:
            dims[0].ClearField("dim_value")
            dims[0].dim_param = "batch"
            continue
        if any(not d.HasField("dim_value") for d in dims):
            raise EngineError("input %s of a per-image graph has a dynamic shape; cannot add a batch dimension"
                              % value.name)
        inner = value.name + "__unbatched"
        shape_name = value.name + "__shape"
        graph.initializer.append(numpy_helper.from_array(np.asarray([d.dim_value for d in dims], np.int64),
                                                         shape_name))
        _rename_uses(graph, value.name, inner)
        front.append(helper.make_node("Reshape", [value.name, shape_name], [inner], name=inner))
        sizes = [d.dim_value for d in dims]
        value.type.tensor_type.shape.ClearField("dim")
        value.type.tensor_type.shape.dim.add().dim_param = "batch"
        for size in sizes:
            value.type.tensor_type.shape.dim.add().dim_value = size
    back = []
    for value in graph.output:
        inner = value.name + "__unbatched"
        _rename_uses(graph, value.name, inner, outputs=True)
        if opset >= 13:
            axes_name = value.name + "__axes"
            graph.initializer.append(numpy_helper.from_array(np.asarray([0], np.int64), axes_name))
            back.append(helper.make_node("Unsqueeze", [inner, axes_name], [value.name], name=value.name + "__batch"))
        else:
            back.append(helper.make_node("Unsqueeze", [inner], [value.name], axes=[0], name=value.name + "__batch"))
        old = [(d.dim_param, d.dim_value, d.HasField("dim_value")) for d in value.type.tensor_type.shape.dim]
        value.type.tensor_type.shape.ClearField("dim")
        value.type.tensor_type.shape.dim.add().dim_param = "batch"
        for param, size, static in old:
            new = value.type.tensor_type.shape.dim.add()
            if static:
                new.dim_value = size
            else:
                new.dim_param = param
    nodes = front + list(graph.node) + back
    graph.ClearField("node")
    graph.node.extend(nodes)
    del graph.value_info[:]
    onnx.checker.check_model(model)
    return model


def write_triton_onnx(source: str, destination: str, batched: bool) -> None:
    """Writes the repository copy of one stage: batch-capable (the copy ladon-serve batches with) or, for a per-image
    stage, wrapped in a batch of 1."""
    if batched:
        from ladon_deploy.serve.server import write_batch_capable_copy

        write_batch_capable_copy(source, destination)
        return
    onnx = _onnx()
    try:
        model = onnx.load(source)
    except Exception as exc:  # onnx raises DecodeError, OSError, ValueError... on a damaged file
        raise BundleError("cannot read %s: %s" % (source, exc))
    onnx.save(add_unit_batch(model), destination)


# --- TensorRT plans ------------------------------------------------------------------------------------------------

class PlanFile:
    """One server plan and its sidecar (ladon_deploy/engines/sidecar.py)."""

    def __init__(self, path: str, sidecar: Dict[str, Any]) -> None:
        self.path = path
        self.sidecar = sidecar

    @property
    def compute_capability(self) -> str:
        return str(self.sidecar["gpu"]["compute_capability"])

    @property
    def tensorrt_version(self) -> str:
        return str(self.sidecar["tensorrt"]["version"])

    @property
    def max_batch(self) -> int:
        """The largest batch the plan's optimization profile admits on every input (1 for a fixed batch)."""
        return min(int(shapes["max"][0]) for shapes in self.sidecar["profile"].values())


def find_server_plans(bundle: Bundle, stage: str, precision: str,
                      extra_dirs: Sequence[str] = ()) -> List[PlanFile]:
    """The TensorRT plans of one stage and precision: the bundle's engines/server folder and any further folders of
    plans built by `ladon-build --target server` on GPUs of other compute capabilities.

    Each plan is vouched for by its sidecar: built from this bundle's ONNX, the file it names unchanged. A sidecar
    whose verdict is ONNX Runtime (a stage TensorRT's parser cannot take) yields no plan.
    """
    from ladon_deploy.engines import sidecar as sidecars

    plans = []
    versions: Dict[str, str] = {}
    for directory in [bundle.engines_dir(SERVER_TARGET)] + list(extra_dirs):
        path = os.path.join(directory, engine_name(stage, precision) + SIDECAR_SUFFIX)
        if not os.path.isfile(path):
            continue
        document = sidecars.read_sidecar(path)
        sidecars.check_source(document, bundle, path)
        if document["engine"] != "tensorrt":
            continue
        plan = PlanFile(sidecars.check_engine_file(document, directory, path), document)
        other = versions.setdefault(plan.compute_capability, plan.path)
        if other != plan.path:
            raise EngineError("two %s %s plans for compute capability %s: %s and %s"
                              % (stage, precision, plan.compute_capability, other, plan.path))
        plans.append(plan)
    if len(set(plan.tensorrt_version for plan in plans)) > 1:
        raise EngineError("the %s plans were built by different TensorRT versions (%s); one Triton loads one: "
                          "rebuild them with the same TensorRT"
                          % (stage, ", ".join(sorted(set(p.tensorrt_version for p in plans)))))
    return plans


def plan_file_name(stage: str, precision: str, compute_capability: str) -> str:
    return "%s.%s.sm%s.plan" % (stage, precision, compute_capability.replace(".", ""))


# --- config.pbtxt ------------------------------------------------------------------------------------------------

def _quote(text: str) -> str:
    return json.dumps(text)  # protobuf text format accepts JSON's double-quoted escapes


def _tensor_block(kind: str, tensors: Sequence[TensorSpec]) -> List[str]:
    if not tensors:
        return []
    lines = ["%s [" % kind]
    for index, tensor in enumerate(tensors):
        lines.append("  {")
        lines.append("    name: %s" % _quote(tensor.name))
        lines.append("    data_type: %s" % tensor.data_type)
        lines.append("    dims: [ %s ]" % ", ".join(str(d) for d in tensor.dims))
        lines.append("  }" + ("," if index < len(tensors) - 1 else ""))
    lines.append("]")
    return lines


def _parameters(parameters: Dict[str, str]) -> List[str]:
    lines = []
    for key in sorted(parameters):
        lines.append("parameters {")
        lines.append("  key: %s" % _quote(key))
        lines.append("  value { string_value: %s }" % _quote(str(parameters[key])))
        lines.append("}")
    return lines


class ModelConfig:
    """What one config.pbtxt says; `text()` renders it in protobuf text format."""

    def __init__(self, name: str, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec],
                 max_batch_size: int, backend: Optional[str] = None, platform: Optional[str] = None,
                 instance_kind: Optional[str] = None, instances: int = 1, queue_delay_us: Optional[int] = None,
                 parameters: Optional[Dict[str, str]] = None, cc_model_filenames: Optional[Dict[str, str]] = None,
                 default_model_filename: Optional[str] = None, tensorrt_accelerator: bool = False,
                 ensemble_steps: Optional[List[Dict[str, Any]]] = None) -> None:
        self.name = name
        self.inputs = list(inputs)
        self.outputs = list(outputs)
        self.max_batch_size = max_batch_size
        self.backend = backend
        self.platform = platform
        self.instance_kind = instance_kind
        self.instances = instances
        self.queue_delay_us = queue_delay_us
        self.parameters = dict(parameters or {})
        self.cc_model_filenames = dict(cc_model_filenames or {})
        self.default_model_filename = default_model_filename
        self.tensorrt_accelerator = tensorrt_accelerator
        self.ensemble_steps = ensemble_steps

    def text(self) -> str:
        lines = ["name: %s" % _quote(self.name)]
        if self.platform:
            lines.append("platform: %s" % _quote(self.platform))
        if self.backend:
            lines.append("backend: %s" % _quote(self.backend))
        lines.append("max_batch_size: %d" % self.max_batch_size)
        if self.default_model_filename:
            lines.append("default_model_filename: %s" % _quote(self.default_model_filename))
        for capability in sorted(self.cc_model_filenames):
            lines.append("cc_model_filenames { key: %s value: %s }"
                         % (_quote(capability), _quote(self.cc_model_filenames[capability])))
        lines += _tensor_block("input", self.inputs)
        lines += _tensor_block("output", self.outputs)
        if self.queue_delay_us is not None and self.max_batch_size > 0:
            lines.append("dynamic_batching { max_queue_delay_microseconds: %d }" % self.queue_delay_us)
        if self.instance_kind:
            lines.append("instance_group [ { count: %d kind: %s } ]" % (self.instances, self.instance_kind))
        if self.tensorrt_accelerator:
            lines.append('optimization { execution_accelerators { gpu_execution_accelerator : [ { name : "tensorrt" '
                         '} ] } }')
        if self.ensemble_steps is not None:
            lines.append("ensemble_scheduling {")
            lines.append("  step [")
            for index, step in enumerate(self.ensemble_steps):
                lines.append("    {")
                lines.append("      model_name: %s" % _quote(step["model"]))
                lines.append("      model_version: -1")
                for key, value in step["inputs"]:
                    lines.append("      input_map { key: %s value: %s }" % (_quote(key), _quote(value)))
                for key, value in step["outputs"]:
                    lines.append("      output_map { key: %s value: %s }" % (_quote(key), _quote(value)))
                lines.append("    }" + ("," if index < len(self.ensemble_steps) - 1 else ""))
            lines.append("  ]")
            lines.append("}")
        lines += _parameters(self.parameters)
        return "\n".join(lines) + "\n"


# --- the repository ----------------------------------------------------------------------------------------------

class RepositoryOptions:
    def __init__(self, backend: str = "onnxruntime", instances: int = 1, max_batch: int = 8,
                 max_queue_delay_ms: float = 5.0, instance_kind: Optional[str] = None, precision: str = "fp16",
                 plan_dirs: Sequence[str] = ()) -> None:
        if backend not in BACKENDS:
            raise LadonError("unknown Triton backend %r (known: %s)" % (backend, ", ".join(BACKENDS)))
        if instances < 1:
            raise LadonError("--instances must be at least 1, got %d" % instances)
        if max_batch < 1:
            raise LadonError("--max-batch must be at least 1, got %d" % max_batch)
        if not 0 <= max_queue_delay_ms <= 60000:
            raise LadonError("--max-queue-delay-ms must be between 0 and 60000, got %g" % max_queue_delay_ms)
        kind = instance_kind or DEFAULT_INSTANCE_KIND[backend]
        if kind not in INSTANCE_KINDS:
            raise LadonError("unknown instance kind %r (known: %s)" % (kind, ", ".join(INSTANCE_KINDS)))
        if backend == "tensorrt" and kind != "gpu":
            raise LadonError("TensorRT plans run on GPU instances only")
        self.backend = backend
        self.instances = instances
        self.max_batch = max_batch
        self.max_queue_delay_ms = max_queue_delay_ms
        self.instance_kind = kind
        self.precision = precision
        self.plan_dirs = list(plan_dirs)

    @property
    def queue_delay_us(self) -> int:
        return int(round(self.max_queue_delay_ms * 1000))

    def to_json(self) -> Dict[str, Any]:
        return {"backend": self.backend, "instances": self.instances, "max_batch": self.max_batch,
                "max_queue_delay_ms": self.max_queue_delay_ms, "instance_kind": self.instance_kind,
                "precision": self.precision if self.backend == "tensorrt" else None}


class RepositoryPlan:
    """Every model of the repository as configs plus the files to put next to them, before anything is written."""

    def __init__(self, bundle: Bundle, options: RepositoryOptions) -> None:
        self.bundle = bundle
        self.options = options
        self.configs: Dict[str, ModelConfig] = collections.OrderedDict()
        # (model, file name in the version dir, how, source)
        self.files: List[Tuple[str, str, str, str]] = []
        # stage -> (the engine label result documents carry, what the report says)
        self.stage_backends: Dict[str, Tuple[str, str]] = collections.OrderedDict()
        self._build()

    def _common(self) -> Dict[str, str]:
        return {"bundle_id": self.bundle.bundle_id}

    def _build(self) -> None:
        bundle, options = self.bundle, self.options
        tasks = list(bundle.tasks)
        body = bundle.stage("body")
        body_inputs, body_outputs = stage_tensors(body, "body")
        if len(body_inputs) != 1:
            raise BundleError("the body stage has %d inputs; the repository expects one latent" % len(body_inputs))
        latent = body_inputs[0]
        decode_outputs = [latent, TensorSpec(DECODE_TIMINGS, "TYPE_FP64", [4])]
        if "det" in tasks:
            det_inputs, _ = stage_tensors(bundle.stage("head_det"), "head_det")
            decode_outputs += [t for t in det_inputs if t.name not in set(o.name for o in body_outputs)]
        skips = options.backend == "python"
        if skips:
            decode_outputs.append(TensorSpec(TASK_MASK, "TYPE_INT32", [1]))
        cpu_step = dict(instance_kind="KIND_CPU", instances=options.instances, queue_delay_us=options.queue_delay_us)
        self.configs[DECODE_MODEL] = ModelConfig(
            DECODE_MODEL, [TensorSpec(ENSEMBLE_INPUT, "TYPE_STRING", [1])], decode_outputs, options.max_batch,
            backend="python", parameters=dict(self._common(), tasks=",".join(tasks)), **cpu_step)
        self.files.append((DECODE_MODEL, "model.py", "copy", os.path.join(PYTHON_STEPS_DIR,
                                                                          PYTHON_STEP_FILES[DECODE_MODEL])))
        self.files.append((DECODE_MODEL, "manifest.json", "copy", os.path.join(bundle.directory, "manifest.json")))
        self.files.append((DECODE_MODEL, STAGE_FILES["entropy"], "copy", bundle.path("entropy")))

        steps = [{"model": DECODE_MODEL, "inputs": [(ENSEMBLE_INPUT, ENSEMBLE_INPUT)],
                  "outputs": [(t.name, t.name) for t in decode_outputs]}]
        results_inputs = [TensorSpec(ENSEMBLE_INPUT, "TYPE_STRING", [1]), TensorSpec(DECODE_TIMINGS, "TYPE_FP64", [4])]
        results_map = [(ENSEMBLE_INPUT, ENSEMBLE_INPUT), (DECODE_TIMINGS, DECODE_TIMINGS)]
        unbatched_outputs = []
        for stage in ["body"] + [TASK_HEADS[task] for task in tasks]:
            inputs, outputs = stage_tensors(bundle.stage(stage), stage)
            name = stage_model_name(stage)
            self.configs[name] = self._stage_config(stage, name, inputs, outputs)
            if stage == "body":
                step_outputs = [(t.name, t.name) for t in outputs]
            else:
                task = [t for t in tasks if TASK_HEADS[t] == stage][0]
                step_outputs = [(t.name, head_tensor_name(task, t.name)) for t in outputs]
                results_inputs += [TensorSpec(head_tensor_name(task, t.name), t.data_type, t.dims) for t in outputs]
                results_map += [(head_tensor_name(task, t.name), head_tensor_name(task, t.name)) for t in outputs]
                if not carries_batch(bundle.stage(stage)):
                    unbatched_outputs += [head_tensor_name(task, t.name) for t in outputs]
            step_inputs = [(t.name, t.name) for t in inputs]
            if skips and stage != "body":
                step_inputs.append((TASK_MASK, TASK_MASK))
            steps.append({"model": name, "inputs": step_inputs, "outputs": step_outputs})
        self.configs[RESULTS_MODEL] = ModelConfig(
            RESULTS_MODEL, results_inputs, [TensorSpec(ENSEMBLE_OUTPUT, "TYPE_STRING", [1])], options.max_batch,
            backend="python", parameters=dict(self._common(), tasks=",".join(tasks), top_k="5",
                                              unbatched_outputs=",".join(unbatched_outputs),
                                              engines=json.dumps(self.engine_labels())), **cpu_step)
        self.files.append((RESULTS_MODEL, "model.py", "copy", os.path.join(PYTHON_STEPS_DIR,
                                                                           PYTHON_STEP_FILES[RESULTS_MODEL])))
        steps.append({"model": RESULTS_MODEL, "inputs": results_map, "outputs": [(ENSEMBLE_OUTPUT, ENSEMBLE_OUTPUT)]})
        self.configs[ENSEMBLE_MODEL] = ModelConfig(
            ENSEMBLE_MODEL, [TensorSpec(ENSEMBLE_INPUT, "TYPE_STRING", [1])],
            [TensorSpec(ENSEMBLE_OUTPUT, "TYPE_STRING", [1])], 1, platform="ensemble",
            parameters=dict(self._common(), toolkit_version=TOOLKIT_VERSION, backend=options.backend),
            ensemble_steps=steps)

    def _stage_config(self, stage: str, name: str, inputs: List[TensorSpec],
                      outputs: List[TensorSpec]) -> ModelConfig:
        bundle, options = self.bundle, self.options
        batched = carries_batch(bundle.stage(stage))
        max_batch = options.max_batch if batched else 1
        kind = INSTANCE_KINDS[options.instance_kind]
        common = dict(instance_kind=kind, instances=options.instances, queue_delay_us=options.queue_delay_us,
                      parameters=dict(self._common(), stage=stage))
        onnx_copy = (name, "model.onnx", "batched-onnx" if batched else "unit-batch-onnx", bundle.path(stage))
        if options.backend == "python":
            self.stage_backends[stage] = ("onnxruntime", "Python backend running ONNX Runtime (CPU)")
            self.files.append(onnx_copy)
            self.files.append((name, "model.py", "copy", os.path.join(PYTHON_STEPS_DIR, PYTHON_STEP_FILES["stage"])))
            if stage != "body":
                # Python heads skip the payloads that did not ask for their task (Triton's ensembles have no branches).
                inputs = inputs + [TensorSpec(TASK_MASK, "TYPE_INT32", [1])]
                common["parameters"]["task_bit"] = str(dict(wire.TASK_BITS)[task_of_head(stage)])
            return ModelConfig(name, inputs, outputs, max_batch, backend="python", **common)
        if options.backend == "tensorrt":
            plans = find_server_plans(bundle, stage, options.precision, options.plan_dirs)
            if plans:
                self.stage_backends[stage] = ("tensorrt %s" % options.precision, "tensorrt_plan, TensorRT %s, %s" % (
                    plans[0].tensorrt_version, ", ".join("sm %s" % p.compute_capability for p in plans)))
                names = {}
                for plan in plans:
                    file_name = plan_file_name(stage, options.precision, plan.compute_capability)
                    names[plan.compute_capability] = file_name
                    self.files.append((name, file_name, "copy", plan.path))
                plan_batch = min(plan.max_batch for plan in plans)
                if batched and plan_batch > 1:
                    max_batch = min(max_batch, plan_batch)
                    return ModelConfig(name, inputs, outputs, max_batch, platform="tensorrt_plan",
                                       cc_model_filenames=names, default_model_filename=names[sorted(names)[0]],
                                       **common)
                # A plan whose profile fixes the batch at 1 cannot batch: Triton sees its full shapes.
                full_inputs, full_outputs = _with_unit_batch(inputs, bundle.stage(stage)["inputs"]), \
                    _with_unit_batch(outputs, bundle.stage(stage)["outputs"])
                common["queue_delay_us"] = None
                return ModelConfig(name, full_inputs, full_outputs, 0, platform="tensorrt_plan",
                                   cc_model_filenames=names, default_model_filename=names[sorted(names)[0]],
                                   **common)
            if stage == "body":
                raise EngineError("bundle %s has no %s TensorRT plan of the body in %s: build the server's plans "
                                  "first (ladon-build --bundle %s --target server --precision %s)"
                                  % (bundle.directory, options.precision, bundle.engines_dir(SERVER_TARGET),
                                     bundle.directory, options.precision))
            self.stage_backends[stage] = ("triton onnxruntime_onnx+tensorrt",
                                          "onnxruntime_onnx with the TensorRT execution accelerator (no %s plan)"
                                          % stage)
            self.files.append(onnx_copy)
            return ModelConfig(name, inputs, outputs, max_batch, platform="onnxruntime_onnx",
                               tensorrt_accelerator=True, **common)
        self.stage_backends[stage] = ("triton onnxruntime_onnx", "onnxruntime_onnx")
        self.files.append(onnx_copy)
        return ModelConfig(name, inputs, outputs, max_batch, platform="onnxruntime_onnx", **common)

    def engine_labels(self) -> Dict[str, str]:
        return {stage: label for stage, (label, _) in self.stage_backends.items()}

    def info(self) -> Dict[str, Any]:
        return collections.OrderedDict([
            ("format", "ladon-triton-repository"), ("bundle_id", self.bundle.bundle_id),
            ("bundle", os.path.abspath(self.bundle.directory)), ("toolkit_version", TOOLKIT_VERSION),
            ("ensemble", ENSEMBLE_MODEL), ("tasks", self.bundle.tasks), ("options", self.options.to_json()),
            ("stages", {stage: {"engine": label, "how": how} for stage, (label, how) in self.stage_backends.items()}),
            ("models", list(self.configs)),
            ("interface", {"input": {"name": ENSEMBLE_INPUT, "data_type": "TYPE_STRING", "dims": [1]},
                           "output": {"name": ENSEMBLE_OUTPUT, "data_type": "TYPE_STRING", "dims": [1]}}),
        ])


def _with_unit_batch(specs: List[TensorSpec], tensors: List[Dict[str, Any]]) -> List[TensorSpec]:
    return [TensorSpec(s.name, s.data_type, [_dim(d) for d in t["shape"]]) for s, t in zip(specs, tensors)]


def _place(how: str, source: str, destination: str) -> None:
    if how == "copy":
        shutil.copyfile(source, destination)
    elif how == "batched-onnx":
        write_triton_onnx(source, destination, batched=True)
    elif how == "unit-batch-onnx":
        write_triton_onnx(source, destination, batched=False)
    else:
        raise ValueError(how)


class RepositoryReport:
    def __init__(self, directory: str, plan: RepositoryPlan) -> None:
        self.directory = directory
        self.plan = plan

    def lines(self) -> List[str]:
        out = ["Triton model repository %s (bundle %s, backend %s)"
               % (self.directory, self.plan.bundle.bundle_id, self.plan.options.backend)]
        for stage, (_, how) in self.plan.stage_backends.items():
            out.append("  %-9s %s" % (stage, how))
        out.append("  models: %s" % ", ".join(self.plan.configs))
        return out


def write_repository(bundle_dir: str, out: str, options: Optional[RepositoryOptions] = None,
                     force: bool = False) -> RepositoryReport:
    """Writes the Triton model repository of a bundle's server half to `out`, atomically.

    An existing `out` is replaced only with force=True, and only if it is a repository this toolkit wrote.
    """
    options = options or RepositoryOptions()
    bundle = open_bundle(bundle_dir, verify=True)
    out = os.path.abspath(str(out))
    if os.path.lexists(out):
        if not force:
            raise LadonError("%s already exists (use --force to replace it)" % out)
        if not os.path.isfile(os.path.join(out, REPOSITORY_INFO)):
            raise LadonError("%s exists and is not a Ladon Triton repository; not replacing it" % out)
    plan = RepositoryPlan(bundle, options)
    staging = make_staging_directory(out)
    try:
        for name, config in plan.configs.items():
            os.makedirs(os.path.join(staging, name, VERSION_DIR))
            with open(os.path.join(staging, name, "config.pbtxt"), "w") as handle:
                handle.write(config.text())
        for name, file_name, how, source in plan.files:
            _place(how, source, os.path.join(staging, name, VERSION_DIR, file_name))
        with open(os.path.join(staging, REPOSITORY_INFO), "w") as handle:
            json.dump(plan.info(), handle, indent=2)
            handle.write("\n")
        replace_directory(staging, out)
    finally:
        if os.path.isdir(staging):
            shutil.rmtree(staging, ignore_errors=True)
    return RepositoryReport(out, plan)


def read_repository_info(directory: str) -> Dict[str, Any]:
    """The ladon_repository.json of a repository written by write_repository (LadonError if there is none)."""
    path = os.path.join(str(directory), REPOSITORY_INFO)
    if not os.path.isdir(str(directory)):
        raise LadonError("model repository not found: %s" % directory)
    if not os.path.isfile(path):
        raise LadonError("%s is not a Ladon Triton repository: it has no %s (write one with ladon-build "
                         "--target triton)" % (directory, REPOSITORY_INFO))
    try:
        with open(path, "r") as handle:
            return json.load(handle)
    except (OSError, ValueError) as exc:
        raise LadonError("cannot read %s: %s" % (path, exc))


__all__ = ["BACKENDS", "RepositoryOptions", "RepositoryPlan", "RepositoryReport", "write_repository",
           "read_repository_info", "stage_tensors", "add_unit_batch"]
