#!/usr/bin/env bash
# Creates .venv with dslc, its runtime and the test tools. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
# The CPU build of torch, from PyTorch's CPU index: PyPI's Linux torch is the CUDA build (~15 CUDA wheels, GBs).
# For a GPU: DSLC_TORCH_INDEX=https://download.pytorch.org/whl/cu128 ./scripts/setup.sh
python -m pip install -q "torch==2.13.0" --index-url "${DSLC_TORCH_INDEX:-https://download.pytorch.org/whl/cpu}"
python -m pip install -q ./runtime -e ".[test,data,plots,lsp]"
