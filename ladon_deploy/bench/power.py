"""Board power on a Jetson, sampled in the background while a measurement runs.

Jetsons have no NVML; power comes from one of three places, tried in this order:

  tegrastats   NVIDIA's tool, one line per interval. JetPack 4.x prints rails as `NAME cur/avg` in mW without a unit
               (Nano: `POM_5V_IN 2254/2254 POM_5V_GPU 0/0 POM_5V_CPU 490/490`; Xavier NX on 4.x: `VDD_IN 4341/4341
               VDD_CPU_GPU_CV 571/571 VDD_SOC 1265/1265`); JetPack 5.x adds the unit (`VDD_IN 5033mW/5033mW
               VDD_CPU_GPU_CV 615mW/615mW VDD_SOC 1397mW/1397mW`), and later releases keep that form.
  jtop         jetson-stats' Python API (`jetson.power['rail'][name]['power']`, mW, jetson-stats >= 4), where installed.
  INA3221      the rail monitors in sysfs: JetPack 4.x's ina3221x IIO driver (`in_power<i>_input`, mW, with
               `rail_name_<i>`), JetPack 5.x's hwmon driver (`in<i>_label`, `in<i>_input` mV, `curr<i>_input` mA).

The board's input rail (VDD_IN, POM_5V_IN, ...) is the figure energy is computed from; the other rails are reported
as they are. Where no source exists the result says so (`source` None and a reason): a missing sensor is never a
zero.

Runs on the device: Python 3.6-clean, standard library only.
"""
import glob
import os
import re
import subprocess
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

# The rails that measure the whole module's input, in order of preference (the first present one is "total").
INPUT_RAILS = ("VDD_IN", "POM_5V_IN", "VIN_SYS_5V0", "SYS5V")

# NAME cur/avg with an optional mW unit on both numbers; the lookahead keeps RAM 3276/7859MB and SWAP out.
_RAIL = re.compile(r"(?:^|\s)([A-Za-z][A-Za-z0-9_]*)\s+(\d+)(?:mW)?/(\d+)(?:mW)?(?=\s|$)")

Sample = Tuple[float, Dict[str, float]]  # (time.monotonic(), rail -> watts)


def parse_tegrastats_line(line: str) -> Dict[str, float]:
    """Rail name -> instantaneous power in watts, from one tegrastats line of JetPack 4.x or 5.x."""
    return dict((name, int(current) / 1000.0) for name, current, _ in _RAIL.findall(line))


def input_rail(rails: Sequence[str]) -> Optional[str]:
    for name in INPUT_RAILS:
        if name in rails:
            return name
    return None


class PowerMonitor(object):
    """Collects (time, rails) samples on a background thread; `window(t0, t1)` summarises a measured span."""

    source = "abstract"

    def __init__(self, interval_s: float = 0.1) -> None:
        self.interval_s = interval_s
        self.samples = []  # type: List[Sample]
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = None  # type: Optional[threading.Thread]

    def _record(self, rails: Dict[str, float]) -> None:
        if rails:
            with self._lock:
                self.samples.append((time.monotonic(), rails))

    def _loop(self) -> None:
        raise NotImplementedError

    def start(self) -> "PowerMonitor":
        self._thread = threading.Thread(target=self._loop, name="ladon-power", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)

    def window(self, started: float, finished: float, runs: int) -> Dict[str, Any]:
        """Mean power per rail over [started, finished] (time.monotonic()) and the input rail's energy per run.

        A span shorter than one sampling interval may hold no sample: then the first sample after it stands in, and
        `samples` says 0 so that a reader can tell.
        """
        with self._lock:
            inside = [rails for at, rails in self.samples if started <= at <= finished]
            after = [rails for at, rails in self.samples if at > finished]
        used = inside or after[:1]
        summary = {"source": self.source, "samples": len(inside), "seconds": finished - started}  # type: Dict[str, Any]
        if not used:
            summary.update({"rails_w": None, "input_rail": None, "mean_power_w": None, "energy_per_run_j": None,
                            "absent": "no %s sample arrived during or after the run" % self.source})
            return summary
        names = sorted(set(name for rails in used for name in rails))
        means = dict((name, sum(r[name] for r in used if name in r) / sum(1 for r in used if name in r))
                     for name in names)
        total = input_rail(names)
        summary["rails_w"] = means
        summary["input_rail"] = total
        summary["mean_power_w"] = means[total] if total else None
        summary["energy_per_run_j"] = (means[total] * (finished - started) / max(runs, 1)) if total else None
        if not total:
            summary["absent"] = "no board input rail (%s) among %s" % ("/".join(INPUT_RAILS), ", ".join(names))
        return summary


class TegrastatsMonitor(PowerMonitor):
    source = "tegrastats"

    def __init__(self, executable: str = "tegrastats", interval_s: float = 0.1) -> None:
        PowerMonitor.__init__(self, interval_s)
        self.executable = executable
        self._process = None  # type: Optional[subprocess.Popen]

    def start(self) -> "PowerMonitor":
        self._process = subprocess.Popen([self.executable, "--interval", str(int(self.interval_s * 1000))],
                                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                         universal_newlines=True)
        return PowerMonitor.start(self)

    def _loop(self) -> None:
        stream = self._process.stdout if self._process else None
        if stream is None:
            return
        for line in stream:
            if self._stop.is_set():
                break
            self._record(parse_tegrastats_line(line))

    def stop(self) -> None:
        self._stop.set()
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=5.0)
            except subprocess.TimeoutExpired:
                self._process.kill()
        PowerMonitor.stop(self)


class PollingMonitor(PowerMonitor):
    """Calls `read()` every interval (sysfs rails, jtop); `close()`, if given, runs once sampling has stopped."""

    def __init__(self, source: str, read: Callable[[], Dict[str, float]], interval_s: float = 0.05,
                 close: Optional[Callable[[], None]] = None) -> None:
        PowerMonitor.__init__(self, interval_s)
        self.source = source
        self.read = read
        self.close = close

    def stop(self) -> None:
        PowerMonitor.stop(self)
        if self.close is not None:
            self.close()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._record(self.read())
            except (IOError, OSError, ValueError, KeyError):
                pass
            self._stop.wait(self.interval_s)


def ina3221_reader(root: str = "/sys/bus/i2c/drivers") -> Optional[Callable[[], Dict[str, float]]]:
    """A function reading every INA3221 rail in watts, or None when this machine exposes none."""
    channels = []  # type: List[Tuple[str, str, Optional[str]]]  # (name, power-or-voltage file, current file)
    # JetPack 4.x: ina3221x IIO driver, power in mW.
    for path in sorted(glob.glob(os.path.join(root, "ina3221x", "*", "iio:device*", "in_power*_input"))):
        index = re.search(r"in_power(\d+)_input$", path).group(1)
        name = _read(os.path.join(os.path.dirname(path), "rail_name_%s" % index)) or "rail%s" % index
        channels.append((name, path, None))
    # JetPack 5.x: hwmon driver, voltage in mV and current in mA per labelled channel.
    for label in sorted(glob.glob(os.path.join(root, "ina3221", "*", "hwmon", "hwmon*", "in*_label"))):
        index = re.search(r"in(\d+)_label$", label).group(1)
        directory = os.path.dirname(label)
        voltage = os.path.join(directory, "in%s_input" % index)
        current = os.path.join(directory, "curr%s_input" % index)
        name = _read(label)
        if name and os.path.exists(voltage) and os.path.exists(current) and name.upper() != "NC":
            channels.append((name, voltage, current))
    if not channels:
        return None

    def read() -> Dict[str, float]:
        rails = {}
        for name, first, current in channels:
            if current is None:
                rails[name] = float(_read(first) or 0) / 1000.0
            else:
                rails[name] = float(_read(first) or 0) * float(_read(current) or 0) / 1e6
        return rails

    return read


def jtop_reader() -> Optional[Tuple[Callable[[], Dict[str, float]], Callable[[], None]]]:
    """jetson-stats' jtop (>= 4): (reader, closer), or None when it is not installed or its service is not running."""
    try:
        from jtop import jtop  # type: ignore
    except ImportError:
        return None
    try:
        jetson = jtop()
        jetson.start()
    except Exception:  # jtop raises its own errors when the jtop.service is absent
        return None

    def read() -> Dict[str, float]:
        rails = jetson.power.get("rail", {})
        return dict((name, float(values["power"]) / 1000.0) for name, values in rails.items() if "power" in values)

    return read, jetson.close


def _read(path: str) -> Optional[str]:
    try:
        with open(path) as handle:
            return handle.read().strip()
    except (IOError, OSError):
        return None


def _which(name: str) -> Optional[str]:
    for directory in os.environ.get("PATH", "").split(os.pathsep) + ["/usr/bin", "/usr/sbin"]:
        path = os.path.join(directory, name)
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return None


class NoPower(object):
    """Stands in when no sensor exists: every window reports the absence and why."""

    source = None  # type: Optional[str]

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def start(self) -> "NoPower":
        return self

    def stop(self) -> None:
        pass

    def window(self, started: float, finished: float, runs: int) -> Dict[str, Any]:
        return {"source": None, "samples": 0, "seconds": finished - started, "rails_w": None, "input_rail": None,
                "mean_power_w": None, "energy_per_run_j": None, "absent": self.reason}


def open_monitor(choice: str = "auto") -> Any:
    """The first available source among tegrastats, jtop and INA3221 sysfs (or the one named), started."""
    if choice not in ("auto", "tegrastats", "jtop", "ina3221", "none"):
        from ladon_deploy.errors import LadonError

        raise LadonError("unknown --power %r (auto, tegrastats, jtop, ina3221, none)" % choice)
    if choice == "none":
        return NoPower("power sampling switched off (--power none)")
    if choice in ("auto", "tegrastats"):
        executable = _which("tegrastats")
        if executable:
            return TegrastatsMonitor(executable).start()
    if choice in ("auto", "jtop"):
        found = jtop_reader()
        if found:
            read, close = found
            return PollingMonitor("jtop", read, interval_s=0.1, close=close).start()
    if choice in ("auto", "ina3221"):
        read = ina3221_reader()
        if read:
            return PollingMonitor("ina3221", read).start()
    return NoPower("no power sensor on this machine (no tegrastats, no jetson-stats jtop, no INA3221 rails in sysfs)"
                   if choice == "auto" else "--power %s: not available on this machine" % choice)
