"""Triton Python-backend step `ladon_decode`: payload bytes -> latent_hat (+ image_size), one payload at a time.

Unframes and checks the payload against the bundle (the same checks as `ladon-run server` and ladon-serve), decodes
the rANS stream with the toolkit's coder and dequantizes. A refused payload fails its own request with the one-line
reason; the other requests of the batch go on.
"""
import json
import time

import numpy as np
import triton_python_backend_utils as pb_utils

try:
    from ladon_deploy.bundle import open_bundle
    from ladon_deploy.device import wire
    from ladon_deploy.errors import LadonError, PayloadError
    from ladon_deploy.serve.server import DEFAULT_MAX_PAYLOAD_BYTES
    from ladon_deploy.serve.triton_python.common import model_parameters, refusal, version_directory
    from ladon_deploy.server.stage import PayloadDecoder
except ImportError as exc:  # pragma: no cover - only inside a Triton without the toolkit
    raise ImportError("ladon_deploy is not importable from the Python that runs Triton's Python backend: "
                      "pip install ladon-deploy into it (%s)" % exc)


class TritonPythonModel:
    def initialize(self, args):
        parameters = model_parameters(args)
        bundle = open_bundle(version_directory(args), verify=False)
        bundle.verify(["entropy"])  # the copied tables must be the ones the bundle's manifest names
        if bundle.bundle_id != parameters["bundle_id"]:
            raise LadonError("ladon_decode holds bundle %s but its config says %s"
                             % (bundle.bundle_id, parameters["bundle_id"]))
        self.decoder = PayloadDecoder(bundle)
        self.tasks = [task for task in parameters["tasks"].split(",") if task]
        outputs = set(tensor["name"] for tensor in json.loads(args["model_config"])["output"])
        self.wants_image_size = "image_size" in outputs
        self.wants_task_mask = "task_mask" in outputs  # the python variant's heads skip unrequested tasks

    def _decode(self, request):
        started = time.time()
        tick = time.perf_counter()
        column = pb_utils.get_input_tensor_by_name(request, "payload").as_numpy().reshape(-1)
        if column.size != 1:
            raise PayloadError("a request carries exactly one payload, got %d" % column.size)
        data = column[0]
        if not isinstance(data, (bytes, bytearray)):
            raise PayloadError("tensor 'payload' must hold bytes, got %s" % type(data).__name__)
        if len(data) > DEFAULT_MAX_PAYLOAD_BYTES:
            raise PayloadError("payload of %d bytes is over this server's limit of %d bytes"
                               % (len(data), DEFAULT_MAX_PAYLOAD_BYTES))
        payload = self.decoder.unpack(bytes(data))
        missing = [task for task in payload.tasks if task not in self.tasks]
        if missing:
            raise PayloadError("payload asks for %s but this server runs only %s"
                               % (",".join(missing), ",".join(self.tasks)))
        unframe = time.perf_counter() - tick
        tick = time.perf_counter()
        symbols = self.decoder.coder.decode(payload.body, payload.latent_shape)
        entropy_decode = time.perf_counter() - tick
        tick = time.perf_counter()
        latent_hat = np.ascontiguousarray(self.decoder.coder.dequantize(symbols), dtype=np.float32)
        if latent_hat.ndim == 3:
            latent_hat = latent_hat[None]
        dequantize = time.perf_counter() - tick
        tensors = [pb_utils.Tensor("latent_hat", latent_hat),
                   pb_utils.Tensor("decode_timings",
                                   np.asarray([[started, unframe, entropy_decode, dequantize]], dtype=np.float64))]
        if self.wants_image_size:
            tensors.append(pb_utils.Tensor("image_size", np.asarray([payload.resized_size], dtype=np.int64)))
        if self.wants_task_mask:
            tensors.append(pb_utils.Tensor("task_mask", np.asarray([[wire.task_mask(payload.tasks)]], dtype=np.int32)))
        return pb_utils.InferenceResponse(output_tensors=tensors)

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                responses.append(self._decode(request))
            except LadonError as exc:
                responses.append(pb_utils.InferenceResponse(error=refusal(pb_utils, exc)))
        return responses
