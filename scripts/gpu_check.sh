#!/usr/bin/env bash
# The GPU check: records what an NVIDIA machine has and measures what it can (scripts/gpu_check.py), into one JSON.
#     scripts/gpu_check.sh [OUT.json] [--bundle B] [--budget SECONDS] [--no-export]
# Needs only the working tree and whatever Python the machine has (PYTHON, else python3); nothing is installed.
# The demo bundle is exported here only if torch, torchvision, compressai, sc2bench and onnx are importable;
# otherwise pass --bundle. The whole run is bounded (540 s of steps, killed at 590 s).
set -u
cd "$(dirname "$0")/.."
out="${1:-gpu_check.json}"
[ $# -gt 0 ] && shift
python_bin="${PYTHON:-python3}"
[ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ] && python_bin=.venv/bin/python
# The toolkit's native coder is not needed here (no payload is coded); ONNX Runtime prints less with this.
export ORT_LOGGING_LEVEL="${ORT_LOGGING_LEVEL:-3}"
PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" timeout 590 "$python_bin" scripts/gpu_check.py --out "$out" "$@"
status=$?
[ $status -eq 124 ] && echo "gpu_check: stopped at 590 s; $out may be missing" >&2
exit $status
