"""Several bundles behind one ladon-serve (one architecture at two operating points), over HTTP and over radio
frames: each payload answered by the bundle it names, batches of mixed bundles in every order, and the device
choosing the bundle per image from its link budget."""
import itertools
import json
import os
import shutil
import socket
import sys

import pytest

from cli_helpers import command_runner
from images import make_image
from ladon_deploy.bundle import open_bundle
from ladon_deploy.device.client import InferenceClient
from ladon_deploy.device.pacing import PacedLink
from ladon_deploy.device.stage import DeviceStage
from ladon_deploy.runtime.cli import PROG, main
from ladon_deploy.serve.process import ServeProcess
from ladon_deploy.server.stage import ServerStage

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "engines"))
from tiny_bundle import make_tiny_bundle, write_encoder, write_manifest  # noqa: E402

run, one_line_error = command_runner(PROG, main)


@pytest.fixture(scope="module")
def two_bundles(tmp_path_factory):
    """The tiny bundle and a copy whose encoder is scaled down: another operating point of the same architecture
    (another bundle id, smaller latents, smaller payloads)."""
    root = tmp_path_factory.mktemp("betas")
    large = make_tiny_bundle(root / "b-large")
    small = str(root / "b-small")
    shutil.copytree(large, small)
    write_encoder(os.path.join(small, "encoder.onnx"), scale=0.05)
    write_manifest(small)
    return large, small


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    directory = tmp_path_factory.mktemp("photos")
    return [make_image(str(directory / ("p%d.png" % i)), 180 + 40 * i, 240, seed=i) for i in range(3)]


@pytest.fixture(scope="module")
def payloads(two_bundles, photos):
    found = {}
    for directory in two_bundles:
        stage = DeviceStage(open_bundle(directory), threads=1)
        found[directory] = [stage.run(path, ("cls",)).payload for path in photos]
    return found


@pytest.fixture(scope="module")
def references(two_bundles, payloads):
    found = {}
    for directory in two_bundles:
        stage = ServerStage(open_bundle(directory), threads=1)
        found[directory] = [stage.run(data).to_json() for data in payloads[directory]]
    return found


def _comparable(document):
    return {key: document[key] for key in ("bundle_id", "classification", "original_size", "resized_size")}


def test_a_mixed_batch_is_answered_row_by_row_in_every_order(two_bundles, payloads, references, tmp_path):
    from ladon_deploy.serve.server import BatchedServerStage, BundleDispatch

    large, small = two_bundles
    dispatch = BundleDispatch([BatchedServerStage(open_bundle(d), threads=1, workdir=str(tmp_path / str(i)))
                               for i, d in enumerate(two_bundles)])
    try:
        rows = [(large, 0), (small, 1), (large, 2), (small, 0)]
        garbage = b"LDN\x01\xff\xff\xff\xff" + bytes(40)
        for order in itertools.permutations(range(len(rows) + 1)):
            batch = [garbage if i == len(rows) else payloads[rows[i][0]][rows[i][1]] for i in order]
            documents, _ = dispatch.run_rows(batch)
            for position, i in enumerate(order):
                if i == len(rows):
                    assert "ffffffff" in documents[position]["error"]
                else:
                    expected = references[rows[i][0]][rows[i][1]]
                    assert _comparable(documents[position]) == _comparable(expected)
    finally:
        dispatch.close()


def _free_udp_port():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow
def test_one_server_answers_both_bundles_over_http_and_frames(two_bundles, payloads, references, photos, tmp_path,
                                                             capsys):
    pytest.importorskip("pytriton", reason="ladon-serve needs nvidia-pytriton (the serve extra)")
    large, small = two_bundles
    frames_port = _free_udp_port()
    key = tmp_path / "frames.key"
    key.write_text("a-shared-frame-key-of-more-than-sixteen-bytes\n")
    with ServeProcess(large, ["--bundle", small, "--frames-port", str(frames_port), "--key-file", str(key)],
                      log_path=str(tmp_path / "serve.log")) as server:
        with InferenceClient(server.url, PacedLink(None, 0.0), timeout_s=60) as client:
            for directory in two_bundles:
                for data, expected in zip(payloads[directory], references[directory]):
                    assert _comparable(client.infer(data).document) == _comparable(expected)
        # The device holds both bundles: a generous budget sends the more accurate (smaller beta unknown here,
        # so the order given), a budget only the small payload meets sends the other one.
        common = ["mobile", "--bundle", large, "--bundle", small, "--tasks", "cls", "--server",
                  "udp://127.0.0.1:%d" % frames_port, "--link", "lora-sf5-bw500", "--key-file", str(key), "--json"]
        code, out, err = run(common + ["--image", photos[0], "--budget", "1h"], capsys)
        assert code == 0, err
        generous = json.loads(out)
        assert generous["bundle"]["directory"] == large and generous["bundle_id"] == references[large][0]["bundle_id"]
        assert _comparable(generous) == _comparable(references[large][0])
        large_bytes = len(payloads[large][0])
        small_bytes = len(payloads[small][0])
        assert small_bytes < large_bytes
        from ladon_deploy.link import operating_point, profiles, regions
        profile, region = profiles.get_profile("lora-sf5-bw500"), regions.get_region(None)
        # a budget between the two payloads' times on air (compute is milliseconds for the tiny bundle)
        budget = (operating_point.transfer_seconds(profile, region, small_bytes, 0.1, True, True)
                  + operating_point.transfer_seconds(profile, region, large_bytes, 0.1, True, True)) / 2
        if budget - operating_point.transfer_seconds(profile, region, small_bytes, 0.1, True, True) < 0.2:
            pytest.skip("the two payloads are too close in time on air for a budget between them")
        code, out, err = run(common + ["--image", photos[0], "--budget", "%gs" % budget], capsys)
        assert code == 0, err
        tight = json.loads(out)
        assert tight["bundle"]["directory"] == small and "chose %s" % small in tight["operating_point"]
        assert _comparable(tight) == _comparable(references[small][0])
        # frames without the key are dropped by the receiver: the device gets no answer, one line, exit 2
        code, out, err = run([a for a in common if a not in ("--key-file", str(key))] +
                             ["--image", photos[1], "--budget", "1h", "--timeout", "3s"], capsys)
        one_line_error(code, err, "no answer from the frame receiver")
