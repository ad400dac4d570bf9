"""The gate in front of Triton, against a scripted upstream on loopback (no Triton): a refused payload becomes a
per-request HTTP 400 as KServe clients expect, every other answer is relayed as it is, and the optional shared token
is required everywhere but the health checks."""
import http.server
import json
import struct
import threading
import urllib.error
import urllib.request

import pytest

from ladon_deploy.serve.gate import open_gate, refused_payload_error

TOKEN = b"s3cret-token-for-the-gate-tests"
GOOD = {"bundle_id": "b62e8860", "tasks": ["cls"]}
BAD = {"error": "payload CRC mismatch: corrupted in transit", "error_type": "PayloadError"}


def _json_answer(documents):
    return json.dumps({"model_name": "ladon", "outputs": [
        {"name": "result", "datatype": "BYTES", "shape": [len(documents), 1],
         "data": [json.dumps(d) for d in documents]}]}).encode("utf-8"), None


def _binary_answer(documents, mask=b""):
    rows = [json.dumps(d).encode("utf-8") for d in documents]
    result = b"".join(struct.pack("<I", len(r)) + r for r in rows)
    outputs = []
    binary = b""
    if mask:  # an output before `result`: its bytes come first in the binary section
        masks = struct.pack("<I", len(mask)) + mask
        outputs.append({"name": "mask", "datatype": "BYTES", "shape": [1, 1],
                        "parameters": {"binary_data_size": len(masks)}})
        binary += masks
    outputs.append({"name": "result", "datatype": "BYTES", "shape": [len(rows), 1],
                    "parameters": {"binary_data_size": len(result)}})
    header = json.dumps({"model_name": "ladon", "outputs": outputs}).encode("utf-8")
    return header + binary + result, str(len(header))


class _Upstream(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self):
        self.answer = (b"{}", None)
        self.requests = 0

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_args):
                pass

            def do_POST(handler):
                handler.rfile.read(int(handler.headers.get("Content-Length", "0")))
                self._answer(handler)

            def do_GET(handler):
                self._answer(handler)

        super().__init__(("127.0.0.1", 0), Handler)

    def _answer(self, handler):
        self.requests += 1
        body, header_length = self.answer
        handler.send_response(200)
        handler.send_header("Content-Length", str(len(body)))
        if header_length is not None:
            handler.send_header("Inference-Header-Content-Length", header_length)
        handler.end_headers()
        handler.wfile.write(body)


@pytest.fixture
def pair():
    upstream = _Upstream()
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    gates = []

    def gate(token=None):
        opened = open_gate("127.0.0.1", 0, 1 << 20, 5.0, 5.0, token)
        opened.upstream = upstream.server_address
        opened.start()
        gates.append(opened)
        return "http://127.0.0.1:%d" % opened.server_address[1]

    try:
        yield upstream, gate
    finally:
        for opened in gates:
            opened.stop()
        upstream.shutdown()
        upstream.server_close()


def _call(url, data=None, headers=None):
    request = urllib.request.Request(url, data=data, headers=dict(headers or {}), method="POST" if data else "GET")
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, answer.read(), dict(answer.headers)
    except urllib.error.HTTPError as error:
        return error.code, error.read(), dict(error.headers)


@pytest.mark.parametrize("make", [_json_answer, _binary_answer])
def test_a_refused_payload_becomes_http_400_with_its_error(pair, make):
    upstream, gate = pair
    url = gate() + "/v2/models/ladon/infer"
    upstream.answer = make([BAD])
    status, body, _ = _call(url, b"payload")
    assert status == 400 and json.loads(body.decode()) == {"error": BAD["error"]}
    upstream.answer = make([GOOD])
    status, body, _ = _call(url, b"payload")
    assert status == 200 and body == upstream.answer[0]  # relayed byte for byte


def test_only_answers_whose_every_row_is_refused_become_400(pair):
    upstream, gate = pair
    url = gate()
    upstream.answer = _json_answer([GOOD, BAD])  # a client's multi-row request: rows keep their own documents
    assert _call(url + "/v2/models/ladon/infer", b"p")[0] == 200
    upstream.answer = _json_answer([BAD])
    assert _call(url + "/v2/models/ladon/versions/1/infer", b"p")[0] == 400
    assert _call(url + "/v2/models/ladon", b"p")[0] == 200  # not an inference: relayed
    assert _call(url + "/v2/models/ladon/infer")[0] == 200  # a GET is not an inference either


def test_refused_payload_error_reads_both_encodings_and_ignores_the_rest():
    assert refused_payload_error(*reversed(_binary_answer([BAD], mask=b"\x89PNG"))) == BAD["error"]
    assert refused_payload_error(*reversed(_binary_answer([GOOD], mask=b"\x89PNG"))) is None
    assert refused_payload_error(None, _json_answer([BAD, BAD])[0]) == BAD["error"]
    assert refused_payload_error(None, _json_answer([])[0]) is None
    assert refused_payload_error(None, b"not json") is None
    assert refused_payload_error("5", b"{}") is None
    assert refused_payload_error(None, _json_answer([{"error": 3}])[0]) is None


def test_the_token_is_required_everywhere_but_the_health_checks(pair):
    upstream, gate = pair
    url = gate(TOKEN)
    upstream.answer = _json_answer([GOOD])
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Bearer " + TOKEN.decode()[:-1]},
                    {"Authorization": TOKEN.decode()}, {"Authorization": "Bearer " + TOKEN.decode() + "x"}):
        status, body, answer_headers = _call(url + "/v2/models/ladon/infer", b"p", headers)
        assert status == 401 and "Bearer" in answer_headers.get("WWW-Authenticate", ""), headers
        assert "Authorization" in json.loads(body.decode())["error"]
        assert _call(url + "/v2/models/ladon", None, headers)[0] == 401
    before = upstream.requests
    status, _, _ = _call(url + "/v2/models/ladon/infer", b"p", {"Authorization": "Bearer " + TOKEN.decode()})
    assert status == 200 and upstream.requests == before + 1  # refused requests never reached Triton
    for path in ("/v2/health/ready", "/v2/health/live", "/v2/health/ready?x=1"):
        assert _call(url + path)[0] == 200
    # Without a token the gate asks for none.
    assert _call(gate() + "/v2/models/ladon/infer", b"p")[0] == 200
