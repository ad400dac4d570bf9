"""The device client and its link pacing, without a server (tests/serve/test_serve.py runs them against Triton)."""
import ast
import json
import os
import socket
import struct
import sys
import threading
import time

import pytest

from ladon_deploy.device import client as client_module
from ladon_deploy.device import pacing as pacing_module
from ladon_deploy.device.client import (InferenceClient, ServerError, parse_answer, parse_server_url, percentile,
                                        request_head)
from ladon_deploy.device.pacing import PacedLink, TokenBucket, chunk_bytes


def test_server_urls():
    assert parse_server_url("http://laptop:8000") == ("laptop", 8000)
    assert parse_server_url("http://10.0.0.2:9000/") == ("10.0.0.2", 9000)
    assert parse_server_url("laptop") == ("laptop", 8000)
    for bad in ("https://laptop:8000", "http://laptop:80x", "http://laptop:8000/v2", "http://", "http://h:70000"):
        with pytest.raises(ServerError):
            parse_server_url(bad)


def test_request_overhead_is_within_256_bytes():
    # A long host name and a six-digit body length: still far below the budget.
    head = request_head("jetson-server.example.local", 65535, 999999)
    assert len(head) <= 256
    assert head.startswith(b"POST /v2/models/ladon/infer HTTP/1.1\r\n") and head.endswith(b"\r\n\r\n")
    assert b"Inference-Header-Content-Length: 0\r\n" in head and b"Content-Length: 999999\r\n" in head


def _binary_answer(document):
    result = json.dumps(document).encode("utf-8")
    element = struct.pack("<I", len(result)) + result
    header = json.dumps({"model_name": "ladon", "outputs": [
        {"name": "result", "datatype": "BYTES", "shape": [1, 1],
         "parameters": {"binary_data_size": len(element)}}]}).encode("utf-8")
    return str(len(header)), header + element


def test_answers_binary_json_and_refusals():
    length, body = _binary_answer({"classification": {"k": 1}})
    assert parse_answer(200, length, body) == {"classification": {"k": 1}}
    as_json = json.dumps({"outputs": [{"name": "result", "datatype": "BYTES", "shape": [1, 1],
                                       "data": [json.dumps({"tasks": ["cls"]})]}]}).encode("utf-8")
    assert parse_answer(200, None, as_json) == {"tasks": ["cls"]}
    with pytest.raises(ServerError, match=r"HTTP 400\): unexpected inference input"):
        parse_answer(400, None, b'{"error":"unexpected inference input \'x\'"}')
    length, body = _binary_answer({"error": "payload CRC mismatch", "error_type": "PayloadError"})
    with pytest.raises(ServerError, match="refused the payload: payload CRC mismatch"):
        parse_answer(200, length, body)
    with pytest.raises(ServerError, match="not a KServe v2 response"):
        parse_answer(200, None, b"<html>")


def test_token_bucket_releases_bytes_at_the_rate():
    now = [100.0]
    waits = []

    def sleep(seconds):
        waits.append(seconds)
        now[0] += seconds

    bucket = TokenBucket(8000.0, clock=lambda: now[0], sleep=sleep)  # 1000 bytes/s
    bucket.wait_for(250)
    assert now[0] == pytest.approx(100.25)
    now[0] += 1.0  # idle time does not become a burst beyond what the rate allowed since the start
    bucket.wait_for(1000)
    assert now[0] == pytest.approx(101.25)
    bucket.wait_for(500)
    assert now[0] == pytest.approx(101.75)
    assert chunk_bytes(37500) == 64 and chunk_bytes(1e9) == 1400


def test_paced_send_over_a_socket_takes_what_the_link_would():
    sender, receiver = socket.socketpair()
    received = []
    reader = threading.Thread(target=lambda: received.append(b"".join(iter(lambda: receiver.recv(65536), b""))))
    reader.start()
    data = os.urandom(3000)
    link = PacedLink(37500.0, 0.020)
    started = time.perf_counter()
    link.wait_half_rtt()
    link.send(sender, data)
    link.wait_half_rtt()
    elapsed = time.perf_counter() - started
    sender.close()
    reader.join(10)
    receiver.close()
    expected = link.expected_upload_seconds(len(data))
    assert received == [data]
    assert expected == pytest.approx(3000 * 8 / 37500.0 + 0.020)
    # Never early; how late depends on the machine's load (python -m ladon_deploy.bench.pacing_bench measures it).
    assert expected <= elapsed <= expected + 60.0


def test_unreachable_and_silent_servers_end_with_one_line():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(ServerError, match="cannot connect to http://127.0.0.1:%d" % port):
        InferenceClient("http://127.0.0.1:%d" % port, timeout_s=5).infer(b"x" * 40)
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        url = "http://127.0.0.1:%d" % silent.getsockname()[1]
        started = time.monotonic()
        with pytest.raises(ServerError, match="no answer from %s within 1 s" % url):
            InferenceClient(url, timeout_s=1).infer(b"x" * 40)
        assert time.monotonic() - started < 5


def test_percentile_interpolates_like_numpy():
    values = [5.0, 1.0, 4.0, 2.0, 3.0]
    assert percentile(values, 50) == 3.0 and percentile(values, 90) == pytest.approx(4.6)
    assert percentile([7.0], 99) == 7.0


def test_client_and_pacing_use_the_standard_library_only():
    allowed_own = {"ladon_deploy.errors", "ladon_deploy.device.pacing"}
    for module in (client_module, pacing_module):
        tree = ast.parse(open(module.__file__).read())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                assert name in allowed_own or top in sys.stdlib_module_names, (module.__name__, name)


@pytest.mark.parametrize("argv,pattern", [
    (["--image", "x.jpg"], "needs --image FILE and --out FILE (or --server URL)"),
    (["--image", "x.jpg", "--out", "p.ldn", "--rate", "37.5kbps"], "--rate needs --server URL"),
    (["--image", "x.jpg", "--out", "p.ldn", "--rtt", "20ms"], "--rtt needs --server URL"),
    (["--images", "photos", "--out", "p.ldn"], "--images needs --server URL"),
    (["--server", "http://127.0.0.1:9", "--image", "x.jpg", "--images", "photos"], "one of --image FILE or --images"),
    (["--server", "http://127.0.0.1:9", "--image", "x.jpg", "--rate", "100"], "has no unit"),
])
def test_mobile_server_options_are_checked_before_any_work(argv, pattern, capsys, tmp_path):
    from ladon_deploy.cli_support import run_command
    from ladon_deploy.runtime.cli import PROG, main

    code = run_command(PROG, main, ["mobile", "--bundle", str(tmp_path / "no-bundle")] + argv)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and pattern in lines[0], lines


def test_a_server_that_goes_away_ends_the_client_with_one_line():
    """First connection: one answer kept alive, then closed; every later connection is closed unanswered (a server
    dying under load). The client's retry on a new connection must end in ServerError, not an internal error."""
    length, body = _binary_answer({"tasks": ["cls"]})
    answer = ("HTTP/1.1 200 OK\r\nContent-Length: %d\r\nInference-Header-Content-Length: %s\r\n\r\n"
              % (len(body), length)).encode("ascii") + body
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    listener.settimeout(10)

    def serve():
        try:
            first, _ = listener.accept()
            first.recv(65536)
            first.sendall(answer)
            time.sleep(0.2)
            first.close()
            later, _ = listener.accept()  # the client's one retry
            later.close()
        except OSError:
            pass

    thread = threading.Thread(target=serve)
    thread.start()
    url = "http://127.0.0.1:%d" % listener.getsockname()[1]
    with InferenceClient(url, timeout_s=5) as client:
        assert client.infer(b"x" * 40).document == {"tasks": ["cls"]}
        time.sleep(0.4)
        with pytest.raises(ServerError, match="closed before any answer"):
            client.infer(b"x" * 40)
    thread.join(10)
    listener.close()


def test_mask_requests_carry_a_header_and_answers_give_each_output():
    header = client_module.mask_request_header(1234)
    parsed = json.loads(header.decode("ascii"))
    assert parsed["parameters"] == {"mask": True}
    assert parsed["inputs"] == [{"name": "payload", "shape": [1, 1], "datatype": "BYTES",
                                 "parameters": {"binary_data_size": 1238}}]
    assert [o["name"] for o in parsed["outputs"]] == ["result", "mask"]
    head = request_head("laptop", 8000, len(header) + 4 + 1234, header_length=len(header))
    assert b"Inference-Header-Content-Length: %d\r\n" % len(header) in head
    # The mask listed first: each output is read at its own offset of the binary section.
    result = json.dumps({"tasks": ["seg"]}).encode("utf-8")
    png = b"\x89PNG\r\n\x1a\n" + bytes(range(40))
    elements = [struct.pack("<I", len(png)) + png, struct.pack("<I", len(result)) + result]
    answer = json.dumps({"outputs": [
        {"name": "mask", "datatype": "BYTES", "shape": [1, 1], "parameters": {"binary_data_size": len(elements[0])}},
        {"name": "result", "datatype": "BYTES", "shape": [1, 1],
         "parameters": {"binary_data_size": len(elements[1])}}]}).encode("utf-8")
    document, outputs = client_module.parse_outputs(200, str(len(answer)), answer + b"".join(elements))
    assert document == {"tasks": ["seg"]} and outputs["mask"] == png
