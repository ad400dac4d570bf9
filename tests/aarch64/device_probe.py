"""What tests/aarch64/test_aarch64.py has the emulated aarch64 interpreter do, in one process (each start of the
emulated interpreter and its imports costs seconds).

    scripts/aarch64.sh -- python tests/aarch64/device_probe.py BUNDLE WORK IMAGE...

It runs `ladon-run mobile` (its main, in-process) on each image, and writes to WORK: the payloads
(aarch64-N.ldn), the preprocessed tensors and decoded symbols (aarch64.npz), the aarch64 coder's bytes for the
x86-64 symbols the test left in WORK/x86-symbols.npz (coded-N.bin), the outcome of decoding the fuzz cases of
WORK/fuzz.npz, and the environment it ran in (aarch64.json). Only the edge subset and the device's stack exist
there: this file imports nothing else. The test imports `fuzz_outcomes` to decode the same cases on x86-64.
"""
import contextlib
import hashlib
import importlib.util
import io
import json
import os
import platform
import sys
import time

import numpy as np

from ladon_deploy.bundle import open_bundle
from ladon_deploy.device import wire
from ladon_deploy.device.entropy import EntropyCoder
from ladon_deploy.errors import PayloadError


def split_cases(npz):
    """The fuzz cases, stored as one byte string with offsets (npz holds no list of bytes without pickle)."""
    data, offsets = npz["fuzz_data"].tobytes(), npz["fuzz_offsets"]
    return [data[offsets[i]:offsets[i + 1]] for i in range(len(offsets) - 1)]


def fuzz_outcomes(coder, cases, bundle_id):
    """Per case: "unpack" or "decode" (refused there with a PayloadError) or the SHA-256 of the decoded symbols.
    Any other exception propagates: that is a failure on either machine."""
    outcomes = []
    for data in cases:
        try:
            payload = wire.unpack(data, expected_bundle_id=bundle_id, max_symbols=1 << 18)
        except PayloadError:
            outcomes.append("unpack")
            continue
        try:
            symbols = coder.decode(payload.body, payload.latent_shape)
        except PayloadError:
            outcomes.append("decode")
            continue
        outcomes.append(hashlib.sha256(np.ascontiguousarray(symbols, np.int32).tobytes()).hexdigest())
    return outcomes


def _torch_refusal():
    """How `import torch` fails here (it must: nothing provides it)."""
    try:
        import torch  # noqa: F401
    except ImportError as exc:
        return "%s: %s" % (type(exc).__name__, exc)
    return None


def main(bundle_dir, work, images):
    from ladon_deploy.cli_support import run_command
    from ladon_deploy.device.entropy import default_backend
    from ladon_deploy.device.stage import DeviceStage
    from ladon_deploy.runtime.cli import PROG, main as run_main

    report = {"timings_ms": [], "image_notes": [], "cpu_seconds": []}
    arrays = {}
    for index, image in enumerate(images):
        out = os.path.join(work, "aarch64-%d.ldn" % index)
        printed = io.StringIO()
        cpu_started = time.process_time()  # the wall-clock timings_ms grow with the host's load; this much less
        with contextlib.redirect_stdout(printed):
            code = run_command(PROG, run_main, ["mobile", "--bundle", bundle_dir, "--image", image, "--out", out,
                                                "--json"])
        if code != 0:
            raise SystemExit("ladon-run mobile failed on %s (exit %d)" % (image, code))
        report["cpu_seconds"].append(time.process_time() - cpu_started)
        document = json.loads(printed.getvalue())
        report["timings_ms"].append(document["timings_ms"])
        report["image_notes"].append(document["image_notes"])

    stage = DeviceStage(open_bundle(bundle_dir))
    coder = stage.coder
    theirs = np.load(os.path.join(work, "x86-symbols.npz"))
    report["roundtrip"] = []
    for index, image in enumerate(images):
        arrays["tensor%d" % index] = stage.preprocess(image).tensor
        with open(os.path.join(work, "aarch64-%d.ldn" % index), "rb") as handle:
            payload = wire.unpack(handle.read(), expected_bundle_id=stage.bundle.bundle_id)
        symbols = coder.decode(payload.body, payload.latent_shape)
        arrays["symbols%d" % index] = symbols
        report["roundtrip"].append(coder.encode(symbols) == payload.body)
        with open(os.path.join(work, "coded-%d.bin" % index), "wb") as handle:
            handle.write(coder.encode(theirs["symbols%d" % index]))
    np.savez(os.path.join(work, "aarch64.npz"), **arrays)

    fuzz = np.load(os.path.join(work, "fuzz.npz"))
    fuzz_coder = EntropyCoder.from_tables({name: fuzz[name] for name in ("quantized_cdf", "cdf_length", "offset",
                                                                          "medians")})
    report["fuzz_backend"] = fuzz_coder.backend
    report["fuzz"] = fuzz_outcomes(fuzz_coder, split_cases(fuzz), str(fuzz["bundle_id"]))

    import numpy
    import onnxruntime
    import PIL

    report["machine"] = platform.machine()
    report["versions"] = {"python": platform.python_version(), "numpy": numpy.__version__, "pillow": PIL.__version__,
                          "onnxruntime": onnxruntime.__version__, "coder": default_backend()}
    report["torch_spec"] = repr(importlib.util.find_spec("torch"))
    report["torch_import"] = _torch_refusal()
    report["sys_path"] = list(sys.path)
    report["module_files"] = sorted({os.path.realpath(m.__file__) for name, m in list(sys.modules.items())
                                     if getattr(m, "__file__", None) and name != "__main__"})  # (this file)
    with open(os.path.join(work, "aarch64.json"), "w") as handle:
        json.dump(report, handle)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3:])
