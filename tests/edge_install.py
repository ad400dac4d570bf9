"""What Dockerfile.jetson installs, read from the Dockerfile itself, so that tests run exactly that file set.

The tests cannot build the image (no aarch64 machine, no NVIDIA registry), so they reproduce its two steps that
matter on this machine: the COPY instructions of the final stage (the edge subset) and the one gcc line that
compiles the native coder, run for a given interpreter.
"""
import os
import re
import shlex
import shutil
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCKERFILE = os.path.join(ROOT, "Dockerfile.jetson")
PACKAGE = "ladon_deploy/"


def instructions(path=DOCKERFILE):
    """The Dockerfile as (INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    lines, current = [], ""
    with open(path) as handle:
        for raw in handle:
            line = raw.rstrip("\n")
            if not current and line.lstrip().startswith("#"):
                continue
            if line.endswith("\\"):
                current += line[:-1] + " "
                continue
            current += line
            if current.strip():
                keyword, _, arguments = current.strip().partition(" ")
                lines.append((keyword.upper(), " ".join(arguments.split())))
            current = ""
    return lines


def stages(path=DOCKERFILE):
    """[(base image, stage name or None, [(INSTRUCTION, arguments), ...]), ...] in file order."""
    found = []
    for keyword, arguments in instructions(path):
        if keyword == "FROM":
            words = arguments.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            found.append((words[0], name, []))
        elif found:
            found[-1][2].append((keyword, arguments))
    return found


def edge_sources(path=DOCKERFILE):
    """The package paths the final stage copies, relative to ladon_deploy/ ("device", "bundle.py", ...)."""
    sources = []
    for keyword, arguments in stages(path)[-1][2]:
        if keyword == "COPY":
            words = arguments.split()
            sources += [w[len(PACKAGE):].rstrip("/") for w in words[:-1] if w.startswith(PACKAGE)]
    return sources


def compile_line(path=DOCKERFILE):
    """The final stage's RUN gcc command line, as written."""
    lines = [arguments for keyword, arguments in stages(path)[-1][2]
             if keyword == "RUN" and arguments.startswith("gcc ")]
    assert len(lines) == 1, "Dockerfile.jetson should compile the coder with exactly one gcc line: %r" % lines
    return lines[0]


def python_config(python):
    """What `python3-config --includes` and `--extension-suffix` say for this interpreter (venvs have no
    python3-config)."""
    output = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_config_var('INCLUDEPY')); "
                                           "print(sysconfig.get_config_var('EXT_SUFFIX'))"],
                            stdout=subprocess.PIPE, universal_newlines=True, check=True).stdout.split()
    return "-I" + output[0], output[1]


def install_edge(destination, python):
    """Copies what the Dockerfile copies into destination/ladon_deploy and compiles the coder with its gcc line
    for `python`; returns the directory to put on PYTHONPATH."""
    destination = str(destination)
    copy_edge_files(destination)
    compile_coder(destination, python)
    return destination


def copy_edge_files(destination):
    """Copies what the Dockerfile copies into destination/ladon_deploy (scripts/aarch64 uses it too)."""
    for source in edge_sources():
        origin = os.path.join(ROOT, PACKAGE, source)
        target = os.path.join(destination, PACKAGE, source)
        if os.path.isdir(origin):
            # .dockerignore keeps built extensions and caches out of the image: leave them out here too.
            shutil.copytree(origin, target, ignore=shutil.ignore_patterns("*.so", "__pycache__"))
        else:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            shutil.copy2(origin, target)


def compile_coder(destination, python):
    """Runs the Dockerfile's gcc line in destination (which holds ladon_deploy/) for `python`."""
    includes, suffix = python_config(python)
    line = compile_line().replace("$(python3-config --includes)", includes)
    line = line.replace("$(python3-config --extension-suffix)", suffix)
    assert "$(" not in line, "an unexpected substitution in the gcc line: %s" % line
    subprocess.run(shlex.split(line), cwd=str(destination), check=True, stdout=subprocess.PIPE,
                   stderr=subprocess.PIPE)


def pinned(requirements_file):
    """{name: version} of a requirements file's `name==version` lines."""
    pins = {}
    with open(os.path.join(ROOT, requirements_file)) as handle:
        for line in handle:
            match = re.match(r"^\s*([A-Za-z0-9_.-]+)==([^\s#]+)", line)
            if match:
                pins[match.group(1).lower()] = match.group(2)
    return pins
