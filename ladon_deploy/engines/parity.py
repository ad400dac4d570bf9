"""The parity gate of every build: the built engine against the same ONNX on ONNX Runtime's CPU provider.

Inputs are seeded and realistic: a smooth seeded image at each probe size, preprocessed like the device stage's
output (normalized, padded to the profile's sizes), run through the bundle's own ONNX stages on ONNX Runtime CPU;
each stage is fed what the stage before it produces (the body gets dequantized latents, the heads the body's
features). The candidate is any Runner, so the gate is tested here with ONNX Runtime candidates; on a GPU it
compares the TensorRT engine.

Tolerances (each inclusive; docs/fidelity.md lists every gate): fp32 relative L2 <= 1e-4 on every float output;
fp16 <= 1e-2 and, for the encoder, latent symbols (round(y - median)) agreeing on >= 99.5% of positions; int8 <= 0.2
and >= 99% (its accuracy is judged by the INT8 fidelity report); integer outputs must agree exactly. head_det is
compared as detections, not arrays (an fp16 head moves boxes by fractions of a pixel, and then NMS and the score cut
may keep a different set): the shared matcher (ladon_deploy/compare.py) pairs them one to one, a pair agrees within
DETECTION_TOLERANCES' box and score tolerances, and the gate asks for a matched fraction and no difference that a
score cut does not explain.

Edge subset: Python 3.6-clean, numpy only (the Nano runs this gate when it builds its encoder).
"""
import collections
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ladon_deploy import compare
from ladon_deploy.bundle import Bundle
from ladon_deploy.engines.base import Runner
from ladon_deploy.errors import EngineError

TOLERANCES = {
    "fp32": {"rel_l2": 1e-4},
    "fp16": {"rel_l2": 1e-2, "symbol_agreement": 0.995},
    # INT8's real gate is the fidelity report on held-out photographs (calibration/fidelity.py); this one catches an
    # engine that is broken rather than quantized (the cpu INT8 demo stages measure 0.04-0.14 relative L2).
    "int8": {"rel_l2": 0.2, "symbol_agreement": 0.99},
}
# head_det: a pair agrees within box_px (every coordinate, resized-image pixels) and score; the gate needs at least
# matched_fraction of each side matched and nothing unexplained. fp32 is the export's own parity tolerance.
DETECTION_TOLERANCES = {
    "fp32": {"box_px": 0.5, "score": 1e-3, "matched_fraction": 0.9},
    "fp16": {"box_px": 2.0, "score": 1e-2, "matched_fraction": 0.9},
    "int8": {"box_px": 8.0, "score": 0.1, "matched_fraction": 0.5},
}
DETECTION_STAGE = "head_det"
DETECTION_OUTPUTS = ("boxes", "scores", "labels")
SYMBOL_STAGES = ("encoder",)
REFERENCE = "onnxruntime CPUExecutionProvider fp32"
FEATURE_STRIDES = (("feat1", 4), ("feat2", 8), ("feat3", 16), ("feat4", 32))


def tolerance_for(precision: str, stage: str) -> Dict[str, float]:
    if precision not in TOLERANCES:
        raise EngineError("no parity tolerance is defined for precision %s" % precision)
    if stage == DETECTION_STAGE:
        return dict(DETECTION_TOLERANCES[precision])
    tolerance = dict(TOLERANCES[precision])
    if stage not in SYMBOL_STAGES:
        tolerance.pop("symbol_agreement", None)
    return tolerance


def float_output_passes(rel_l2, tolerance):
    # type: (float, Dict[str, float]) -> bool
    """The gate of one float output: relative L2 at most the tolerance (equal passes, NaN fails)."""
    return compare.within(rel_l2, "<=", tolerance["rel_l2"])


def symbol_agreement_passes(agreement, tolerance):
    # type: (float, Dict[str, float]) -> bool
    """The encoder's symbol gate: agreement at least the tolerance (equal passes)."""
    return compare.within(agreement, ">=", tolerance["symbol_agreement"])


def detection_failures(figures, tolerance):
    # type: (Dict[str, Any], Dict[str, float]) -> List[str]
    """The head_det gate on compare.compare_detections' figures: what it misses, one line each (none: passed)."""
    return compare.failures(figures, [("matched_fraction", ">=", tolerance["matched_fraction"]),
                                      ("unexplained", "<=", 0)])


def latent_symbols(latent: np.ndarray, medians: np.ndarray) -> np.ndarray:
    """round(y - median) per channel (half to even, as the device stage quantizes)."""
    return np.round(np.asarray(latent, dtype=np.float32) - medians.reshape(1, -1, 1, 1).astype(np.float32))


def symbol_agreement(reference: np.ndarray, candidate: np.ndarray, medians: np.ndarray) -> float:
    a, b = latent_symbols(reference, medians), latent_symbols(candidate, medians)
    return float(np.mean(a == b)) if a.size else 1.0


def probe_image(height: int, width: int, mean: Sequence[float], std: Sequence[float], seed: int) -> np.ndarray:
    """A smooth seeded picture (coarse random colours, bilinear-ish upsampled, light noise), normalized like the
    device stage's tensor: [1, 3, height, width] float32."""
    rng = np.random.RandomState(seed)
    coarse = rng.uniform(0.0, 1.0, size=(3, height // 16 + 2, width // 16 + 2))
    ys = np.linspace(0, coarse.shape[1] - 1.001, height)
    xs = np.linspace(0, coarse.shape[2] - 1.001, width)
    y0, x0 = ys.astype(int), xs.astype(int)
    fy, fx = (ys - y0)[None, :, None], (xs - x0)[None, None, :]
    top = coarse[:, y0][:, :, x0] * (1 - fx) + coarse[:, y0][:, :, x0 + 1] * fx
    bottom = coarse[:, y0 + 1][:, :, x0] * (1 - fx) + coarse[:, y0 + 1][:, :, x0 + 1] * fx
    pixels = np.clip(top * (1 - fy) + bottom * fy + rng.normal(0.0, 0.02, size=(3, height, width)), 0.0, 1.0)
    normalized = (pixels - np.asarray(mean).reshape(3, 1, 1)) / np.asarray(std).reshape(3, 1, 1)
    return normalized[None].astype(np.float32)


class ReferenceChain(object):
    """Each stage's seeded inputs and reference outputs at each probe size, from the bundle's ONNX on ORT CPU.

    Stages are run once per size and only as far as the stages asked for need.
    """

    def __init__(self, bundle: Bundle, sizes: Sequence[Tuple[int, int]], seed: int = 0,
                 threads: Optional[int] = None) -> None:
        self.bundle = bundle
        self.sizes = [tuple(int(v) for v in size) for size in sizes]
        self.seed = seed
        self.threads = threads
        self.medians = np.asarray(bundle.load_entropy_tables()["medians"], dtype=np.float32)
        self._runners = {}  # type: Dict[str, Runner]
        self._values = {}  # type: Dict[Tuple[str, Tuple[int, int]], Dict[str, np.ndarray]]

    def _runner(self, stage: str) -> Runner:
        if stage not in self._runners:
            from ladon_deploy.engines.ort_runner import OnnxRuntimeRunner

            self._runners[stage] = OnnxRuntimeRunner(self.bundle.path(stage), threads=self.threads)
        return self._runners[stage]

    def _outputs(self, stage: str, size: Tuple[int, int]) -> Dict[str, np.ndarray]:
        key = (stage, size)
        if key not in self._values:
            self._values[key] = self._runner(stage).run(self.inputs(stage, size))
        return self._values[key]

    def inputs(self, stage: str, size: Tuple[int, int]) -> Dict[str, np.ndarray]:
        """The feeds of `stage` when the device stage sends a padded image of `size` (height, width)."""
        height, width = size
        if stage == "encoder":
            settings = self.bundle.preprocessing
            index = self.sizes.index(size) if size in self.sizes else 0
            return {"image": probe_image(height, width, settings["mean"], settings["std"], self.seed + index)}
        if stage == "body":
            latent = self._outputs("encoder", size)["latent"]
            latent_hat = latent_symbols(latent, self.medians) + self.medians.reshape(1, -1, 1, 1)
            return {"latent_hat": latent_hat.astype(np.float32)}
        features = self._outputs("body", size)
        wanted = [value["name"] for value in self.bundle.stage(stage).get("inputs", [])]
        feeds = {name: features[name] for name in wanted if name in features}
        if "image_size" in wanted:
            feeds["image_size"] = np.asarray([height, width], dtype=np.int64)
        return feeds

    def reference(self, stage: str, size: Tuple[int, int]) -> Dict[str, np.ndarray]:
        return self._outputs(stage, size)

    def close(self) -> None:
        for runner in self._runners.values():
            runner.close()
        self._runners = {}


def compare_detection_outputs(reference, candidate, precision, score_cuts=(None, None)):
    # type: (Dict[str, np.ndarray], Dict[str, np.ndarray], str, Tuple[Optional[float], Optional[int]]) -> Dict[str, Any]
    """Figures for one head_det probe: the outputs as detections, matched one to one; score_cuts is the head's
    (score threshold, per-image cap), the cuts that may decide a detection with a near-tied score."""
    tolerance = tolerance_for(precision, DETECTION_STAGE)
    missing = [name for name in DETECTION_OUTPUTS if name not in candidate]
    if missing:
        return {"failures": ["output %s missing" % missing[0]], "passed": False}
    figures = compare.compare_detections(
        [reference[name] for name in DETECTION_OUTPUTS], [candidate[name] for name in DETECTION_OUTPUTS],
        tolerance["box_px"], tolerance["score"], score_threshold=score_cuts[0], max_detections=score_cuts[1])
    figures["failures"] = detection_failures(figures, tolerance)
    figures["passed"] = not figures["failures"]
    return figures


def compare_outputs(stage: str, reference: Dict[str, np.ndarray], candidate: Dict[str, np.ndarray],
                    precision: str, medians: Optional[np.ndarray] = None) -> Dict[str, Any]:
    """Figures for one probe of a dense stage: per output relative L2 / max abs (float) or agreement (integer)."""
    tolerance = tolerance_for(precision, stage)
    figures = collections.OrderedDict()  # type: Dict[str, Any]
    outputs = collections.OrderedDict()  # type: Dict[str, Any]
    failures = []
    for name, expected in reference.items():
        if name not in candidate:
            failures.append("output %s missing" % name)
            continue
        got = np.asarray(candidate[name])
        if got.shape != expected.shape:
            failures.append("output %s has shape %s, ONNX Runtime gives %s" % (name, got.shape, expected.shape))
            outputs[name] = {"shape": list(got.shape), "reference_shape": list(expected.shape)}
            continue
        if np.issubdtype(expected.dtype, np.floating):
            error = compare.relative_l2(expected, got)
            max_abs = float(np.max(np.abs(got.astype(np.float64) - expected))) if expected.size else 0.0
            outputs[name] = {"rel_l2": error, "max_abs": max_abs}
            if not float_output_passes(error, tolerance):
                failures.append("%s relative L2 %.3g > %g" % (name, error, tolerance["rel_l2"]))
        else:
            agreement = float(np.mean(got == expected)) if expected.size else 1.0
            outputs[name] = {"agreement": agreement}
            if agreement < 1.0:
                failures.append("%s agrees on %.4f of values, integers must agree exactly" % (name, agreement))
    figures["outputs"] = outputs
    if "symbol_agreement" in tolerance and medians is not None and "latent" in reference and "latent" in candidate \
            and np.shape(candidate["latent"]) == reference["latent"].shape:
        agreement = symbol_agreement(reference["latent"], candidate["latent"], medians)
        figures["symbol_agreement"] = agreement
        if not symbol_agreement_passes(agreement, tolerance):
            failures.append("latent symbols agree on %.4f < %g" % (agreement, tolerance["symbol_agreement"]))
    figures["failures"] = failures
    figures["passed"] = not failures
    return figures


def _score_cuts(bundle):
    # type: (Bundle) -> Tuple[Optional[float], Optional[int]]
    postprocess = bundle.manifest.get("stages", {}).get(DETECTION_STAGE, {}).get("postprocess", {})
    return postprocess.get("score_threshold"), postprocess.get("max_detections")


def check_parity(chain: ReferenceChain, stage: str, candidate: Runner, precision: str) -> Dict[str, Any]:
    """Runs `candidate` on the chain's inputs of `stage` at every probe size; the figures say whether it passed."""
    per_size = []
    for size in chain.sizes:
        feeds = chain.inputs(stage, size)
        if stage == DETECTION_STAGE:
            figures = compare_detection_outputs(chain.reference(stage, size), candidate.run(feeds), precision,
                                                _score_cuts(chain.bundle))
        else:
            figures = compare_outputs(stage, chain.reference(stage, size), candidate.run(feeds), precision,
                                      chain.medians)
        figures["input_size"] = list(size)
        per_size.append(figures)
    result = collections.OrderedDict()  # type: Dict[str, Any]
    result["reference"] = REFERENCE
    result["seed"] = chain.seed
    result["precision"] = precision
    result["tolerance"] = tolerance_for(precision, stage)
    errors = [o["rel_l2"] for f in per_size for o in f.get("outputs", {}).values() if "rel_l2" in o]
    result["rel_l2"] = max(errors) if errors else None
    fractions = [f["matched_fraction"] for f in per_size if "matched_fraction" in f]
    if fractions:
        result["matched_fraction"] = min(fractions)
    agreements = [f["symbol_agreement"] for f in per_size if "symbol_agreement" in f]
    if agreements:
        result["symbol_agreement"] = min(agreements)
    result["passed"] = all(f["passed"] for f in per_size)
    result["per_input_size"] = per_size
    return result


def parity_failure(stage: str, figures: Dict[str, Any]) -> str:
    """One line naming the first failure, for the build's refusal."""
    for probe in figures["per_input_size"]:
        if probe["failures"]:
            return "the %s engine misses parity at %dx%d: %s" % (stage, probe["input_size"][0], probe["input_size"][1],
                                                                 probe["failures"][0])
    return "the %s engine misses parity" % stage


def probe_sizes(profile_min: Tuple[int, int], profile_max: Tuple[int, int], pad: int) -> List[Tuple[int, int]]:
    """Two image sizes inside the profile: the largest, and a landscape one a side `2 * pad` shorter (one when the
    profile is static)."""
    largest = (int(profile_max[0]), int(profile_max[1]))
    shorter = largest[0] - 2 * pad
    if shorter >= profile_min[0]:
        return [largest, (shorter, largest[1])]
    return [largest]
