"""`ladon-build --check`: per-version verdicts on small hand-built graphs, and on bundles exported by the pipeline."""
import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from ladon_deploy.engines import onnx_trt_support as support
from ladon_deploy.engines.check import check_bundle, check_onnx
from ladon_deploy.errors import EngineError

FLOAT, INT64, BOOL = TensorProto.FLOAT, TensorProto.INT64, TensorProto.BOOL


def _save(path, nodes, inputs, outputs, initializers=(), opset=13, extra_opsets=()):
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    opsets = [helper.make_opsetid("", opset)] + [helper.make_opsetid(domain, 1) for domain in extra_opsets]
    model = helper.make_model(graph, opset_imports=opsets)
    onnx.save(model, str(path))
    return str(path)


def _value(name, elem_type, shape):
    return helper.make_tensor_value_info(name, elem_type, shape)


def _ints(name, values):
    return numpy_helper.from_array(np.array(values, dtype=np.int64), name)


def _verdict(path, trt, target="server"):
    stage = check_onnx(path, target, trt).stages[0]
    return stage.verdict, [(f.op, f.node, f.why) for f in stage.unsupported]


def _ops(findings):
    return sorted(set(op for op, _, _ in findings))


@pytest.fixture
def nonzero(tmp_path):
    return _save(tmp_path / "nonzero.onnx", [helper.make_node("NonZero", ["x"], ["y"], name="nz")],
                 [_value("x", FLOAT, [4, 4])], [_value("y", INT64, [2, None])])


def test_nonzero_absent_on_8_2_and_8_4_present_from_8_5(nonzero):
    for trt in ("8.2", "8.4"):
        verdict, findings = _verdict(nonzero, trt)
        assert verdict == "onnxruntime" and findings[0][:2] == ("NonZero", "nz")
        assert "8.5-GA" in findings[0][2]
    for trt in ("8.5", "8.6", "10.0", "10.1"):
        assert _verdict(nonzero, trt) == ("tensorrt", [])


def test_roialign_absent_on_8_2_present_on_8_5(tmp_path):
    path = _save(tmp_path / "roi.onnx",
                 [helper.make_node("RoiAlign", ["x", "rois", "index"], ["y"], output_height=7, output_width=7)],
                 [_value("x", FLOAT, [1, 8, 32, 32]), _value("rois", FLOAT, [5, 4]), _value("index", INT64, [5])],
                 [_value("y", FLOAT, [5, 8, 7, 7])])
    verdict, findings = _verdict(path, "8.2")
    assert verdict == "onnxruntime" and _ops(findings) == ["RoiAlign"]
    assert _verdict(path, "8.5") == ("tensorrt", [])


def _topk(path, k_from_shape):
    nodes = [helper.make_node("TopK", ["x", "k"], ["values", "indices"], name="topk")]
    initializers = []
    if k_from_shape:
        # K = the second dimension of x, as torchvision computes min(pre_nms_top_n, num_anchors).
        nodes[:0] = [helper.make_node("Shape", ["x"], ["shape"]),
                     helper.make_node("Slice", ["shape", "one", "two"], ["k"])]
        initializers = [_ints("one", [1]), _ints("two", [2])]
    else:
        initializers = [_ints("k", [3])]
    return _save(path, nodes, [_value("x", FLOAT, [2, 10])],
                 [_value("values", FLOAT, [2, None]), _value("indices", INT64, [2, None])], initializers)


def test_topk_with_computed_k_refused_through_8_5(tmp_path):
    path = _topk(tmp_path / "topk_computed.onnx", k_from_shape=True)
    for trt in ("8.2", "8.4", "8.5"):
        verdict, findings = _verdict(path, trt)
        assert verdict == "onnxruntime" and findings == [("TopK", "topk", findings[0][2])]
        assert "K: computed in the graph" in findings[0][2]
    # 8.6-GA's table drops the restriction and its importer feeds K to the layer as a tensor.
    for trt in ("8.6", "10.0"):
        assert _verdict(path, trt) == ("tensorrt", [])


def test_topk_with_initializer_k_accepted_everywhere(tmp_path):
    path = _topk(tmp_path / "topk_const.onnx", k_from_shape=False)
    for trt in ("8.2", "8.5", "10.1"):
        assert _verdict(path, trt) == ("tensorrt", [])


def _if_model(path, then_shape, else_shape, constant_condition=None):
    def branch(name, shape):
        value = numpy_helper.from_array(np.zeros(shape, dtype=np.float32), name + "_value")
        return helper.make_graph([helper.make_node("Constant", [], [name + "_out"], value=value)], name, [],
                                 [_value(name + "_out", FLOAT, list(shape))])

    nodes, inputs, initializers = [], [], []
    if constant_condition is None:
        inputs = [_value("cond", BOOL, [])]
    else:
        initializers = [numpy_helper.from_array(np.array(constant_condition), "cond")]
    nodes.append(helper.make_node("If", ["cond"], ["y"], name="branchy", then_branch=branch("then", then_shape),
                                  else_branch=branch("else", else_shape)))
    return _save(path, nodes, inputs, [helper.make_tensor_value_info("y", FLOAT, None)], initializers)


def test_if_with_branches_of_different_rank_refused(tmp_path):
    different = _if_model(tmp_path / "if_ranks.onnx", [2], [2, 2])
    for trt in ("8.2", "8.6", "10.1"):
        verdict, findings = _verdict(different, trt)
        assert verdict == "onnxruntime" and [op for op, _, _ in findings] == ["If"]
        assert "different ranks (1 and 2)" in findings[0][2]
    same = _if_model(tmp_path / "if_same.onnx", [2], [3])
    assert _verdict(same, "8.2") == ("tensorrt", [])
    # A build-time condition: the parser imports only the branch it selects.
    constant = _if_model(tmp_path / "if_const.onnx", [2], [2, 2], constant_condition=True)
    assert _verdict(constant, "8.2") == ("tensorrt", [])


def _conv(path, computed_weights):
    weights = np.ones((4, 3, 3, 3), dtype=np.float32)
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["y"], name="conv", pads=[1, 1, 1, 1])]
    initializers = [numpy_helper.from_array(np.zeros(4, dtype=np.float32), "b")]
    if computed_weights:
        # GDN's reparametrisation: the weights are max(gamma, bound)^2 - pedestal, computed in the graph.
        nodes[:0] = [helper.make_node("Max", ["gamma", "bound"], ["clamped"]),
                     helper.make_node("Mul", ["clamped", "clamped"], ["w"])]
        initializers += [numpy_helper.from_array(weights, "gamma"),
                         numpy_helper.from_array(np.array(1e-3, dtype=np.float32), "bound")]
    else:
        initializers.append(numpy_helper.from_array(weights, "w"))
    return _save(path, nodes, [_value("x", FLOAT, [1, 3, 8, 8])], [_value("y", FLOAT, [1, 4, 8, 8])], initializers)


def test_conv_with_computed_weights_refused_before_8_5(tmp_path):
    computed = _conv(tmp_path / "conv_computed.onnx", computed_weights=True)
    for trt in ("8.2", "8.4"):
        verdict, findings = _verdict(computed, trt)
        assert verdict == "onnxruntime" and [(op, node) for op, node, _ in findings] == [("Conv", "conv")]
        assert "weights W" in findings[0][2] and "bias" not in findings[0][2].split(":")[0]
    assert _verdict(computed, "8.5") == ("tensorrt", [])
    assert _verdict(_conv(tmp_path / "conv_init.onnx", computed_weights=False), "8.2") == ("tensorrt", [])


def test_reciprocal_absent_on_8_2(tmp_path):
    path = _save(tmp_path / "recip.onnx", [helper.make_node("Reciprocal", ["x"], ["y"])],
                 [_value("x", FLOAT, [3])], [_value("y", FLOAT, [3])])
    assert _ops(_verdict(path, "8.2")[1]) == ["Reciprocal"]
    assert _verdict(path, "8.4") == ("tensorrt", [])


def _nms(path, thresholds_initializers):
    inputs = [_value("boxes", FLOAT, [1, 10, 4]), _value("scores", FLOAT, [1, 1, 10])]
    initializers = [_ints("max_out", [5])]
    if thresholds_initializers:
        initializers += [numpy_helper.from_array(np.array([0.5], dtype=np.float32), "iou"),
                         numpy_helper.from_array(np.array([0.1], dtype=np.float32), "score")]
    else:
        inputs += [_value("iou", FLOAT, [1]), _value("score", FLOAT, [1])]
    node = helper.make_node("NonMaxSuppression", ["boxes", "scores", "max_out", "iou", "score"], ["selected"],
                            name="nms")
    return _save(path, [node], inputs, [_value("selected", INT64, [None, 3])], initializers)


def test_nms_experimental_on_8_2_with_thresholds_named(tmp_path):
    graph_thresholds = _nms(tmp_path / "nms_inputs.onnx", thresholds_initializers=False)
    whys = [why for _, _, why in _verdict(graph_thresholds, "8.2")[1]]
    assert any(why.startswith("iou_threshold:") for why in whys)
    assert any(why.startswith("score_threshold:") for why in whys)
    assert not any(why.startswith("max_output_boxes_per_class:") for why in whys)
    assert any("padded" in why for why in whys)
    # From 8.5 the parser imports NMS fully, thresholds computed or not.
    assert _verdict(graph_thresholds, "8.5") == ("tensorrt", [])
    assert _verdict(_nms(tmp_path / "nms_init.onnx", thresholds_initializers=True), "10.0") == ("tensorrt", [])


def _reshape(path, shape_from_data):
    if shape_from_data:
        # The target shape comes from tensor values: the number of positive entries, as a detector's box count.
        nodes = [helper.make_node("Greater", ["x", "zero"], ["positive"]),
                 helper.make_node("Cast", ["positive"], ["as_int"], to=INT64),
                 helper.make_node("ReduceSum", ["as_int"], ["count"], keepdims=1),
                 helper.make_node("Reshape", ["count", "one_i"], ["count_1d"]),
                 helper.make_node("Concat", ["count_1d", "minus_one"], ["shape"], axis=0)]
    else:
        nodes = [helper.make_node("Shape", ["x"], ["full"]),
                 helper.make_node("Slice", ["full", "zero_i", "one_i"], ["first"]),
                 helper.make_node("Concat", ["first", "minus_one"], ["shape"], axis=0)]
    nodes.append(helper.make_node("Reshape", ["x", "shape"], ["y"], name="reshape"))
    initializers = [numpy_helper.from_array(np.array(0.0, dtype=np.float32), "zero"), _ints("minus_one", [-1]),
                    _ints("zero_i", [0]), _ints("one_i", [1])]
    return _save(path, nodes, [_value("x", FLOAT, [4, 6])], [_value("y", FLOAT, [None, None])], initializers)


def test_data_dependent_shapes_refused_before_8_5(tmp_path):
    data_shaped = _reshape(tmp_path / "reshape_data.onnx", shape_from_data=True)
    verdict, findings = _verdict(data_shaped, "8.2")
    assert verdict == "onnxruntime" and [(op, node) for op, node, _ in findings] == [("Reshape", "reshape")]
    assert "depends on tensor values" in findings[0][2]
    assert _verdict(data_shaped, "8.5") == ("tensorrt", [])
    # Shapes computed from input shapes (Shape -> Slice -> Concat) are fine on every version.
    assert _verdict(_reshape(tmp_path / "reshape_shape.onnx", shape_from_data=False), "8.2") == ("tensorrt", [])


def _reshape_by_if(path, else_from_data):
    """Reshape(x, If(size(x) == 24, Shape(x), <else>)): the condition follows from shapes, the branches decide."""
    then_branch = helper.make_graph([helper.make_node("Shape", ["x"], ["then_shape"])], "then", [],
                                    [_value("then_shape", INT64, [2])])
    if else_from_data:
        else_nodes = [helper.make_node("Cast", ["x"], ["as_int"], to=INT64),
                      helper.make_node("Abs", ["as_int"], ["else_shape"])]
    else:
        else_nodes = [helper.make_node("Shape", ["x"], ["full"]), helper.make_node("Neg", ["full"], ["else_shape"])]
    else_branch = helper.make_graph(else_nodes, "else", [], [_value("else_shape", INT64, [2])])
    nodes = [helper.make_node("Size", ["x"], ["size"]), helper.make_node("Equal", ["size", "n"], ["cond"]),
             helper.make_node("If", ["cond"], ["shape"], then_branch=then_branch, else_branch=else_branch),
             helper.make_node("Reshape", ["x", "shape"], ["y"], name="reshape")]
    return _save(path, nodes, [_value("x", FLOAT, [1, 2])], [_value("y", FLOAT, [None, None])], [_ints("n", 24)])


def test_if_outputs_carry_the_data_dependence_of_their_branches(tmp_path):
    from_data = _reshape_by_if(tmp_path / "if_data.onnx", else_from_data=True)
    verdict, findings = _verdict(from_data, "8.2")
    assert verdict == "onnxruntime" and [(op, node) for op, node, _ in findings] == [("Reshape", "reshape")]
    assert _verdict(_reshape_by_if(tmp_path / "if_shapes.onnx", else_from_data=False), "8.2") == ("tensorrt", [])


def test_op_definition_newer_than_the_parser_opset(tmp_path):
    path = _save(tmp_path / "reduce18.onnx", [helper.make_node("ReduceMean", ["x", "axes"], ["y"], name="mean")],
                 [_value("x", FLOAT, [2, 3])], [_value("y", FLOAT, [2, 1])], [_ints("axes", [1])], opset=18)
    verdict, findings = _verdict(path, "8.2")
    assert verdict == "onnxruntime" and "opset 18" in findings[0][2] and "up to 13" in findings[0][2]
    assert _verdict(path, "10.0") == ("tensorrt", [])


def test_custom_domain_and_loop_bodies_are_checked(tmp_path):
    custom = _save(tmp_path / "custom.onnx", [helper.make_node("FusedThing", ["x"], ["y"], domain="com.example")],
                   [_value("x", FLOAT, [3])], [_value("y", FLOAT, [3])], extra_opsets=["com.example"])
    assert "plugin" in _verdict(custom, "10.1")[1][0][2]

    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]),
         helper.make_node("NonZero", ["carried"], ["nz"], name="inner_nonzero"),
         helper.make_node("Identity", ["carried"], ["carried_out"])],
        "body", [_value("i", INT64, []), _value("cond_in", BOOL, []), _value("carried", FLOAT, [3])],
        [_value("cond_out", BOOL, []), _value("carried_out", FLOAT, [3])])
    loop = _save(tmp_path / "loop.onnx", [helper.make_node("Loop", ["trips", "", "x"], ["y"], name="loop", body=body)],
                 [_value("x", FLOAT, [3])], [_value("y", FLOAT, [3])], [_ints("trips", 2)])
    verdict, findings = _verdict(loop, "8.2")
    assert verdict == "onnxruntime" and findings[0][:2] == ("NonZero", "loop/body:inner_nonzero")
    assert _verdict(loop, "8.5") == ("tensorrt", [])


def test_versions_map_to_the_newest_table_at_or_below(nonzero):
    report = check_onnx(nonzero, "server", "8.5.2.2")
    assert report.trt == "8.5" and report.branch == "8.5-GA"
    assert check_onnx(nonzero, "server", "11.1").branch == "10.1-GA"
    assert support.table_branch((8, 3)) == "8.2-GA"
    with pytest.raises(EngineError, match="8.2 and later"):
        check_onnx(nonzero, "server", "7.1")
    with pytest.raises(EngineError):
        check_onnx(nonzero, "server", "eight")
    # Each table only adds operators to the previous one (9.0-GA and 9.3 add none).
    branches = [branch for _, branch in support.TABLE_BRANCHES]
    for older, newer in zip(branches, branches[1:]):
        assert support.SUPPORTED_OPS[older] <= support.SUPPORTED_OPS[newer]


def test_target_picks_the_version_and_cpu_needs_one(nonzero):
    assert check_onnx(nonzero, "jetson-nano").trt == "8.2"
    assert check_onnx(nonzero, "xavier-nx").stages[0].verdict == "tensorrt"
    with pytest.raises(EngineError, match="--trt"):
        check_onnx(nonzero, "cpu")
    document = check_onnx(nonzero, "cpu", "8.2").to_json()
    assert set(document) == {"target", "trt", "stages"} and document["target"] == "cpu"
    assert set(document["stages"][0]) == {"stage", "file", "verdict", "unsupported"}
    assert document["stages"][0]["stage"] == "nonzero"
    assert set(document["stages"][0]["unsupported"][0]) == {"op", "node", "why"}


# -- bundles exported by the pipeline --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sc2bench_bundle(sc2bench_files, tmp_path_factory):
    """A bundle exported from sc2bench-format checkpoints, as `ladon-export --ckpt ...` writes it."""
    from ladon_deploy.export.pipeline import export_bundle
    from ladon_deploy.models.checkpoint import load_ladon

    loaded = load_ladon(list(sc2bench_files.values()))
    out = tmp_path_factory.mktemp("check") / "sc2bench-bundle"
    export_bundle(loaded.model, str(out), beta=loaded.beta, sources=loaded.sources)
    return str(out)


def _by_stage(report):
    return {stage.stage: stage for stage in report.stages}


@pytest.mark.slow
def test_sc2bench_bundle_encoder_on_xavier_and_server_and_detection_on_8_2(sc2bench_bundle):
    xavier = _by_stage(check_bundle(sc2bench_bundle, "xavier-nx"))
    assert list(xavier) == ["encoder"] and xavier["encoder"].verdict == "tensorrt"
    on_server = check_onnx(xavier["encoder"].path, "server")
    assert on_server.stages[0].verdict == "tensorrt"

    server = check_bundle(sc2bench_bundle, "server")
    assert [stage.stage for stage in server.stages] == ["body", "head_cls", "head_det", "head_seg"]
    assert all(stage.verdict in ("tensorrt", "onnxruntime") for stage in server.stages)
    json.dumps(server.to_json())

    # Detection on TensorRT 8.2 (what the Nano's parser is): RoiAlign, NonZero and the data-dependent shapes.
    detection = _by_stage(check_bundle(sc2bench_bundle, "cpu", "8.2"))["head_det"]
    ops = set(finding.op for finding in detection.unsupported)
    assert detection.verdict == "onnxruntime" and {"RoiAlign", "NonZero", "TopK"} <= ops


@pytest.mark.slow
def test_sc2bench_bundle_encoder_on_the_nano(sc2bench_bundle):
    nano = _by_stage(check_bundle(sc2bench_bundle, "jetson-nano"))
    assert nano["encoder"].verdict == "tensorrt", nano["encoder"].to_json()
