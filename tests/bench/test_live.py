"""`ladon-bench live` against a real `ladon-serve` on loopback: each request measured next to the analytic figure."""
import json

import pytest

from ladon_deploy.cli_support import run_command


@pytest.mark.slow
def test_live_against_ladon_serve_on_loopback(demo_bundle, tmp_path, capsys):
    pytest.importorskip("pytriton")
    from images import make_image

    from ladon_deploy.bench.cli import PROG, main
    from ladon_deploy.serve.process import ServeProcess

    images = tmp_path / "images"
    images.mkdir()
    make_image(str(images / "street.png"), 240, 320, seed=5)
    out = tmp_path / "live.json"
    # --max-batch 1: one request at a time, so the server's reported compute is this request's alone.
    with ServeProcess(demo_bundle, ["--max-batch", "1"], log_path=str(tmp_path / "serve.log")) as server:
        code = run_command(PROG, main, ["live", "--bundle", demo_bundle, "--images", str(images), "--server",
                                        server.url, "--rate", "200kbps", "--rtt", "20ms", "--repeats", "2",
                                        "--timeout", "120", "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    result = json.loads(out.read_text())
    assert len(result["requests"]) == 2
    for request in result["requests"]:
        transfer_ms = request["request_bytes"] * 8 / 200e3 * 1e3 + 20.0
        assert request["analytic_ms"] == pytest.approx(request["device_ms"] + transfer_ms +
                                                       request["server_compute_ms"])
        # The paced link cannot deliver faster than the formula; HTTP and Python add a little on top.
        assert request["measured_ms"] >= request["device_ms"] + transfer_ms
        # The ratio's upper side is the machine's load (the figure itself is what ladon-bench live reports); a
        # unit slip (ms against s) would still be caught.
        assert 0.95 <= request["measured_over_analytic"] <= 100.0
    assert "measured / analytic end-to-end" in captured.out
