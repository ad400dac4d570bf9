"""Triton Python-backend step `ladon_results`: the raw head outputs -> the results document, as JSON bytes.

The document is ServerResult.to_json of the payload and the head outputs it asked for (the same code as
`ladon-run server --json` and ladon-serve), plus "timings_ms" and "server_compute_ms" as ladon-serve reports them:
unframe, entropy_decode and dequantize measured by ladon_decode, and "body_and_heads": from the end of decoding to
the start of this step (the body, the heads and Triton's hand-offs between steps).
"""
import json
import time

import triton_python_backend_utils as pb_utils

try:
    from ladon_deploy.bundle import TASK_HEADS
    from ladon_deploy.device import wire
    from ladon_deploy.errors import LadonError
    from ladon_deploy.serve.server import encode_documents
    from ladon_deploy.serve.triton_python.common import model_parameters, refusal
    from ladon_deploy.server.stage import ServerResult
except ImportError as exc:  # pragma: no cover - only inside a Triton without the toolkit
    raise ImportError("ladon_deploy is not importable from the Python that runs Triton's Python backend: "
                      "pip install ladon-deploy into it (%s)" % exc)


class TritonPythonModel:
    def initialize(self, args):
        parameters = model_parameters(args)
        config = json.loads(args["model_config"])
        self.bundle_id = parameters["bundle_id"]
        self.top_k = int(parameters.get("top_k") or 5)
        self.engines = json.loads(parameters.get("engines") or "{}")  # stage -> what runs it in this repository
        # Per-image outputs (detection) arrive wrapped in a batch of 1 that the head's own graph does not have.
        self.unbatched = set(name for name in parameters.get("unbatched_outputs", "").split(",") if name)
        self.head_inputs = {}
        for tensor in config["input"]:
            task, _, output = tensor["name"].partition("_")
            if task in TASK_HEADS:
                self.head_inputs.setdefault(task, []).append((tensor["name"], output))

    def _document(self, request):
        entered = time.time()
        data = pb_utils.get_input_tensor_by_name(request, "payload").as_numpy().reshape(-1)[0]
        payload = wire.unpack(bytes(data), expected_bundle_id=self.bundle_id)
        started, unframe, entropy_decode, dequantize = (
            float(v) for v in pb_utils.get_input_tensor_by_name(request, "decode_timings").as_numpy().reshape(-1))
        outputs = {}
        for task in payload.tasks:
            raw = {}
            for tensor_name, output in self.head_inputs[task]:
                value = pb_utils.get_input_tensor_by_name(request, tensor_name).as_numpy()
                raw[output] = value[0] if tensor_name in self.unbatched else value
            outputs[task] = raw
        used = ["body"] + [TASK_HEADS[task] for task in outputs]
        engines = {stage: self.engines[stage] for stage in used if stage in self.engines}
        result = ServerResult(payload, outputs, {}, engines)
        document = result.to_json(None, self.top_k)
        timings = {"unframe": unframe, "entropy_decode": entropy_decode, "dequantize": dequantize,
                   "body_and_heads": max(0.0, entered - started - unframe - entropy_decode - dequantize)}
        document["timings_ms"] = {name: round(seconds * 1000.0, 3) for name, seconds in timings.items()}
        document["server_compute_ms"] = round((time.time() - started) * 1000.0, 3)
        return document

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                document = self._document(request)
            except LadonError as exc:
                responses.append(pb_utils.InferenceResponse(error=refusal(pb_utils, exc)))
                continue
            responses.append(pb_utils.InferenceResponse(
                output_tensors=[pb_utils.Tensor("result", encode_documents([document]))]))
        return responses
