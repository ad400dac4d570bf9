"""The Triton model's batched path, in process: same documents as ServerStage run one payload at a time.

PyTriton is not needed here; tests/serve/test_serve.py runs the same model inside the real tritonserver.
"""
import json

import numpy as np
import pytest

from ladon_deploy.bundle import open_bundle
from ladon_deploy.device import wire
from ladon_deploy.device.stage import DeviceStage
from ladon_deploy.serve.server import (BatchedServerStage, encode_documents, make_infer_function,
                                       write_batch_capable_copy)
from ladon_deploy.server.stage import ServerStage
from images import make_image


@pytest.fixture(scope="module")
def payloads(demo_bundle, tmp_path_factory):
    directory = tmp_path_factory.mktemp("batch-images")
    bundle = open_bundle(demo_bundle)
    device = DeviceStage(bundle)
    # Three images of one size share a latent shape (one body run); the fourth has its own.
    sizes = [(240, 320, 1), (240, 320, 2), (240, 320, 3), (320, 200, 4)]
    made = [device.run(make_image(directory / ("%d.png" % seed), h, w, seed), ("cls", "det", "seg")).payload
            for h, w, seed in sizes]
    # One that asks for classification only, batched with the others of its shape.
    only_cls = device.run(make_image(directory / "5.png", 240, 320, 5), ("cls",)).payload
    return made + [only_cls]


def _without_timings(document):
    return {key: value for key, value in document.items()
            if key not in ("timings_ms", "server_compute_ms", "batch_size")}


@pytest.mark.slow
def test_batched_documents_equal_unbatched_ones(demo_bundle, payloads, tmp_path):
    bundle = open_bundle(demo_bundle)
    single = ServerStage(bundle)
    expected = [single.run(data).to_json() for data in payloads]
    batched = BatchedServerStage(bundle, workdir=str(tmp_path / "batched"))
    assert batched.batching
    documents = batched.run_batch(payloads)
    assert [_without_timings(d) for d in documents] == expected
    assert [d["batch_size"] for d in documents] == [4, 4, 4, 1, 4]
    assert "head_det" not in documents[4]["timings_ms"] and documents[4]["tasks"] == ["cls"]


@pytest.mark.slow
def test_refused_payload_does_not_fail_its_batch(demo_bundle, payloads, tmp_path):
    bundle = open_bundle(demo_bundle)
    batched = BatchedServerStage(bundle, workdir=str(tmp_path / "batched"), tasks=["cls"])
    header = wire.unpack(payloads[4])
    other_bundle = wire.pack(header._replace(bundle_id="deadbeef"))
    corrupted = bytearray(payloads[4])
    corrupted[40] ^= 0x55
    rows = [payloads[4], b"not a payload", other_bundle, bytes(corrupted), payloads[4][:-1], b"", payloads[0],
            b"x" * (batched.max_payload_bytes + 1), payloads[4]]
    documents = batched.run_batch(rows)
    assert len(documents) == len(rows)
    assert "error" not in documents[0] and documents[0] == dict(documents[-1], server_compute_ms=documents[0]
                                                                  ["server_compute_ms"], timings_ms=documents[0]
                                                                  ["timings_ms"])
    errors = [d.get("error", "") for d in documents[1:-1]]
    assert "not a Ladon payload" in errors[0] or "truncated" in errors[0]
    assert "deadbeef" in errors[1] and bundle.bundle_id[:8] in errors[1]
    assert "CRC" in errors[2] and "truncated" in errors[3] and "truncated" in errors[4]
    assert "det" in errors[5] and "runs only cls" in errors[5]
    assert "limit" in errors[6]
    assert all(d["error_type"] == "PayloadError" for d in documents[1:-1])


def test_infer_function_keeps_rows_and_bytes(demo_bundle, payloads, tmp_path):
    """PyTriton hands the callable one [rows, 1] object array per request; answers keep that split and order."""
    bundle = open_bundle(demo_bundle)
    batched = BatchedServerStage(bundle, workdir=None, tasks=["cls"])
    assert not batched.batching
    infer = make_infer_function(batched)
    first = np.array([[payloads[4]]], dtype=np.object_)
    second = np.array([[b"\x00garbage\x00\x00"], [payloads[4]]], dtype=np.object_)
    answers = infer([{"payload": first}, {"payload": second}])
    assert [a["result"].shape for a in answers] == [(1, 1), (2, 1)]
    decoded = [json.loads(a["result"][i, 0].decode("utf-8")) for a in answers for i in range(len(a["result"]))]
    assert "classification" in decoded[0] and "error" in decoded[1] and "classification" in decoded[2]
    assert encode_documents([{"a": 1}])[0, 0] == b'{"a": 1}'


def test_batch_capable_copy_changes_only_the_batch_dimension(demo_bundle, tmp_path):
    import onnx

    bundle = open_bundle(demo_bundle)
    copy = str(tmp_path / "head_cls.batch.onnx")
    write_batch_capable_copy(bundle.path("head_cls"), copy)
    original, edited = onnx.load(bundle.path("head_cls")), onnx.load(copy)
    for before, after in zip(list(original.graph.input) + list(original.graph.output),
                             list(edited.graph.input) + list(edited.graph.output)):
        dims_before = [d.dim_value or d.dim_param for d in before.type.tensor_type.shape.dim]
        dims_after = [d.dim_value or d.dim_param for d in after.type.tensor_type.shape.dim]
        assert dims_before[0] == 1 and dims_after[0] == "batch" and dims_after[1:] == dims_before[1:]
    assert [n.op_type for n in original.graph.node] == [n.op_type for n in edited.graph.node]


@pytest.fixture(scope="module")
def strips(demo_bundle, tmp_path_factory):
    """Thin strips keep the latents tiny (7x103), so every order of a batch can be run: three of one latent shape
    asking for cls+seg, cls only and seg only, and one of another shape."""
    directory = tmp_path_factory.mktemp("strips")
    device = DeviceStage(open_bundle(demo_bundle))
    rows = [(30, 400, ("cls", "seg")), (30, 400, ("cls",)), (30, 400, ("seg",)), (60, 300, ("cls", "seg"))]
    return [device.run(make_image(directory / ("%d.png" % seed), h, w, 20 + seed), tasks).payload
            for seed, (h, w, tasks) in enumerate(rows)]


@pytest.mark.slow
def test_every_order_of_a_batch_gives_each_row_its_own_result(demo_bundle, strips, tmp_path):
    """The heads' outputs are indexed by their row among those that asked: with the cls-only or seg-only payload
    first, in the middle or last of its latent-shape group, each document must be that payload's own."""
    import itertools

    bundle = open_bundle(demo_bundle)
    single = ServerStage(bundle, tasks=["cls", "seg"])
    expected = [_without_timings(single.run(data).to_json()) for data in strips]
    batched = BatchedServerStage(bundle, workdir=str(tmp_path / "batched"), tasks=["cls", "seg"])
    assert batched.batched >= {"body", "cls", "seg"}
    orders = list(itertools.permutations(range(len(strips))))
    assert len(orders) == 24
    for order in orders:
        documents = batched.run_batch([strips[i] for i in order])
        assert [_without_timings(d) for d in documents] == [expected[i] for i in order], order
        assert [d["batch_size"] for d in documents] == [1 if i == 3 else 3 for i in order]
