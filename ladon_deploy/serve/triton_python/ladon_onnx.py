"""Triton Python-backend step for the body and the heads of the python variant: the repository's copy of one
stage's ONNX file (batch-capable, see repository.py) run through ONNX Runtime.

Requests whose inputs have the same shapes are concatenated along the batch dimension and run once (Triton's
dynamic batcher hands a list of requests, each with its own batch of 1); the outputs are split back per request.
A per-image stage (max_batch_size 1: detection) runs request by request. A head with a `task_mask` input answers
the requests whose payload did not ask for its task with empty placeholders (ladon_results ignores them) instead of
running: an ensemble runs every step for every request.
"""
import json
import os

import numpy as np
import triton_python_backend_utils as pb_utils

try:
    from ladon_deploy.engines.registry import open_runner
    from ladon_deploy.serve.triton_python.common import first_line, model_parameters, version_directory
except ImportError as exc:  # pragma: no cover - only inside a Triton without the toolkit
    raise ImportError("ladon_deploy is not importable from the Python that runs Triton's Python backend: "
                      "pip install ladon-deploy onnxruntime into it (%s)" % exc)


class TritonPythonModel:
    def initialize(self, args):
        parameters = model_parameters(args)
        config = json.loads(args["model_config"])
        self.stage = parameters["stage"]
        self.runner = open_runner(os.path.join(version_directory(args), "model.onnx"), "onnxruntime")
        self.inputs = [tensor["name"] for tensor in config["input"] if tensor["name"] != "task_mask"]
        self.outputs = [tensor["name"] for tensor in config["output"]]
        self.task_bit = int(parameters["task_bit"]) if parameters.get("task_bit") else None
        # A placeholder has the config's dims with every variable one empty, behind a batch of 1.
        self.placeholders = {tensor["name"]: np.zeros([1] + [max(0, int(d)) for d in tensor["dims"]],
                                                      dtype=pb_utils.triton_string_to_numpy(tensor["data_type"]))
                             for tensor in config["output"]}
        self.max_batch = max(1, int(config.get("max_batch_size", 1)))

    def _run_group(self, feeds_list):
        if len(feeds_list) == 1:
            return [self.runner.run(feeds_list[0])]
        batch = {name: np.concatenate([feeds[name] for feeds in feeds_list], axis=0) for name in self.inputs}
        outputs = self.runner.run(batch)
        return [{name: outputs[name][row:row + 1] for name in self.outputs} for row in range(len(feeds_list))]

    def execute(self, requests):
        feeds_list = []
        groups = {}
        responses = [None] * len(requests)
        for index, request in enumerate(requests):
            if self.task_bit is not None:
                mask = int(pb_utils.get_input_tensor_by_name(request, "task_mask").as_numpy().reshape(-1)[0])
                if not mask & self.task_bit:
                    responses[index] = pb_utils.InferenceResponse(
                        output_tensors=[pb_utils.Tensor(name, value) for name, value in self.placeholders.items()])
                    feeds_list.append(None)
                    continue
            feeds = {name: pb_utils.get_input_tensor_by_name(request, name).as_numpy() for name in self.inputs}
            feeds_list.append(feeds)
            key = tuple(feeds[name].shape for name in self.inputs)
            groups.setdefault(key, []).append(index)
        for members in groups.values():
            chunks = [members[start:start + self.max_batch] for start in range(0, len(members), self.max_batch)]
            for chunk in chunks:
                try:
                    results = self._run_group([feeds_list[i] for i in chunk])
                except Exception as exc:  # ONNX Runtime's errors derive from Exception: fail this group only
                    error = pb_utils.TritonError("%s: %s" % (self.stage, first_line(exc)))
                    for i in chunk:
                        responses[i] = pb_utils.InferenceResponse(error=error)
                    continue
                for i, outputs in zip(chunk, results):
                    responses[i] = pb_utils.InferenceResponse(
                        output_tensors=[pb_utils.Tensor(name, np.ascontiguousarray(outputs[name]))
                                        for name in self.outputs])
        return responses

    def finalize(self):
        self.runner.close()
