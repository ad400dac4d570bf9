"""The device half on emulated aarch64: a Jetson's Cortex-A57 cores under QEMU user-mode emulation.

    scripts/aarch64.sh -- python -c "import platform; print(platform.machine())"       # aarch64
    scripts/aarch64.sh -- python -m ladon_deploy.runtime mobile --bundle B --image x.jpg --out x.ldn
    scripts/aarch64.sh --build                                                         # build only, timed

What runs there, built once and cached (LADON_AARCH64_CACHE, default .cache/aarch64 in the repository):

- root-*: Debian bookworm arm64 unpacked by `debootstrap --foreign --variant=minbase` (its Python 3.11 and the
  headers the coder compiles against). No chroot: the root's python3.11 runs as
  `qemu-aarch64-static -cpu cortex-a57 -L ROOT ROOT/usr/bin/python3.11`, which also makes its loader and libraries
  the root's.
- site-*: the device's pinned stack (requirements/jetpack-5.1.txt) from PyPI's aarch64 wheels, unpacked.
- edge-*: the files Dockerfile.jetson copies (read from the Dockerfile through tests/edge_install.py) and the native
  coder, compiled by the Dockerfile's gcc line with aarch64-linux-gnu-gcc against the root.

Each is assembled in a staging directory and renamed into place, under a lock, so concurrent callers build it once.
The host Python runs this file (it needs pip for `pip download`); the emulated one runs the command.
"""
import argparse
import contextlib
import fcntl
import glob
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import zipfile

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "tests"))

import edge_install  # noqa: E402  (tests/: the one reader of Dockerfile.jetson)
from ladon_deploy.atomic import make_staging_directory, replace_directory  # noqa: E402
from ladon_deploy.cli_support import OneLineParser, StepTimer, UsageError, run_command  # noqa: E402
from ladon_deploy.errors import LadonError  # noqa: E402

PROG = "scripts/aarch64.sh"
CPU = "cortex-a57"  # the Jetson Nano's cores (the Xavier NX has Carmel cores, which QEMU does not model)
SUITE = "bookworm"  # Debian's arm64 Python here is 3.11 (glibc 2.36); older suites are gone from the mirror
PYTHON = "python3.11"
# python3.11 and its headers (for the coder); debootstrap resolves their dependencies.
INCLUDE = ("python3.11", "libpython3.11-dev")
REQUIREMENTS = "requirements/jetpack-5.1.txt"  # the stack of the newest JetPack with a CPU onnxruntime wheel
# Wheels for a glibc no newer than the Nano's (2.27) are preferred; newer ones, up to the root's own 2.36, are
# taken only where a package has none older.
JETSON_GLIBC_MINOR = 27
ROOT_GLIBC_MINOR = 36
DEFAULT_MIRROR = "http://deb.debian.org/debian"
# Documentation and translations in the root, which nothing run here reads (2,200 of its 7,300 files, 53 MB).
UNREAD = ("usr/share/doc", "usr/share/man", "usr/share/locale", "usr/share/info", "usr/share/lintian")
# command -> the Debian package that provides it
TOOLS = (("qemu-aarch64-static", "qemu-user-static"), ("debootstrap", "debootstrap"),
         ("aarch64-linux-gnu-gcc", "gcc-aarch64-linux-gnu"), ("dpkg-deb", "dpkg"), ("tar", "tar"))
PYTHON_NAMES = ("python", "python3", PYTHON)
PRUNE_AFTER_S = 3600.0
# Host settings that would reach into the emulated interpreter or its loader.
DROPPED_ENVIRONMENT = ("PYTHONHOME", "PYTHONSTARTUP", "PYTHONUSERBASE", "PYTHONSAFEPATH", "VIRTUAL_ENV",
                       "LD_LIBRARY_PATH", "LD_PRELOAD", "QEMU_CPU", "QEMU_LD_PREFIX")


class Environment(object):
    """The three cached parts, by directory."""

    def __init__(self, cache, root, site, edge):
        self.cache = cache
        self.root = root
        self.site = site
        self.edge = edge

    def python_argv(self, arguments):
        """The emulated interpreter running `arguments`: no site module (it would add the host's dist-packages
        through -L's fallback) and no current directory on sys.path (the checkout's full package would shadow the
        edge subset)."""
        return [shutil.which("qemu-aarch64-static"), "-cpu", CPU, "-L", self.root,
                os.path.join(self.root, "usr", "bin", PYTHON), "-S", "-P"] + list(arguments)

    def environ(self, base=None):
        env = dict(os.environ if base is None else base)
        for name in DROPPED_ENVIRONMENT:
            env.pop(name, None)
        env["PYTHONPATH"] = os.pathsep.join([self.edge, self.site])
        env["PYTHONNOUSERSITE"] = "1"
        return env

    def describe(self):
        with open(os.path.join(self.site, "WHEELS.txt")) as handle:
            wheels = handle.read().split()
        return {"cache": self.cache, "root": self.root, "site": self.site, "edge": self.edge, "cpu": CPU,
                "suite": SUITE, "python": PYTHON, "wheels": wheels}


def cache_directory():
    return os.path.abspath(os.environ.get("LADON_AARCH64_CACHE") or os.path.join(REPO, ".cache", "aarch64"))


def missing_tools():
    """The Debian packages to install for the commands this needs, empty when all are there."""
    return [package for command, package in TOOLS if shutil.which(command) is None]


def install_hint(packages):
    return "apt-get install -y %s" % " ".join(packages)


def _digest(*parts):
    hasher = hashlib.sha256()
    for part in parts:
        hasher.update(part if isinstance(part, bytes) else str(part).encode("utf-8"))
        hasher.update(b"\0")
    return hasher.hexdigest()[:12]


def mirror_in_sources(paths):
    """The first non-security Debian URI of these apt sources files (one-line or deb822 format), else None."""
    for path in paths:
        with open(path, errors="replace") as handle:
            text = handle.read()
        uris = re.findall(r"^\s*deb\s+(?:\[[^\]]*\]\s+)?(\S+)", text, re.M)
        uris += [uri for line in re.findall(r"^\s*URIs:\s*(.+)$", text, re.M) for uri in line.split()]
        for uri in uris:
            if re.search(r"/debian/?$", uri) and "security" not in uri:
                return uri.rstrip("/")
    return None


def debian_mirror():
    """The Debian mirror apt uses here; LADON_AARCH64_MIRROR overrides it."""
    if os.environ.get("LADON_AARCH64_MIRROR"):
        return os.environ["LADON_AARCH64_MIRROR"]
    return mirror_in_sources(glob.glob("/etc/apt/sources.list") + sorted(glob.glob("/etc/apt/sources.list.d/*.list"))
                             + sorted(glob.glob("/etc/apt/sources.list.d/*.sources"))) or DEFAULT_MIRROR


def _run_logged(argv, log, what, cwd=None):
    """Runs a build step with its output appended to the build log; a failure is one line naming the log."""
    with open(log, "a") as handle:
        handle.write("$ %s\n" % " ".join(shlex.quote(a) for a in argv))
        handle.flush()
        result = subprocess.run(argv, stdout=handle, stderr=subprocess.STDOUT, cwd=cwd)
    if result.returncode != 0:
        with open(log, errors="replace") as handle:
            last = [line.strip() for line in handle if line.strip()][-1]
        raise LadonError("%s failed (exit %d): %s (whole output: %s)" % (what, result.returncode, last, log))


def _prune(cache, prefix, keep):
    """Removes the other builds of a part, except recent ones: a process started before this build may be running
    from one (an edge directory is rebuilt whenever an edge file changes)."""
    for path in glob.glob(os.path.join(cache, prefix + "-*")):
        if os.path.basename(path) != os.path.basename(keep) and time.time() - os.path.getmtime(path) > PRUNE_AFTER_S:
            shutil.rmtree(path, ignore_errors=True)


def build_root(final, log):
    """debootstrap's first stage unpacks only the required packages; the rest it downloaded (the --include closure,
    listed in debootstrap/base) is unpacked here, keeping the root's merged-/usr symlinks (/lib -> usr/lib)."""
    if os.geteuid() != 0:
        raise LadonError("building the arm64 root needs root (debootstrap creates device nodes): run %s --build "
                         "once as root" % PROG)
    staging = make_staging_directory(final)
    try:
        _run_logged(["debootstrap", "--foreign", "--arch=arm64", "--variant=minbase", "--include=" + ",".join(INCLUDE),
                     SUITE, staging, debian_mirror()], log, "debootstrap")
        archives = os.path.join(staging, "var", "cache", "apt", "archives")
        with open(os.path.join(staging, "debootstrap", "base")) as handle:
            packages = handle.read().split()
        for package in packages:
            found = glob.glob(os.path.join(archives, package + "_*.deb"))
            if len(found) != 1:
                raise LadonError("debootstrap left %d .deb files for %s in %s" % (len(found), package, archives))
            _run_logged(["sh", "-c", 'dpkg-deb --fsys-tarfile "$1" | tar -x --keep-directory-symlink -C "$2"', "sh",
                         found[0], staging], log, "unpacking %s" % package)
        for deb in glob.glob(os.path.join(archives, "*.deb")):  # 50 MB nothing reads again
            os.remove(deb)
        # Device nodes debootstrap made for a chroot: without one, the emulated process opens the host's /dev (-L
        # falls back to the host's path where the root has none), and the cache holds only plain files.
        shutil.rmtree(os.path.join(staging, "dev"))
        os.mkdir(os.path.join(staging, "dev"))
        for unread in UNREAD:
            shutil.rmtree(os.path.join(staging, unread), ignore_errors=True)
        if not os.path.exists(os.path.join(staging, "usr", "bin", PYTHON)):
            raise LadonError("the arm64 root has no /usr/bin/%s after debootstrap" % PYTHON)
        replace_directory(staging, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def wheel_platforms():
    """manylinux tags of aarch64 wheels in the order pip should prefer them: the Jetson's glibc and older first."""
    older = ["manylinux_2_%d_aarch64" % minor for minor in range(JETSON_GLIBC_MINOR, 16, -1)]
    newer = ["manylinux_2_%d_aarch64" % minor for minor in range(JETSON_GLIBC_MINOR + 1, ROOT_GLIBC_MINOR + 1)]
    return older + ["manylinux2014_aarch64"] + newer


def pinned_requirements():
    return ["%s==%s" % item for item in sorted(edge_install.pinned(REQUIREMENTS).items())]


def build_site(final, log):
    """The pinned stack's aarch64 wheels, unpacked. --no-deps: onnxruntime's declared dependencies (coloredlogs,
    flatbuffers, packaging, protobuf, sympy) are for its tools, and inference imports none of them."""
    staging = make_staging_directory(final)
    try:
        wheels = os.path.join(staging, ".wheels")
        argv = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                "--implementation", "cp", "--python-version", PYTHON[len("python"):], "--dest", wheels]
        for platform in wheel_platforms():
            argv += ["--platform", platform]
        _run_logged(argv + pinned_requirements(), log, "pip download of the aarch64 wheels")
        names = sorted(os.listdir(wheels))
        for name in names:
            with zipfile.ZipFile(os.path.join(wheels, name)) as archive:
                archive.extractall(staging)
        shutil.rmtree(wheels)
        with open(os.path.join(staging, "WHEELS.txt"), "w") as handle:
            handle.write("\n".join(names) + "\n")
        replace_directory(staging, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _edge_digest(root):
    """What the edge directory is made of: the copied files' contents, the gcc line and the root it targets."""
    parts = [edge_install.compile_line(), os.path.basename(root)]
    for source in sorted(edge_install.edge_sources()):
        origin = os.path.join(REPO, edge_install.PACKAGE, source)
        files = [origin] if os.path.isfile(origin) else sorted(
            os.path.join(directory, name) for directory, _, names in os.walk(origin) for name in names
            if not name.endswith((".so", ".pyc")))
        for path in files:
            with open(path, "rb") as handle:
                parts += [os.path.relpath(path, REPO), handle.read()]
    return _digest(*parts)


def cross_compile_line(root, include_dir, suffix):
    """Dockerfile.jetson's gcc line, for the root: its compiler is the cross one, its system headers and libc the
    root's (--sysroot), its python3-config answers those of the emulated interpreter."""
    line = edge_install.compile_line()
    if not line.startswith("gcc "):
        raise LadonError("Dockerfile.jetson's coder line does not start with gcc: %s" % line)
    line = "aarch64-linux-gnu-gcc --sysroot=%s %s" % (shlex.quote(root), line[len("gcc "):])
    line = line.replace("$(python3-config --includes)", "-I" + shlex.quote(root + include_dir))
    line = line.replace("$(python3-config --extension-suffix)", suffix)
    if "$(" in line:
        raise LadonError("Dockerfile.jetson's gcc line has a substitution this does not know: %s" % line)
    return line


def build_edge(final, environment, log):
    staging = make_staging_directory(final)
    try:
        edge_install.copy_edge_files(staging)
        probe = subprocess.run(environment.python_argv(["-c", "import sysconfig; print(sysconfig.get_config_var("
                                                              "'INCLUDEPY')); print(sysconfig.get_config_var("
                                                              "'EXT_SUFFIX'))"]),
                               env=environment.environ(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               universal_newlines=True, timeout=120)
        if probe.returncode != 0:
            raise LadonError("the emulated %s does not start: %s" % (PYTHON, (probe.stderr.strip().splitlines()
                                                                            or ["no output"])[-1]))
        include_dir, suffix = probe.stdout.split()
        _run_logged(shlex.split(cross_compile_line(environment.root, include_dir, suffix)), log,
                    "cross-compiling the native coder", cwd=staging)
        replace_directory(staging, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@contextlib.contextmanager
def _locked(cache):
    with open(os.path.join(cache, ".lock"), "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def prepare(timer=None):
    """The environment, built where a part is missing or stale; returns it. `timer` collects the build steps."""
    missing = missing_tools()
    if missing:
        raise LadonError("emulating aarch64 needs %s: run `%s` (as root)"
                         % (", ".join(c for c, p in TOOLS if p in missing), install_hint(missing)))
    timer = timer or StepTimer()
    cache = cache_directory()
    root = os.path.join(cache, "root-" + _digest(SUITE, INCLUDE, "minbase", "arm64"))
    site = os.path.join(cache, "site-" + _digest(PYTHON, pinned_requirements(), wheel_platforms()))
    edge = os.path.join(cache, "edge-" + _edge_digest(root))
    environment = Environment(cache, root, site, edge)
    if all(os.path.isdir(path) for path in (root, site, edge)):
        return environment
    os.makedirs(cache, exist_ok=True)
    log = os.path.join(cache, "build.log")
    with _locked(cache):
        with open(log, "w") as handle:  # the log of the latest build only
            handle.write("# %s build, %s\n" % (PROG, time.strftime("%Y-%m-%d %H:%M:%S")))
        # Another process may have built some of it while this one waited for the lock.
        for prefix, path, build in (("root", root, lambda: build_root(root, log)),
                                    ("site", site, lambda: build_site(site, log)),
                                    ("edge", edge, lambda: build_edge(edge, environment, log))):
            if not os.path.isdir(path):
                with timer.measure(prefix):
                    build()
                _prune(cache, prefix, path)
    return environment


def build_parser():
    parser = OneLineParser(prog=PROG, description="Run a Python command of the device half on emulated aarch64 "
                                                  "(QEMU, -cpu %s), with the edge subset and the device's pinned "
                                                  "stack from aarch64 wheels. Times are emulated, not a Jetson's."
                                                  % CPU)
    parser.add_argument("--build", action="store_true", help="build the cached environment and print its steps' "
                                                            "times (nothing runs)")
    parser.add_argument("--info", action="store_true", help="print the environment as JSON (building it if needed)")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- python ARGS...")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not (args.build or args.info) and not command:
        raise UsageError("nothing to run: give -- python ARGS... (or --build)")
    if command and os.path.basename(command[0]) not in PYTHON_NAMES:
        raise UsageError("only Python runs emulated (one process: QEMU user mode cannot start other aarch64 "
                         "programs here); got %r" % command[0])
    timer = StepTimer()
    started = time.perf_counter()
    environment = prepare(timer)
    if args.build:
        print(timer.table() if timer.steps else "already built (%.2f s to check)" % (time.perf_counter() - started))
    if args.info:
        print(json.dumps(environment.describe(), indent=1))
    if not command:
        return 0
    sys.stdout.flush()
    argv = environment.python_argv(command[1:])
    os.execve(argv[0], argv, environment.environ())


if __name__ == "__main__":
    sys.exit(run_command(PROG, main))
