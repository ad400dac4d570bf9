"""`ladon-bench server`: the server side of SC and Ladon, measured where it runs, per engine.

For each engine and image: the bundle's server stage (unframe, rANS decode, dequantize, body once, each head) on a
real payload, median and p90 of every stage. The payloads are produced here by the bundle's device stage on the CPU
(untimed): they are the same bytes the device sends for the same image, because the coder and the tables are the
bundle's. SC's server side is the same graphs (one decode + body per single-task model, each head once), so the
report combines it from these stages.
"""
import collections
import os
import time
from typing import Any, Callable, Dict, List, Optional

from ladon_deploy.bench.device_bench import is_cuda, precision_of, registry_engine, summarize

KIND = "ladon-bench server"
SCHEMA = 1

Progress = Callable[[str], None]


class ServerSettings:
    def __init__(self, bundle_dir: str, images: List[str], engines: List[str], repeats: int = 20, warmup: int = 3,
                 threads: Optional[int] = None) -> None:
        self.bundle_dir = bundle_dir
        self.images = images
        self.engines = engines
        self.repeats = repeats
        self.warmup = warmup
        self.threads = threads


def run_server_bench(settings: ServerSettings, progress: Optional[Progress] = None) -> Dict[str, Any]:
    from ladon_deploy.bench.identity import machine_identity
    from ladon_deploy.bundle import open_bundle
    from ladon_deploy.device.stage import DeviceStage
    from ladon_deploy.server.stage import ServerStage

    progress = progress or (lambda message: None)
    started = time.perf_counter()
    bundle = open_bundle(settings.bundle_dir)
    tasks = tuple(bundle.tasks)
    device = DeviceStage(bundle, threads=settings.threads)
    payloads = [device.run(image, tasks).payload for image in settings.images]
    device.close()
    engines: Dict[str, Any] = collections.OrderedDict()
    for engine in settings.engines:
        server = ServerStage(bundle, engine=registry_engine(engine), threads=settings.threads)
        per_image = []
        try:
            for image, payload in zip(settings.images, payloads):
                progress("%s: server stage on %s" % (engine, os.path.basename(image)))
                for _ in range(settings.warmup):
                    server.run(payload)
                stages: Dict[str, List[float]] = collections.OrderedDict()
                for _ in range(settings.repeats):
                    result = server.run(payload)
                    for name, seconds in result.timings.items():
                        stages.setdefault(name, []).append(seconds)
                per_image.append({"image": os.path.basename(image), "payload_bytes": len(payload),
                                  "stages": dict((name, summarize(values)) for name, values in stages.items()),
                                  "stage_engines": dict(result.engines)})
        finally:
            server.close()
        engines[engine] = {"engine": engine, "registry_engine": registry_engine(engine), "cuda": is_cuda(engine),
                           "precision": precision_of(engine), "ladon": per_image}
    identity = machine_identity()
    return {
        "kind": KIND, "schema": SCHEMA, "toolkit_version": identity["toolkit_version"], "bundle_id": bundle.bundle_id,
        "bundle": {"directory": os.path.abspath(settings.bundle_dir), "architecture": bundle.manifest["architecture"],
                   "tasks": list(tasks)},
        "identity": identity,
        "settings": {"images": [os.path.basename(p) for p in settings.images], "repeats": settings.repeats,
                     "warmup": settings.warmup, "threads": settings.threads, "engines": list(settings.engines)},
        "engines": engines,
        "bench_seconds": time.perf_counter() - started,
    }
