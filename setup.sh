#!/usr/bin/env bash
# Sets up .venv with the toolkit and everything the export side, the benchmarks and the tests need.
# Where a Python 3.6 interpreter exists (JetPack 4.6's version), it also sets up .venv36 with the device's pinned
# stack (numpy 1.19.5, Pillow 8.4.0, onnxruntime 1.10.0), on which the tests run the edge subset.
# Idempotent: a second run only checks that everything is installed.
set -euo pipefail
cd "$(dirname "$0")"
python_bin="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$python_bin" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".[export,bench,test]"

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
           && .venv36/bin/python -m pip install --quiet numpy==1.19.5 pillow==8.4.0 onnxruntime==1.10.0; }; then
        echo "setup.sh: could not build the Python 3.6 edge environment; its tests will be skipped" >&2
        rm -rf .venv36
    fi
fi
