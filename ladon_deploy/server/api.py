"""The server half for Python code: `Server(bundle_dir).run(payload)` -> the result document.

The document is the dict `ladon-run server --json` prints: bundle_id, sizes, tasks, classification, detection,
segmentation (pixel counts; with mask_out the paletted PNG is written there), engines, timings_ms.
`ladon_deploy.Server` imports this module on first use, so that the device's import of the package never reaches it.
"""
from typing import Any, Dict, Optional, Sequence, Union

from ladon_deploy.bundle import TASK_HEADS, open_bundle
from ladon_deploy.device.stage import select_tasks, timings_ms
from ladon_deploy.server.stage import ServerStage


class Server:
    """The server half of a bundle: payload -> rANS decode -> dequantize -> body -> the requested heads -> results.

    tasks: the heads to load, as a list or a comma-separated string; None: all the bundle has. A payload runs the
    tasks it names, which must be among them.
    """

    def __init__(self, bundle_dir: str, tasks: Union[None, str, Sequence[str]] = None, engine: str = "onnxruntime",
                 threads: Optional[int] = None, precision: Optional[str] = None) -> None:
        bundle = open_bundle(bundle_dir, verify=False)
        self.tasks = select_tasks(bundle, tasks)
        bundle.verify(["entropy", "body"] + [TASK_HEADS[task] for task in self.tasks])  # only what is loaded
        self.stage = ServerStage(bundle, engine=engine, threads=threads, tasks=self.tasks, precision=precision)

    def run(self, payload: bytes, top_k: int = 5, mask_out: Optional[str] = None) -> Dict[str, Any]:
        """One payload -> its result document; a bad payload raises PayloadError (a LadonError)."""
        result = self.stage.run(bytes(payload))
        document = result.to_json(mask_out, top_k)
        document["timings_ms"] = timings_ms(result.timings)
        return document

    def close(self) -> None:
        self.stage.close()
