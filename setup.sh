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
.venv/bin/python -m pip install --quiet -e ".[export,bench,test,serve]"

python36=""
for candidate in ${PYTHON36:-} "$HOME"/.pyenv/versions/3.6*/bin/python3.6 "$(command -v python3.6 2>/dev/null || true)"; do
    # pyenv's shim exists even when 3.6 is not selected, so only an interpreter that runs counts.
    if [ -x "$candidate" ] && "$candidate" -c "import sys; assert sys.version_info[:2] == (3, 6)" 2>/dev/null; then
        python36="$candidate"
        break
    fi
done
if [ -n "$python36" ] && [ ! -x .venv36/bin/python ]; then
    if ! { "$python36" -m venv .venv36 \
           && .venv36/bin/python -m pip install --quiet "pip==21.3.1" \
           && .venv36/bin/python -m pip install --quiet -r requirements/jetpack-4.6.txt; }; then
        echo "setup.sh: could not build the Python 3.6 edge environment; its tests will be skipped" >&2
        rm -rf .venv36
    fi
fi

python38=""
for candidate in ${PYTHON38:-} "$HOME"/.pyenv/versions/3.8*/bin/python3.8 "$(command -v python3.8 2>/dev/null || true)"; do
    if [ -x "$candidate" ] && "$candidate" -c "import sys; assert sys.version_info[:2] == (3, 8)" 2>/dev/null; then
        python38="$candidate"
        break
    fi
done
if [ -n "$python38" ] && [ ! -x .venv38/bin/python ]; then
    if ! { "$python38" -m venv .venv38 \
           && .venv38/bin/python -m pip install --quiet "pip==24.0" \
           && .venv38/bin/python -m pip install --quiet -r requirements/jetpack-5.1.txt; }; then
        echo "setup.sh: could not build the Python 3.8 edge environment; its tests will be skipped" >&2
        rm -rf .venv38
    fi
fi
