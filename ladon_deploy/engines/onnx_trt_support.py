"""What the ONNX parser of each TensorRT version imports: the operator tables and the restrictions that matter here.

Source: onnx/onnx-tensorrt, docs/operators.md on each release branch (8.0-GA, 8.2-GA, 8.4-GA, 8.5-GA, 8.6-GA, 9.0-GA,
9.1, 9.2, 9.3, 10.0-GA and 10.1-GA: every one the repository has). scripts/extract_onnx_trt_ops.py reads them and
writes onnx_trt_operators.json next to this module (branch, commit, git blob id, the documented opset, every
operator's Supported and Restrictions cells); everything below is derived from that file, and a test regenerates it
from the committed sources. An operator counts as supported where its Supported column is Y (8.0-8.4 mark
NonMaxSuppression "Y [EXPERIMENTAL]"). No operator supported on one branch is dropped on a later one (a test keeps
that true), so a TensorRT version without its own branch (8.3, 10.2 and later, 11.x) is checked against the newest
table at or below it: that errs on the side of ONNX Runtime. The check starts at 8.2 (CHECKED_FROM): TensorRT 8.0
(plain JetPack 4.6) is outside the targets, and its table states fewer of the restrictions its importer enforces.

Edge subset: Python 3.6-clean, standard library only.
"""
import json
import os
from typing import Any, Dict, FrozenSet, List, Tuple

from ladon_deploy.errors import EngineError

TABLE_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "onnx_trt_operators.json")
CHECKED_FROM = (8, 2)


def _load_table() -> Dict[str, Any]:
    with open(TABLE_FILE) as handle:
        return json.load(handle)


OPERATOR_TABLE = _load_table()
_ROWS = dict((row["branch"], row) for row in OPERATOR_TABLE["branches"])


def _version(row: Dict[str, Any]) -> Tuple[int, int]:
    major, minor = row["trt"].split(".")
    return int(major), int(minor)


# Branch per table, oldest first: (major, minor) -> branch of onnx/onnx-tensorrt.
TABLE_BRANCHES = tuple(sorted((_version(row), row["branch"]) for row in OPERATOR_TABLE["branches"]
                              if _version(row) >= CHECKED_FROM))

SUPPORTED_OPS = dict((branch, frozenset(_ROWS[branch]["supported"]))
                     for _, branch in TABLE_BRANCHES)  # type: Dict[str, FrozenSet[str]]

# The newest opset each branch's docs/operators.md documents ("supports operators up to Opset 13", "... in the
# inclusive range of opset 9 to opset 20").
MAX_OPSET = dict((branch, int(_ROWS[branch]["max_opset"])) for _, branch in TABLE_BRANCHES)

# Restrictions a static look at a graph can decide, as rule -> (operator, what its Restrictions cell says). A rule
# applies on the branches whose cell says it; check.py implements each rule once. Where the importer
# (builtin_op_importers.cpp on the same branch) goes further, check.py says so at the rule: 8.2/8.4's Conv importer
# also wants the bias as an initializer, and 8.6's TopK importer takes a computed K.
RESTRICTION_STATEMENTS = {
    "conv_weights_initializer": ("Conv", "Weights `W` must be an init"),  # 8.2/8.4 spell it "initailizer"
    "topk_k_initializer": ("TopK", "`K` input must be an initializer"),
    "topk_sorted_and_k_limit": ("TopK", "`sorted` must be 1"),
    "instancenorm_initializers": ("InstanceNormalization", "biases `B` must be initializers"),
    "range_float_initializers": ("Range", "Floating point inputs are only supported if"),
    "pad_axes_initializer": ("Pad", "`axes` must be an initializer"),
    "dropout_not_training": ("Dropout", "must be an initializer and evaluate to False"),
}


def _restriction_branches() -> Dict[str, Tuple[str, ...]]:
    rules = {}  # type: Dict[str, Tuple[str, ...]]
    for rule, (op, statement) in RESTRICTION_STATEMENTS.items():
        rules[rule] = tuple(branch for _, branch in TABLE_BRANCHES
                            if statement in _ROWS[branch]["restrictions"].get(op, ""))
    # NonMaxSuppression "Y [EXPERIMENTAL]": max_output_boxes_per_class, iou_threshold and score_threshold must be
    # initializers; the output is padded to a fixed [max_output_boxes_per_class, 3].
    rules["nms_experimental"] = tuple(branch for _, branch in TABLE_BRANCHES
                                      if "NonMaxSuppression" in _ROWS[branch]["experimental"])
    return rules


# rule -> the branches whose table states it.
RESTRICTION_BRANCHES = _restriction_branches()

# Restrictions on every branch: CumSum `axis`, Slice `axes`, Squeeze `axes` must be initializers; so must a Reduce*
# `axes` input (stated from 10.0-GA; on 8.x reduceTensor in onnx2trt_utils.cpp asserts "Axis input must be an
# initializer!" for ReduceSum-13, the one 8.x-era reduction with an axes input); Unsqueeze
# `axes` a constant; MaxPool's `Indices` output is unsupported; If branches need outputs of the same rank
# ("broadcastable shapes" up to 10.0-GA, "the same rank" from 10.1-GA; TensorRT 10.11's release notes still require
# the same rank) and different names; Resize's modes are listed below. Constant's sparse_value/value_string(s) are
# refused by the Constant importer from 8.2-GA on (the table states it from 10.1-GA). An input counts as an
# initializer when it is one (of the graph or an enclosing one) or a Constant node's output: the importers turn
# both into weights, and everything else (an Identity of an initializer included) into a tensor.
RESIZE_COORDINATE_MODES = ("half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric", "align_corners")
RESIZE_MODES = ("nearest", "linear")
RESIZE_NEAREST_MODES = ("floor", "ceil", "round_prefer_floor", "round_prefer_ceil")

# Data-dependent shapes (a tensor used as a shape that is computed from tensor values, NonZero's output) need
# TensorRT's IOutputAllocator and the data-dependent shape support that came with 8.5 (with INonZeroLayer; the
# parser tables add NonZero in 8.5-GA). Before 8.5 every shape must follow from the input shapes.
DATA_DEPENDENT_SHAPES_FROM = (8, 5)


def table_branch(version: Tuple[int, int]) -> str:
    """The onnx-tensorrt branch whose table applies to a TensorRT version: the newest at or below it."""
    chosen = None
    for key, branch in TABLE_BRANCHES:
        if key <= version:
            chosen = branch
    if chosen is None:
        raise EngineError("no ONNX parser table for TensorRT %d.%d: the tables cover 8.2 and later" % version)
    return chosen


def restriction_applies(rule: str, branch: str) -> bool:
    return branch in RESTRICTION_BRANCHES[rule]


def branches_supporting(op: str) -> List[str]:
    """The branches whose table marks `op` supported, oldest first (for 'supported from 8.5-GA' in explanations)."""
    return [branch for _, branch in TABLE_BRANCHES if op in SUPPORTED_OPS[branch]]
