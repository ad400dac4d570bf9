"""What the ONNX parser of each TensorRT version imports: the operator tables and the restrictions that matter here.

Source: onnx/onnx-tensorrt, docs/operators.md on the release branches 8.2-GA, 8.4-GA, 8.5-GA, 8.6-GA, 10.0-GA and
10.1-GA (read with `git show <branch>:docs/operators.md`). An operator counts as supported where its "Supported"
column is Y (8.2/8.4 mark NonMaxSuppression "Y [EXPERIMENTAL]"). No operator supported on one branch is dropped on
a later one, so each table is the previous one plus what the next branch added. A TensorRT version without its own
branch (8.3, 9.x, 10.2 and later, 11.x) is checked against the newest table at or below it: newer parsers only add
operators, so that errs on the side of ONNX Runtime.

The restrictions below are the ones in those tables' "Restrictions" column (and, where noted, the importer source
builtin_op_importers.cpp on the same branch) that a static look at a graph can decide.

Edge subset: Python 3.6-clean, standard library only.
"""
from typing import Dict, FrozenSet, List, Tuple

from ladon_deploy.errors import EngineError

# Branch per table, oldest first: (major, minor) -> branch of onnx/onnx-tensorrt.
TABLE_BRANCHES = ((8, 2), "8.2-GA"), ((8, 4), "8.4-GA"), ((8, 5), "8.5-GA"), ((8, 6), "8.6-GA"), \
                 ((10, 0), "10.0-GA"), ((10, 1), "10.1-GA")

# docs/operators.md, 8.2-GA: every operator marked Y.
_SUPPORTED_8_2 = """
Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization Cast Ceil Celu Clip
Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh CumSum DepthToSpace DequantizeLinear Div Dropout
Einsum Elu Equal Erf Exp Expand EyeLike Flatten Floor GRU Gather GatherElements GatherND Gemm GlobalAveragePool
GlobalLpPool GlobalMaxPool Greater GreaterOrEqual HardSigmoid Identity If ImageScaler InstanceNormalization
IsNaN LRN LSTM LeakyRelu Less LessOrEqual Log LogSoftmax Loop LpNormalization LpPool MatMul Max MaxPool Mean Min
Mul Neg NonMaxSuppression Not Or PRelu Pad ParametricSoftplus Pow QuantizeLinear RNN RandomUniform
RandomUniformLike Range ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd
ReduceSum ReduceSumSquare Relu Reshape Resize ReverseSequence Round ScaledTanh Scan Scatter ScatterElements
ScatterND Selu Shape Sigmoid Sign Sin Sinh Size Slice Softmax Softplus Softsign SpaceToDepth Split Sqrt Squeeze
Sub Sum Tan Tanh ThresholdedRelu Tile TopK Transpose Unsqueeze Upsample Where
"""

# What each later branch's docs/operators.md marks Y that the previous one did not.
_ADDED = {
    "8.4-GA": "HardSwish RandomNormal RandomNormalLike Reciprocal Shrink Xor",
    "8.5-GA": "GridSample MeanVarianceNormalization Mod NonZero OneHot RoiAlign Trilu",
    "8.6-GA": "GroupNormalization IsInf LayerNormalization",
    "10.0-GA": "CastLike Gelu Hardmax Mish",
    "10.1-GA": "DeformConv",
}

# The newest opset each branch's docs/operators.md documents ("supports operators up to Opset 13", "... in the
# inclusive range of opset 9 to opset 20").
MAX_OPSET = {"8.2-GA": 13, "8.4-GA": 17, "8.5-GA": 17, "8.6-GA": 17, "10.0-GA": 20, "10.1-GA": 20}


def _build_tables() -> Dict[str, FrozenSet[str]]:
    tables = {}  # type: Dict[str, FrozenSet[str]]
    current = frozenset(_SUPPORTED_8_2.split())
    for _, branch in TABLE_BRANCHES:
        current = current | frozenset(_ADDED.get(branch, "").split())
        tables[branch] = current
    return tables


SUPPORTED_OPS = _build_tables()

# Restrictions stated per branch (docs/operators.md "Restrictions" column unless noted), as
# rule name -> the branches whose table states it. check.py implements each rule once.
RESTRICTION_BRANCHES = {
    # Conv / ConvTranspose: "Weights `W` must be an initializer" on 8.2-GA and 8.4-GA, gone from 8.5-GA; the Conv
    # importer (builtin_op_importers.cpp) on those branches also asserts "The bias tensor is required to be an
    # initializer"; from 8.5-GA a computed W or bias takes the multi-input convolution path.
    "conv_weights_initializer": ("8.2-GA", "8.4-GA"),
    # TopK: "`K` input must be an initializer" on 8.2-GA to 8.5-GA; 8.6-GA's importer feeds K as a tensor.
    "topk_k_initializer": ("8.2-GA", "8.4-GA", "8.5-GA"),
    # TopK on 10.1-GA: "`sorted` must be 1. `K` input must be less than 3840."
    "topk_sorted_and_k_limit": ("10.1-GA",),
    # NonMaxSuppression "Y [EXPERIMENTAL]" on 8.2-GA and 8.4-GA: max_output_boxes_per_class, iou_threshold and
    # score_threshold must be initializers; the output is padded to a fixed [max_output_boxes_per_class, 3].
    "nms_experimental": ("8.2-GA", "8.4-GA"),
    # InstanceNormalization: "Scales `scale` and biases `B` must be initializers" on 8.2-GA to 8.5-GA.
    "instancenorm_initializers": ("8.2-GA", "8.4-GA", "8.5-GA"),
    # Range: "Floating point inputs are only supported if `start`, `limit`, and `delta` inputs are initializers"
    # on 8.2-GA only.
    "range_float_initializers": ("8.2-GA",),
    # Pad: "`axes` must be an initializer" from 10.0-GA.
    "pad_axes_initializer": ("10.0-GA", "10.1-GA"),
    # Dropout: "`is_traning` must be an initializer and evaluate to False" on 10.1-GA.
    "dropout_not_training": ("10.1-GA",),
}

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
