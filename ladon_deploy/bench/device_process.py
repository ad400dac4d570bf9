"""What a device runs for one configuration, as a process of its own, so that its peak memory can be measured.

    python -m ladon_deploy.bench.device_process ladon --bundle B --image I [--copies 3]
    python -m ladon_deploy.bench.device_process lc --image I --model a.onnx --model b.onnx --model c.onnx
    python -m ladon_deploy.bench.device_process mobile -- --bundle B --image I --out x.ldn [ladon-run mobile options]

Every model runs on `--engine` (an engine of engines/registry.py; onnxruntime by default). `ladon` runs the real
mobile stage (`--copies 3` holds three of them: split computing with one single-task model per
task). `lc` holds the three LC models of a configuration in ONNX Runtime and runs each once on the image. `mobile`
is `ladon-run mobile` itself with torch made unimportable (an import of it fails the run). Nothing here imports
torch: a device would not.
"""
import argparse
import sys
from typing import TYPE_CHECKING, List, Optional, Sequence

# numpy and the device modules are imported by the functions that use them: `mobile` must start the way the
# `ladon-run` console script does, before numpy (ladon_deploy/runtime/__init__.py).
if TYPE_CHECKING:
    import numpy as np


def lc_input(rgb: "np.ndarray", task: str, shape: Sequence[int]) -> "np.ndarray":
    """The input an LC model's exported graph takes, from an RGB uint8 image (resize to the graph's static size).

    Classifiers and segmenters take an ImageNet-normalised [1,3,H,W] tensor; detectors take the [3,H,W] image in
    [0,1] and normalise and resize it inside the graph.
    """
    import numpy as np

    from ladon_deploy.device import preprocess

    height, width = int(shape[-2]), int(shape[-1])
    chw = rgb.transpose(2, 0, 1).astype(np.float32) / np.float32(255.0)
    if task != "detection":
        mean = np.asarray(preprocess.IMAGENET_MEAN, dtype=np.float32).reshape(3, 1, 1)
        std = np.asarray(preprocess.IMAGENET_STD, dtype=np.float32).reshape(3, 1, 1)
        chw = (chw - mean) / std
    if chw.shape[1:] != (height, width):
        chw = preprocess.resize_bilinear(chw, height, width)
    return chw[None] if task != "detection" else chw


def run_ladon(bundle_dir: str, image: str, copies: int, threads: Optional[int], engine: str = "onnxruntime") -> int:
    from ladon_deploy.bundle import open_bundle
    from ladon_deploy.device.stage import DeviceStage

    bundle = open_bundle(bundle_dir, verify=False)
    stages = [DeviceStage(bundle, engine=engine, threads=threads) for _ in range(copies)]
    total = 0
    for stage in stages:
        total += len(stage.run(image, tuple(bundle.tasks)).payload)
    print(total)
    return 0


def run_lc(models: List[str], image: str, threads: Optional[int], engine: str = "onnxruntime",
           cache_dir: Optional[str] = None) -> int:
    import numpy as np

    from ladon_deploy.device import preprocess
    from ladon_deploy.engines.registry import open_runner

    rgb = np.asarray(preprocess.load_image(image))
    runners = []
    for spec in models:
        path, task = spec.rsplit(":", 1)
        runners.append((open_runner(path, engine, threads, cache_dir=cache_dir), task))
    for runner, task in runners:
        name = runner.input_names[0]
        runner.run({name: lc_input(rgb, task, runner.input_shape(name))})
    print(len(runners))
    return 0


class _NoTorch(object):
    """A meta-path finder that makes torch and torchvision unimportable, as on a device that lacks them."""

    def find_spec(self, name: str, path: object = None, target: object = None) -> None:
        if name.split(".")[0] in ("torch", "torchvision"):
            raise ImportError("torch is not importable in a device process (%s)" % name)
        return None


def run_mobile_cli(argv: Sequence[str]) -> int:
    """`ladon-run mobile ARGV` in this process, as the console script runs it, with torch unimportable."""
    sys.meta_path.insert(0, _NoTorch())
    from ladon_deploy.runtime import run

    return run(["mobile"] + list(argv))


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["mobile"]:
        return run_mobile_cli(argv[2:] if argv[1:2] == ["--"] else argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=["ladon", "lc"])
    parser.add_argument("--bundle")
    parser.add_argument("--image", required=True)
    parser.add_argument("--copies", type=int, default=1)
    parser.add_argument("--model", action="append", default=[], help="PATH:TASK of an LC model (repeat)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--engine", default="onnxruntime", help="engine name of engines/registry.py")
    parser.add_argument("--cache-dir", default=None, help="TensorRT execution provider's engine cache (LC models)")
    args = parser.parse_args(argv)
    if args.kind == "ladon":
        return run_ladon(args.bundle, args.image, args.copies, args.threads, args.engine)
    return run_lc(args.model, args.image, args.threads, args.engine, args.cache_dir)


if __name__ == "__main__":
    sys.exit(main())
