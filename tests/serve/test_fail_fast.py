"""ladon-serve fails fast: a taken port (checked before Triton starts, or taken in a race and seen in tritonserver's
output) is one line and exit 2 within seconds; SIGTERM during start-up stops it; with --token-file the gate wants the
token and a refused payload is HTTP 400 over HTTP, an error document over gRPC.

Every server runs in its own process group on 127.0.0.1 and is stopped by its group id."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from ladon_deploy.cli_support import run_command
from ladon_deploy.serve import cli
from ladon_deploy.serve.process import ServeProcess

FAIL_WITHIN_S = 15.0
# The port check switched off, so that the port is found taken by tritonserver itself (the race the watch is for).
_WITHOUT_PORT_CHECK = ("import faulthandler, sys\n"
                       "faulthandler.dump_traceback_later(90, exit=True)  # a hang shows where it hangs\n"
                       "from ladon_deploy.serve import cli, listeners\n"
                       "listeners.check_listeners = lambda planned: None\n"
                       "sys.exit(cli.run_command(cli.PROG, cli.main, sys.argv[1:]))\n")


def _hold_port_after_a_free_one(offset):
    """(port, a listening socket on port + offset): the base port itself and the others free now."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        if port + 3 > 65535:
            continue
        busy = socket.socket()
        try:
            busy.bind(("127.0.0.1", port + offset))
        except OSError:
            busy.close()
            continue
        busy.listen(1)
        return port, busy
    pytest.fail("no free pair of ports found")


def _run_serve(argv, script=None, timeout_s=120.0):
    command = [sys.executable] + (["-c", script] if script else ["-m", "ladon_deploy.serve.cli"]) + argv
    started = time.monotonic()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        out, err = process.communicate(timeout=timeout_s)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
    return process.returncode, out.decode(), err.decode(), time.monotonic() - started


def _group_gone(pid, timeout_s=30.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.2)
    return False


@pytest.mark.parametrize("offset,what", [(1, "gRPC (--grpc-port)"), (2, "metrics (--metrics-port)")])
def test_a_taken_default_port_is_one_line_and_exit_2_within_seconds(demo_bundle, offset, what):
    port, busy = _hold_port_after_a_free_one(offset)
    with busy:
        code, out, err, seconds = _run_serve(["--bundle", demo_bundle, "--port", str(port)])
    lines = [line for line in (out + err).splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, (code, out, err)
    assert lines[0] == "ladon-serve: error: cannot listen on 127.0.0.1:%d for %s: in use (another server?)" % (
        port + offset, what)
    assert seconds < FAIL_WITHIN_S


@pytest.mark.slow
@pytest.mark.parametrize("offset", [1, 2])
def test_a_port_taken_after_the_check_is_seen_in_tritonservers_output(demo_bundle, offset):
    port, busy = _hold_port_after_a_free_one(offset)
    with busy:
        code, out, err, seconds = _run_serve(["--bundle", demo_bundle, "--port", str(port)], _WITHOUT_PORT_CHECK)
    lines = [line for line in (out + err).splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, (code, out, err)
    assert lines[0].startswith("ladon-serve: error: tritonserver could not listen") and "in use" in lines[0]
    assert seconds < FAIL_WITHIN_S + 10  # Triton itself starts here; without the watch this took 120 s


def test_clashing_ports_and_bad_token_files_are_refused_before_anything_starts(demo_bundle, tmp_path, capsys):
    def one_line(argv, pattern):
        assert run_command(cli.PROG, cli.main, argv) == 2
        lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        assert len(lines) == 1 and pattern in lines[0], lines

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    one_line(["--bundle", demo_bundle, "--port", str(port), "--metrics-port", str(port)],
             "HTTP (--port) and metrics (--metrics-port) are both port %d" % port)
    one_line(["--bundle", demo_bundle, "--port", "65535"], "leaves no room for the default gRPC and metrics ports")
    short = tmp_path / "short"
    short.write_text("abc\n")
    one_line(["--bundle", demo_bundle, "--token-file", str(short)], "use at least 16")
    spaced = tmp_path / "spaced"
    spaced.write_text("a token with spaces inside\n")
    one_line(["--bundle", demo_bundle, "--token-file", str(spaced)], "printable ASCII without spaces")
    one_line(["--bundle", demo_bundle, "--token-file", str(tmp_path / "none")], "cannot read --token-file")


def test_every_command_has_the_same_version_option(capsys):
    from ladon_deploy import __version__
    from ladon_deploy.bench import cli as bench_cli
    from ladon_deploy.engines import cli as build_cli
    from ladon_deploy.engines import doctor_cli
    from ladon_deploy.eval import cli as eval_cli
    from ladon_deploy.export import cli as export_cli
    from ladon_deploy.runtime import cli as run_cli

    for module in (cli, bench_cli, build_cli, doctor_cli, eval_cli, export_cli, run_cli):
        with pytest.raises(SystemExit) as done:
            module.build_parser().parse_args(["--version"])
        assert done.value.code == 0
        assert capsys.readouterr().out.strip() == "%s %s" % (module.PROG, __version__)


@pytest.mark.slow
def test_sigterm_during_start_up_stops_it(demo_bundle):
    server = ServeProcess(demo_bundle)
    process = subprocess.Popen(server.command(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               start_new_session=True)
    try:
        time.sleep(4.0)  # inside start-up: the ONNX copies, the sessions or tritonserver's own start
        assert process.poll() is None
        stopped_at = time.monotonic()
        os.kill(process.pid, signal.SIGTERM)
        out, _ = process.communicate(timeout=60)
        seconds = time.monotonic() - stopped_at
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
    assert process.returncode == 0, out
    assert out.decode().strip().splitlines()[-1] in ("ladon-serve: stopped before it was ready", "ladon-serve: stopped")
    assert seconds < 30 and _group_gone(process.pid)


def _post(url, data, token=None):
    headers = {"Inference-Header-Content-Length": "0"}
    if token:
        headers["Authorization"] = "Bearer " + token
    request = urllib.request.Request(url, data=data, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=120) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def _device_commands_send_the_token(url, bundle, tmp_path, token_file, capsys):
    """`ladon-run mobile --server` and `ladon-bench live` with --token-file are answered; without it, one line
    about the 401 and exit 2."""
    from ladon_deploy.bench import cli as bench_cli
    from ladon_deploy.runtime import cli as run_cli

    def run(command, argv):
        capsys.readouterr()
        code = run_command(command.PROG, command.main, argv)
        out, err = capsys.readouterr()
        return code, out, err

    mobile = ["mobile", "--bundle", bundle, "--image", str(tmp_path / "photo.png"), "--server", url, "--json"]
    code, out, err = run(run_cli, mobile + ["--token-file", token_file])
    assert code == 0 and json.loads(out)["bundle_id"], err
    code, out, err = run(run_cli, mobile)
    assert code == 2 and out == "" and err.count("\n") == 1, err
    assert "HTTP 401" in err and "--token-file" in err
    wrong = tmp_path / "wrong-token"
    wrong.write_text("not-the-servers-token-0123456789\n")
    code, out, err = run(run_cli, mobile + ["--token-file", str(wrong)])
    assert code == 2 and "HTTP 401" in err and "is not this server's" in err, err

    (tmp_path / "images").mkdir()
    os.link(str(tmp_path / "photo.png"), str(tmp_path / "images" / "photo.png"))
    live = ["live", "--bundle", bundle, "--images", str(tmp_path / "images"), "--server", url, "--repeats", "1",
            "--rate", "100Mbps"]
    code, out, err = run(bench_cli, live + ["--out", str(tmp_path / "live.json"), "--token-file", token_file])
    assert code == 0 and (tmp_path / "live.json").exists(), err
    code, out, err = run(bench_cli, live + ["--out", str(tmp_path / "refused.json")])
    assert code == 2 and "HTTP 401" in err and not (tmp_path / "refused.json").exists(), err


@pytest.mark.slow
def test_token_server_answers_refused_payloads_per_request(demo_bundle, tmp_path, capsys):
    import numpy as np
    import tritonclient.grpc as triton_grpc

    from ladon_deploy.bundle import open_bundle
    from ladon_deploy.device.stage import DeviceStage
    from images import make_image

    token = "t0ken-for-the-fail-fast-tests-0123456789"
    token_file = tmp_path / "token"
    token_file.write_text(token + "\n")
    make_image(tmp_path / "photo.png", 120, 160, 7)
    payload = DeviceStage(open_bundle(demo_bundle)).run(str(tmp_path / "photo.png"), ("cls",)).payload
    log = str(tmp_path / "serve.log")
    with ServeProcess(demo_bundle, ["--token-file", str(token_file)], log_path=log) as server:
        infer = server.url + "/v2/models/ladon/infer"
        assert _post(infer, payload)[0] == 401
        status, body = _post(infer, b"not a payload", token)
        assert status == 400 and "payload is truncated" in json.loads(body.decode())["error"]
        status, body = _post(infer, payload, token)
        assert status == 200 and b'"bundle_id"' in body
        # gRPC is not behind the gate: with a token it listens on loopback only, and answers a refused payload with
        # the error document inside `result` (status OK), as the model itself does.
        client = triton_grpc.InferenceServerClient("127.0.0.1:%d" % server.ports[1])
        tensor = triton_grpc.InferInput("payload", [1, 1], "BYTES")
        tensor.set_data_from_numpy(np.array([[b"not a payload"]], dtype=np.object_))
        document = json.loads(client.infer("ladon", [tensor]).as_numpy("result")[0, 0])
        assert "payload is truncated" in document["error"]
        _device_commands_send_the_token(server.url, demo_bundle, tmp_path, str(token_file), capsys)
        server.stop()
    with open(log) as handle:
        text = handle.read()
    assert "token required" in text and "Failed to initialize NVML" not in text
