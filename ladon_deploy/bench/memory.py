"""Peak resident memory of a separate process, as the OS accounts it; run as a module, the device's peak per image.

    python -m ladon_deploy.bench.memory --bundle B --image 416x416.jpg --image 48mp.jpg --max-megapixels 120
    python -m ladon_deploy.bench.memory --bundle B --image photo.jpg --fast-decode   # also what --fast-decode costs
    python -m ladon_deploy.bench.memory --bundle B --synthetic DIR --max-megapixels 120   # the standard five JPEGs

For each image, `ladon-run mobile` runs in a process of its own with torch unimportable
(bench/device_process.py's `mobile`), and the table gives its peak RSS, the payload's size and digest (equal digests:
byte-identical payloads). `--python` runs the device process under another interpreter (.venv36/bin/python: the
JetPack 4.6 stack; put the package on its PYTHONPATH). `--fast-decode` adds, per image, the peak with Pillow's JPEG
draft decode and its fidelity against the exact preprocessing: symbol agreement of the latents, payload sizes and
whether the top-1 class (with the bundle's cls head) agrees.

A device runs only its own side, so memory is measured on a child process that does just that: the kernel's
high-water mark of its resident set (ru_maxrss, returned by wait4 for exactly that child), not an estimate made from
inside the measuring process.

Linux folds the address space a process had before exec() into its ru_maxrss, and a spawned child starts out
sharing (vfork) or copying (fork) its parent's. Measured straight from a benchmark that holds torch and several
sessions, every child would report the benchmark's own gigabytes. So the target is started by a small launcher
interpreter, whose few MB are all that can leak into the figure.
"""
import argparse
import hashlib
import json
import os
import sys
import tempfile
import warnings
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

# Runs argv[1:] and prints its exit code, ru_maxrss (bytes) and captured output as JSON.
_LAUNCHER = r"""
import json, os, sys, tempfile
with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
    if hasattr(os, "posix_spawnp"):
        pid = os.posix_spawnp(sys.argv[1], sys.argv[1:], dict(os.environ),
                              file_actions=[(os.POSIX_SPAWN_DUP2, out.fileno(), 1),
                                            (os.POSIX_SPAWN_DUP2, err.fileno(), 2)])
    else:  # Python 3.6/3.7 (JetPack 4.6): fork this small interpreter and exec the target
        pid = os.fork()
        if pid == 0:
            try:
                os.dup2(out.fileno(), 1)
                os.dup2(err.fileno(), 2)
                os.execvp(sys.argv[1], sys.argv[1:])
            finally:
                os._exit(127)
    _, status, usage = os.wait4(pid, 0)
    code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else -os.WTERMSIG(status)
    out.seek(0)
    err.seek(0)
    print(json.dumps({"returncode": code, "maxrss": usage.ru_maxrss * 1024,
                      "stdout": out.read().decode(errors="replace"), "stderr": err.read().decode(errors="replace")}))
"""


class ProcessPeak(object):
    def __init__(self, command: List[str], returncode: int, peak_rss_bytes: int, stdout: str, stderr: str) -> None:
        self.command = command
        self.returncode = returncode
        self.peak_rss_bytes = peak_rss_bytes
        self.stdout = stdout
        self.stderr = stderr

    @property
    def peak_rss_mb(self) -> float:
        return self.peak_rss_bytes / 1e6


def measure(command: Sequence[str], env: Optional[Dict[str, str]] = None, timeout: float = 900.0) -> ProcessPeak:
    """Runs `command` to completion; returns its exit code, output and peak RSS in bytes (Linux ru_maxrss)."""
    import subprocess

    launcher = subprocess.run([sys.executable, "-S", "-c", _LAUNCHER] + list(command), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, timeout=timeout, env=env)
    if launcher.returncode != 0:
        raise RuntimeError("memory launcher failed: %s" % launcher.stderr.decode(errors="replace").strip())
    report = json.loads(launcher.stdout.decode())
    return ProcessPeak(list(command), report["returncode"], int(report["maxrss"]), report["stdout"], report["stderr"])


def python_command(code: str, *args: str) -> List[str]:
    return [sys.executable, "-c", code] + list(args)


def device_peak(bundle_dir: str, image: str, options: Sequence[str] = (), python: Optional[str] = None,
                timeout: float = 900.0) -> Dict[str, Any]:
    """Peak RSS of `ladon-run mobile` (torch unimportable) on one image, in a process of its own, and its payload."""
    with tempfile.TemporaryDirectory(prefix="ladon-memory-") as workdir:
        out = os.path.join(workdir, "payload.ldn")
        peak = measure([python or sys.executable, "-m", "ladon_deploy.bench.device_process", "mobile", "--",
                        "--bundle", bundle_dir, "--image", image, "--out", out] + list(options), timeout=timeout)
        if peak.returncode != 0:
            raise RuntimeError("ladon-run mobile failed on %s: %s" % (image, peak.stderr.strip()[-500:]))
        with open(out, "rb") as handle:
            payload = handle.read()
    return {"peak_rss_bytes": peak.peak_rss_bytes, "payload_bytes": len(payload),
            "payload_sha256": hashlib.sha256(payload).hexdigest()}


def payload_symbols(stage: Any, result: Any) -> Any:
    """The symbols a DeviceStage's payload carries, read back from its bytes (rANS is lossless): what the server
    will decode, without running the encoder again."""
    from ladon_deploy.device import wire

    body = wire.unpack(result.payload, expected_bundle_id=stage.bundle.bundle_id).body
    return stage.coder.decode(body, result.latent_shape)


def fast_decode_fidelity(bundle_dir: str, image: str, threads: Optional[int], max_pixels: int) -> Dict[str, Any]:
    """Exact against --fast-decode preprocessing of one image: symbol agreement, payload sizes, top-1 class."""
    from ladon_deploy.bundle import open_bundle
    from ladon_deploy.calibration.fidelity import symbol_agreement
    from ladon_deploy.device.stage import DeviceStage

    bundle = open_bundle(bundle_dir, verify=False)
    runs = {}
    for fast in (False, True):
        stage = DeviceStage(bundle, threads=threads, max_pixels=max_pixels, fast_decode=fast)
        result = stage.run(image, tuple(bundle.tasks))
        runs[fast] = (payload_symbols(stage, result), result)
        stage.close()
    (exact_symbols, exact), (fast_symbols, fast) = runs[False], runs[True]
    report = {"symbol_agreement": symbol_agreement(fast_symbols, exact_symbols),
              "payload_bytes": (len(exact.payload), len(fast.payload)),
              "preprocess_ms": (exact.timings["preprocess"] * 1e3, fast.timings["preprocess"] * 1e3),
              "notes": fast.notes}
    if "cls" in bundle.tasks:
        from ladon_deploy.server.stage import ServerStage

        server = ServerStage(bundle, threads=threads, tasks=["cls"])
        top = [server.run(result.payload, ["cls"]).classification(1)[0].class_id for result in (exact, fast)]
        report["top1_agrees"] = top[0] == top[1]
    return report


# The photos of the standard table: (file, width, height, EXIF orientation or 0).
SYNTHETIC_PHOTOS = (("photo-416x416.jpg", 416, 416, 0), ("photo-12mp.jpg", 4000, 3000, 0),
                    ("photo-48mp.jpg", 8000, 6000, 0), ("photo-48mp-exif6.jpg", 8000, 6000, 6),
                    ("photo-100mp.jpg", 12000, 8400, 0))


def make_synthetic_photos(directory: str) -> List[str]:
    """Writes SYNTHETIC_PHOTOS (gradients with per-column noise, JPEG quality 90) unless present; their paths."""
    from PIL import Image

    os.makedirs(directory, exist_ok=True)
    paths = []
    for name, width, height, orientation in SYNTHETIC_PHOTOS:
        path = os.path.join(directory, name)
        paths.append(path)
        if os.path.exists(path):
            continue
        rows = np.linspace(0, 255, height, dtype=np.float32)[:, None]
        columns = np.linspace(0, 255, width, dtype=np.float32)[None, :]
        noise = np.random.RandomState(0).randint(0, 40, size=(1, width)).astype(np.float32)
        pixels = np.empty((height, width, 3), np.uint8)
        for channel, (weight_rows, weight_columns) in enumerate(((1.0, 0.0), (0.0, 1.0), (0.5, 0.5))):
            pixels[:, :, channel] = np.clip(weight_rows * rows + weight_columns * columns + noise, 0, 255)
        options = {"quality": 90}  # type: Dict[str, Any]
        if orientation:
            exif = Image.Exif()
            exif[0x0112] = orientation
            options["exif"] = exif.tobytes()
        Image.fromarray(pixels).save(path, **options)
    return paths


def _megapixels(path: str) -> str:
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the header only: no pixel is decoded
        with Image.open(path) as image:
            return "%dx%d (%.1f MP)" % (image.size[0], image.size[1], image.size[0] * image.size[1] / 1e6)


def main(argv: Optional[Sequence[str]] = None) -> int:
    try:
        return _table(argv)
    except (RuntimeError, OSError) as exc:  # a device run that failed (its own one-line error), an unreadable file
        sys.stderr.write("ladon_deploy.bench.memory: error: %s\n" % str(exc).strip().splitlines()[-1])
        return 2


def _table(argv: Optional[Sequence[str]]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", required=True, help="bundle directory")
    parser.add_argument("--image", action="append", default=[], help="image file (repeat)")
    parser.add_argument("--synthetic", metavar="DIR", default=None,
                        help="also the five standard photos (416x416 to 100 MP, one EXIF-rotated), written to DIR")
    parser.add_argument("--threads", type=int, default=2, help="engine threads of the device process (default 2)")
    parser.add_argument("--max-megapixels", type=float, default=None, help="ladon-run mobile's --max-megapixels")
    parser.add_argument("--python", default=None, help="interpreter of the device process (default: this one)")
    parser.add_argument("--fast-decode", action="store_true", help="also measure ladon-run mobile --fast-decode")
    args = parser.parse_args(argv)
    images = list(args.image) + (make_synthetic_photos(args.synthetic) if args.synthetic else [])
    if not images:
        parser.error("give --image FILE or --synthetic DIR")
    options = ["--threads", str(args.threads)]
    if args.max_megapixels is not None:
        options += ["--max-megapixels", repr(args.max_megapixels)]
    variants = [("exact", options)] + ([("fast-decode", options + ["--fast-decode"])] if args.fast_decode else [])
    print("Peak RSS of `ladon-run mobile` (torch unimportable), one process per image, %s, %d threads; "
          "MB = 10^6 bytes" % (args.python or "python %d.%d" % sys.version_info[:2], args.threads))
    print()
    print("| image | size | decode | peak RSS MB | peak RSS MiB | payload bytes | payload sha256 |")
    print("| --- | --- | --- | ---: | ---: | ---: | --- |")
    for image in images:
        for name, variant in variants:
            peak = device_peak(args.bundle, image, variant, args.python)
            print("| %s | %s | %s | %.1f | %.1f | %d | %s |" % (
                os.path.basename(image), _megapixels(image), name, peak["peak_rss_bytes"] / 1e6,
                peak["peak_rss_bytes"] / 2.0 ** 20, peak["payload_bytes"], peak["payload_sha256"][:16]))
    if args.fast_decode:
        from ladon_deploy.device.preprocess import DEFAULT_MAX_MEGAPIXELS

        max_pixels = int((args.max_megapixels or DEFAULT_MAX_MEGAPIXELS) * 1e6)
        print()
        print("| image | --fast-decode | symbol agreement | payload bytes exact / fast | preprocess ms exact / fast "
              "| top-1 class agrees |")
        print("| --- | --- | ---: | --- | --- | --- |")
        for image in images:
            fidelity = fast_decode_fidelity(args.bundle, image, args.threads, max_pixels)
            print("| %s | %s | %.4f | %d / %d | %.1f / %.1f | %s |" % (
                os.path.basename(image), "; ".join(fidelity["notes"]) or "decoded in full (not a larger JPEG)",
                fidelity["symbol_agreement"], fidelity["payload_bytes"][0], fidelity["payload_bytes"][1],
                fidelity["preprocess_ms"][0], fidelity["preprocess_ms"][1], fidelity.get("top1_agrees", "n/a")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
