#!/usr/bin/env bash
# Create .venv and install relay with its test extra.
# torch is installed first and pinned: 2.13.0 is the local CPU build on our
# machines; any other version (or an unpinned range) pulls GBs of CUDA wheels.
# On a GPU machine install your CUDA torch first, then `pip install -e '.[gpu]'`.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q torch==2.13.0
.venv/bin/python -m pip install -q -e '.[dev]'
