"""Count the multiply-accumulates (MACs) of an ONNX graph at fixed input shapes.

``count_gmac(model, input_shapes)`` fixes the graph inputs to the given shapes, runs ONNX shape inference
(``onnx.shape_inference.infer_shapes(..., data_prop=True)``) interleaved with constant folding of the shape
arithmetic (see below), and adds up a per-node count. It works on the exported graph, so it measures what an
engine will run (GDN written as a 1x1 ``Conv`` on ``|x|``, the detectors' own resize and post-processing
included). The result is a :class:`GmacReport`: total, per-op-type breakdown, per-node list, the op types not
counted, and the nodes whose cost could not be determined.

Counting convention (``convention="fvcore"``, the default) -- fvcore's ``FlopCountAnalysis`` rules (fvcore calls
one multiply-add one "flop"), applied to ONNX ops. On the 9 LC baselines, ResNet-50 and the Ladon encoder the
totals equal fvcore's on the torch module to 6 significant digits:

* MAC ops, one per multiply-add, bias additions not counted:

  - ``Conv`` / ``ConvInteger`` / ``QLinearConv``: ``numel(output) * (C_in / group) * prod(kernel)``
  - ``ConvTranspose``: ``N * prod(input spatial) * C_in * (C_out / group) * prod(kernel)`` (fvcore's formula)
  - ``Gemm``: ``M * N * K``; ``MatMul`` / ``MatMulInteger`` / ``QLinearMatMul`` (batched, broadcast):
    ``numel(output) * K``
  - ``Einsum``: product of the sizes of all distinct indices (the naive loop nest)

* The element-wise ops fvcore counts, with fvcore's weights:

  - ``BatchNormalization``: 2 per element (inference: scale + shift). The TorchScript exporter
    (``dynamo=False``, eval mode) folds every Conv -> BatchNorm pair into the Conv, so there is usually no BN
    node left; such a folded BN is recognised (by value given the source module, ``folded_bn=module``; by the
    exporter's tensor names with ``folded_bn="auto"``; see ``_is_folded_bn_conv``) and still
    counted, 2 per output element of its Conv, under the key ``"BatchNormalization(folded)"``, exactly as
    fvcore counts the BatchNorm2d module of the torch model. It is 1-7% of a MobileNet's total, 0.5% of
    ResNet-50's. ``folded_bn=False`` counts the folded graph as it runs (no BN work).
  - ``InstanceNormalization`` / ``LayerNormalization`` / ``GroupNormalization``: 5 per element
  - ``Resize``: per output element 1 (``nearest``), 4 (``linear``), 16 (``cubic``: our own, fvcore has no rule)
  - ``GlobalAveragePool`` (what ``adaptive_avg_pool2d(x, 1)`` exports to): 1 per input element

* Not counted, as in fvcore: activations (Relu, HardSwish, HardSigmoid, Sigmoid...), Add / Mul / Div / Abs /
  Sqrt and every other element-wise arithmetic (residual adds, squeeze-excitation scaling, GDN's division),
  ReduceMean (``x.mean()``), Max/AveragePool, Softmax, data movement, NMS, TopK, RoiAlign. Their node counts are
  in ``GmacReport.ignored_ops``, so nothing disappears silently.

``convention="mac"``: only the MAC ops (convolutions and matrix products), no BN, resize or pooling.

thop differs: it counts an affine BatchNorm as 4 per element (``calculate_norm`` returns 2n and
``count_normalization`` doubles it for the affine), counts nothing for functional calls, and so is 0-5%
above fvcore on BN-heavy nets (MobileNetV3-Large: 0.2348 vs 0.2260 GMAC) and below it on the Ladon encoder.

GDN. CompressAI's GDN computes ``conv2d(|x|, gamma, beta)`` with a C x C x 1 x 1 weight: a real convolution,
a ``Conv`` node in ONNX, so it is counted (as fvcore does; thop misses it: a functional call, not an
``nn.Conv2d``). With GDN the Ladon encoder is 2.030 GMAC at 416x416 and 0.588 at 224x224, the design-note
figures; without it (thop) 1.606 at 416. GDN's Conv takes computed weights, so it is never taken for a folded BN.

Static shapes. Exporters compute resize factors, anchor grids and TopK sizes from the input's shape with float
arithmetic that ONNX's data propagation does not follow (torchvision's detection transform), which would leave
the whole detector backbone with unknown shapes. Once the input shape is fixed all of that is constant: nodes
whose inputs are constants (or the Shape of a tensor of known shape) are evaluated with ``onnx.reference`` and
replaced by initializers, and shapes are inferred again, until nothing more folds. (Weights larger than 4096
elements are never loaded into this analysis.)

Data-dependent shapes (Faster R-CNN's box head and predictor run on however many proposals survive NMS): with
``resolve="static"`` (the default) such a node is *not counted*; it is listed in ``GmacReport.uncounted``
(node, op, shapes with their symbolic dims, reason) and ``GmacReport.complete`` is False. Three ways to count it:

* ``unknown_dim=N``: take every still-unknown dim as N (the proposal count: ``rpn_post_nms_top_n_test`` is 150
  for fasterrcnn_mobilenet_v3_large_320_fpn, whose box head then costs 150 x 14.4 M = 2.15 GMAC, two thirds of
  the model at 480x640);
* ``resolve="onnxruntime"`` (or ``"auto"``: only if something is unresolved): run the graph once in ONNX Runtime
  on ``inputs`` (seeded uniform [0, 1) data if none are given) with every intermediate tensor exposed as an
  output, and count with the observed shapes: exact for that input, like fvcore, which counts one traced run.
  It holds all intermediates in memory at once.

Bundles. ``ladon-export`` counts the encoder once with :func:`record_gmac` and writes the record into the manifest
(``stages.encoder.gmac``), so that the device bench reads the figure with :func:`gmac_from_record` on a Jetson,
which has no ``onnx`` package. Every function imports ``onnx`` only when called: this module is in the edge subset.

Nodes inside control-flow subgraphs (If / Loop / Scan bodies) are never counted and always listed in
``uncounted`` (none in the models here).
"""

import copy
import os
from collections import OrderedDict
from typing import Any, Dict, Optional, Sequence

__all__ = ["GmacReport", "UncountedNode", "count_gmac", "record_gmac", "gmac_from_record", "MAC_OPS",
           "FVCORE_ELEMENTWISE_OPS"]

MAC_OPS = ("Conv", "ConvInteger", "QLinearConv", "ConvTranspose", "Gemm", "MatMul", "MatMulInteger",
           "QLinearMatMul", "Einsum")
FVCORE_ELEMENTWISE_OPS = ("BatchNormalization", "InstanceNormalization", "LayerNormalization",
                          "GroupNormalization", "Resize", "GlobalAveragePool")
_CONVENTIONS = ("fvcore", "mac")
_RESOLVE = ("static", "onnxruntime", "auto")


class UncountedNode:
    """A node that would be counted but whose cost could not be determined."""

    __slots__ = ("name", "op_type", "shapes", "reason")

    def __init__(self, name, op_type, shapes, reason):
        self.name = name
        self.op_type = op_type
        self.shapes = shapes
        self.reason = reason

    def to_dict(self):
        return {"name": self.name, "op_type": self.op_type, "shapes": self.shapes, "reason": self.reason}

    def __repr__(self):
        return "UncountedNode(%r, %r, %s: %s)" % (self.name, self.op_type, self.shapes, self.reason)


class GmacReport:
    """Result of :func:`count_gmac`.

    Attributes:
        total_macs: int, all counted operations (MACs, plus fvcore's element-wise ops under that convention).
        total_gmac: float, ``total_macs / 1e9``.
        macs_by_op: OrderedDict op_type -> MACs (largest first).
        nodes_by_op: OrderedDict op_type -> number of counted nodes.
        per_node: list of (node name, op_type, MACs), in graph order.
        ignored_ops: OrderedDict op_type -> number of nodes not counted by the convention.
        uncounted: list of :class:`UncountedNode` (cost unknown: data-dependent shapes, subgraphs).
        complete: True when ``uncounted`` is empty.
        input_shapes: dict input name -> shape used.
        convention: ``"fvcore"`` or ``"mac"``.
        shape_source: ``"static"`` or ``"onnxruntime"``.
        folded_nodes: number of shape-arithmetic nodes evaluated away before counting (not in ignored_ops).
    """

    def __init__(self, macs_by_op, nodes_by_op, per_node, ignored_ops, uncounted, input_shapes, convention,
                 shape_source, folded_nodes=0):
        self.macs_by_op = OrderedDict(sorted(macs_by_op.items(), key=lambda kv: (-kv[1], kv[0])))
        self.nodes_by_op = OrderedDict((k, nodes_by_op[k]) for k in self.macs_by_op)
        self.per_node = per_node
        self.ignored_ops = OrderedDict(sorted(ignored_ops.items(), key=lambda kv: (-kv[1], kv[0])))
        self.uncounted = uncounted
        self.input_shapes = input_shapes
        self.convention = convention
        self.shape_source = shape_source
        self.folded_nodes = folded_nodes

    @property
    def total_macs(self):
        return int(sum(self.macs_by_op.values()))

    @property
    def total_gmac(self):
        return self.total_macs / 1e9

    @property
    def gmac_by_op(self):
        return OrderedDict((k, v / 1e9) for k, v in self.macs_by_op.items())

    @property
    def complete(self):
        return not self.uncounted

    def to_dict(self):
        return {
            "total_gmac": self.total_gmac,
            "total_macs": self.total_macs,
            "gmac_by_op": dict(self.gmac_by_op),
            "nodes_by_op": dict(self.nodes_by_op),
            "ignored_ops": dict(self.ignored_ops),
            "uncounted": [u.to_dict() for u in self.uncounted],
            "complete": self.complete,
            "input_shapes": {k: list(v) for k, v in self.input_shapes.items()},
            "convention": self.convention,
            "shape_source": self.shape_source,
            "folded_nodes": self.folded_nodes,
        }

    def summary(self):
        lines = ["GMAC %.4f (convention %s, shapes %s)" % (self.total_gmac, self.convention, self.shape_source)]
        for op, macs in self.macs_by_op.items():
            lines.append("  %-22s %10.4f GMAC  %5d nodes" % (op, macs / 1e9, self.nodes_by_op[op]))
        if self.uncounted:
            lines.append("  NOT COUNTED: %d node(s) with unknown cost, e.g. %r" % (len(self.uncounted),
                                                                               self.uncounted[0]))
        return "\n".join(lines)

    def __repr__(self):
        return "GmacReport(total_gmac=%.4f, complete=%s, convention=%r)" % (self.total_gmac, self.complete,
                                                                          self.convention)


def _prod(values):
    out = 1
    for v in values:
        out *= int(v)
    return out


def _load(model):
    import onnx
    if isinstance(model, onnx.ModelProto):
        return copy.deepcopy(model)
    if isinstance(model, (bytes, bytearray)):
        return onnx.load_from_string(bytes(model))
    if isinstance(model, (str, os.PathLike)):
        return onnx.load(os.fspath(model))
    raise TypeError("count_gmac expects a path, bytes or an onnx.ModelProto, got %s" % type(model).__name__)


def _dims_of(type_proto):
    """Shape of a tensor TypeProto as a list of int (known) / str (symbolic) / None (unknown); None if no shape."""
    if not type_proto.HasField("tensor_type") or not type_proto.tensor_type.HasField("shape"):
        return None
    dims = []
    for d in type_proto.tensor_type.shape.dim:
        if d.HasField("dim_value"):
            dims.append(int(d.dim_value))
        elif d.HasField("dim_param"):
            dims.append(d.dim_param)
        else:
            dims.append(None)
    return dims


def _is_static(shape):
    return shape is not None and all(isinstance(d, int) and d >= 0 for d in shape)


def _fix_inputs(model, input_shapes):
    """Write concrete dims into the graph inputs; drop stale value_info and output shapes."""
    graph = model.graph
    init_names = {t.name for t in graph.initializer}
    real_inputs = [i for i in graph.input if i.name not in init_names]
    names = [i.name for i in real_inputs]
    input_shapes = dict(input_shapes or {})
    unknown = sorted(set(input_shapes) - set(names))
    if unknown:
        raise ValueError("input_shapes names %s are not graph inputs (inputs: %s)" % (unknown, names))
    used = OrderedDict()
    for inp in real_inputs:
        if inp.name in input_shapes:
            shape = [int(d) for d in input_shapes[inp.name]]
            tshape = inp.type.tensor_type.shape
            old = _dims_of(inp.type)
            if old is not None and len(old) != len(shape):
                raise ValueError("input %r has rank %d, got shape %s" % (inp.name, len(old), shape))
            del tshape.dim[:]
            for d in shape:
                tshape.dim.add().dim_value = d
            used[inp.name] = tuple(shape)
        else:
            shape = _dims_of(inp.type)
            if not _is_static(shape):
                raise ValueError("input %r has dynamic shape %s: give it in input_shapes" % (inp.name, shape))
            used[inp.name] = tuple(shape)
    del graph.value_info[:]
    for out in graph.output:
        if out.type.HasField("tensor_type"):
            out.type.tensor_type.ClearField("shape")
    return used


def _infer(model):
    from onnx import shape_inference
    for kwargs in ({"data_prop": True}, {}):
        try:
            return shape_inference.infer_shapes(model, check_type=False, strict_mode=False, **kwargs)
        except Exception:  # pragma: no cover - fall back to a weaker inference
            continue
    return model  # pragma: no cover


_SMALL_INIT = 4096  # initializers up to this many elements keep their values for constant folding
_MAX_FOLDED = 1 << 20  # folded results larger than this stay as nodes
_NO_FOLD = frozenset(["RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial",
                      "Bernoulli", "If", "Loop", "Scan", "Dropout"])


def _lighten(model):
    """A weight-free copy for shape analysis: big initializers become typed graph inputs (no data)."""
    from onnx import helper, numpy_helper
    import onnx
    g = model.graph
    lg = onnx.GraphProto()
    lg.name = g.name
    lg.node.extend(g.node)
    lg.input.extend(g.input)
    lg.output.extend(g.output)
    names = {i.name for i in g.input}
    values = {}
    for t in g.initializer:
        if _prod(t.dims) <= _SMALL_INIT and t.data_location != onnx.TensorProto.EXTERNAL:
            lg.initializer.append(t)
            values[t.name] = numpy_helper.to_array(t)
        elif t.name not in names:
            lg.input.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    light = helper.make_model(lg, opset_imports=list(model.opset_import))
    light.ir_version = model.ir_version
    light.functions.extend(model.functions)
    return light, values


def _opsets(model):
    return {(o.domain or ""): int(o.version) for o in model.opset_import}


def _has_subgraph(node):
    from onnx import AttributeProto
    return any(a.type in (AttributeProto.GRAPH, AttributeProto.GRAPHS) for a in node.attribute)


def _fold_pass(model, values, shapes):
    """Evaluate every node whose inputs are all known constants (or that takes the Shape / Size of a tensor of
    static shape). Returns (indices of nodes to drop, {name: value} of new constants)."""
    import numpy as np
    from onnx.reference import ReferenceEvaluator
    opsets = _opsets(model)
    drop, new = [], {}
    for idx, node in enumerate(model.graph.node):
        if node.domain not in ("", "ai.onnx") or node.op_type in _NO_FOLD or _has_subgraph(node):
            continue
        if any(o in values for o in node.output if o):
            continue
        outs = None
        try:
            if node.op_type in ("Shape", "Size"):
                shape = shapes.get(node.input[0])
                if not _is_static(shape):
                    continue
                if node.op_type == "Size":
                    outs = [np.array(_prod(shape), dtype=np.int64)]
                else:
                    rank = len(shape)
                    start = _attr(node, "start", 0)
                    end = _attr(node, "end", rank)
                    outs = [np.array(shape[slice(start, end)], dtype=np.int64)]
            elif all((not i) or i in values for i in node.input):
                feeds = {i: values[i] for i in node.input if i}
                outs = ReferenceEvaluator(node, opsets=opsets).run(None, feeds)
            else:
                continue
        except Exception:  # an op the reference evaluator cannot run: leave the node in place
            continue
        outs = [np.asarray(o) for o in outs]
        for name, value in zip(node.output, outs):
            if name:
                values[name] = value
                new[name] = value
        if all(o.size <= _MAX_FOLDED for o in outs) and len(outs) == len([o for o in node.output if o]):
            drop.append(idx)
    return drop, new


def _static_analysis(model, max_rounds=20):
    """Shape inference interleaved with constant folding of the shape arithmetic.

    Exporters compute resize factors, anchor grids and TopK sizes from the input's shape with float ops that
    ONNX's data propagation does not follow (e.g. torchvision's detection transform): once the input shape is
    fixed all of that is constant, so it is evaluated here with ``onnx.reference`` and replaced by initializers,
    and shapes are inferred again, until nothing more folds. Returns (inferred light model, number folded).
    """
    from onnx import numpy_helper
    light, values = _lighten(model)
    folded = 0
    inferred = _infer(light)
    for _ in range(max_rounds):
        shapes, _ = _static_tables(inferred)
        drop, new = _fold_pass(inferred, values, shapes)
        if not drop:
            break
        graph = inferred.graph
        dropped = set(drop)
        outputs = set()
        for idx in drop:
            outputs.update(o for o in graph.node[idx].output if o)
        keep = [n for i, n in enumerate(graph.node) if i not in dropped]
        del graph.node[:]
        graph.node.extend(keep)
        for name in outputs:
            graph.initializer.append(numpy_helper.from_array(values[name], name))
        del graph.value_info[:]
        folded += len(drop)
        inferred = _infer(inferred)
    return inferred, folded


def _static_tables(model):
    """name -> shape and name -> elem_type over the main graph."""
    shapes, types = {}, {}
    graph = model.graph
    for vi in list(graph.input) + list(graph.value_info) + list(graph.output):
        s = _dims_of(vi.type)
        if s is not None:
            shapes[vi.name] = s
        if vi.type.HasField("tensor_type"):
            types[vi.name] = vi.type.tensor_type.elem_type
    for t in graph.initializer:
        shapes[t.name] = [int(d) for d in t.dims]
        types[t.name] = t.data_type
    for node in graph.node:
        if node.op_type == "Constant" and node.output:
            for a in node.attribute:
                if a.name == "value":
                    shapes[node.output[0]] = [int(d) for d in a.t.dims]
                    types[node.output[0]] = a.t.data_type
    return shapes, types


def _attr(node, name, default=None):
    from onnx import helper
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _resize_mode(node):
    mode = _attr(node, "mode", b"nearest")
    if isinstance(mode, bytes):
        mode = mode.decode()
    return mode


FOLDED_BN = "BatchNormalization(folded)"
_TS_FOLDED_PREFIX = "onnx::Conv_"


def _is_folded_bn_conv(node, folded_bn):
    """Whether a Conv carries a BatchNormalization folded into it by the exporter.

    ``folded_bn`` is what ``count_gmac`` was given, with a module already turned into the frozenset of the output
    names of the Convs whose weight is none of the module's tensors (``_convs_with_computed_weights``).
    ``"auto"``: the TorchScript exporter (``torch.onnx.export(dynamo=False)`` in eval mode) folds every Conv ->
    BatchNorm pair and stores the new weight and bias as fresh tensors named ``onnx::Conv_<n>`` (directly or through
    an Identity that deduplicates equal tensors), while a Conv without BN keeps its parameters' names
    (``layer.weight`` / ``layer.bias``); a GDN's conv takes computed tensors (``/1/Reshape_output_0``).
    ``True``: every Conv with a bias; ``False``: none.
    """
    if folded_bn is False or node.op_type != "Conv" or len(node.input) < 3 or not node.input[2]:
        return False
    if folded_bn is True:
        return True
    if isinstance(folded_bn, frozenset):
        return node.output[0] in folded_bn
    return node.input[1].startswith(_TS_FOLDED_PREFIX) and node.input[2].startswith(_TS_FOLDED_PREFIX)


def _convs_with_computed_weights(proto, module):
    """Output names of the Convs (with a bias) whose weight initializer equals none of ``module``'s tensors.

    Exporting copies a parameter into the graph unchanged unless the exporter computed a new tensor from it; for
    a Conv with an initializer weight that new tensor is the BatchNorm folded into it. Decided by value, so it
    holds whatever the exporter names its tensors. A weight that is no initializer at all (GDN's, computed at run
    time) is no folded BatchNorm.
    """
    import hashlib

    import numpy as np
    from onnx import numpy_helper

    def fingerprint(array):
        array = np.ascontiguousarray(array)
        return array.shape, array.dtype.str, hashlib.sha1(array.tobytes()).hexdigest()

    known = {fingerprint(t.detach().cpu().numpy()) for t in module.state_dict().values()}
    initializers = {t.name: t for t in proto.graph.initializer}
    aliases = {n.output[0]: n.input[0] for n in proto.graph.node if n.op_type == "Identity" and n.input}
    folded = set()
    for node in proto.graph.node:
        if node.op_type != "Conv" or len(node.input) < 3 or not node.input[2]:
            continue
        name = node.input[1]
        for _ in range(len(aliases)):
            if name not in aliases:
                break
            name = aliases[name]
        weight = initializers.get(name)
        if weight is not None and fingerprint(numpy_helper.to_array(weight)) not in known:
            folded.add(node.output[0])
    return frozenset(folded)


def _node_macs(node, shape_of, convention, folded_bn="auto"):
    """[(op key, count), ...] of one node, or None if this op is not counted; raises _Unresolved."""
    op = node.op_type

    def need(idx, outputs=False):
        names = node.output if outputs else node.input
        if idx >= len(names) or not names[idx]:
            raise _Unresolved("missing %s %d" % ("output" if outputs else "input", idx))
        s = shape_of(names[idx])
        if not _is_static(s):
            raise _Unresolved("shape of %r is %s" % (names[idx], s))
        return s

    if op in ("Conv", "ConvInteger", "QLinearConv"):
        w = need(3 if op == "QLinearConv" else 1)
        y = need(0, outputs=True)
        out = [(op, _prod(y) * _prod(w[1:]))]
        if convention == "fvcore" and _is_folded_bn_conv(node, folded_bn):
            out.append((FOLDED_BN, 2 * _prod(y)))
        return out
    macs = _other_node_macs(node, op, need, convention)
    return None if macs is None else [(op, macs)]


def _other_node_macs(node, op, need, convention):
    if op == "ConvTranspose":
        x = need(0)
        w = need(1)
        return x[0] * _prod(x[2:]) * _prod(w)
    if op == "Gemm":
        a = need(0)
        y = need(0, outputs=True)
        k = a[0] if _attr(node, "transA", 0) else a[-1]
        return _prod(y) * k
    if op in ("MatMul", "MatMulInteger", "QLinearMatMul"):
        a = need(0)
        b = need(3 if op == "QLinearMatMul" else 1)
        k = a[-1]
        y = need(0, outputs=True) if node.output else None
        if len(a) == 1 and len(b) == 1:
            return k
        return _prod(y) * k
    if op == "Einsum":
        eq = _attr(node, "equation")
        eq = eq.decode() if isinstance(eq, bytes) else eq
        lhs = eq.replace(" ", "").split("->")[0].split(",")
        sizes = {}
        for i, term in enumerate(lhs):
            if "..." in term:
                raise _Unresolved("Einsum with ellipsis")
            s = need(i)
            for letter, d in zip(term, s):
                sizes[letter] = max(sizes.get(letter, 1), d)
        return _prod(sizes.values())
    if convention != "fvcore":
        return None
    if op == "BatchNormalization":
        return 2 * _prod(need(0))
    if op in ("InstanceNormalization", "LayerNormalization", "GroupNormalization"):
        return 5 * _prod(need(0))
    if op == "Resize":
        mode = _resize_mode(node)
        per = {"nearest": 1, "linear": 4, "cubic": 16}.get(mode, 1)
        return per * _prod(need(0, outputs=True))
    if op == "GlobalAveragePool":
        return _prod(need(0))
    return None


class _Unresolved(Exception):
    pass


def _counted_op(op, convention):
    return op in MAC_OPS or (convention == "fvcore" and op in FVCORE_ELEMENTWISE_OPS)


def _subgraph_nodes(node):
    """All nodes inside the subgraphs of a node (recursively)."""
    from onnx import AttributeProto
    out = []
    for a in node.attribute:
        graphs = []
        if a.type == AttributeProto.GRAPH:
            graphs = [a.g]
        elif a.type == AttributeProto.GRAPHS:
            graphs = list(a.graphs)
        for g in graphs:
            for n in g.node:
                out.append(n)
                out.extend(_subgraph_nodes(n))
    return out


def _random_feeds(model, input_shapes, seed):
    import numpy as np
    from onnx import helper
    rng = np.random.RandomState(seed)
    by_name = {i.name: i for i in model.graph.input}
    feeds = {}
    for name, shape in input_shapes.items():
        dtype = helper.tensor_dtype_to_np_dtype(by_name[name].type.tensor_type.elem_type)
        if np.issubdtype(dtype, np.floating):
            feeds[name] = rng.random_sample(shape).astype(dtype)
        else:  # integer / bool inputs (indices, flags): zeros are always in range
            feeds[name] = np.zeros(shape, dtype=dtype)
    return feeds


def _shapes_from_onnxruntime(proto, inferred, input_shapes, inputs, seed):
    """Run the graph once in ONNX Runtime with every typed intermediate tensor exposed; return name -> shape.

    ``proto`` is the full model (inputs fixed), ``inferred`` the analysed light copy (for the tensor types)."""
    import onnxruntime as ort
    from onnx import helper
    model = copy.deepcopy(proto)
    graph = model.graph
    _, types = _static_tables(inferred)
    existing = {o.name for o in graph.output}
    init_names = {t.name for t in graph.initializer} | {i.name for i in graph.input}
    for node in graph.node:
        for name in node.output:
            if name and name not in existing and name not in init_names and types.get(name):
                graph.output.append(helper.make_tensor_value_info(name, types[name], None))
                existing.add(name)
    feeds = dict(inputs) if inputs is not None else _random_feeds(model, input_shapes, seed)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    values = sess.run(names, feeds)
    return {n: list(v.shape) for n, v in zip(names, values) if hasattr(v, "shape")}


def count_gmac(model, input_shapes=None, convention="fvcore", resolve="static", inputs=None, seed=0,
               folded_bn="auto", unknown_dim=None, keep_per_node=True):
    """Count the MACs of an ONNX graph at fixed input shapes.

    Args:
        model: path to an ``.onnx`` file, its bytes, or an ``onnx.ModelProto`` (not modified).
        input_shapes: dict graph-input name -> shape (tuple of int). Inputs left out must already be static.
        convention: ``"fvcore"`` (default: MAC ops plus fvcore's normalization / resize / global-pool rules)
            or ``"mac"`` (convolutions and matrix products only). See the module docstring.
        resolve: ``"static"`` (shape inference only; data-dependent nodes are listed as uncounted),
            ``"onnxruntime"`` (take every shape from one ONNX Runtime run) or ``"auto"`` (static, then
            ONNX Runtime only if something is unresolved).
        inputs: dict name -> numpy array for the ONNX Runtime run (default: seeded uniform [0, 1) data).
        seed: seed of the random inputs.
        folded_bn: ``"auto"`` (default), True, False, or the torch module the graph was exported from: under
            the fvcore convention, count a BatchNormalization that the exporter folded into a Conv as fvcore counts
            an inference BatchNorm (2 per output element), under the op key ``"BatchNormalization(folded)"``.
            Given the module, a Conv is folded when its weight equals none of the module's tensors (by value,
            independent of tensor names); ``"auto"`` recognises the TorchScript exporter's folding by the names of
            the Conv's weight and bias (see ``_is_folded_bn_conv``); True treats every Conv with a bias as folded;
            False never.
        unknown_dim: if given (an int), every dim that stays unknown after the static analysis is taken as this
            value, and the report's ``shape_source`` is ``"static+assumed"``. For Faster R-CNN the only unknown
            dim of the counted nodes is the number of proposals reaching the box head, so passing the model's
            ``rpn_post_nms_top_n_test`` (150 for the MobileNetV3-320 model, 1000 for the ResNet-50 one) counts
            it at its maximum. Ignored when shapes come from ONNX Runtime.
        keep_per_node: keep the per-node list in the report.

    Returns:
        :class:`GmacReport`.
    """
    if convention not in _CONVENTIONS:
        raise ValueError("convention must be one of %s, got %r" % (_CONVENTIONS, convention))
    if resolve not in _RESOLVE:
        raise ValueError("resolve must be one of %s, got %r" % (_RESOLVE, resolve))
    proto = _load(model)
    if hasattr(folded_bn, "state_dict"):
        folded_bn = _convs_with_computed_weights(proto, folded_bn)
    elif folded_bn not in ("auto", True, False):
        raise ValueError("folded_bn must be 'auto', True, False or a torch module, got %r" % (folded_bn,))
    used_shapes = _fix_inputs(proto, input_shapes)
    inferred, folded = _static_analysis(proto)
    static_shapes, _ = _static_tables(inferred)

    def run(shapes, source):
        macs_by_op, nodes_by_op, ignored, per_node, uncounted = {}, {}, {}, [], []

        def shape_of(name):
            return shapes.get(name)

        for node in inferred.graph.node:
            sub = _subgraph_nodes(node)
            for sn in sub:
                if _counted_op(sn.op_type, convention):
                    uncounted.append(UncountedNode(sn.name or "<unnamed>", sn.op_type, {},
                                                   "inside the subgraph of %s node %r" % (node.op_type,
                                                                                          node.name)))
            op = node.op_type
            if not _counted_op(op, convention):
                ignored[op] = ignored.get(op, 0) + 1
                continue
            try:
                parts = _node_macs(node, shape_of, convention, folded_bn)
            except _Unresolved as exc:
                io = OrderedDict()
                for n in list(node.input) + list(node.output):
                    if n:
                        io[n] = shape_of(n)
                uncounted.append(UncountedNode(node.name or "<unnamed>", op, io,
                                               "data-dependent or unknown shape (%s)" % exc))
                continue
            if parts is None:
                ignored[op] = ignored.get(op, 0) + 1
                continue
            for key, macs in parts:
                macs_by_op[key] = macs_by_op.get(key, 0) + int(macs)
                nodes_by_op[key] = nodes_by_op.get(key, 0) + 1
                if keep_per_node:
                    per_node.append((node.name, key, int(macs)))
        return GmacReport(macs_by_op, nodes_by_op, per_node, ignored, uncounted, used_shapes, convention,
                          source, folded)

    if unknown_dim is not None and resolve != "onnxruntime":
        assumed = {}
        for name, shape in static_shapes.items():
            if shape is not None and not _is_static(shape):
                assumed[name] = [d if isinstance(d, int) and d >= 0 else int(unknown_dim) for d in shape]
        if assumed:
            static_shapes = dict(static_shapes)
            static_shapes.update(assumed)
            report = run(static_shapes, "static+assumed")
        else:
            report = run(static_shapes, "static")
    else:
        report = run(static_shapes, "static")
    needs_run = resolve == "onnxruntime" or (resolve == "auto" and any(
        not u.reason.startswith("inside the subgraph") for u in report.uncounted))
    if needs_run:
        observed = _shapes_from_onnxruntime(proto, inferred, used_shapes, inputs, seed)
        merged = dict(static_shapes)
        merged.update(observed)
        report = run(merged, "onnxruntime")
    return report



def shape_key(shape: Sequence[int]) -> str:
    """[1, 3, 416, 416] -> "1x3x416x416", the key of a shape in a :func:`record_gmac` record."""
    return "x".join(str(int(d)) for d in shape)


def record_gmac(model, input_name: str, shapes: Sequence[Sequence[int]]) -> Dict[str, Any]:
    """What a bundle's manifest records of a stage's cost, counted once where `onnx` is at hand (at export), so that
    a device without it (a Jetson) never counts: the MACs (fvcore's convention) at each input shape the stage can
    be given. A table, not a per-pixel rate: a convolution without padding (the encoder's last, 2x2) does not
    scale with the pixel count."""
    macs = OrderedDict()  # type: Dict[str, int]
    for shape in shapes:
        report = count_gmac(model, {input_name: tuple(int(d) for d in shape)})
        if not report.complete:
            raise ValueError("the GMAC of %s at %s is not fully countable: %r" % (input_name, list(shape),
                                                                                  report.uncounted[0]))
        macs[shape_key(shape)] = report.total_macs
    return {"convention": "fvcore", "input": input_name, "macs_by_input_shape": macs}


def gmac_from_record(record: Optional[Dict[str, Any]], input_shape: Sequence[int]) -> Optional[float]:
    """The GMAC a :func:`record_gmac` record holds for one input shape; None where it holds none (a bundle
    exported before the record existed, or a shape it was not counted at)."""
    macs = (record or {}).get("macs_by_input_shape", {}).get(shape_key(input_shape))
    return None if macs is None else macs / 1e9
