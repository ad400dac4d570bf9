"""`ladon-doctor`: what runs on this machine, measured, in one report a user can attach to a bug report.

On a Jetson or a GPU server (or anywhere) it
1. records the stack: Python, platform, the Jetson model, L4T release (/etc/nv_tegra_release) and JetPack package,
   TensorRT, the CUDA binding (pycuda or cuda-python) with its version and the GPU it opens, onnxruntime with its
   providers, nvidia-smi where there is one, the DLA cores the targets table gives this board;
2. takes a bundle: --bundle B, or the built-in tiny bundle (doctor_bundle/: the engine tests' miniature bundle, a few
   small convolutions with the real stages' names and shapes, shipped as files because a Jetson may lack the onnx
   package to write one); it works on a copy, so the given bundle's engines area is never touched;
3. runs every engine path this machine might have: ONNX Runtime's CPU, CUDA and TensorRT execution providers, and
   TensorRT engines built by `ladon-build` for this machine's target in each precision it allows (and on DLA core 0
   where the board has DLA), each stage held to parity against ONNX Runtime CPU with graph optimizations off (the
   graph as written), with load, first-run and median run times;
4. reports each path as ok, failed (present but broken: the one line that stopped it) or absent (not installed or
   not for this machine: the one line saying what is missing), within --timeout seconds.

Edge subset: Python 3.6-clean, never imports torch (the report must come from the Jetson's own Python).
"""
import collections
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

from ladon_deploy import __version__
from ladon_deploy.atomic import write_text_atomically
from ladon_deploy.bundle import Bundle, open_bundle
from ladon_deploy.engines import tensorrt_api
from ladon_deploy.engines.parity import ReferenceChain, check_parity, parity_failure
from ladon_deploy.engines.targets import get_target
from ladon_deploy.errors import LadonError

BUILTIN_BUNDLE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "doctor_bundle")
STAGE_ORDER = ("encoder", "body", "head_cls", "head_det", "head_seg")
ORT_PATHS = ("onnxruntime", "onnxruntime-cuda", "onnxruntime-tensorrt")
L4T_RELEASE_FILE = "/etc/nv_tegra_release"
OK, FAILED, ABSENT, SKIPPED = "ok", "failed", "absent", "skipped"
# Seconds a TensorRT build of one precision is given at least; with less left the path is skipped, not started.
BUILD_SECONDS = 60.0
# After --timeout plus this grace, a call that never returns (a hung build or driver) no longer holds the report:
# the watchdog writes what there is and ends the process.
WATCHDOG_GRACE_SECONDS = 30.0
EXIT_WATCHDOG = 124


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class Budget(object):
    """The --timeout: what is left of it, checked before each step starts."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.deadline = time.monotonic() + seconds

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def exhausted_line(self) -> str:
        return "not started: the --timeout of %.0f s was reached" % self.seconds


# ---------------------------------------------------------------------------------------------------------- stack
def parse_l4t_release(text: str) -> Optional[str]:
    """'# R32 (release), REVISION: 7.1, GCID: ...' -> 'R32.7.1' (None when the line is not of that form)."""
    head = text.strip().splitlines()[0] if text.strip() else ""
    fields = [field.strip() for field in head.lstrip("#").split(",")]
    if not fields or not fields[0].startswith("R"):
        return None
    release = fields[0].split()[0]
    for field in fields[1:]:
        if field.startswith("REVISION:"):
            return "%s.%s" % (release, field.split(":", 1)[1].strip())
    return release


def _read_text(path: str) -> Optional[str]:
    try:
        with open(path) as handle:
            return handle.read()
    except (IOError, OSError):
        return None


def _command_output(argv: List[str]) -> Tuple[Optional[str], Optional[str]]:
    """(stdout, None) or (None, why not): a missing tool or a non-zero exit is a finding, not an error."""
    try:
        done = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True,
                              timeout=20)
    except (OSError, subprocess.SubprocessError) as exc:
        return None, "%s: %s" % (argv[0], _first_line(exc))
    if done.returncode != 0:
        return None, "%s exited %d: %s" % (argv[0], done.returncode,
                                            (done.stderr.strip().splitlines() or [""])[0])
    return done.stdout.strip(), None


def _module_version(name: str) -> Dict[str, Any]:
    try:
        module = __import__(name, fromlist=["__version__"])
    except Exception as exc:  # ImportError, or a broken install raising anything else
        return {"status": ABSENT, "reason": "%s: %s" % (type(exc).__name__, _first_line(exc))}
    return {"status": OK, "version": str(getattr(module, "__version__", getattr(module, "VERSION_TEXT", "?")))}


def _cuda_binding_version(name: str) -> str:
    if name == "pycuda":
        import pycuda

        return str(getattr(pycuda, "VERSION_TEXT", "?"))
    for module in ("cuda.bindings", "cuda"):
        found = _module_version(module)
        if found["status"] == OK and found["version"] != "?":
            return found["version"]
    return "?"


def record_stack(target: Optional[str], target_error: Optional[str]) -> Dict[str, Any]:
    """The software and hardware this report speaks for. Nothing here raises: a missing piece is recorded."""
    stack = collections.OrderedDict()  # type: Dict[str, Any]
    stack["python"] = sys.version.split()[0]
    stack["python_executable"] = sys.executable
    stack["platform"] = platform.platform()
    stack["machine"] = platform.machine()
    stack["jetson_model"] = tensorrt_api.read_jetson_model()
    release = _read_text(L4T_RELEASE_FILE)
    stack["l4t"] = parse_l4t_release(release) if release else None
    jetpack, why = _command_output(["dpkg-query", "-W", "-f=${Version}", "nvidia-jetpack"])
    stack["jetpack"] = jetpack if jetpack else None
    if not jetpack:
        stack["jetpack_missing"] = why
    stack["target"] = target
    if target_error:
        stack["target_error"] = target_error
    install_target = target or "server"
    try:
        trt = tensorrt_api.import_tensorrt(install_target)
        stack["tensorrt"] = {"status": OK, "version": tensorrt_api.tensorrt_version(trt)}
    except LadonError as exc:
        stack["tensorrt"] = {"status": ABSENT, "reason": _first_line(exc)}
    stack["cuda_binding"] = _record_cuda(install_target)
    onnxruntime = _module_version("onnxruntime")
    if onnxruntime["status"] == OK:
        import onnxruntime as ort

        onnxruntime["providers"] = list(ort.get_available_providers())
        onnxruntime["device"] = str(ort.get_device())
    stack["onnxruntime"] = onnxruntime
    stack["numpy"] = _module_version("numpy").get("version")
    smi, why = _command_output(["nvidia-smi", "--query-gpu=name,compute_cap,driver_version,memory.total",
                                "--format=csv,noheader"])
    stack["nvidia_smi"] = {"status": OK, "gpus": smi.splitlines()} if smi else {"status": ABSENT, "reason": why}
    if target in ("jetson-nano", "xavier-nx"):
        stack["dla_cores"] = {"cores": list(get_target(target).dla_cores), "source": "targets table (%s)" % target}
    return stack


def _record_cuda(target: str) -> Dict[str, Any]:
    try:
        binding = tensorrt_api.find_cuda_binding(target)
    except LadonError as exc:
        return {"status": ABSENT, "reason": _first_line(exc)}
    record = {"name": binding.name, "version": _cuda_binding_version(binding.name)}  # type: Dict[str, Any]
    try:
        opened = tensorrt_api.open_cuda(target)
    except LadonError as exc:
        # The binding imports but opens no GPU (no driver, no device): the GPU is what is absent.
        record.update({"status": ABSENT, "reason": "no usable GPU: %s" % _first_line(exc)})
        return record
    try:
        record["gpu"], record["compute_capability"] = opened.gpu()
        record["status"] = OK
    except Exception as exc:  # the binding's own errors have no common type
        record.update({"status": FAILED, "reason": "%s: %s" % (binding.name, _first_line(exc))})
    finally:
        opened.close()
    return record


# ---------------------------------------------------------------------------------------------------------- paths
class _GraphAsWritten(ReferenceChain):
    """The parity reference: each stage on ONNX Runtime CPU with its graph optimizations off, so that ONNX Runtime's
    own optimized CPU path is compared with something other than itself."""

    def _runner(self, stage: str) -> Any:
        if stage not in self._runners:
            from ladon_deploy.engines.ort_runner import OnnxRuntimeRunner

            self._runners[stage] = OnnxRuntimeRunner(self.bundle.path(stage), threads=self.threads, optimize=False)
        return self._runners[stage]


def probe_size(bundle: Bundle) -> Tuple[int, int]:
    """One padded image size every stage accepts: the bundle's input size, padded to its multiple."""
    settings = bundle.preprocessing
    side = int(settings.get("input_size", 416))
    multiple = int(settings.get("pad_multiple", 1) or 1)
    side = -(-side // multiple) * multiple
    return side, side


def _time_stage(open_runner: Callable[[], Any], chain: ReferenceChain, stage: str, precision: str,
                repeats: int, budget: Budget) -> Dict[str, Any]:
    """Opens one stage's runner, checks its parity and times it; raises on what stops it."""
    started = time.perf_counter()
    runner = open_runner()
    figures = collections.OrderedDict()  # type: Dict[str, Any]
    try:
        figures["ran_as"] = getattr(runner, "engine_label", getattr(runner, "name", "?"))
        figures["load_ms"] = round((time.perf_counter() - started) * 1000.0, 3)
        size = chain.sizes[0]
        feeds = chain.inputs(stage, size)
        started = time.perf_counter()
        runner.run(feeds)
        figures["first_run_ms"] = round((time.perf_counter() - started) * 1000.0, 3)
        parity = check_parity(chain, stage, runner, precision)
        figures["parity"] = {"passed": parity["passed"], "precision": precision, "tolerance": parity["tolerance"],
                             "rel_l2": parity["rel_l2"]}
        if "symbol_agreement" in parity:
            figures["parity"]["symbol_agreement"] = parity["symbol_agreement"]
        if not parity["passed"]:
            figures["parity"]["failure"] = parity_failure(stage, parity)
        times = []
        for _ in range(repeats):
            if budget.left() <= 0 and times:
                break
            started = time.perf_counter()
            runner.run(feeds)
            times.append((time.perf_counter() - started) * 1000.0)
        times.sort()
        figures["runs"] = len(times)
        figures["median_ms"] = round(times[len(times) // 2], 3) if times else None
    finally:
        runner.close()
    return figures


def _run_stages(path: Dict[str, Any], stages: List[str], open_stage: Callable[[str], Any], chain: ReferenceChain,
                precision: str, repeats: int, budget: Budget) -> None:
    """Fills path["stages"] and path's status: the first stage that fails to open or run, or misses parity, fails
    the path (the later stages are still measured)."""
    results = collections.OrderedDict()  # type: Dict[str, Any]
    path["stages"] = results
    for stage in stages:
        if budget.left() <= 0:
            results[stage] = {"status": SKIPPED, "reason": budget.exhausted_line()}
            path.setdefault("reason", budget.exhausted_line())
            path["status"] = SKIPPED if path.get("status") != FAILED else FAILED
            continue
        try:
            figures = _time_stage(lambda s=stage: open_stage(s), chain, stage, precision, repeats, budget)
        except Exception as exc:  # any failure of a present engine is a finding, recorded as one line
            results[stage] = {"status": FAILED, "reason": "%s: %s" % (type(exc).__name__, _first_line(exc))}
            if path.get("status") != FAILED:
                path.update({"status": FAILED, "reason": "%s: %s" % (stage, results[stage]["reason"])})
            continue
        figures["status"] = OK if figures["parity"]["passed"] else FAILED
        results[stage] = figures
        if figures["status"] == FAILED and path.get("status") != FAILED:
            path.update({"status": FAILED, "reason": figures["parity"]["failure"]})
    path.setdefault("status", OK)


def ort_path(engine: str, bundle: Bundle, stages: List[str], chain: ReferenceChain, repeats: int, budget: Budget,
             workdir: str) -> Dict[str, Any]:
    from ladon_deploy.engines.ort_runner import PROVIDERS, available_providers, check_providers
    from ladon_deploy.engines.registry import open_runner

    path = collections.OrderedDict([("path", engine), ("engine", engine), ("precision", "fp32")])  # type: Any
    try:
        check_providers(PROVIDERS[engine], available_providers())
    except LadonError as exc:
        path.update({"status": ABSENT, "reason": _first_line(exc)})
        return path
    cache = os.path.join(workdir, "ort-tensorrt-cache") if engine == "onnxruntime-tensorrt" else None
    _run_stages(path, stages, lambda stage: open_runner(bundle.path(stage), engine, cache_dir=cache), chain, "fp32",
                repeats, budget)
    return path


def tensorrt_paths(target: Optional[str], bundle: Bundle, chain: ReferenceChain, repeats: int,
                   budget: Budget) -> List[Dict[str, Any]]:
    """One path per precision (and DLA core 0 where the board has one) that the targets table allows here."""
    if target is None:
        return [collections.OrderedDict([("path", "tensorrt"), ("engine", "tensorrt"), ("status", ABSENT),
                                         ("reason", "this machine is no target of the toolkit")])]
    spec = get_target(target)
    variants = [(precision, None) for precision in spec.precisions if precision != "int8"]
    variants += [("fp16", core) for core in spec.dla_cores[:1]]
    stages = [stage for stage in STAGE_ORDER if stage in spec.stages and stage in bundle.manifest["stages"]]
    paths = []
    for precision, core in variants:
        name = "tensorrt %s%s" % (precision, "" if core is None else " dla%d" % core)
        path = collections.OrderedDict([("path", name), ("engine", "tensorrt"), ("precision", precision),
                                        ("dla_core", core), ("target", target)])  # type: Any
        paths.append(path)
        if not stages:
            path.update({"status": ABSENT, "reason": "the bundle has none of the stages target %s runs" % target})
            continue
        try:
            from ladon_deploy.engines.registry import require_tensorrt

            require_tensorrt(target)
        except LadonError as exc:
            path.update({"status": ABSENT, "reason": _first_line(exc)})
            continue
        if budget.left() < BUILD_SECONDS:
            path.update({"status": SKIPPED, "reason": "not started: less than %.0f s of the --timeout left for a "
                                                      "TensorRT build" % BUILD_SECONDS})
            continue
        _build_and_run(path, target, precision, core, bundle, stages, chain, repeats, budget)
    if "int8" in spec.precisions:
        paths.append(collections.OrderedDict([
            ("path", "tensorrt int8"), ("engine", "tensorrt"), ("precision", "int8"), ("status", SKIPPED),
            ("reason", "INT8 needs calibration photographs: ladon-build --precision int8 --calib-images DIR")]))
    return paths


def _build_and_run(path: Dict[str, Any], target: str, precision: str, core: Optional[int], bundle: Bundle,
                   stages: List[str], chain: ReferenceChain, repeats: int, budget: Budget) -> None:
    from ladon_deploy.engines.build import build_engines
    from ladon_deploy.engines.registry import choose_stage, open_choice

    log = []  # type: List[str]
    # Each path builds into an empty engines area: the run below then opens exactly this build (the registry would
    # prefer a GPU engine over a DLA one), and each build's time includes its own kernel timing.
    shutil.rmtree(bundle.engines_dir(target), ignore_errors=True)
    started = time.perf_counter()
    try:
        documents = build_engines(bundle.directory, target, precision, dla_core=core, force=True,
                                  progress=log.append)
    except Exception as exc:  # the build's refusals and TensorRT's own errors alike: one line
        path.update({"status": FAILED, "reason": "build: %s" % _first_line(exc), "build_log": log[-20:]})
        return
    path["build"] = {"seconds": round(time.perf_counter() - started, 2), "log": log[-20:],
                     "stages": dict((d["stage"], {"engine": d["engine"], "why": d.get("why"),
                                                  "tensorrt": d.get("tensorrt"), "gpu": d.get("gpu")})
                                    for d in documents)}

    def open_stage(stage: str) -> Any:
        choice = choose_stage(bundle, stage, "tensorrt", target, precision)
        return open_choice(bundle, choice, precision=precision)

    _run_stages(path, stages, open_stage, chain, precision, repeats, budget)


# ---------------------------------------------------------------------------------------------------------- run
def _copy_bundle(source: str, workdir: str) -> Bundle:
    """The bundle copied without its engines area (the builds go into the copy)."""
    copy = os.path.join(workdir, "bundle")
    shutil.copytree(source, copy, ignore=shutil.ignore_patterns("engines"))
    return open_bundle(copy)


def run_doctor(bundle_dir: Optional[str] = None, timeout: float = 600.0, repeats: int = 5,
               progress: Callable[[str], Any] = lambda line: None,
               report: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Runs every check and returns the report (fills `report` in place when one is given, so that a watchdog can
    write what there is). Raises LadonError only for a bundle that cannot be read."""
    budget = Budget(timeout)
    open_bundle(bundle_dir or BUILTIN_BUNDLE)  # refuses a missing or damaged bundle in one line, before anything
    report = report if report is not None else collections.OrderedDict()
    report.update([("ladon_doctor", 1), ("toolkit_version", __version__), ("started", _utc_now()),
                   ("timeout_s", timeout)])
    target, target_error = None, None  # type: Tuple[Optional[str], Optional[str]]
    try:
        target = tensorrt_api.this_target()
    except LadonError as exc:
        target_error = _first_line(exc)
    progress("recording the stack")
    report["stack"] = record_stack(target, target_error)
    workdir = tempfile.mkdtemp(prefix="ladon-doctor-")
    started = time.monotonic()
    try:
        bundle = _copy_bundle(bundle_dir or BUILTIN_BUNDLE, workdir)
        stages = [stage for stage in STAGE_ORDER if stage in bundle.manifest["stages"]]
        size = probe_size(bundle)
        report["bundle"] = collections.OrderedDict([
            ("source", os.path.abspath(bundle_dir) if bundle_dir else "built-in tiny bundle"),
            ("bundle_id", bundle.manifest.get("bundle_id")), ("stages", stages), ("probe_size", list(size)),
            ("repeats", repeats), ("reference", "onnxruntime CPUExecutionProvider fp32, graph optimizations off")])
        chain = _GraphAsWritten(bundle, [size])
        paths = []  # type: List[Dict[str, Any]]
        report["paths"] = paths
        try:
            for engine in ORT_PATHS:
                progress("path %s" % engine)
                paths.append(ort_path(engine, bundle, stages, chain, repeats, budget, workdir))
            progress("TensorRT paths for target %s" % (target or "(none)"))
            paths.extend(tensorrt_paths(target, bundle, chain, repeats, budget))
        finally:
            chain.close()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    report["finished"] = _utc_now()
    report["seconds"] = round(time.monotonic() - started, 2)
    report["summary"] = dict((status, [p["path"] for p in report["paths"] if p["status"] == status])
                             for status in (OK, FAILED, ABSENT, SKIPPED))
    return report


def render_text(report: Dict[str, Any]) -> str:
    """The short human report: the stack in a few lines, then one line per path (and per failed stage)."""
    stack = report["stack"]

    def part(name: str, record: Dict[str, Any]) -> str:
        if record.get("status") == OK:
            extra = ""
            if record.get("gpu"):
                extra = " (%s, sm %s)" % (record["gpu"], record["compute_capability"])
            return "%s %s%s" % (record.get("name", name), record.get("version", ""), extra)
        return "%s %s: %s" % (record.get("name", name), record.get("status"), record.get("reason"))

    lines = ["ladon-doctor %s: %s, Python %s, target %s" % (report["toolkit_version"], stack["platform"],
                                                         stack["python"], stack["target"] or stack.get("target_error"))]
    if stack.get("jetson_model") or stack.get("l4t"):
        lines.append("  Jetson: %s, L4T %s, JetPack %s" % (stack.get("jetson_model"), stack.get("l4t"),
                                                         stack.get("jetpack") or "unknown"))
    lines.append("  " + part("tensorrt", stack["tensorrt"]))
    lines.append("  " + part("CUDA binding", stack["cuda_binding"]))
    onnxruntime = stack["onnxruntime"]
    lines.append("  onnxruntime %s, providers: %s" % (onnxruntime.get("version"),
                                                      ", ".join(onnxruntime.get("providers", [])) or "none"))
    smi = stack["nvidia_smi"]
    gpu = "; ".join(smi["gpus"]) if smi["status"] == OK else stack["cuda_binding"].get("gpu")
    lines.append("  GPU: %s" % (gpu or "none seen (%s)" % smi["reason"]))
    bundle = report.get("bundle", {})
    lines.append("bundle: %s (%s), probe %s, parity against %s"
                 % (bundle.get("source"), ", ".join(bundle.get("stages", [])),
                    "x".join(str(v) for v in bundle.get("probe_size", [])), bundle.get("reference")))
    for path in report.get("paths", []):
        if path["status"] == OK:
            timings = ", ".join("%s %.2f ms" % (stage, figures["median_ms"])
                                for stage, figures in path["stages"].items() if figures.get("median_ms") is not None)
            lines.append("%-22s %-7s %s" % (path["path"], path["status"], timings))
        else:
            lines.append("%-22s %-7s %s" % (path["path"], path["status"], path.get("reason", "")))
    summary = report.get("summary", {})
    lines.append("%d ok, %d failed, %d absent, %d skipped in %.1f s"
                 % tuple([len(summary.get(status, [])) for status in (OK, FAILED, ABSENT, SKIPPED)]
                         + [report.get("seconds", 0.0)]))
    return "\n".join(lines)


def write_report(path: str, report: Dict[str, Any]) -> None:
    write_text_atomically(path, json.dumps(report, indent=2, default=str) + "\n")


def start_watchdog(seconds: float, json_path: Optional[str], report: Dict[str, Any]) -> threading.Timer:
    """Past `seconds`, writes the report as it stands (marked stopped) and ends the process with exit 124."""

    def fire() -> None:
        report["stopped"] = "ran past --timeout plus %.0f s of grace: a call did not return" % WATCHDOG_GRACE_SECONDS
        sys.stderr.write("ladon-doctor: error: %s\n" % report["stopped"])
        if json_path:
            for _ in range(3):  # the main thread may be changing the report: try again on a changed dict
                try:
                    write_report(json_path, json.loads(json.dumps(report, default=str)))
                    break
                except (RuntimeError, ValueError):
                    time.sleep(0.1)
        os._exit(EXIT_WATCHDOG)

    timer = threading.Timer(seconds, fire)
    timer.daemon = True
    timer.start()
    return timer
