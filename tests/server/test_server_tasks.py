"""The server stage refuses task names it does not know, in one line, instead of dropping them."""
import numpy as np
import pytest

from ladon_deploy.bundle import open_bundle
from ladon_deploy.device import wire
from ladon_deploy.errors import LadonError
from ladon_deploy.server.stage import ServerStage


@pytest.fixture(scope="module")
def classifying_server(demo_bundle):
    stage = ServerStage(open_bundle(demo_bundle), tasks=["cls"])
    yield stage
    stage.close()


def _payload(stage):
    """A 32x32 image's payload (latent 24x7x7 of zero symbols) for the demo bundle."""
    channels = int(stage.bundle.manifest["bottleneck_channels"])
    body = stage.coder.encode(np.zeros((channels, 7, 7), np.int32))
    return wire.pack(wire.Payload(stage.bundle.bundle_id, (channels, 7, 7), (32, 32), (32, 32), ("cls",), body))


def test_known_tasks_run(classifying_server):
    result = classifying_server.run(_payload(classifying_server), tasks=["cls"])
    assert set(result.outputs) == {"cls"}
    assert result.outputs["cls"]["probabilities"].shape == (1, 1000)


@pytest.mark.parametrize("tasks, named", [(["cls", "bogus"], "bogus"), (["CLS"], "CLS"), (["cls", "det "], "det ")])
def test_unknown_task_names_are_refused_not_dropped(classifying_server, tasks, named):
    with pytest.raises(LadonError, match="unknown task") as info:
        classifying_server.run(_payload(classifying_server), tasks=tasks)
    message = str(info.value)
    assert named in message and "\n" not in message
