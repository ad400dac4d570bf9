"""Peak resident memory of a separate process, as the OS accounts it.

A device runs only its own side, so memory is measured on a child process that does just that: the kernel's
high-water mark of its resident set (ru_maxrss, returned by wait4 for exactly that child), not an estimate made from
inside the measuring process.

Linux folds the address space a process had before exec() into its ru_maxrss, and a spawned child starts out
sharing (vfork) or copying (fork) its parent's. Measured straight from a benchmark that holds torch and several
sessions, every child would report the benchmark's own gigabytes. So the target is started by a small launcher
interpreter, whose few MB are all that can leak into the figure.
"""
import json
import sys
from typing import Dict, List, Optional, Sequence

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
