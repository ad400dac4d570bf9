"""Which machine produced a measurement: device model, L4T/JetPack, power mode, engine versions, CPU.

Every fact is read from where the platform keeps it (/proc/device-tree/model and /etc/nv_tegra_release on a Jetson,
`nvpmodel -q`, the installed packages). A fact that cannot be read is None and named in `absent`, never guessed.

Runs on the device (`ladon-bench device` on a Jetson): Python 3.6-clean, standard library only, no torch.
"""
import os
import platform
import re
import subprocess
from typing import Any, Dict, List, Optional

import ladon_deploy

DEVICE_TREE_MODEL = "/proc/device-tree/model"
TEGRA_RELEASE = "/etc/nv_tegra_release"

# L4T release (major.minor) -> the JetPack that ships it; only the releases our targets use are listed.
JETPACK_OF_L4T = {"32.7": "4.6", "32.6": "4.6", "32.5": "4.5", "32.4": "4.4", "35.1": "5.0", "35.2": "5.1",
                  "35.3": "5.1.1", "35.4": "5.1.2", "35.5": "5.1.3", "35.6": "5.1.4", "36.2": "6.0", "36.3": "6.0",
                  "36.4": "6.1"}

_RELEASE = re.compile(r"#\s*R(\d+)\s*\(release\),\s*REVISION:\s*([0-9.]+)")


def read_text(path: str) -> Optional[str]:
    try:
        with open(path, "rb") as handle:
            return handle.read().decode("utf-8", "replace").replace("\x00", "").strip() or None
    except (IOError, OSError):
        return None


def parse_tegra_release(text: Optional[str]) -> Optional[str]:
    """'# R32 (release), REVISION: 7.1, GCID: ...' -> '32.7.1'."""
    match = _RELEASE.search(text or "")
    if not match:
        return None
    return "%s.%s" % (match.group(1), match.group(2))


def jetpack_for(l4t: Optional[str]) -> Optional[str]:
    if not l4t:
        return None
    return JETPACK_OF_L4T.get(".".join(l4t.split(".")[:2]))


def parse_nvpmodel(text: Optional[str]) -> Optional[str]:
    """`nvpmodel -q` prints 'NV Power Mode: MAXN' then the mode id: -> 'MAXN (mode 0)'."""
    if not text:
        return None
    name = re.search(r"NV Power Mode:\s*(\S+)", text)
    if not name:
        return None
    mode = re.search(r"^\s*(\d+)\s*$", text, re.MULTILINE)
    return "%s (mode %s)" % (name.group(1), mode.group(1)) if mode else name.group(1)


def run_quietly(command: List[str], timeout: float = 10.0) -> Optional[str]:
    try:
        completed = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout)
    except (OSError, subprocess.SubprocessError):
        return None
    if completed.returncode != 0:
        return None
    return completed.stdout.decode("utf-8", "replace")


def cpu_model() -> Optional[str]:
    """The CPU's name from /proc/cpuinfo ('model name' on x86, 'Hardware' or 'Model' on some ARM kernels)."""
    text = read_text("/proc/cpuinfo") or ""
    for key in ("model name", "hardware", "model"):
        for line in text.splitlines():
            if line.lower().startswith(key) and ":" in line:
                value = line.split(":", 1)[1].strip()
                if value and not value.isdigit():
                    return value
    return None


def package_version(module: str) -> Optional[str]:
    try:
        imported = __import__(module)
    except Exception:  # a broken optional install (missing CUDA libraries) must not stop the report
        return None
    return getattr(imported, "__version__", None)


def machine_identity(probe_nvpmodel: bool = True) -> Dict[str, Any]:
    """Facts about this machine for a result file's identity block; `absent` names the facts that were not found."""
    l4t = parse_tegra_release(read_text(TEGRA_RELEASE))
    identity = {
        "device_model": read_text(DEVICE_TREE_MODEL),
        "l4t": l4t,
        "jetpack": jetpack_for(l4t),
        "power_mode": parse_nvpmodel(run_quietly(["nvpmodel", "-q"])) if probe_nvpmodel else None,
        "tensorrt": package_version("tensorrt"),
        "onnxruntime": package_version("onnxruntime"),
        "onnxruntime_providers": None,
        "cpu": cpu_model() or platform.machine() or None,
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "hostname": platform.node() or None,
        "toolkit_version": ladon_deploy.__version__,
    }  # type: Dict[str, Any]
    if identity["onnxruntime"]:
        import onnxruntime

        identity["onnxruntime_providers"] = list(onnxruntime.get_available_providers())
    identity["absent"] = sorted(key for key, value in identity.items() if value is None)
    return identity


def describe(identity: Dict[str, Any]) -> str:
    """One line for figure captions and reports: the device model when known, else the CPU."""
    name = identity.get("device_model") or identity.get("cpu") or "unknown machine"
    extras = []
    if identity.get("jetpack"):
        extras.append("JetPack %s" % identity["jetpack"])
    if identity.get("power_mode"):
        extras.append(identity["power_mode"])
    if identity.get("cpu_count"):
        extras.append("%d cores" % identity["cpu_count"])
    return "%s (%s)" % (name, ", ".join(extras)) if extras else name
