"""`ladon-serve --model-repository` on the python variant of a repository written from the demo bundle: the real
tritonserver bundled in nvidia-pytriton loads the ensemble; the device client's answers equal `ladon-run server`'s
documents (ServerStage.run(...).to_json(), what `ladon-run server --json` prints) on the same payloads, alone and
under concurrent clients; bad payloads get one-line refusals while valid ones keep succeeding; SIGTERM stops
tritonserver and its Python-backend stubs.

The server runs in its own process group on free 127.0.0.1 ports and is stopped by killing that group.
"""
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest

from ladon_deploy.bundle import open_bundle
from ladon_deploy.device import wire
from ladon_deploy.device.client import InferenceClient, ServerError
from ladon_deploy.device.stage import DeviceStage
from ladon_deploy.serve.repository import RepositoryOptions, write_repository
from ladon_deploy.server.stage import ServerStage
from images import make_image

pytest.importorskip("pytriton")

STARTUP_TIMEOUT_S = 300
REQUEST_TIMEOUT_S = 120


def without_timings(document):
    return {key: value for key, value in document.items() if key not in ("timings_ms", "server_compute_ms")}


@pytest.fixture(scope="module")
def payloads(demo_bundle, tmp_path_factory):
    """Wide images keep the latents small (7x103): the body runs in a tenth of a 416x416 image's time."""
    directory = tmp_path_factory.mktemp("repository-images")
    device = DeviceStage(open_bundle(demo_bundle))
    made = []
    for seed, (height, width, tasks) in enumerate([(30, 400, ("cls", "det", "seg")), (30, 400, ("cls", "seg")),
                                                   (26, 380, ("cls",)), (30, 400, ("seg",)),
                                                   (60, 300, ("cls", "det")), (30, 400, ("cls", "seg"))]):
        made.append(device.run(make_image(directory / ("%d.png" % seed), height, width, seed), tasks).payload)
    device.close()
    return made


@pytest.fixture(scope="module")
def expected(demo_bundle, payloads):
    stage = ServerStage(open_bundle(demo_bundle))
    documents = [stage.run(data).to_json() for data in payloads]
    stage.close()
    return documents


@pytest.fixture(scope="module")
def server(demo_bundle, tmp_path_factory):
    from ladon_deploy.serve.gate import free_port

    repository = str(tmp_path_factory.mktemp("python-repository") / "repo")
    write_repository(demo_bundle, repository, RepositoryOptions("python", max_batch=4, max_queue_delay_ms=20))
    port, grpc_port, metrics_port = free_port(), free_port(), free_port()
    process = subprocess.Popen([sys.executable, "-m", "ladon_deploy.serve.cli", "--model-repository", repository,
                                "--port", str(port), "--grpc-port", str(grpc_port), "--metrics-port",
                                str(metrics_port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               start_new_session=True, universal_newlines=True)
    lines = []

    def read() -> None:
        for line in process.stdout:
            lines.append(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while not any("ready" in line for line in lines):
        if process.poll() is not None or time.monotonic() > deadline:
            os.killpg(process.pid, signal.SIGKILL)
            pytest.fail("ladon-serve --model-repository did not get ready:\n" + "".join(lines))
        time.sleep(0.2)
    yield {"url": "http://127.0.0.1:%d" % port, "process": process, "lines": lines, "reader": reader,
           "repository": repository}
    psutil = pytest.importorskip("psutil")
    try:
        started = psutil.Process(process.pid).children(recursive=True)  # tritonserver has a group of its own
    except psutil.Error:
        started = []
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    for child in started:
        try:
            child.kill()
        except psutil.Error:
            pass


@pytest.mark.slow
def test_documents_equal_ladon_run_server(server, payloads, expected):
    with InferenceClient(server["url"], timeout_s=REQUEST_TIMEOUT_S) as client:
        for data, document in zip(payloads, expected):
            reply = client.infer(data)
            assert without_timings(reply.document) == document
            assert set(reply.document["timings_ms"]) == {"unframe", "entropy_decode", "dequantize", "body_and_heads"}
            assert reply.document["server_compute_ms"] > 0


@pytest.mark.slow
def test_concurrent_clients_are_batched_and_answered_alike(server, payloads, expected):
    light = [i for i, data in enumerate(payloads) if "det" not in wire.unpack(data).tasks]
    answers, errors = {}, []

    def client_loop(worker: int) -> None:
        try:
            with InferenceClient(server["url"], timeout_s=REQUEST_TIMEOUT_S) as client:
                for round_ in range(2):
                    index = light[(worker + round_) % len(light)]
                    answers[(worker, round_)] = (index, client.infer(payloads[index]).document)
        except Exception as exc:  # collected: a failure in a thread must fail the test
            errors.append(exc)

    threads = [threading.Thread(target=client_loop, args=(worker,)) for worker in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(REQUEST_TIMEOUT_S * 2)
    assert not errors and len(answers) == 16
    for index, document in answers.values():
        assert without_timings(document) == expected[index]


@pytest.mark.slow
def test_refused_payloads_get_one_line_and_serving_goes_on(server, payloads, expected, demo_bundle):
    header = wire.unpack(payloads[2])
    other_bundle = wire.pack(header._replace(bundle_id="deadbeef"))
    corrupted = bytearray(payloads[2])
    corrupted[30] ^= 0x55
    with InferenceClient(server["url"], timeout_s=REQUEST_TIMEOUT_S) as client:
        for data, message in ((b"not a payload at all, certainly", "not a Ladon payload"),
                              (other_bundle, "produced for bundle deadbeef, this bundle is %s"
                               % open_bundle(demo_bundle, verify=False).bundle_id[:8]),
                              (bytes(corrupted), "CRC mismatch"), (payloads[2][:-3], "truncated")):
            with pytest.raises(ServerError, match="HTTP 400") as refused:
                client.infer(data)
            assert message in str(refused.value) and len(str(refused.value).splitlines()) == 1
            assert without_timings(client.infer(payloads[2]).document) == expected[2]


@pytest.mark.slow
def test_ladon_run_mobile_against_it_prints_no_batch_size_it_does_not_have(server, demo_bundle, tmp_path, capsys):
    from ladon_deploy.cli_support import run_command
    from ladon_deploy.runtime.cli import PROG, main

    image = make_image(tmp_path / "strip.png", 30, 400, 11)
    code = run_command(PROG, main, ["mobile", "--bundle", demo_bundle, "--image", str(image), "--tasks", "cls",
                                    "--server", server["url"]])
    out = capsys.readouterr().out
    assert code == 0 and "(reported by the server)" in out and "batch of" not in out, out


@pytest.mark.slow
def test_sigterm_stops_tritonserver_and_its_stubs(server, payloads):
    psutil = pytest.importorskip("psutil")
    process = server["process"]
    with InferenceClient(server["url"], timeout_s=REQUEST_TIMEOUT_S) as client:
        client.infer(payloads[2])
    # What this server started (tritonserver runs in a process group of its own, its Python-backend stubs under
    # it): only these are looked at, so another server on the machine cannot disturb the test.
    started = psutil.Process(process.pid).children(recursive=True)
    names = " ".join(" ".join(child.cmdline()) for child in started)
    assert "tritonserver" in names and "triton_python_backend_stub" in names
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 0
    server["reader"].join(10)
    assert "ladon-serve: stopped" in "".join(server["lines"])
    _, alive = psutil.wait_procs(started, timeout=20)
    assert not alive, [child.pid for child in alive]
    with pytest.raises(ServerError, match="cannot connect"):
        InferenceClient(server["url"], timeout_s=5).infer(payloads[2])


@pytest.mark.slow
def test_a_repository_that_does_not_load_gets_tritons_reason_in_one_line(server, tmp_path):
    from ladon_deploy.serve.gate import free_port

    broken = str(tmp_path / "broken")
    shutil.copytree(server["repository"], broken, copy_function=os.link)
    os.remove(os.path.join(broken, "ladon_decode", "1", "entropy.npz"))
    ports = [str(free_port()) for _ in range(3)]
    finished = subprocess.run([sys.executable, "-m", "ladon_deploy.serve.cli", "--model-repository", broken,
                               "--port", ports[0], "--grpc-port", ports[1], "--metrics-port", ports[2]],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True,
                              timeout=STARTUP_TIMEOUT_S, start_new_session=True)
    assert finished.returncode == 2
    assert finished.stderr.strip().splitlines() == [
        "ladon-serve: error: tritonserver could not serve %s: failed to load 'ladon_decode' version 1: Internal: "
        "BundleError: bundle %s is missing entropy.npz" % (broken, os.path.join(broken, "ladon_decode", "1"))]
