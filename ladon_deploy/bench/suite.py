"""`ladon-bench --bundle B --out DIR`: the paper's comparison with both sides on one machine.

The same three steps as on two machines, in one process: the device side (bench/device_bench.py), the server side
(bench/server_bench.py) and their combination (bench/combine.py), so that one-machine and two-machine figures come
from the same code. The LC models are exported first (bench/lc_models.py, cached in the models directory).
"""
import time
from typing import Any, Callable, Dict, List, Optional

from ladon_deploy.bench import combine, device_bench, lc_models, server_bench

LOCAL_LABEL = "local"

Progress = Callable[[str], None]


class BenchSettings:
    def __init__(self, bundle_dir: str, images: List[str], rates: List[str], models_dir: str,
                 engines: Optional[List[str]] = None, repeats: int = 20, warmup: int = 3, rtt: float = 0.0,
                 threads: Optional[int] = None, sizes: Optional[Dict[str, Any]] = None, quick: bool = False,
                 power: str = "auto") -> None:
        self.bundle_dir = bundle_dir
        self.images = images
        self.rates = rates
        self.models_dir = models_dir
        self.engines = engines or ["cpu"]
        self.repeats = repeats
        self.warmup = warmup
        self.rtt = rtt
        self.threads = threads
        self.sizes = sizes
        self.quick = quick
        self.power = power

    def device_settings(self) -> device_bench.DeviceSettings:
        return device_bench.DeviceSettings(self.bundle_dir, self.images, self.engines, self.models_dir,
                                           repeats=self.repeats, warmup=self.warmup, threads=self.threads,
                                           quick=self.quick, power=self.power)

    def server_settings(self) -> server_bench.ServerSettings:
        return server_bench.ServerSettings(self.bundle_dir, self.images, self.engines, repeats=self.repeats,
                                           warmup=self.warmup, threads=self.threads)


def steps_planned(settings: BenchSettings) -> int:
    names = lc_models.lc_model_names(settings.quick)
    count = sum(len(v) for v in names.values())
    configurations = 1
    for task_names in names.values():
        configurations *= len(task_names)
    device = device_bench.steps_planned(settings.device_settings(), count, configurations + 2)
    return lc_models.exports_needed(settings.models_dir, settings.quick) + device + \
        len(settings.engines) * len(settings.images)


def run_suite(settings: BenchSettings, progress: Progress) -> Dict[str, Any]:
    started = time.perf_counter()
    models = lc_models.export_models(settings.models_dir, settings.quick, progress)
    device = device_bench.run_device_bench(settings.device_settings(), progress, models=models)
    server = server_bench.run_server_bench(settings.server_settings(), progress)
    report = combine.combine_documents([(LOCAL_LABEL, device)], server, settings.rates, settings.rtt, settings.sizes)
    report["bench_seconds"] = time.perf_counter() - started
    return report
