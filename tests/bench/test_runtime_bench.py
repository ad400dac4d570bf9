"""The runtime benchmark's interleaving and spread (its numbers themselves are benchmark output, not tests)."""
import pytest

from ladon_deploy.bench.runtime_bench import interleave, ratio_spread


def test_interleave_alternates_which_pipeline_goes_first_and_drops_warmup():
    calls = []

    def side(name, seconds):
        def run():
            calls.append(name)
            return {"total": seconds[len([c for c in calls if c == name]) - 1]}
        return run

    ours, theirs = interleave(side("ours", [9.0, 1.0, 2.0, 3.0]), side("theirs", [9.0, 10.0, 20.0, 30.0]), 3, 1)
    assert calls == ["ours", "theirs", "theirs", "ours", "ours", "theirs", "theirs", "ours"]
    assert ours == {"total": [1.0, 2.0, 3.0]} and theirs == {"total": [10.0, 20.0, 30.0]}


def test_ratio_spread_per_pair_and_of_medians():
    spread = ratio_spread([1.0, 2.0, 6.0, 3.0], [10.0, 10.0, 20.0, 5.0])
    assert spread["median_of_medians"] == pytest.approx(2.5 / 10.0)
    # per-pair ratios 0.1, 0.2, 0.3, 0.6
    assert spread["median"] == pytest.approx(0.25)
    assert (spread["min"], spread["max"]) == (pytest.approx(0.1), pytest.approx(0.6))
    assert spread["q1"] == pytest.approx(0.175) and spread["q3"] == pytest.approx(0.375)


def test_profile_names_every_node_of_the_encoder_once(demo_bundle):
    import numpy as np
    import onnx

    from ladon_deploy.bench.runtime_bench import profile_encoder
    from ladon_deploy.bundle import open_bundle

    path = open_bundle(demo_bundle, verify=False).path("encoder")
    rows = profile_encoder(path, 1, np.zeros((1, 3, 64, 64), np.float32), 2)
    assert [r[2] for r in rows] == sorted((r[2] for r in rows), reverse=True) and all(r[2] >= 0 for r in rows)
    assert len({r[1] for r in rows}) == len(rows)
    ops = {r[0] for r in rows}
    graph_ops = {n.op_type for n in onnx.load(path).graph.node}
    # ONNX Runtime's fused and reordered nodes, or the graph's own: the convolutions and the GDNs' Abs and Div are seen
    assert {"Abs", "Div"} <= ops and ({"Conv", "NchwcConv"} & ops) and {"Abs", "Div", "Conv"} <= graph_ops
