"""`ladon-build --check`: which stages a target's TensorRT can import, and for the rest, which nodes stop it.

Runs anywhere, without TensorRT: every node of every graph (the subgraphs of If, Loop and Scan included) is looked
up in the ONNX parser table of the TensorRT version (onnx_trt_support.py, from onnx-tensorrt's docs/operators.md
per release branch), then checked against what that parser refuses even for a listed operator: inputs that must be
initializers (TopK's K, Conv weights, NMS thresholds ...), If branches whose outputs differ in rank, data-dependent
shapes before TensorRT 8.5, operator definitions newer than the parser's opset, custom domains.

A stage whose every node passes goes to TensorRT ("tensorrt"); any finding keeps the whole stage on ONNX Runtime
("onnxruntime"), where ONNX Runtime's TensorRT execution provider may still take the parts it can.

Edge subset (a Jetson checks before it builds): Python 3.6-clean, never imports torch; onnx is imported lazily.
"""
import os
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple

from ladon_deploy.engines import onnx_trt_support as support
from ladon_deploy.engines.targets import Target, get_target
from ladon_deploy.engines.tensorrt_api import parse_version
from ladon_deploy.errors import EngineError

VERDICT_TENSORRT = "tensorrt"
VERDICT_ONNXRUNTIME = "onnxruntime"

_DEFAULT_DOMAINS = ("", "ai.onnx")
_FLOAT_TYPES = (1, 10, 11, 16)  # TensorProto FLOAT, FLOAT16, DOUBLE, BFLOAT16
_FOLD_HINT = "fold constants first (polygraphy surgeon sanitize --fold-constants)"

# Inputs (by position) that set the shape of an op's output; a value computed from tensor contents there makes
# the shape data-dependent.
_SHAPE_INPUTS = {
    "Reshape": (1,), "Expand": (1,), "ConstantOfShape": (0,), "Tile": (1,), "Range": (0, 1, 2),
    "Slice": (1, 2, 3, 4), "Upsample": (1,), "Pad": (1,), "TopK": (1,), "OneHot": (1,), "Split": (1,),
}
# Ops whose output shape depends on the values of their inputs by definition.
_DATA_DEPENDENT_OUTPUTS = ("NonZero", "NonMaxSuppression", "Unique", "Compress")
# Ops whose output values depend only on the input shapes.
_SHAPE_READERS = ("Shape", "Size")
_REDUCE_OPS = ("ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean", "ReduceMin",
               "ReduceProd", "ReduceSum", "ReduceSumSquare")


def _import_onnx():
    try:
        import onnx  # (the optional dependency of --check)
        import onnx.defs  # noqa: F401  (submodules the check uses, imported explicitly)
        import onnx.helper  # noqa: F401
        import onnx.numpy_helper  # noqa: F401
        import onnx.shape_inference  # noqa: F401
    except ImportError:
        raise EngineError("ladon-build --check reads ONNX graphs with the onnx package: pip install onnx")
    return onnx


class Finding(object):
    """One node the parser cannot take, and why."""

    def __init__(self, op: str, node: str, why: str) -> None:
        self.op = op
        self.node = node
        self.why = why

    def to_json(self) -> Dict[str, str]:
        return {"op": self.op, "node": self.node, "why": self.why}


class StageCheck(object):
    """The check of one ONNX file."""

    def __init__(self, stage: str, path: str, unsupported: List[Finding]) -> None:
        self.stage = stage
        self.path = path
        self.unsupported = unsupported

    @property
    def verdict(self) -> str:
        return VERDICT_ONNXRUNTIME if self.unsupported else VERDICT_TENSORRT

    def to_json(self) -> Dict[str, Any]:
        return {"stage": self.stage, "file": self.path, "verdict": self.verdict,
                "unsupported": [finding.to_json() for finding in self.unsupported]}


class CheckReport(object):
    """What `--check` prints: one verdict per stage for one target and TensorRT version."""

    def __init__(self, target: str, trt: str, branch: str, stages: List[StageCheck]) -> None:
        self.target = target
        self.trt = trt
        self.branch = branch
        self.stages = stages

    def to_json(self) -> Dict[str, Any]:
        return {"target": self.target, "trt": self.trt, "stages": [stage.to_json() for stage in self.stages]}

    def table(self) -> str:
        lines = ["target %s, TensorRT %s (ONNX parser table: onnx-tensorrt %s, docs/operators.md)"
                 % (self.target, self.trt, self.branch)]
        width = max([len(stage.stage) for stage in self.stages] + [5])
        lines.append("%-*s  %-11s  %11s  %s" % (width, "stage", "verdict", "unsupported", "file"))
        for stage in self.stages:
            lines.append("%-*s  %-11s  %11d  %s" % (width, stage.stage, stage.verdict, len(stage.unsupported),
                                                    stage.path))
        for stage in self.stages:
            groups = []  # type: List[Tuple[str, str, List[str]]]
            for finding in stage.unsupported:
                for op, why, nodes in groups:
                    if op == finding.op and why == finding.why:
                        nodes.append(finding.node)
                        break
                else:
                    groups.append((finding.op, finding.why, [finding.node]))
            if groups:
                lines.append("")
                lines.append("%s stays on ONNX Runtime:" % stage.stage)
            for op, why, nodes in groups:
                shown = ", ".join(nodes[:3]) + (", ..." if len(nodes) > 3 else "")
                lines.append("  %s x%d (%s): %s" % (op, len(nodes), shown, why))
        return "\n".join(lines)


class _Scope(object):
    """What is known about the values visible in one graph: constants, data dependence, ranks and types.

    Subgraphs see their parent's values (ONNX scoping), so lookups walk up the chain.
    """

    def __init__(self, parent: "Optional[_Scope]" = None) -> None:
        self.parent = parent
        self.constants = {}  # type: Dict[str, Any]   # name -> TensorProto or a numpy array
        self.data_valued = set()  # type: Set[str]    # values computed from the contents of graph inputs
        self.data_shaped = set()  # type: Set[str]    # values whose shape depends on tensor contents
        self.producers = {}  # type: Dict[str, Any]   # name -> the node that computes it

    def _find(self, attribute: str, name: str) -> bool:
        scope = self  # type: Optional[_Scope]
        while scope is not None:
            if name in getattr(scope, attribute):
                return True
            scope = scope.parent
        return False

    def is_constant(self, name: str) -> bool:
        return self._find("constants", name)

    def producer(self, name: str) -> Any:
        scope = self  # type: Optional[_Scope]
        while scope is not None:
            if name in scope.producers:
                return scope.producers[name]
            scope = scope.parent
        return None

    def constant(self, name: str) -> Any:
        scope = self  # type: Optional[_Scope]
        while scope is not None:
            if name in scope.constants:
                return scope.constants[name]
            scope = scope.parent
        return None

    def is_data_valued(self, name: str) -> bool:
        return self._find("data_valued", name)

    def is_data_shaped(self, name: str) -> bool:
        return self._find("data_shaped", name)


class _GraphChecker(object):
    """Walks one model's graphs for one parser table."""

    def __init__(self, onnx: Any, version: Tuple[int, int], branch: str, opset: int,
                 ranks: Dict[str, int], types: Dict[str, int]) -> None:
        self.onnx = onnx
        self.version = version
        self.branch = branch
        self.opset = opset
        self.ranks = ranks
        self.types = types
        self.findings = []  # type: List[Finding]
        self.trt = "%d.%d" % version

    # -- helpers -------------------------------------------------------------------------------------------------

    def _flag(self, node: Any, where: str, why: str) -> None:
        self.findings.append(Finding(node.op_type, where, why))

    def _value(self, scope: _Scope, name: str) -> Any:
        value = scope.constant(name)
        if value is not None and not hasattr(value, "shape"):
            value = self.onnx.numpy_helper.to_array(value)
        return value

    @staticmethod
    def _input(node: Any, index: int) -> str:
        return node.input[index] if len(node.input) > index else ""

    def _attribute(self, node: Any, name: str, default: Any = None) -> Any:
        for attribute in node.attribute:
            if attribute.name == name:
                return self.onnx.helper.get_attribute_value(attribute)
        return default

    def _computed(self, scope: _Scope, name: str) -> bool:
        return bool(name) and not scope.is_constant(name)

    def _how_computed(self, scope: _Scope, names: Sequence[str]) -> str:
        """Why a value that looks constant is not an initializer to the parser, where the exporter is the reason."""
        for name in names:
            producer = scope.producer(name)
            if producer is not None and producer.op_type == "Identity" and scope.is_constant(producer.input[0]):
                # The TorchScript exporter shares identical initializers through Identity nodes; the parser's
                # Identity importer returns a tensor, not weights.
                return "; one is an Identity of an initializer, which the exporter writes for identical initializers"
        return ""

    def _needs_initializer(self, node: Any, scope: _Scope, where: str, index: int, what: str, rule_text: str) -> None:
        name = self._input(node, index)
        if self._computed(scope, name):
            self._flag(node, where, "%s: computed in the graph, not an initializer; TensorRT %s's parser needs "
                                    "%s (%s)%s" % (what, self.trt, rule_text, _FOLD_HINT,
                                                   self._how_computed(scope, [name])))

    def _applies(self, rule: str) -> bool:
        return support.restriction_applies(rule, self.branch)

    # -- the walk ------------------------------------------------------------------------------------------------

    def check_graph(self, graph: Any, scope: _Scope, prefix: str, formal_inputs_are_data: bool) -> None:
        for initializer in graph.initializer:
            scope.constants[initializer.name] = initializer
        for value in graph.input:
            if value.name not in scope.constants and formal_inputs_are_data:
                scope.data_valued.add(value.name)
        for index, node in enumerate(graph.node):
            where = prefix + (node.name or "%s_%d" % (node.op_type, index))
            self.check_node(node, scope, where)

    def check_node(self, node: Any, scope: _Scope, where: str) -> None:
        op = node.op_type
        if node.domain not in _DEFAULT_DOMAINS:
            self._flag(node, where, "custom operator of domain %r: TensorRT's parser needs a plugin for it"
                                    % node.domain)
        elif op not in support.SUPPORTED_OPS[self.branch]:
            later = support.branches_supporting(op)
            self._flag(node, where, "not in TensorRT %s's ONNX parser (onnx-tensorrt %s, docs/operators.md)%s"
                                    % (self.trt, self.branch, "; supported from %s" % later[0] if later else ""))
        else:
            self._check_opset(node, where)
            self._check_restrictions(node, scope, where)
            self._check_data_dependent_shape(node, scope, where)
        branches = self._check_subgraphs(node, scope, where)
        self._propagate(node, scope, branches)

    def _check_opset(self, node: Any, where: str) -> None:
        limit = support.MAX_OPSET[self.branch]
        if self.opset <= limit:
            return
        try:
            since = self.onnx.defs.get_schema(node.op_type, self.opset, "").since_version
        except Exception:  # an op the installed onnx does not know: the table lookup already passed it
            return
        if since > limit:
            self._flag(node, where, "the model's opset %d uses %s's definition of opset %d; TensorRT %s's parser "
                                    "documents opsets up to %d" % (self.opset, node.op_type, since, self.trt, limit))

    def _check_restrictions(self, node: Any, scope: _Scope, where: str) -> None:
        op = node.op_type
        if op in ("Conv", "ConvTranspose") and self._applies("conv_weights_initializer"):
            computed = [(self._input(node, index), what) for index, what in ((1, "weights W"), (2, "bias B"))
                        if self._computed(scope, self._input(node, index))]
            if computed:
                self._flag(node, where, "%s: computed in the graph, not initializers; TensorRT %s's parser needs "
                                        "initializer weights and bias (%s)%s"
                           % (" and ".join(what for _, what in computed), self.trt, _FOLD_HINT,
                              self._how_computed(scope, [name for name, _ in computed])))
        elif op == "TopK":
            self._check_topk(node, scope, where)
        elif op == "NonMaxSuppression" and self._applies("nms_experimental"):
            for index, what in ((2, "max_output_boxes_per_class"), (3, "iou_threshold"), (4, "score_threshold")):
                self._needs_initializer(node, scope, where, index, what, "initializer thresholds")
            self._flag(node, where, "NonMaxSuppression is experimental in TensorRT %s's parser: its output is padded "
                                    "to a fixed [max_output_boxes_per_class, 3] instead of ONNX's data-dependent "
                                    "[selected, 3] (full support from 8.5)" % self.trt)
        elif op == "InstanceNormalization" and self._applies("instancenorm_initializers"):
            self._needs_initializer(node, scope, where, 1, "the scale", "initializer scale and B")
            self._needs_initializer(node, scope, where, 2, "the bias B", "initializer scale and B")
        elif op == "Range" and self._applies("range_float_initializers"):
            names = [self._input(node, index) for index in range(3)]
            floating = any(self.types.get(name) in _FLOAT_TYPES for name in names if name)
            if floating and not all(scope.is_constant(name) for name in names if name):
                self._flag(node, where, "a floating-point Range needs initializer start, limit and delta on "
                                        "TensorRT %s" % self.trt)
        elif op == "CumSum":
            self._needs_initializer(node, scope, where, 1, "the axis", "an initializer axis")
        elif op == "Slice" and self.opset >= 10:
            self._needs_initializer(node, scope, where, 3, "axes", "initializer axes")
        elif op in ("Squeeze", "Unsqueeze"):
            self._needs_initializer(node, scope, where, 1, "axes", "constant axes")
        elif op in _REDUCE_OPS:
            self._needs_initializer(node, scope, where, 1, "axes", "initializer axes")
        elif op == "Pad" and self._applies("pad_axes_initializer"):
            self._needs_initializer(node, scope, where, 3, "axes", "initializer axes")
        elif op == "Dropout" and self._applies("dropout_not_training"):
            self._check_dropout(node, scope, where)
        elif op == "MaxPool":
            if self._input_output(node, 1):
                self._flag(node, where, "MaxPool's Indices output is not supported by TensorRT's parser")
        elif op == "Resize":
            self._check_resize(node, where)
        elif op == "Constant":
            for name in ("sparse_value", "value_string", "value_strings"):
                if self._attribute(node, name) is not None:
                    self._flag(node, where, "Constant with %s: TensorRT has no sparse or string tensors" % name)

    @staticmethod
    def _input_output(node: Any, index: int) -> bool:
        return len(node.output) > index and node.output[index] != ""

    def _check_topk(self, node: Any, scope: _Scope, where: str) -> None:
        if self.opset < 10:
            return  # K is an attribute before opset 10
        if self._applies("topk_k_initializer"):
            self._needs_initializer(node, scope, where, 1, "K", "an initializer K (8.6 is the first to take a "
                                                                "computed K)")
        if self._applies("topk_sorted_and_k_limit"):
            if self._attribute(node, "sorted", 1) != 1:
                self._flag(node, where, "TopK with sorted=0: TensorRT %s's parser needs sorted=1" % self.trt)
            k = self._value(scope, self._input(node, 1)) if self._input(node, 1) else None
            if k is not None and k.size == 1 and int(k.reshape(-1)[0]) >= 3840:
                self._flag(node, where, "TopK with K=%d: TensorRT %s's parser needs K < 3840"
                                        % (int(k.reshape(-1)[0]), self.trt))

    def _check_dropout(self, node: Any, scope: _Scope, where: str) -> None:
        name = self._input(node, 2)
        if not name:
            return
        value = self._value(scope, name)
        if value is None or bool(value.reshape(-1)[0]):
            self._flag(node, where, "Dropout's training_mode must be an initializer that is false on TensorRT %s"
                                    % self.trt)

    def _check_resize(self, node: Any, where: str) -> None:
        def text(name: str, default: str) -> str:
            value = self._attribute(node, name, default)
            return value.decode("ascii", "replace") if isinstance(value, bytes) else str(value)

        mode = text("mode", "nearest")
        if mode not in support.RESIZE_MODES:
            self._flag(node, where, "Resize mode %r: TensorRT's parser supports %s"
                       % (mode, "/".join(support.RESIZE_MODES)))
        coordinates = text("coordinate_transformation_mode", "half_pixel")
        if coordinates not in support.RESIZE_COORDINATE_MODES:
            self._flag(node, where, "Resize coordinate_transformation_mode %r: TensorRT's parser supports %s"
                                    % (coordinates, ", ".join(support.RESIZE_COORDINATE_MODES)))
        if mode == "nearest":
            nearest = text("nearest_mode", "round_prefer_floor")
            if nearest not in support.RESIZE_NEAREST_MODES:
                self._flag(node, where, "Resize nearest_mode %r: TensorRT's parser supports %s"
                                        % (nearest, ", ".join(support.RESIZE_NEAREST_MODES)))
        if self._attribute(node, "antialias", 0):
            self._flag(node, where, "Resize with antialias: not supported by TensorRT's parser")
        if text("keep_aspect_ratio_policy", "stretch") != "stretch":
            self._flag(node, where, "Resize keep_aspect_ratio_policy other than stretch: not supported")

    def _shape_inputs(self, node: Any) -> Sequence[int]:
        if node.op_type == "Resize":
            return (1,) if len(node.input) == 2 else (2, 3)  # opset 10: (X, scales); 11+: (X, roi, scales, sizes)
        return _SHAPE_INPUTS.get(node.op_type, ())

    def _check_data_dependent_shape(self, node: Any, scope: _Scope, where: str) -> None:
        if self.version >= support.DATA_DEPENDENT_SHAPES_FROM:
            return
        for index in self._shape_inputs(node):
            name = self._input(node, index)
            if name and scope.is_data_valued(name):
                self._flag(node, where, "its output shape depends on tensor values (input %d is computed from data): "
                                        "TensorRT %s needs every shape to follow from the input shapes "
                                        "(data-dependent shapes arrive in 8.5)" % (index, self.trt))
                return

    # -- what each node's outputs are ----------------------------------------------------------------------------

    def _propagate(self, node: Any, scope: _Scope, branches: "List[Tuple[Any, _Scope]]") -> None:
        op = node.op_type
        outputs = [name for name in node.output if name]
        inputs = [name for name in node.input if name]
        for name in outputs:
            scope.producers[name] = node
        if op == "Constant" and node.domain in _DEFAULT_DOMAINS:
            value = self._constant_node_value(node)
            for name in outputs:
                scope.constants[name] = value
            return
        if op in _SHAPE_READERS:
            valued = any(scope.is_data_shaped(name) for name in inputs)
            shaped = False
        elif op == "ConstantOfShape":
            valued = False
            shaped = any(scope.is_data_valued(name) or scope.is_data_shaped(name) for name in inputs)
        else:
            valued = any(scope.is_data_valued(name) for name in inputs)
            shaped = any(scope.is_data_shaped(name) for name in inputs) or op in _DATA_DEPENDENT_OUTPUTS
            shape_names = [self._input(node, index) for index in self._shape_inputs(node)]
            shaped = shaped or any(name and scope.is_data_valued(name) for name in shape_names)
            if op in ("Loop", "Scan"):
                valued = True  # a body's values depend on its iteration; not followed further
        if op == "If" and branches:
            self._propagate_if(node, scope, branches)
            return
        for name in outputs:
            if valued:
                scope.data_valued.add(name)
            if shaped:
                scope.data_shaped.add(name)

    @staticmethod
    def _propagate_if(node: Any, scope: _Scope, branches: "List[Tuple[Any, _Scope]]") -> None:
        """An If output holds data where a branch computes it from data, or where a data-valued condition picks."""
        condition_is_data = bool(node.input) and scope.is_data_valued(node.input[0])
        for index, name in enumerate(node.output):
            if not name:
                continue
            inner = [(branch_scope, graph.output[index].name) for graph, branch_scope in branches
                     if index < len(graph.output)]
            if condition_is_data or any(branch_scope.is_data_valued(out) for branch_scope, out in inner):
                scope.data_valued.add(name)
            if condition_is_data or any(branch_scope.is_data_shaped(out) for branch_scope, out in inner):
                scope.data_shaped.add(name)

    def _constant_node_value(self, node: Any) -> Any:
        import numpy as np

        for attribute in node.attribute:
            if attribute.name == "value":
                return attribute.t
            if attribute.name in ("value_float", "value_floats"):
                return np.array(self.onnx.helper.get_attribute_value(attribute), dtype=np.float32)
            if attribute.name in ("value_int", "value_ints"):
                return np.array(self.onnx.helper.get_attribute_value(attribute), dtype=np.int64)
        return np.zeros((0,), dtype=np.float32)

    def _check_subgraphs(self, node: Any, scope: _Scope, where: str) -> "List[Tuple[Any, _Scope]]":
        """Checks the subgraphs of If/Loop/Scan; returns (graph, its scope) for each one walked."""
        graphs = [(attribute.name, attribute.g) for attribute in node.attribute if attribute.HasField("g")]
        if not graphs:
            return []
        if node.op_type == "If":
            return self._check_if(node, scope, where, dict(graphs))
        walked = []
        for name, graph in graphs:
            # Loop/Scan bodies: their formal inputs (iteration count, carried values) hold data.
            walked.append(self._walk(graph, scope, "%s/%s:" % (where, name), formal_inputs_are_data=True))
        return walked

    def _walk(self, graph: Any, parent: _Scope, prefix: str, formal_inputs_are_data: bool) -> "Tuple[Any, _Scope]":
        child = _Scope(parent)
        self.check_graph(graph, child, prefix, formal_inputs_are_data)
        return graph, child

    def _check_if(self, node: Any, scope: _Scope, where: str,
                  graphs: Dict[str, Any]) -> "List[Tuple[Any, _Scope]]":
        then_graph, else_graph = graphs.get("then_branch"), graphs.get("else_branch")
        if then_graph is None or else_graph is None:
            self._flag(node, where, "If without both then_branch and else_branch: not a valid ONNX If")
            return []
        condition = self._value(scope, self._input(node, 0)) if self._input(node, 0) else None
        if condition is not None and condition.size == 1:
            # A build-time condition: the parser imports only the branch it selects (If importer, 8.2-GA onwards).
            taken = ("then_branch", then_graph) if bool(condition.reshape(-1)[0]) else ("else_branch", else_graph)
            return [self._walk(taken[1], scope, "%s/%s:" % (where, taken[0]), formal_inputs_are_data=False)]
        walked = [self._walk(graph, scope, "%s/%s:" % (where, name), formal_inputs_are_data=False)
                  for name, graph in (("then_branch", then_graph), ("else_branch", else_graph))]
        for index, (then_out, else_out) in enumerate(zip(then_graph.output, else_graph.output)):
            then_rank, else_rank = self._rank(then_out.name, walked[0][1]), self._rank(else_out.name, walked[1][1])
            if then_rank is not None and else_rank is not None and then_rank != else_rank:
                self._flag(node, where, "If branches give output %d different ranks (%d and %d): TensorRT's "
                                        "conditional needs the same rank in both branches"
                           % (index, then_rank, else_rank))
            if then_out.name == else_out.name:
                self._flag(node, where, "If branches name output %d the same (%r): TensorRT needs different names"
                                        % (index, then_out.name))
        return walked

    def _rank(self, name: str, scope: _Scope) -> Optional[int]:
        if name in self.ranks:
            return self.ranks[name]
        value = scope.constant(name)
        if value is None:
            return None
        return len(value.shape) if hasattr(value, "shape") else len(value.dims)


def _collect_ranks_and_types(graph: Any, ranks: Dict[str, int], types: Dict[str, int]) -> None:
    """Ranks and element types of every value whose type is declared or inferred, subgraphs included."""
    for value in list(graph.input) + list(graph.output) + list(graph.value_info):
        tensor_type = value.type.tensor_type if value.type.HasField("tensor_type") else None
        if tensor_type is None:
            continue
        if tensor_type.elem_type:
            types[value.name] = tensor_type.elem_type
        if tensor_type.HasField("shape"):
            ranks[value.name] = len(tensor_type.shape.dim)
    for initializer in graph.initializer:
        types[initializer.name] = initializer.data_type
        ranks[initializer.name] = len(initializer.dims)
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("g"):
                _collect_ranks_and_types(attribute.g, ranks, types)


def resolve_trt(target: Target, trt: Optional[str]) -> Tuple[Tuple[int, int], str]:
    """The TensorRT version a check assumes: --trt, else the target's own; and the table branch for it."""
    text = trt if trt is not None else target.trt
    if text is None:
        raise EngineError("target %s runs ONNX Runtime only and has no TensorRT version: pass --trt VERSION to "
                          "check its stages against one" % target.name)
    version = parse_version(text)
    return version, support.table_branch(version)


def check_model(model: Any, version: Tuple[int, int]) -> List[Finding]:
    """Every node of an onnx ModelProto that TensorRT `version`'s parser cannot take, with the reason."""
    onnx = _import_onnx()
    branch = support.table_branch(version)
    opset = 0
    for entry in model.opset_import:
        if entry.domain in _DEFAULT_DOMAINS:
            opset = int(entry.version)
    try:
        # Inference gives ranks to If branch outputs that the exporter left undeclared.
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:
        inferred = model
    ranks = {}  # type: Dict[str, int]
    types = {}  # type: Dict[str, int]
    _collect_ranks_and_types(inferred.graph, ranks, types)
    checker = _GraphChecker(onnx, version, branch, opset, ranks, types)
    checker.check_graph(model.graph, _Scope(), "", formal_inputs_are_data=True)
    return checker.findings


def load_onnx(path: str) -> Any:
    onnx = _import_onnx()
    if not os.path.isfile(path):
        raise EngineError("ONNX file not found: %s" % path)
    try:
        return onnx.load(path)
    except Exception as exc:
        raise EngineError("cannot read ONNX file %s: %s" % (path, str(exc).splitlines()[0] if str(exc) else
                                                            type(exc).__name__))


def check_file(path: str, version: Tuple[int, int], stage: Optional[str] = None) -> StageCheck:
    """One ONNX file, as one stage (named after the file unless given)."""
    name = stage or os.path.splitext(os.path.basename(path))[0]
    return StageCheck(name, path, check_model(load_onnx(path), version))


def check_onnx(path: str, target_name: str, trt: Optional[str] = None) -> CheckReport:
    """`ladon-build --check --onnx F --target T [--trt V]`."""
    target = get_target(target_name)
    version, branch = resolve_trt(target, trt)
    return CheckReport(target.name, "%d.%d" % version, branch, [check_file(path, version)])


def check_bundle(bundle_dir: str, target_name: str, trt: Optional[str] = None) -> CheckReport:
    """`ladon-build --check --bundle B --target T [--trt V]`: every stage of the bundle the target runs."""
    from ladon_deploy.bundle import open_bundle

    target = get_target(target_name)
    version, branch = resolve_trt(target, trt)
    bundle = open_bundle(bundle_dir)
    present = bundle.manifest["stages"]
    stages = [stage for stage in target.stages if stage in present]
    if not stages:
        raise EngineError("bundle %s has none of the stages target %s runs (%s)"
                          % (bundle_dir, target.name, ", ".join(target.stages)))
    return CheckReport(target.name, "%d.%d" % version, branch,
                       [check_file(bundle.path(stage), version, stage) for stage in stages])
