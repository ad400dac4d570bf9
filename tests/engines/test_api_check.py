"""API conformance of every TensorRT, pycuda and cuda-python call, per version, without TensorRT (api_check): the
package passes; each planted mistake, applied alone to a copy of the package, fails with the version named. Also
the committed API tables against the facts gathered for them, and the extractor that writes them.

This is conformance (names, keywords, argument counts, properties vs methods, overrides), never execution."""
import json
import os
import re
import runpy
import shutil
import subprocess
import sys

import pytest

from ladon_deploy.engines import api_check
from ladon_deploy.engines.targets import TARGETS
from ladon_deploy.engines.tensorrt_api import Generation

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PACKAGE = os.path.join(ROOT, "ladon_deploy")


@pytest.fixture(scope="module")
def report():
    return api_check.run_checks()


def test_the_package_conforms_in_every_version(report):
    assert report["ok"], api_check.format_report(report)
    tensorrt = {entry["api"]: entry for entry in report["tensorrt"]}
    assert set(tensorrt) == {"TensorRT 8.0.1", "TensorRT 8.2.1", "TensorRT 8.5.2", "TensorRT 8.6.1",
                             "TensorRT 10.0.1", "TensorRT 10.16", "TensorRT 11.0", "TensorRT 11.1"}
    # Plain JetPack 4.6 is refused in one line that says what to install instead.
    assert "JetPack 4.6.1 or later" in tensorrt["TensorRT 8.0.1"]["refused"]
    assert "\n" not in tensorrt["TensorRT 8.0.1"]["refused"]
    for name, entry in tensorrt.items():
        if name != "TensorRT 8.0.1":
            assert entry["checks"] > 400 and entry["call_sites"] > 40, entry
    # 11.x reaches fewer calls (no FP16/INT8 flags, no calibrator): the counts show the gating works.
    assert tensorrt["TensorRT 11.1"]["call_sites"] < tensorrt["TensorRT 10.16"]["call_sites"]
    cuda = {entry["api"]: entry for entry in report["cuda"]}
    assert set(cuda) == {"pycuda 2022.1", "pycuda 2026.1", "cuda-python 12.4", "cuda-python 12.9",
                         "cuda-python 13.5"}
    assert all(entry["call_sites"] >= 15 for entry in cuda.values())
    assert report["onnxruntime"]["checks"] > 20
    assert report["coverage"] == [] and report["targets"] == []


def test_the_report_prints_per_version_counts(report):
    text = api_check.format_report(report)
    assert re.search(r"TensorRT 8\.2\.1 +\d+ checks at +\d+ call sites over +\d+ scenarios, 0 errors", text)
    assert re.search(r"TensorRT 8\.0\.1 +refused by the toolkit: .*JetPack 4\.6\.1 or later", text)
    assert re.search(r"cuda-python 13\.5 +\d+ checks at +\d+ call sites, 0 errors", text)
    assert text.endswith("\nok")


def test_the_cli_exits_0_with_a_json_report():
    result = subprocess.run([sys.executable, "-m", "ladon_deploy.engines.api_check", "--json"], capture_output=True,
                            text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    document = json.loads(result.stdout)
    assert document["ok"] is True
    assert [entry["api"] for entry in document["tensorrt"]][:2] == ["TensorRT 8.0.1", "TensorRT 8.2.1"]
    assert all(entry["checks"] > 0 for entry in document["tensorrt"][1:] + document["cuda"])


def test_a_bad_argument_is_one_usage_line_and_exit_2():
    result = subprocess.run([sys.executable, "-m", "ladon_deploy.engines.api_check", "--versions"],
                            capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 2 and "Traceback" not in result.stderr and "unrecognized arguments" in result.stderr


# (file, text, replacement, what the report must say). Each one alone, in a copy of the package.
PLANTED = {
    "named-tensor call in the 8.2 path": (
        "engines/tensorrt_api.py", "for index in range(engine.num_bindings):",
        "for index in range(engine.num_io_tensors):",
        r"tensorrt_api\.py:\d+: ICudaEngine\.num_io_tensors does not exist in TensorRT 8\.2\.1"),
    "misspelled method": (
        "engines/tensorrt_api.py", "self._engine.create_execution_context()",
        "self._engine.create_execution_contxt()",
        r"tensorrt_api\.py:\d+: ICudaEngine\.create_execution_contxt does not exist in TensorRT 10\.16"),
    "misspelled property (assigned)": (
        "engines/tensorrt_api.py", "config.DLA_core = int(dla_core)", "config.DLA_cores = int(dla_core)",
        r"tensorrt_api\.py:\d+: IBuilderConfig\.DLA_cores does not exist in TensorRT 8\.5\.2 \(assignment\)"),
    "misspelled property (read)": (
        "engines/tensorrt_api.py", "range(parser.num_errors)", "range(parser.num_error)",
        r"tensorrt_api\.py:\d+: OnnxParser\.num_error does not exist in TensorRT 8\.2\.1"),
    "misspelled enum member": (
        "engines/tensorrt_api.py", "trt.BuilderFlag.GPU_FALLBACK", "trt.BuilderFlag.GPU_FALLBAK",
        r"tensorrt_api\.py:\d+: BuilderFlag\.GPU_FALLBAK does not exist in TensorRT 10\.16"),
    "misspelled keyword": (
        "engines/tensorrt_api.py", "config.set_timing_cache(cache, False)",
        "config.set_timing_cache(cache, ignore_mismatches=False)",
        r"tensorrt_api\.py:\d+: IBuilderConfig\.set_timing_cache has no keyword 'ignore_mismatches' in TensorRT "
        r"8\.2\.1"),
    "wrong argument count": (
        "engines/tensorrt_api.py", ', tuple(shapes["max"]))', ")",
        r"tensorrt_api\.py:\d+: IOptimizationProfile\.set_shape takes 4 arguments in TensorRT 8\.6\.1, got 3"),
    "property called as a method": (
        "engines/tensorrt_api.py", "range(parser.num_errors)", "range(parser.num_errors())",
        r"tensorrt_api\.py:\d+: OnnxParser\.num_errors is a property in TensorRT 10\.0\.1, not a method"),
    "method used as a property": (
        "engines/tensorrt_api.py", "engine.binding_is_input(index)", "engine.binding_is_input",
        r"\.py:\d+: ICudaEngine\.binding_is_input is a method in TensorRT 8\.2\.1, not a property: call it"),
    "removed property assigned": (
        "engines/tensorrt_api.py", "if generation.memory_pool_limit:", "if not generation.memory_pool_limit:",
        r"tensorrt_api\.py:\d+: IBuilderConfig\.max_workspace_size does not exist in TensorRT 10\.0\.1 "
        r"\(assignment\)"),
    "cuda-python unpacked into the wrong number of values": (
        "engines/tensorrt_api.py", "self._check(self._cudart.cudaStreamSynchronize(self._stream))",
        "error, _ = self._cudart.cudaStreamSynchronize(self._stream)",
        r"tensorrt_api\.py:\d+: ValueError with cuda-python 13\.5: not enough values to unpack"),
    "misspelled pycuda function": (
        "engines/tensorrt_api.py", "self._cuda.mem_alloc(", "self._cuda.mem_aloc(",
        r"tensorrt_api\.py:\d+: pycuda\.driver\.mem_aloc does not exist in pycuda 2022\.1"),
    "wrong argument count to pycuda": (
        "engines/tensorrt_api.py", "self._device.compute_capability()", "self._device.compute_capability(0)",
        r"tensorrt_api\.py:\d+: Device\.compute_capability takes 0 arguments in pycuda 2026\.1, got 1"),
    "ONNX Runtime option before its release": (
        "engines/ort_runner.py", "TIMING_CACHE_PATH_FROM = (1, 17)", "TIMING_CACHE_PATH_FROM = (1, 16)",
        r"ort_runner\.py:\d+: TensorrtExecutionProvider option trt_timing_cache_path does not exist in onnxruntime "
        r"1\.16\.3"),
    "misspelled calibrator base class": (
        "calibration/trt_calibrator.py", "base = trt.IInt8EntropyCalibrator2", "base = trt.IInt8EntropyCalibratr2",
        r"trt_calibrator\.py:\d+: tensorrt\.IInt8EntropyCalibratr2 does not exist in TensorRT 8\.5\.2"),
    "override the base class does not have": (
        "calibration/trt_calibrator.py", '{"get_batch_size": get_batch_size', '{"get_batchsize": get_batch_size',
        r"trt_calibrator\.py:\d+: LadonEntropyCalibrator\.get_batchsize overrides nothing: IInt8EntropyCalibrator2 "
        r"has no overridable method get_batchsize in TensorRT 10\.16"),
    "misspelled call in the builder": (
        "engines/build.py", "tensorrt_api.build_serialized_engine(", "tensorrt_api.build_serialised_engine(",
        r"build\.py:\d+: AttributeError with TensorRT 8\.2\.1"),
    "misspelled call in the runner": (
        "engines/tensorrt_runner.py", "self.cuda.gpu()", "self.cuda.gpus()",
        r"tensorrt_runner\.py:\d+: AttributeError with TensorRT 8\.5\.2"),
    "a TensorRT call the driver never reaches": (
        "engines/build.py", "def _sha256_bytes(", "def _probe(trt):\n    return trt.Builder\n\n\ndef _sha256_bytes(",
        r"build\.py:\d+: trt\.Builder outside the functions the conformance driver reaches"),
}

RUN_COPIES = (
    "import json, sys\n"
    "results = {}\n"
    "for copy in sys.argv[1:]:\n"
    "    for name in [m for m in sys.modules if m == 'ladon_deploy' or m.startswith('ladon_deploy.')]:\n"
    "        del sys.modules[name]\n"
    "    sys.path.insert(0, copy)\n"
    "    from ladon_deploy.engines import api_check\n"
    "    assert api_check.__file__.startswith(copy), api_check.__file__\n"
    "    report = api_check.run_checks()\n"
    "    results[copy] = {'ok': report['ok'], 'text': api_check.format_report(report)}\n"
    "    sys.path.remove(copy)\n"
    "print(json.dumps(results))\n"
)


def _plant(tmp_path, name):
    relative, old, new, _ = PLANTED[name]
    copy = tmp_path / re.sub(r"\W+", "_", name)
    shutil.copytree(PACKAGE, str(copy / "ladon_deploy"), ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    path = copy / "ladon_deploy" / relative
    text = path.read_text()
    assert text.count(old) >= 1, (name, old)
    path.write_text(text.replace(old, new, 1))
    return str(copy)


@pytest.mark.slow
def test_each_planted_mistake_fails_with_the_version_named(tmp_path):
    copies = {name: _plant(tmp_path, name) for name in PLANTED}
    result = subprocess.run([sys.executable, "-c", RUN_COPIES] + list(copies.values()), capture_output=True,
                            text=True, timeout=600, cwd=str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads(result.stdout.strip().splitlines()[-1])
    missed = []
    for name, copy in copies.items():
        outcome = results[copy]
        if outcome["ok"] or not re.search(PLANTED[name][3], outcome["text"]):
            missed.append("%s:\n%s" % (name, outcome["text"][-1500:]))
    assert missed == []


# --------------------------------------------------------------------------------- the tables against the facts
def _table(version):
    return api_check.load_table("tensorrt-%s.json" % version)


def _has(table, cls, member=None):
    classes = table["classes"]
    if member is None:
        return cls in classes
    return cls in classes and member in classes[cls]["members"]


VERSIONS = ("8.0.1", "8.2.1", "8.5.2", "8.6.1", "10.0.1", "10.16", "11.0", "11.1")


@pytest.mark.parametrize("version", VERSIONS)
def test_table_facts_per_version(version):
    """DESIGN facts, both sides of each version boundary, from the extracted tables."""
    table = _table(version)
    release = tuple(int(p) for p in version.split(".")[:2])
    named = release >= (8, 5)
    assert _has(table, "IExecutionContext", "execute_async_v3") == named
    assert _has(table, "ICudaEngine", "num_io_tensors") == named
    assert _has(table, "IExecutionContext", "execute_async_v2") == (release < (10, 0))
    assert _has(table, "ICudaEngine", "get_binding_index") == (release < (10, 0))
    assert _has(table, "IBuilderConfig", "set_memory_pool_limit") == (release >= (8, 4))
    assert _has(table, "MemoryPoolType") == (release >= (8, 4))
    workspace = table["classes"]["IBuilderConfig"]["members"].get("max_workspace_size")
    if release < (10, 0):
        assert workspace["kind"] == "property" and workspace["writable"]
        assert bool(workspace.get("deprecated")) == (release >= (8, 4))
    else:
        assert workspace is None
    weak = release < (11, 0)
    assert _has(table, "BuilderFlag", "FP16") == weak and _has(table, "BuilderFlag", "INT8") == weak
    assert _has(table, "Builder", "platform_has_fast_fp16") == weak
    assert _has(table, "IInt8EntropyCalibrator2") == weak
    assert _has(table, "IBuilderConfig", "int8_calibrator") == weak
    assert _has(table, "NetworkDefinitionCreationFlag", "EXPLICIT_BATCH") == weak
    parser = table["classes"]["OnnxParser"]["members"]
    assert parser["__init__"]["overloads"][0]["args"] == ["network", "logger"]
    assert parser["num_errors"]["kind"] == "property" and parser["get_error"]["kind"] == "method"
    runtime = table["classes"]["Runtime"]["members"]["deserialize_cuda_engine"]["overloads"]
    assert runtime[0]["args"] == ["serialized_engine"] and (len(runtime) > 1) == (release >= (10, 0))
    if weak:
        assert table["classes"]["IInt8EntropyCalibrator2"]["overridable"] == [
            "get_batch", "get_batch_size", "read_calibration_cache", "write_calibration_cache"]
    assert table["source"]["repository"] == "https://github.com/NVIDIA/TensorRT"
    assert re.match(r"^[0-9a-f]{40}$", table["source"]["commit"])


@pytest.mark.parametrize("version", [v for v in VERSIONS if v != "8.0.1"])
def test_generation_flags_follow_the_tables(version):
    """The per-generation gating in tensorrt_api.Generation says what the tables say (one fact, two readers)."""
    table = _table(version)
    generation = Generation(version)
    assert generation.named_tensors == _has(table, "IExecutionContext", "execute_async_v3")
    assert generation.named_tensors != _has(table, "IExecutionContext", "set_binding_shape") or \
        generation.major_minor < (10, 0)
    assert generation.memory_pool_limit == _has(table, "IBuilderConfig", "set_memory_pool_limit")
    assert generation.weak_typing == _has(table, "BuilderFlag", "FP16")
    assert generation.calibrators == _has(table, "IInt8EntropyCalibrator2")
    # The flag is passed only where it exists and is not deprecated-and-ignored (10.x keeps it, deprecated).
    assert (not generation.explicit_batch_flag) or _has(table, "NetworkDefinitionCreationFlag", "EXPLICIT_BATCH")


def test_wheel_cross_checks_agree_with_the_sources():
    """Where PyPI has a real binding wheel, every source-table name but the pure-Python ones is in its binary."""
    for version in ("8.6.1", "10.16", "11.1"):
        check = _table(version)["wheel_cross_check"]
        assert set(check["names_not_in_wheel"]) <= {"__enter__", "__exit__", "itemsize"}, check
        assert check["keywords_in_wheel"] == check["keywords"]


def test_cuda_tables_count_what_each_call_returns():
    for name in api_check.table_names("cuda-python-"):
        functions = api_check.load_table(name)["functions"]
        assert functions["cudaMalloc"]["returns"] == 2 and functions["cudaStreamCreate"]["returns"] == 2
        assert functions["cudaMemcpyAsync"]["returns"] == 1 and len(functions["cudaMemcpyAsync"]["args"]) == 5
    old = api_check.load_table("cuda-python-12.4.json")
    assert old["module"] == "cuda.cudart"
    pycuda = api_check.load_table("pycuda-2022.1.json")
    assert pycuda["classes"]["Stream"]["handle"]["kind"] == "property"
    assert pycuda["classes"]["Context"]["pop"]["kind"] == "staticmethod"
    assert pycuda["functions"]["memcpy_htod"]["args"] == ["dest", "src"]
    assert pycuda["functions"]["mem_alloc"]["arity"] == 1  # from the C++ function the wrapper binds
    assert pycuda["classes"]["Device"]["compute_capability"]["arity"] == 0


def test_onnxruntime_option_names_per_release():
    releases = api_check.load_table("onnxruntime-ep-options.json")["releases"]
    options = {release: set(entry["TensorrtExecutionProvider"]) for release, entry in releases.items()}
    assert "trt_timing_cache_enable" not in options["1.14.1"] and "trt_timing_cache_enable" in options["1.16.3"]
    assert "trt_timing_cache_path" not in options["1.16.3"] and "trt_timing_cache_path" in options["1.17.0"]
    assert all("trt_engine_cache_path" in names and "trt_fp16_enable" in names for names in options.values())


def test_timing_cache_options_follow_the_release_that_has_them():
    from ladon_deploy.engines.ort_runner import tensorrt_provider_options

    assert "trt_timing_cache_enable" not in tensorrt_provider_options("/c", "fp32", "1.15.1")
    options = tensorrt_provider_options("/c", "fp32", "1.16.3")
    assert options["trt_timing_cache_enable"] is True and "trt_timing_cache_path" not in options
    assert tensorrt_provider_options("/c", "fp32", "1.17.0")["trt_timing_cache_path"] == "/c"


# ------------------------------------------------------------------------------------- the targets' version ranges
# JetPack release -> the TensorRT major.minor it ships (JetPack 4.6.1-4.6.x: 8.2.1; 5.1.x: 8.5.2). A Jetson builds
# with what its JetPack ships, nothing else.
JETPACK_TENSORRT = {"4.6.1": "8.2", "5.1": "8.5"}


def test_each_target_tensorrt_range_is_pinned():
    ranges = {name: target.trt_supported for name, target in TARGETS.items()}
    assert ranges == {"jetson-nano": ("8.2", "8.2"), "xavier-nx": ("8.5", "8.5"), "server": ("8.5", "11.99"),
                      "cpu": None}
    for target in TARGETS.values():
        if target.jetpack:
            shipped = JETPACK_TENSORRT[target.jetpack]
            assert target.trt == shipped and target.trt_supported == (shipped, shipped), target.name
    assert api_check.targets_findings() == []


def test_plain_jetpack_46_is_refused_in_one_line():
    with pytest.raises(Exception) as caught:
        Generation("8.0.1.6")
    message = str(caught.value)
    assert "\n" not in message and "JetPack 4.6.1 or later" in message and "L4T R32.7" in message
    assert "8.2.1" in message and "R32.6.1" in message


# ------------------------------------------------------------------------------------------------ the extractor
PYBIND_SAMPLE = r'''
namespace lambdas {
static const auto run = [](IThing& self, int a, int b) { return a + b; };
}
class PyThing : public IThing
{
    int get() noexcept override { PYBIND11_OVERLOAD_PURE_NAME(int, IThing, "get_value", get); }
    void put(int v) noexcept override { py::function f = utils::getOverride(static_cast<IThing*>(this), "put_value"); }
};
void bind(py::module& m)
{
    py::class_<IThing, PyThing> thing{m, "IThing", ThingDoc::descr};
    thing.def(py::init<>())
        .def("run", lambdas::run)
        .def("call", &IThing::call, "x"_a, "y"_a = 2, ThingDoc::call)
        // a comment, "not_a_member"_a
        .def("call", &IThing::callName, "name"_a, ThingDoc::call_name)
#if SOME_GATE
        .def_property("size", &IThing::getSize, &IThing::setSize)
#endif
        .def_property_readonly("kind", &IThing::getKind)
        .def("old", utils::deprecateMember(&IThing::old, "call"), "z"_a);
    py::enum_<Mode>(thing, "Mode", py::arithmetic{})
        .value("FAST", Mode::kFAST)
        .value("SLOW", Mode::kSLOW)
        .export_values();
    py::class_<Derived, IThing>(m, "Derived").def(py::init<int>(), "seed"_a = 0)
        .def("bare", &IThing::bare);
}
'''
HEADER_SAMPLE = '''
class IThing : public INoCopy
{
public:
    int32_t bare(int32_t a, float b) const noexcept
    {
        return mImpl->bare(a, b);
    }
};
'''


def test_the_extractor_reads_pybind11_declarations(tmp_path):
    build_table = runpy.run_path(os.path.join(ROOT, "scripts", "extract_trt_api.py"))["build_table"]
    source = tmp_path / "pySample.cpp"
    source.write_text(PYBIND_SAMPLE)
    header = tmp_path / "NvSample.h"
    header.write_text(HEADER_SAMPLE)
    table = build_table([str(source)], [], None, [str(header)])
    thing = table["classes"]["IThing"]
    members = thing["members"]
    assert members["call"]["overloads"] == [{"args": ["x", "y"], "arity": 2, "defaults": {"y": "2"}},
                                            {"args": ["name"], "arity": 1}]
    assert members["run"]["overloads"] == [{"arity": 2}]  # a named lambda: self is not an argument
    assert members["size"] == {"kind": "property", "writable": True}
    assert members["kind"] == {"kind": "property", "writable": False}
    assert members["old"]["overloads"][0]["deprecated"] is True
    assert members["FAST"] == {"kind": "enum_value", "enum": "IThing.Mode"}
    assert "not_a_member" not in json.dumps(table)
    assert thing["overridable"] == ["get_value", "put_value"]
    assert table["classes"]["IThing.Mode"]["members"] == {"FAST": {"kind": "enum_value"},
                                                          "SLOW": {"kind": "enum_value"}}
    derived = table["classes"]["Derived"]
    assert derived["members"]["bare"]["overloads"] == [{"arity": 2}]  # no names: the header's declaration counts
    assert derived["bases"] == ["IThing"]
    assert derived["members"]["__init__"]["overloads"] == [{"args": ["seed"], "arity": 1, "defaults": {"seed": "0"}}]
