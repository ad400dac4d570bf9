"""ladon-serve on the real tritonserver (nvidia-pytriton's), driven by the device client and by tritonclient.

One server runs for the module: its own process group, free 127.0.0.1 ports for HTTP, gRPC and metrics, a bounded
readiness wait, the group killed in a finally. Answers are compared with `ladon-run server` / `ladon-run split` on
the same payloads; every kind of bad request gets an error while valid requests keep succeeding.
"""
import contextlib
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest

import edge_install
from ladon_deploy.bundle import open_bundle
from ladon_deploy.cli_support import run_command
from ladon_deploy.device import wire
from ladon_deploy.device.client import InferenceClient, ServerError
from ladon_deploy.device.pacing import PacedLink
from ladon_deploy.device.stage import DeviceStage
from ladon_deploy.runtime.cli import PROG, main
from ladon_deploy.serve.process import ServeProcess
from images import make_image

pytest.importorskip("pytriton", reason="ladon-serve needs nvidia-pytriton (the serve extra)")
pytestmark = pytest.mark.slow

MAX_REQUEST = 1000000
RESULT_KEYS = ("bundle_id", "original_size", "resized_size", "tasks", "classification", "detection", "segmentation")


def _ladon_run(argv):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = run_command(PROG, main, argv)
    assert code == 0, argv
    return json.loads(out.getvalue())


def _results(document):
    return {key: document[key] for key in RESULT_KEYS if key in document}


@pytest.fixture(scope="module")
def server(demo_bundle, tmp_path_factory):
    log = str(tmp_path_factory.mktemp("serve") / "ladon-serve.log")
    process = ServeProcess(demo_bundle, ["--max-batch", "8", "--max-queue-delay-ms", "150", "--idle-timeout-s",
                                         "2", "--max-request-bytes", str(MAX_REQUEST)], log_path=log)
    try:
        process.start()
        yield process
    finally:
        process.kill()


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    directory = tmp_path_factory.mktemp("photos")
    for seed, (height, width) in enumerate([(333, 500), (333, 500), (480, 360)]):
        make_image(directory / ("photo%d.png" % seed), height, width, 40 + seed)
    return sorted(str(directory / name) for name in os.listdir(str(directory)))


@pytest.fixture(scope="module")
def payloads(demo_bundle, photos, tmp_path_factory):
    directory = tmp_path_factory.mktemp("payloads")
    stage = DeviceStage(open_bundle(demo_bundle))
    found = []
    for index, photo in enumerate(photos):
        path = str(directory / ("p%d.ldn" % index))
        with open(path, "wb") as handle:
            handle.write(stage.run(photo, ("cls", "det", "seg")).payload)
        found.append(path)
    return found


@pytest.fixture(scope="module")
def references(demo_bundle, payloads):
    """`ladon-run server --json` on each payload: what every answer of ladon-serve must equal."""
    return [_results(_ladon_run(["server", "--bundle", demo_bundle, "--payload", path, "--json"]))
            for path in payloads]


def _read(path):
    with open(path, "rb") as handle:
        return handle.read()


def test_model_metadata_and_printed_urls(server):
    metadata = server.metadata()
    assert metadata["name"] == "ladon"
    assert [(t["name"], t["datatype"], t["shape"]) for t in metadata["inputs"]] == [("payload", "BYTES", [-1, 1])]
    assert [(t["name"], t["datatype"], t["shape"]) for t in metadata["outputs"]] == [("result", "BYTES", [-1, 1]),
                                                                                      ("mask", "BYTES", [-1, 1])]
    with open(server.log_path) as handle:
        log = handle.read()
    assert "%s/v2/models/ladon/infer" % server.url in log and "ready" in log
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % server.ports[2], timeout=10) as answer:
        assert b"nv_inference_request_success" in answer.read()


def test_device_client_answers_equal_ladon_run_server(server, payloads, references):
    with InferenceClient(server.url, timeout_s=120) as client:
        for path, expected in zip(payloads, references):
            reply = client.infer(_read(path))
            assert _results(reply.document) == expected
            assert reply.overhead_bytes <= 256
            assert reply.document["server_compute_ms"] > 0 and reply.document["timings_ms"]["body"] > 0


def _all_at_once(server, count, request):
    """request(client, index) from `count` clients released together (so that Triton batches them) -> the replies."""
    replies = [None] * count
    errors = []
    together = threading.Barrier(count, timeout=60)

    def send(index):
        try:
            with InferenceClient(server.url, timeout_s=300) as client:
                together.wait()
                replies[index] = request(client, index)
        except Exception as exc:  # reported below; a thread must not die silently
            errors.append(exc)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(180)
    assert not errors and all(r is not None for r in replies), errors
    return replies


def test_concurrent_requests_are_batched_with_identical_results(server, payloads, references):
    data = [_read(payloads[i % 2]) for i in range(6)]  # two photos of one size: one latent shape
    documents = [reply.document for reply in _all_at_once(server, len(data), lambda c, i: c.infer(data[i]))]
    for index, document in enumerate(documents):
        assert _results(document) == references[index % 2]
    assert max(d["batch_size"] for d in documents) > 1


def _other_bundle(data):
    return wire.pack(wire.unpack(data)._replace(bundle_id="deadbeef"))


def _corrupted(data):
    flipped = bytearray(data)
    flipped[len(flipped) // 2] ^= 0x40
    return bytes(flipped)


def test_bad_payloads_are_refused_and_valid_ones_keep_succeeding(server, demo_bundle, payloads, references):
    valid = _read(payloads[0])
    bundle_id = open_bundle(demo_bundle).bundle_id
    cases = [(b"GET / HTTP/1.0\r\n" * 4, "not a Ladon payload"),
             (_other_bundle(valid), "deadbeef"),
             (valid[:-7], "truncated"),
             (_corrupted(valid), "CRC mismatch"),
             (b"", "truncated: 0 bytes"),
             (b"\x00" * (MAX_REQUEST + 1), "HTTP 413")]
    with InferenceClient(server.url, timeout_s=120) as client:
        for data, expected in cases:
            with pytest.raises(ServerError) as refused:
                client.infer(data)
            message = str(refused.value)
            assert expected in message and "\n" not in message
            if expected == "deadbeef":
                assert bundle_id[:8] in message
            assert _results(client.infer(valid).document) == references[0]


def test_wrong_tensor_name_type_and_empty_requests_get_http_errors(server, payloads, references):
    import tritonclient.http as triton_http
    from tritonclient.utils import InferenceServerException

    client = triton_http.InferenceServerClient(server.url[len("http://"):], network_timeout=120.0)
    valid = np.array([[_read(payloads[0])]], dtype=np.object_)

    def request(name, datatype, array):
        tensor = triton_http.InferInput(name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array, binary_data=True)
        return client.infer("ladon", [tensor])

    for name, datatype, array, expected in [("image", "BYTES", valid, "unexpected inference input 'image'"),
                                            ("payload", "FP32", np.zeros((1, 1), np.float32), "FP32")]:
        with pytest.raises(InferenceServerException) as refused:
            request(name, datatype, array)
        assert refused.value.status() == "400" and expected in refused.value.message()
        answer = request("payload", "BYTES", valid).as_numpy("result")
        assert _results(json.loads(answer[0, 0])) == references[0]
    for body, header in [(b"{}", None), (b'{"inputs": []}', None)]:
        attempt = urllib.request.Request(server.url + "/v2/models/ladon/infer", data=body, method="POST")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(attempt, timeout=30)
        assert refused.value.code in (400, 500) and b"error" in refused.value.read()


def test_grpc_endpoint_answers_alike(server, payloads, references):
    import tritonclient.grpc as triton_grpc

    client = triton_grpc.InferenceServerClient("127.0.0.1:%d" % server.ports[1])
    tensor = triton_grpc.InferInput("payload", [1, 1], "BYTES")
    tensor.set_data_from_numpy(np.array([[_read(payloads[0])]], dtype=np.object_))
    answer = client.infer("ladon", [tensor], client_timeout=120).as_numpy("result")
    assert _results(json.loads(answer[0, 0])) == references[0]
    client.close()


@pytest.fixture(scope="module")
def split_mask(demo_bundle, photos, tmp_path_factory):
    """`ladon-run split --mask-out` for photos[0]: (PNG bytes, pixels, palette), what the served mask must equal."""
    path = str(tmp_path_factory.mktemp("split") / "split.png")
    document = _ladon_run(["split", "--bundle", demo_bundle, "--image", photos[0], "--mask-out", path, "--json"])
    assert document["segmentation"]["mask_png"] == path
    with open(path, "rb") as handle:
        return _png(handle.read())


def _png(data):
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "PNG" and image.mode == "P"
        return data, np.asarray(image).copy(), image.getpalette()


def test_mobile_server_mask_out_writes_the_mask_split_writes(server, demo_bundle, photos, split_mask, tmp_path,
                                                             capsys):
    served = str(tmp_path / "served.png")
    document = _ladon_run(["mobile", "--bundle", demo_bundle, "--image", photos[0], "--server", server.url,
                           "--mask-out", served, "--json"])
    with open(served, "rb") as handle:
        data, pixels, palette = _png(handle.read())
    assert np.array_equal(pixels, split_mask[1]) and palette == split_mask[2]
    assert data == split_mask[0]
    assert pixels.shape == (333, 500) and len(np.unique(pixels)) > 1
    assert document["segmentation"]["mask_png"] == served and document["image"] == photos[0]
    assert 256 < document["link"]["overhead_bytes"] <= 512  # the JSON inference header the mask request needs
    # In text mode the results say where the mask went.
    again = str(tmp_path / "again.png")
    assert run_command(PROG, main, ["mobile", "--bundle", demo_bundle, "--image", photos[0], "--server",
                                    server.url, "--mask-out", again]) == 0
    assert "mask written to %s" % again in capsys.readouterr().out
    with open(again, "rb") as handle:
        assert handle.read() == split_mask[0]


def test_mask_over_grpc_and_http_only_when_asked(server, payloads, references, split_mask):
    import tritonclient.grpc as triton_grpc
    import tritonclient.http as triton_http

    data = np.array([[_read(payloads[0])]], dtype=np.object_)
    grpc_client = triton_grpc.InferenceServerClient("127.0.0.1:%d" % server.ports[1])
    http_client = triton_http.InferenceServerClient(server.url[len("http://"):], network_timeout=120.0)
    try:
        for module, client in ((triton_grpc, grpc_client), (triton_http, http_client)):
            tensor = module.InferInput("payload", [1, 1], "BYTES")
            tensor.set_data_from_numpy(data)
            asked = client.infer("ladon", [tensor], parameters={"mask": True})
            assert _png(asked.as_numpy("mask")[0, 0])[0] == split_mask[0]
            assert _results(json.loads(asked.as_numpy("result")[0, 0])) == references[0]
            plain = client.infer("ladon", [tensor])
            assert plain.as_numpy("mask") is None
            assert _results(json.loads(plain.as_numpy("result")[0, 0])) == references[0]
    finally:
        grpc_client.close()
        http_client.close()


def test_batched_requests_get_the_mask_only_where_asked(server, payloads, split_mask):
    data = _read(payloads[0])
    replies = _all_at_once(server, 6, lambda client, index: client.infer(data, mask=index % 2 == 1))
    assert max(r.document["batch_size"] for r in replies) > 1
    for index, reply in enumerate(replies):
        assert reply.mask_png == (split_mask[0] if index % 2 == 1 else None)


def test_mask_out_is_refused_before_any_work(server, demo_bundle, photos, tmp_path, capsys):
    cases = [(["--image", photos[0], "--mask-out", str(tmp_path / "m.jpg")], "name ending in .png"),
             (["--image", photos[0], "--mask-out", str(tmp_path / "m.png"), "--tasks", "cls"], "needs the seg task"),
             (["--images", os.path.dirname(photos[0]), "--mask-out", str(tmp_path / "m.png")], "with --image FILE")]
    for extra, expected in cases:
        code = run_command(PROG, main, ["mobile", "--bundle", demo_bundle, "--server", server.url] + extra)
        err = capsys.readouterr().err
        assert code == 2 and len(err.strip().splitlines()) == 1 and expected in err, err
    assert os.listdir(str(tmp_path)) == []


@pytest.fixture(scope="module")
def folder_with_a_bad_file(photos, tmp_path_factory):
    directory = tmp_path_factory.mktemp("mixed")
    for photo in photos[:2]:
        os.symlink(photo, str(directory / os.path.basename(photo)))
    (directory / "notes.jpg").write_text("a text file, renamed")
    return directory


def test_a_bad_file_in_a_folder_is_named_and_the_stream_goes_on(server, demo_bundle, photos, folder_with_a_bad_file,
                                                                references, capsys):
    argv = ["mobile", "--bundle", demo_bundle, "--images", str(folder_with_a_bad_file), "--server", server.url]
    assert run_command(PROG, main, argv) == 2
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert [line.split(":")[0] for line in lines[:2]] == [os.path.basename(p) for p in photos[:2]]
    assert "2 images answered, 1 failed" in captured.out and "median" in captured.out
    errors = captured.err.splitlines()
    assert errors[0].startswith("notes.jpg: error: not a readable image file")
    assert errors[-1] == "ladon-run: error: 1 of 3 images failed: notes.jpg"

    assert run_command(PROG, main, argv + ["--json"]) == 2
    captured = capsys.readouterr()
    document = json.loads(captured.out)
    assert [d["image"] for d in document["images"]] == [str(folder_with_a_bad_file / os.path.basename(p))
                                                        for p in photos[:2]]
    assert [_results(d) for d in document["images"]] == references[:2]
    assert document["failed"] == [{"image": str(folder_with_a_bad_file / "notes.jpg"),
                                   "error": document["failed"][0]["error"]}]
    assert "not a readable image" in document["failed"][0]["error"]
    assert set(document["summary_ms"]) == {"device_compute", "upload", "server_compute", "end_to_end"}


def test_admin_endpoints_stay_restricted(server):
    for path, body in [("/v2/logging", None), ("/v2/trace/setting", None), ("/v2/repository/index", b"{}"),
                       ("/v2/systemsharedmemory/status", None)]:
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(urllib.request.Request(server.url + path, data=body), timeout=10)
        assert refused.value.code == 403


def test_a_stalled_sender_is_cut_off_by_the_idle_timeout(server):
    connection = socket.create_connection(("127.0.0.1", server.ports[0]), timeout=30)
    try:
        connection.sendall(b"POST /v2/models/ladon/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\nabc")
        started = time.monotonic()
        assert connection.recv(4096) == b""  # closed by the server, not answered
        assert time.monotonic() - started < 20
    finally:
        connection.close()


def test_paced_upload_matches_the_link_formula(server, payloads, references):
    pacing = PacedLink(37500.0, 0.020)
    with InferenceClient(server.url, pacing, timeout_s=120) as client:
        reply = client.infer(_read(payloads[0]))
    expected = reply.request_bytes * 8 / 37500.0 + 0.020
    # The pacer cannot finish early; how little it runs late depends on the machine's load, so the tight figure is
    # measured by python -m ladon_deploy.bench.pacing_bench, not asserted here.
    assert expected * 0.999 <= reply.upload_seconds <= expected + 60.0, (reply.upload_seconds, expected)
    assert reply.overhead_bytes <= 256 and reply.request_bytes == reply.payload_bytes + reply.overhead_bytes
    assert _results(reply.document) == references[0]


def test_ladon_run_mobile_server_json_matches_split(server, demo_bundle, photos):
    served = _ladon_run(["mobile", "--bundle", demo_bundle, "--image", photos[0], "--server", server.url,
                         "--rate", "1Mbps", "--rtt", "5ms", "--json"])
    split = _ladon_run(["split", "--bundle", demo_bundle, "--image", photos[0], "--json"])
    assert _results(served) == _results(split)
    assert set(split["timings_ms"]) <= set(served["timings_ms"])
    timings = served["timings_ms"]
    assert timings["end_to_end"] >= sum(timings["device"].values()) + timings["upload"]
    assert timings["server_compute"] > 0 and served["link"]["overhead_bytes"] <= 256


def test_ladon_run_mobile_streams_a_folder(server, demo_bundle, photos, capsys):
    directory = os.path.dirname(photos[0])
    assert run_command(PROG, main, ["mobile", "--bundle", demo_bundle, "--images", directory, "--server",
                                    server.url, "--tasks", "cls"]) == 0
    out = capsys.readouterr().out
    assert all(os.path.basename(p) in out for p in photos)
    assert "median" in out and "p90" in out and "end_to_end" in out


CLIENT_WITHOUT_TORCH = """
import sys
for name in ("torch", "torchvision", "compressai", "tritonclient", "requests", "pytriton"):
    sys.modules[name] = None  # import fails: the device stack must not need them
from ladon_deploy.cli_support import run_command
from ladon_deploy.runtime.cli import PROG, main
code = run_command(PROG, main, sys.argv[1:])
assert not [m for m in sys.modules if m.split(".")[0] in ("torch", "onnx") and sys.modules[m] is not None]
sys.exit(code)
"""


def _device_run(python, pythonpath, argv, cwd):
    env = dict(os.environ, PYTHONPATH=pythonpath)
    return subprocess.run([python, "-c", CLIENT_WITHOUT_TORCH] + argv, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, universal_newlines=True, env=env, cwd=str(cwd), timeout=300)


def _edge_pythons():
    found = [("this", sys.executable)]
    for name in (".venv36", ".venv38"):
        python = os.path.join(edge_install.ROOT, name, "bin", "python")
        if os.path.exists(python):
            found.append((name, python))
    return found


@pytest.mark.parametrize("name,python", _edge_pythons())
def test_device_client_runs_without_torch_on_edge_pythons(server, demo_bundle, photos, references, tmp_path,
                                                          name, python):
    if name == "this":
        package = edge_install.ROOT
    else:
        package = edge_install.install_edge(tmp_path / "edge", python)
    result = _device_run(python, str(package), ["mobile", "--bundle", demo_bundle, "--image", photos[0],
                                                "--server", server.url, "--json"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert _results(json.loads(result.stdout)) == references[0]


def test_sigterm_stops_the_server_and_its_tritonserver(server):
    code = server.stop()
    assert code == 0 and not server.group_alive()
    with open(server.log_path) as handle:
        assert handle.read().rstrip().endswith("ladon-serve: stopped")


def test_kill9_mid_request_ends_the_client_with_one_line_and_a_restart_serves(demo_bundle, payloads, tmp_path):
    data = wire.pack(wire.unpack(_read(payloads[0]))._replace(tasks=("cls",)))
    first = ServeProcess(demo_bundle, ["--tasks", "cls"], log_path=str(tmp_path / "first.log"))
    port = first.ports[0]
    outcome = {}
    try:
        first.start()

        def slow_upload():
            try:
                # Paced to take 8 s on the wire, so the kill lands mid-upload.
                with InferenceClient(first.url, PacedLink(len(data) * 8 / 8.0, 0.0), timeout_s=60) as client:
                    outcome["reply"] = client.infer(data)
            except ServerError as exc:
                outcome["error"] = str(exc)

        sender = threading.Thread(target=slow_upload)
        started = time.monotonic()
        sender.start()
        time.sleep(1.5)
        first.kill()
        sender.join(60)
        assert not sender.is_alive() and time.monotonic() - started < 30
        assert "reply" not in outcome and "\n" not in outcome["error"]
        assert str(port) in outcome["error"]
    finally:
        first.kill()
    with ServeProcess(demo_bundle, ["--tasks", "cls"], port=port, log_path=str(tmp_path / "second.log")) as second:
        with InferenceClient(second.url, timeout_s=120) as client:
            assert "classification" in client.infer(data).document
        assert second.stop() == 0
