"""INT8 builds on the demo bundle with real photographs: the TensorRT form (QDQ + calibration cache), the cpu form,
the fidelity gate, and INT8 payloads crossing to FP32 servers and back.

The demo model has random weights: the figures these tests look at say how far INT8 moves an untrained model's
outputs; the tests check the machinery (forms, names, gate, wire), not accuracy."""
import json
import os
import shutil

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from ladon_deploy.bundle import open_bundle
from ladon_deploy.calibration import cache, fidelity, int8
from ladon_deploy.cli_support import run_command
from ladon_deploy.device import wire
from ladon_deploy.errors import LadonError


def _quiet(message):
    pass


@pytest.fixture(scope="module")
def bundle_copy(demo_bundle, tmp_path_factory):
    """A private copy of the demo bundle: INT8 builds write into its engines area."""
    target = str(tmp_path_factory.mktemp("int8") / "bundle")
    shutil.copytree(demo_bundle, target)
    return target


@pytest.fixture(scope="module")
def nx_report(bundle_copy, photos):
    return int8.build_int8(bundle_copy, "xavier-nx", photos, 6, progress=_quiet, held_out=3, threads=2)


def test_jetson_nano_int8_is_refused_in_one_line_recommending_fp16(bundle_copy, photos, capsys):
    with pytest.raises(LadonError) as refused:
        int8.build_int8(bundle_copy, "jetson-nano", photos, 4, progress=_quiet)
    assert "fp16" in str(refused.value) and "\n" not in str(refused.value)
    from ladon_deploy.engines.cli import main

    code = run_command("ladon-build", main, ["--bundle", bundle_copy, "--target", "jetson-nano", "--precision", "int8",
                                             "--calib-images", photos])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "fp16" in err[0]


def test_int8_without_images_is_refused(bundle_copy):
    with pytest.raises(LadonError) as refused:
        int8.build_int8(bundle_copy, "cpu", None, 4, progress=_quiet)
    assert "--calib-images" in str(refused.value)


def test_qdq_model_is_symmetric_with_per_channel_weights(bundle_copy, nx_report):
    bundle = open_bundle(bundle_copy, verify=False)
    model = onnx.load(bundle.engine_path("xavier-nx", "encoder", "int8", int8.QDQ_EXTENSION))
    initializers = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    quantize = [n for n in model.graph.node if n.op_type == "QuantizeLinear"]
    dequantize = [n for n in model.graph.node if n.op_type == "DequantizeLinear"]
    assert quantize and dequantize
    for node in quantize + dequantize:
        assert not np.any(initializers[node.input[2]]), node.name  # zero point 0: TensorRT's only form
        assert initializers[node.input[2]].dtype == np.int8
    per_channel = [n for n in dequantize if initializers[n.input[1]].size > 1]
    assert per_channel, "weights are quantized per output channel"


def test_gdn_blocks_stay_fp32_in_the_tensorrt_form_and_the_report_says_why(bundle_copy, nx_report):
    entry = nx_report["stages"]["encoder"]
    assert entry["gdn_blocks"] == 2 and len(entry["kept_fp32"]) == 2
    bundle = open_bundle(bundle_copy, verify=False)
    model = onnx.load(bundle.engine_path("xavier-nx", "encoder", "int8", int8.QDQ_EXTENSION))
    nodes = {n.name: n for n in model.graph.node}
    producers = {o: n for n in model.graph.node for o in n.output}
    for kept in entry["kept_fp32"]:
        assert "DLA" in kept["why"]
        assert nodes[kept["nodes"][0]].op_type == "Abs" and nodes[kept["nodes"][1]].op_type == "Conv"
        last = nodes[kept["nodes"][-1]]
        assert last.op_type in ("Div", "Mul")
        # The normalisation reaches the division straight from the block's FP32 nodes, never through a DequantizeLinear.
        norm = [name for name in last.input if name in producers and producers[name].name in kept["nodes"]]
        assert norm and all(producers[name].op_type != "DequantizeLinear" for name in norm)


def test_calibration_cache_parses_as_tensorrt_format_with_the_encoder_graphs_names(bundle_copy, nx_report):
    bundle = open_bundle(bundle_copy, verify=False)
    path = bundle.engine_path("xavier-nx", "encoder", "int8", int8.CACHE_EXTENSION)
    first_line = open(path).readline().strip()
    assert first_line == "TRT-8500-EntropyCalibration2"
    version, algorithm, scales = cache.read_cache(path)
    assert (version, algorithm) == (8500, "EntropyCalibration2")
    graph = onnx.load(bundle.path("encoder"), load_external_data=False).graph
    names = {i.name for i in graph.input} | {o for n in graph.node for o in n.output}
    assert set(scales) <= names
    convs = [n for n in graph.node if n.op_type == "Conv" and "encoder.1/" not in n.name and "encoder.3/" not in n.name]
    assert "image" in scales and all(n.input[0] in scales for n in convs)
    # The image is normalized to about [-2.1, 2.7]: its scale is amax / 127.
    assert 2.0 / 127 < scales["image"] < 3.0 / 127
    assert nx_report["stages"]["encoder"]["cache_tensors"] == len(scales)


def test_report_holds_figures_thresholds_and_names_the_held_out_images(bundle_copy, nx_report, photos):
    bundle = open_bundle(bundle_copy, verify=False)
    json_path, markdown_path = int8.report_paths(bundle, "xavier-nx")
    stored = json.load(open(json_path))
    assert stored["random_weights"] is True and stored["shipped"] and stored["passed"]
    assert not set(stored["images"]["held_out"]) & set(stored["images"]["calibration"])
    assert stored["summary"]["encoder.symbol_agreement"] >= 0.99
    assert {c["metric"] for c in stored["checks"]} >= {"encoder.symbol_agreement", "encoder.payload_ratio_deviation"}
    assert stored["thresholds"]["encoder.symbol_agreement"]["threshold"] == fidelity.THRESHOLDS[
        "encoder.symbol_agreement"][1]
    markdown = open(markdown_path).read()
    assert "random weights" in markdown and "encoder.symbol_agreement" in markdown


def test_existing_build_needs_force(bundle_copy, nx_report, photos):
    with pytest.raises(LadonError) as refused:
        int8.build_int8(bundle_copy, "xavier-nx", photos, 6, progress=_quiet, held_out=3)
    assert "--force" in str(refused.value)


def test_build_below_thresholds_ships_nothing_unless_accepted(demo_bundle, photos, tmp_path, monkeypatch):
    bundle_dir = str(tmp_path / "bundle")
    os.makedirs(bundle_dir)
    for name in os.listdir(demo_bundle):
        if name in ("encoder.onnx", "entropy.npz", "manifest.json"):
            shutil.copy(os.path.join(demo_bundle, name), bundle_dir)
        elif not os.path.isdir(os.path.join(demo_bundle, name)):
            os.symlink(os.path.join(demo_bundle, name), os.path.join(bundle_dir, name))
    monkeypatch.setitem(fidelity.THRESHOLDS, "encoder.symbol_agreement", (">=", 1.01))
    with pytest.raises(LadonError) as refused:
        int8.build_int8(bundle_dir, "xavier-nx", photos, 3, progress=_quiet, held_out=2)
    assert "nothing shipped" in str(refused.value) and "--accept-fidelity" in str(refused.value)
    bundle = open_bundle(bundle_dir, verify=False)
    assert not os.path.exists(bundle.engine_path("xavier-nx", "encoder", "int8", int8.QDQ_EXTENSION))
    assert not os.path.exists(bundle.engine_path("xavier-nx", "encoder", "int8", int8.CACHE_EXTENSION))
    stored = json.load(open(int8.report_paths(bundle, "xavier-nx")[0]))
    assert stored["shipped"] is False and "nothing shipped" in stored["verdict"]
    assert [f for f in os.listdir(bundle.engines_dir("xavier-nx")) if f.startswith(".")] == []
    accepted = int8.build_int8(bundle_dir, "xavier-nx", photos, 3, accept_fidelity=True, progress=_quiet, held_out=2)
    assert accepted["shipped"] and accepted["accepted"] and "--accept-fidelity" in accepted["verdict"]
    assert os.path.exists(bundle.engine_path("xavier-nx", "encoder", "int8", int8.QDQ_EXTENSION))


@pytest.fixture(scope="module")
def cpu_report(bundle_copy, photos, tmp_path_factory):
    # Random weights move the detection boxes more than the gate allows: accepted, and the report says so. Run from
    # an empty directory, which must stay empty (onnxruntime's tools leave temporary files where they fail).
    directory = str(tmp_path_factory.mktemp("cwd"))
    previous = os.getcwd()
    os.chdir(directory)
    try:
        report = int8.build_int8(bundle_copy, "cpu", photos, 4, accept_fidelity=True, progress=_quiet, held_out=2,
                                 threads=2)
    finally:
        os.chdir(previous)
    report["left_in_working_directory"] = os.listdir(directory)
    return report


@pytest.mark.slow
def test_cpu_build_writes_every_stage_and_reports_every_task(bundle_copy, cpu_report):
    bundle = open_bundle(bundle_copy, verify=False)
    for stage in ("encoder", "body", "head_cls", "head_det", "head_seg"):
        model = onnx.load(bundle.engine_path("cpu", stage, "int8", "onnx"), load_external_data=False)
        assert any(n.op_type.startswith("QLinear") or n.op_type == "QGemm" for n in model.graph.node), stage
    summary = cpu_report["summary"]
    for key in ("encoder.symbol_agreement", "body.rel_l2", "cls.top1_agreement", "cls.top5_overlap",
                "det.matched_fraction", "seg.pixel_agreement", "encoder.payload_bytes_int8"):
        assert key in summary, key
    assert summary["encoder.symbol_agreement"] >= 0.99
    assert set(cpu_report["speed"]) == {"encoder", "body", "head_cls", "head_det", "head_seg"}
    assert cpu_report["shipped"] and cpu_report["passed"] == all(c["passed"] for c in cpu_report["checks"])
    assert cpu_report["left_in_working_directory"] == []
    assert [f for f in os.listdir(bundle.engines_dir("cpu")) if f.startswith(".")] == []
    softmax = [n for n in onnx.load(bundle.engine_path("cpu", "head_cls", "int8", "onnx")).graph.node
               if n.op_type == "Softmax"]
    assert softmax, "the classification head's Softmax stays FP32"


@pytest.mark.slow
def test_int8_payloads_decode_on_fp32_servers_and_back(bundle_copy, cpu_report, photos):
    from ladon_deploy.calibration.data import list_images
    from ladon_deploy.device.stage import DeviceStage
    from ladon_deploy.server.stage import ServerStage

    bundle = open_bundle(bundle_copy, verify=False)
    image = list_images(photos)[0]
    int8_device = DeviceStage(bundle, threads=2, precision="int8")
    fp32_device = DeviceStage(bundle, threads=2)
    assert int8_device.engines["encoder"] == "onnxruntime int8"
    int8_payload = int8_device.run(image, ("cls", "seg")).payload
    fp32_payload = fp32_device.run(image, ("cls", "seg")).payload
    for payload in (int8_payload, fp32_payload):
        unpacked = wire.unpack(payload, expected_bundle_id=bundle.bundle_id)  # every check of the wire format
        assert unpacked.tasks == ("cls", "seg")
    fp32_server = ServerStage(bundle, threads=2, tasks=("cls", "seg"))
    int8_server = ServerStage(bundle, threads=2, tasks=("cls", "seg"), precision="int8")
    assert int8_server.engines["body"] == "onnxruntime int8"
    across = fp32_server.run(int8_payload)
    back = int8_server.run(fp32_payload)
    reference = fp32_server.run(fp32_payload)
    for result in (across, back):
        assert result.outputs["cls"]["probabilities"].shape == reference.outputs["cls"]["probabilities"].shape
        agreement = np.mean(result.mask() == reference.mask())
        assert agreement > 0.8


@pytest.mark.slow
def test_int8_encoder_runs_without_qdq_rewrites_and_gives_the_same_latent(bundle_copy, cpu_report, photos, tmp_path):
    """ONNX Runtime's QDQ rewrites copy the DequantizeLinear in front of the GDN's Abs and Div; the runtime and the
    fidelity report open ladon-build's INT8 models with them off: the same latent, one pass fewer."""
    import onnxruntime

    from ladon_deploy.calibration.data import list_images
    from ladon_deploy.device.stage import DeviceStage

    bundle = open_bundle(bundle_copy, verify=False)
    path = bundle.engine_path("cpu", "encoder", "int8", "onnx")
    device = DeviceStage(bundle, threads=2, precision="int8", band_rows=0)
    options = device.encoder._session.get_session_options()
    assert options.get_session_config_entry("session.disable_quant_qdq") == "1"
    tensor = device.preprocess(list_images(photos)[0]).tensor
    ours = device.encode(tensor)

    def optimized(disable):
        settings = onnxruntime.SessionOptions()
        settings.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        settings.optimized_model_filepath = str(tmp_path / ("%s.onnx" % disable))
        if disable:
            settings.add_session_config_entry("session.disable_quant_qdq", "1")
        session = onnxruntime.InferenceSession(path, settings, providers=["CPUExecutionProvider"])
        nodes = onnx.load(settings.optimized_model_filepath).graph.node
        return session.run(None, {"image": tensor})[0], sum(n.op_type == "DequantizeLinear" for n in nodes)

    default_latent, default_dequantize = optimized(False)
    off_latent, off_dequantize = optimized(True)
    assert np.array_equal(ours, default_latent) and np.array_equal(off_latent, default_latent)
    assert off_dequantize < default_dequantize


@pytest.mark.slow
def test_ladon_run_split_runs_int8(bundle_copy, cpu_report, photos, capsys):
    from ladon_deploy.calibration.data import list_images
    from ladon_deploy.runtime.cli import main

    code = run_command("ladon-run", main, ["split", "--bundle", bundle_copy, "--precision", "int8", "--tasks", "cls",
                                           "--image", list_images(photos)[1], "--json", "--threads", "2"])
    out = capsys.readouterr().out
    assert code == 0, out
    document = json.loads(out)
    assert "classification" in document


def test_ladon_run_int8_without_models_is_one_line(demo_bundle, photos, capsys):
    from ladon_deploy.calibration.data import list_images
    from ladon_deploy.runtime.cli import main

    code = run_command("ladon-run", main, ["mobile", "--bundle", demo_bundle, "--precision", "int8",
                                           "--image", list_images(photos)[0], "--out", os.devnull])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "ladon-build" in err[0]


def test_gdn_and_igdn_blocks_are_found_by_following_the_graph(demo_bundle):
    bundle = open_bundle(demo_bundle, verify=False)
    encoder = int8.gdn_blocks(onnx.load(bundle.path("encoder"), load_external_data=False))
    body = int8.gdn_blocks(onnx.load(bundle.path("body"), load_external_data=False))
    heads = int8.gdn_blocks(onnx.load(bundle.path("head_seg"), load_external_data=False))
    assert [block[0].split("/")[2] for block in encoder] == ["encoder.1", "encoder.3"]
    assert [block[0].split("/")[2] for block in body] == ["decoder.1", "decoder.3"]
    for block in encoder + body:
        assert block[0].endswith("/Abs") and block[1].endswith("/Conv")
        assert block[-1].split("/")[-1].startswith(("Div", "Mul"))
    assert heads == []
