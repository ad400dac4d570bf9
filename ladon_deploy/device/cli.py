"""`ladon-run mobile`: image -> payload file, the device's half of `ladon-run` (the parser is runtime/cli.py).

Edge subset: Python 3.6-clean, never imports torch.
"""
import json
from typing import Dict, List

from ladon_deploy.atomic import write_bytes_atomically
from ladon_deploy.bundle import Bundle, open_bundle
from ladon_deploy.device.stage import DeviceStage, parse_tasks, select_tasks


def open_bundle_stages(bundle_dir: str, stages: List[str]) -> Bundle:
    """Opens a bundle checking the sha256 of just the stages this command will load."""
    bundle = open_bundle(bundle_dir, verify=False)
    bundle.verify(stages)
    return bundle


def timings_ms(timings: Dict[str, float]) -> Dict[str, float]:
    return {name: round(seconds * 1000.0, 3) for name, seconds in timings.items()}


def print_timings(timings: Dict[str, float]) -> None:
    for name, seconds in timings.items():
        print("  %-16s %8.2f ms" % (name, seconds * 1000.0))


def run_mobile(args) -> int:
    bundle = open_bundle_stages(args.bundle, ["encoder", "entropy"])
    tasks = select_tasks(bundle, parse_tasks(args.tasks))
    stage = DeviceStage(bundle, engine=args.engine, threads=args.threads)
    result = stage.run(args.image, tasks)
    write_bytes_atomically(args.out, result.payload)
    if args.json:
        print(json.dumps({"payload": args.out, "payload_bytes": len(result.payload),
                          "latent_shape": list(result.latent_shape), "timings_ms": timings_ms(result.timings)}))
    else:
        print("payload: %s, %d bytes (latent %s)" % (args.out, len(result.payload),
                                                     "x".join(str(d) for d in result.latent_shape)))
        print_timings(result.timings)
    return 0
