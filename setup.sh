#!/usr/bin/env bash
# Sets up .venv with the toolkit and everything the export side, the benchmarks and the tests need.
# Where a Python 3.6 interpreter exists (JetPack 4.6's version), it also sets up .venv36 with the device's pinned
# stack (requirements/jetpack-4.6.txt: numpy 1.19.5, Pillow 8.4.0, onnxruntime 1.10.0), and where a Python 3.8 one
# exists (JetPack 5.1's), .venv38 (requirements/jetpack-5.1.txt: numpy 1.24.4, Pillow 10.4.0, onnxruntime 1.19.2);
# the tests run the edge subset on both, as Dockerfile.jetson installs it.
# Idempotent: a second run only checks that everything is installed.
set -euo pipefail
cd "$(dirname "$0")"
python_bin="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$python_bin" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".[export,bench,test,serve,eval]"

# edge_venv MINOR DIR PIP REQUIREMENTS: a venv of the device's pinned stack on the Python 3.MINOR interpreter found
# first (PYTHON3MINOR, pyenv, PATH); skipped with a warning where none runs or the install fails.
edge_venv() {
    local minor="$1" dir="$2" pip_pin="$3" requirements="$4" interpreter="" candidate override="PYTHON3$1"
    for candidate in ${!override:-} "$HOME"/.pyenv/versions/3."$minor"*/bin/python3."$minor" \
                     "$(command -v python3."$minor" 2>/dev/null || true)"; do
        # pyenv's shim exists even when the version is not selected, so only an interpreter that runs counts.
        if [ -x "$candidate" ] && "$candidate" -c "import sys; assert sys.version_info[:2] == (3, $minor)" 2>/dev/null; then
            interpreter="$candidate"
            break
        fi
    done
    if [ -n "$interpreter" ] && [ ! -x "$dir/bin/python" ]; then
        if ! { "$interpreter" -m venv "$dir" \
               && "$dir/bin/python" -m pip install --quiet "pip==$pip_pin" \
               && "$dir/bin/python" -m pip install --quiet -r "$requirements"; }; then
            echo "setup.sh: could not build the Python 3.$minor edge environment; its tests will be skipped" >&2
            rm -rf "$dir"
        fi
    fi
}

edge_venv 6 .venv36 21.3.1 requirements/jetpack-4.6.txt
edge_venv 8 .venv38 24.0 requirements/jetpack-5.1.txt
