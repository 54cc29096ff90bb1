#!/usr/bin/env bash
# Install what Portal needs on Debian 12 (as root): system packages, then a
# virtual environment in .venv with Portal and its test tools.
set -euo pipefail
cd "$(dirname "$0")/.."

# fuse3 and libfuse3-dev: the mount (pyfuse3 builds against libfuse3);
# rsync and git: tools the test suite drives inside a mount; g++: the tests run kernels/*.cu on the CPU.
packages=(python3 python3-venv python3-dev gcc g++ pkg-config fuse3 libfuse3-dev rsync git)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}" >/dev/null
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e '.[test]'
# Byte-compiled now: an editable install leaves that to the first import, which writes nothing where
# PYTHONDONTWRITEBYTECODE is set (as in many containers): every command would compile Portal again (~70 ms).
.venv/bin/python -m compileall -q portalfs >/dev/null
echo "Portal installed in $(pwd)/.venv"
