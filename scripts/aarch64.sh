#!/usr/bin/env bash
# Runs a Python command of the device half on emulated aarch64 (QEMU user mode, -cpu cortex-a57: a Jetson Nano's
# cores) with the edge subset and the device's pinned stack from aarch64 wheels; see docs/aarch64.md.
#
#   scripts/aarch64.sh -- python -c "import platform; print(platform.machine())"     # aarch64
#   scripts/aarch64.sh -- python -m ladon_deploy.runtime mobile --bundle B --image x.jpg --out x.ldn
#   scripts/aarch64.sh --build                                                       # build the cache only, timed
#
# The first call builds the environment (as root: debootstrap) under LADON_AARCH64_CACHE (default .cache/aarch64);
# the builder runs on the host's Python (LADON_HOST_PYTHON, else the repository's .venv, else python3), which needs
# pip. Times measured under it are QEMU's, not a Jetson's.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
python="${LADON_HOST_PYTHON:-}"
if [ -z "$python" ]; then
    if [ -x "$here/../.venv/bin/python" ]; then
        python="$here/../.venv/bin/python"
    else
        python="$(command -v python3 || true)"
    fi
fi
if [ -z "$python" ]; then
    echo "scripts/aarch64.sh: error: needs a host Python 3 with pip: run \`apt-get install -y python3 python3-pip\`" >&2
    exit 2
fi
exec "$python" "$here/aarch64/environment.py" "$@"
