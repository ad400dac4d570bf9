"""The Triton model `ladon`: payload bytes in, the JSON document of `ladon-run server --json` out.

Interface (any KServe v2 client can call it):
    input  `payload` BYTES dims [1]   one wire-format payload per row; a request carries shape [1, 1]
    output `result`  BYTES dims [1]   UTF-8 JSON: ServerResult.to_json() plus "timings_ms" (this request's server
                                      compute per stage), "server_compute_ms" and "batch_size"; or, for a payload
                                      the server refuses, {"error": "<one line>", "error_type": "PayloadError"}
    output `mask`    BYTES dims [1]   only for a request whose parameters hold "mask": true (a PNG costs bytes, so it
                                      is opt-in): the segmentation mask as the paletted PNG `ladon-run split
                                      --mask-out` writes (same pixels, same palette); empty for a row without one

Why errors travel inside `result`: PyTriton 0.7 can fail only a whole batch (an exception in the callable becomes
HTTP 500 for every request batched with it, carrying a Python traceback). A bad payload must not fail the valid
ones that happened to share its batch, so each row gets its own document. Requests Triton itself refuses (wrong
tensor name, type or shape, no data) and requests the gate refuses (oversized, unreadable HTTP) still get HTTP 400 /
413 errors.

Batching: the rows of one Triton batch are decoded one by one, grouped by latent shape, and each group runs the
body once; the classification and segmentation heads run once per group on the rows that asked for them; the
detection head is a per-image graph (its image_size input is one image's) and runs row by row on the batched
features. The exported ONNX files have batch 1 fixed, so batch-capable copies (dimension 0 made symbolic, nothing
else changed) are written to a work directory at start-up; ONNX Runtime computes each row of a batch exactly as it
computes that row alone (measured bitwise on the demo bundle's body, cls and seg heads; tests/serve/test_server.py
checks that a batch's documents, probabilities as floats included, equal those of ServerStage run one by one).
"""
import json
import os
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Set, Tuple

import numpy as np

from ladon_deploy.bundle import TASK_HEADS, TASKS, Bundle
from ladon_deploy.device import wire
from ladon_deploy.device.stage import timings_ms
from ladon_deploy.engines.base import Runner
from ladon_deploy.engines.registry import choose_runnable_stage, open_choice, open_runner
from ladon_deploy.errors import LadonError, PayloadError
from ladon_deploy.server import postprocess
from ladon_deploy.server.stage import ServerResult, ServerStage

MODEL_NAME = "ladon"
INPUT_NAME = "payload"
OUTPUT_NAME = "result"
MASK_OUTPUT_NAME = "mask"
MASK_PARAMETER = "mask"
BATCHED_HEADS = ("cls", "seg")
"""Heads whose graphs take a batch of feature maps; the detection head takes one image (its image_size)."""
BATCHABLE_ENGINES = ("onnxruntime", "onnxruntime-cuda")

Member = Tuple[int, wire.Payload, np.ndarray, Dict[str, float]]
"""One decoded row of a batch: its position, payload, dequantized latent and its own timings so far."""

DEFAULT_MAX_PAYLOAD_BYTES = 4 << 20
"""Largest payload the model accepts: a 416-pixel Ladon latent codes to well under 1 MB."""


def write_batch_capable_copy(source: str, destination: str) -> None:
    """Copies an ONNX file with dimension 0 of every input and output of rank >= 2 made symbolic ("batch").

    The exporter fixes batch 1; a batched graph needs nothing else changed for the convolutional stages. Stale
    intermediate shapes (value_info) are dropped so that ONNX Runtime infers them again.
    """
    import onnx

    model = onnx.load(source)
    for value in list(model.graph.input) + list(model.graph.output):
        dims = value.type.tensor_type.shape.dim
        if len(dims) >= 2 and dims[0].HasField("dim_value") and dims[0].dim_value == 1:
            dims[0].dim_param = "batch"
    del model.graph.value_info[:]
    onnx.save(model, destination)


class BatchedServerStage:
    """ServerStage whose body and batchable heads run a group of same-shape latents at once."""

    def __init__(self, bundle: Bundle, engine: str = "onnxruntime", threads: Optional[int] = None,
                 tasks: Optional[Sequence[str]] = None, workdir: Optional[str] = None,
                 max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES) -> None:
        self.max_payload_bytes = int(max_payload_bytes)
        self.batched: Set[str] = set()  # "body" and the tasks whose runners take a batch
        batchable = {"body": "body"}
        batchable.update((TASK_HEADS[task], task) for task in BATCHED_HEADS)
        if workdir:
            os.makedirs(workdir, exist_ok=True)

        def open_stage(stage_name: str) -> Runner:
            choice = choose_runnable_stage(bundle, stage_name, engine)
            # A TensorRT plan (or the TensorRT provider's cache) is built for batch 1; ONNX Runtime sessions open a
            # batch-capable copy of the stage instead, so the batch-1 session is never loaded.
            if not workdir or stage_name not in batchable or choice.label not in BATCHABLE_ENGINES:
                return open_choice(bundle, choice, threads)
            copy = os.path.join(workdir, stage_name + ".batch.onnx")
            write_batch_capable_copy(bundle.path(stage_name), copy)
            runner = open_runner(copy, choice.label, threads)
            runner.engine_label = choice.label
            self.batched.add(batchable[stage_name])
            return runner

        self.stage = ServerStage(bundle, engine=engine, threads=threads, tasks=tasks, open_stage=open_stage)

    @property
    def batching(self) -> bool:
        return "body" in self.batched

    @property
    def bundle(self) -> Bundle:
        return self.stage.bundle

    @property
    def tasks(self) -> Tuple[str, ...]:
        return self.stage.tasks

    def _decode(self, data: Any) -> Tuple[wire.Payload, np.ndarray, Dict[str, float]]:
        if not isinstance(data, (bytes, bytearray)):
            raise PayloadError("tensor %r must hold bytes, got %s" % (INPUT_NAME, type(data).__name__))
        if len(data) > self.max_payload_bytes:
            raise PayloadError("payload of %d bytes is over this server's limit of %d bytes"
                               % (len(data), self.max_payload_bytes))
        timings: Dict[str, float] = {}
        started = time.perf_counter()
        payload = self.stage.unpack(bytes(data))
        missing = [t for t in payload.tasks if t not in self.stage.heads]
        if missing:
            raise PayloadError("payload asks for %s but this server runs only %s"
                               % (",".join(missing), ",".join(self.stage.tasks)))
        timings["unframe"] = time.perf_counter() - started
        started = time.perf_counter()
        symbols = self.stage.coder.decode(payload.body, payload.latent_shape)
        timings["entropy_decode"] = time.perf_counter() - started
        started = time.perf_counter()
        latent_hat = self.stage.coder.dequantize(symbols)
        if latent_hat.ndim == 3:
            latent_hat = latent_hat[None]
        timings["dequantize"] = time.perf_counter() - started
        return payload, latent_hat, timings

    def _run_group(self, members: List[Member]) -> List[ServerResult]:
        """Body once over the group's latents, then each head over the rows that asked for it."""
        if self.batching:
            started = time.perf_counter()
            features = self.stage.body.run({"latent_hat": np.concatenate([m[2] for m in members], axis=0)})
            shared = {"body": time.perf_counter() - started}
            rows = [{name: value[i:i + 1] for name, value in features.items()} for i in range(len(members))]
        else:
            shared = {"body": 0.0}
            rows = []
            for member in members:
                started = time.perf_counter()
                rows.append(self.stage.body.run({"latent_hat": member[2]}))
                shared["body"] += time.perf_counter() - started
        outputs: List[Dict[str, Dict[str, np.ndarray]]] = [{} for _ in members]
        for task in TASKS:
            wanting = [i for i, member in enumerate(members) if task in member[1].tasks]
            if not wanting:
                continue
            head = self.stage.heads[task]
            started = time.perf_counter()
            if task in self.batched and self.batching:
                feeds = {name: np.concatenate([rows[i][name] for i in wanting], axis=0)
                         for name in head.input_names}
                result = head.run(feeds)
                for position, i in enumerate(wanting):
                    outputs[i][task] = {name: value[position:position + 1] for name, value in result.items()}
            else:
                for i in wanting:
                    feeds = {name: rows[i][name] for name in head.input_names if name in rows[i]}
                    if task == "det":
                        feeds["image_size"] = np.asarray(members[i][1].resized_size, dtype=np.int64)
                    outputs[i][task] = head.run(feeds)
            shared["head_" + task] = time.perf_counter() - started
        results = []
        for member, output in zip(members, outputs):
            timings = dict(member[3])
            timings["body"] = shared["body"]
            for task in TASKS:
                if task in output:
                    timings["head_" + task] = shared["head_" + task]
            used = ["body"] + [TASK_HEADS[task] for task in TASKS if task in output]
            engines = {stage: self.stage.engines[stage] for stage in used if stage in self.stage.engines}
            results.append(ServerResult(member[1], output, timings, engines))
        return results

    def run_batch(self, payloads: Sequence[Any], top_k: int = 5) -> List[Dict[str, Any]]:
        """One document per payload, in order: the result, or {"error", "error_type"} for a refused payload."""
        return self.run_rows(payloads, top_k)[0]

    def run_rows(self, payloads: Sequence[Any], top_k: int = 5, mask_rows: Sequence[int] = ()
                 ) -> Tuple[List[Dict[str, Any]], List[bytes]]:
        """run_batch's documents, and for each row listed in mask_rows with a seg result its mask as PNG bytes
        (b"" for every other row)."""
        started = time.perf_counter()
        masks = [b""] * len(payloads)
        documents: List[Optional[Dict[str, Any]]] = [None] * len(payloads)
        groups: Dict[Tuple[int, int, int], List[Member]] = {}
        for index, data in enumerate(payloads):
            try:
                payload, latent_hat, timings = self._decode(data)
            except LadonError as exc:
                documents[index] = error_document(exc)
                continue
            groups.setdefault(payload.latent_shape, []).append((index, payload, latent_hat, timings))
        for members in groups.values():
            try:
                results = self._run_group(members)
            except LadonError as exc:
                for member in members:
                    documents[member[0]] = error_document(exc)
                continue
            for member, result in zip(members, results):
                document = result.to_json(None, top_k)
                document["timings_ms"] = timings_ms(result.timings)
                document["server_compute_ms"] = round((time.perf_counter() - started) * 1000.0, 3)
                document["batch_size"] = len(members)
                documents[member[0]] = document
                if member[0] in mask_rows and "seg" in result.outputs:
                    masks[member[0]] = postprocess.encode_mask_png(result.mask())
        return [document for document in documents if document is not None], masks

    def close(self) -> None:
        self.stage.close()


class BundleDispatch:
    """Several bundles behind the one model: each payload goes to the bundle whose id its header names (bundles of
    one architecture at several betas, among which the device chooses per image), so a dynamic batch is grouped by
    bundle and then, inside each bundle, by latent shape."""

    def __init__(self, stages: Sequence[BatchedServerStage]) -> None:
        self.stages: Dict[str, BatchedServerStage] = {}
        for stage in stages:
            short = stage.bundle.bundle_id[:8]
            if short in self.stages:
                raise LadonError("bundle %s is given twice" % stage.bundle.bundle_id)
            self.stages[short] = stage

    def run_rows(self, payloads: Sequence[Any], top_k: int = 5, mask_rows: Sequence[int] = ()
                 ) -> Tuple[List[Dict[str, Any]], List[bytes]]:
        """BatchedServerStage.run_rows over every bundle: documents and masks in the order of the payloads."""
        if len(self.stages) == 1:
            # One bundle: its own unpack names the bundle a payload was made for, as a single-bundle server always has.
            return next(iter(self.stages.values())).run_rows(payloads, top_k, mask_rows)
        documents: List[Dict[str, Any]] = [{}] * len(payloads)
        masks = [b""] * len(payloads)
        routed: Dict[str, List[int]] = {}
        for index, data in enumerate(payloads):
            short = wire.bundle_id_of(data)
            if short in self.stages:
                routed.setdefault(short, []).append(index)
            else:
                documents[index] = error_document(PayloadError(
                    "payload was made for bundle %s; this server serves bundles %s" % (
                        short or "(none: not a payload)", ", ".join(self.stages))))
        for short, rows in routed.items():
            wanted = set(mask_rows)
            answers, row_masks = self.stages[short].run_rows([payloads[i] for i in rows], top_k,
                                                             [k for k, i in enumerate(rows) if i in wanted])
            for k, i in enumerate(rows):
                documents[i], masks[i] = answers[k], row_masks[k]
        return documents, masks

    def answer(self, payload: bytes) -> Dict[str, Any]:
        """One payload's document; a refused payload raises PayloadError (the frame receiver's handler)."""
        document = self.run_rows([payload])[0][0]
        if "error" in document:
            raise PayloadError(document["error"])
        return document

    def close(self) -> None:
        for stage in self.stages.values():
            stage.close()


def error_document(exc: BaseException) -> Dict[str, Any]:
    message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return {"error": message, "error_type": type(exc).__name__}


def encode_documents(documents: Sequence[Dict[str, Any]]) -> np.ndarray:
    """Documents -> the `result` tensor: an object array of UTF-8 JSON bytes, shape [N, 1]."""
    column = np.empty((len(documents), 1), dtype=np.object_)
    for row, document in enumerate(documents):
        column[row, 0] = json.dumps(document).encode("utf-8")
    return column


def wants_mask(parameters: Optional[Dict[str, Any]]) -> bool:
    """Whether a request's KServe parameters ask for the mask output ({"mask": true}; "true" and 1 read alike)."""
    value = (parameters or {}).get(MASK_PARAMETER, False)
    return value is True or str(value).lower() in ("true", "1")


def encode_masks(masks: Sequence[bytes]) -> np.ndarray:
    """PNG bytes -> the `mask` tensor: an object array of bytes, shape [N, 1]."""
    column = np.empty((len(masks), 1), dtype=np.object_)
    for row, mask in enumerate(masks):
        column[row, 0] = bytes(mask)
    return column


def make_infer_function(stage: "BatchedServerStage | BundleDispatch"):
    """The PyTriton callable: a list of requests (each [rows, 1] payloads) -> a list of {"result": [rows, 1]}, plus
    "mask": [rows, 1] for the requests that ask for it."""

    def infer(requests):
        flat: List[Any] = []
        counts = []
        mask_rows: Set[int] = set()
        for request in requests:
            column = np.asarray(request[INPUT_NAME], dtype=np.object_).reshape(-1)
            if wants_mask(getattr(request, "parameters", None)):
                mask_rows.update(range(len(flat), len(flat) + len(column)))
            flat.extend(column.tolist())
            counts.append(len(column))
        documents, masks = stage.run_rows(flat, mask_rows=mask_rows)
        responses = []
        position = 0
        for count in counts:
            response = {OUTPUT_NAME: encode_documents(documents[position:position + count])}
            if position in mask_rows:
                response[MASK_OUTPUT_NAME] = encode_masks(masks[position:position + count])
            responses.append(response)
            position += count
        return responses

    return infer


class ServeSettings:
    """What ladon-serve needs to start Triton: addresses, ports, batching and limits."""

    def __init__(self, host: str = "127.0.0.1", http_port: int = 8000, grpc_port: int = 8001,
                 metrics_port: int = 8002, max_batch: int = 8, max_queue_delay_ms: float = 5.0,
                 request_timeout_s: float = 30.0) -> None:
        self.host = host
        self.http_port = int(http_port)
        self.grpc_port = int(grpc_port)
        self.metrics_port = int(metrics_port)
        self.max_batch = int(max_batch)
        self.max_queue_delay_ms = float(max_queue_delay_ms)
        self.request_timeout_s = float(request_timeout_s)


def start_triton(stage: "BatchedServerStage | BundleDispatch", settings: ServeSettings, workspace: str, log_path: str,
                 on_created: Optional[Callable[[Any], None]] = None):
    """Starts tritonserver (PyTriton's bundled one) serving `ladon`; returns the running pytriton Triton object.
    on_created(triton) is called before it starts, so that a caller can watch the start-up.

    Triton's HTTP endpoint listens on settings.host:http_port (ladon-serve puts it on loopback behind the gate);
    gRPC and metrics on settings.host; tritonserver's own log goes to log_path. The caller stops it with .stop().
    """
    import pathlib

    from pytriton.model_config import DynamicBatcher, ModelConfig, QueuePolicy, Tensor
    from pytriton.model_config.common import TimeoutAction
    from pytriton.triton import Triton, TritonConfig

    config = TritonConfig(http_address="127.0.0.1", http_port=settings.http_port, grpc_address=settings.host,
                          grpc_port=settings.grpc_port, metrics_address=settings.host,
                          metrics_port=settings.metrics_port, exit_timeout_secs=5, log_verbose=0,
                          log_file=pathlib.Path(log_path))
    # A request that waits in Triton's queue longer than the timeout is refused rather than served late; a client
    # may ask for less through the KServe "timeout" parameter (microseconds).
    queue_policy = QueuePolicy(timeout_action=TimeoutAction.REJECT,
                               default_timeout_microseconds=int(settings.request_timeout_s * 1e6),
                               allow_timeout_override=True)
    batcher = DynamicBatcher(max_queue_delay_microseconds=int(settings.max_queue_delay_ms * 1000),
                             default_queue_policy=queue_policy)
    triton = Triton(config=config, workspace=workspace)
    if on_created is not None:
        on_created(triton)
    try:
        triton.bind(model_name=MODEL_NAME, infer_func=make_infer_function(stage),
                    inputs=[Tensor(name=INPUT_NAME, dtype=np.bytes_, shape=(1,))],
                    outputs=[Tensor(name=OUTPUT_NAME, dtype=np.bytes_, shape=(1,)),
                             Tensor(name=MASK_OUTPUT_NAME, dtype=np.bytes_, shape=(1,))],
                    config=ModelConfig(max_batch_size=settings.max_batch, batcher=batcher), strict=True)
        triton.run()
    except BaseException:
        triton.stop()
        raise
    return triton
