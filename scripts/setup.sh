#!/usr/bin/env bash
# Creates .venv with dslc, its runtime and the test tools. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
# The CPU build of torch (a plain `torch` requirement would pull a multi-GB CUDA build).
python -m pip install -q "torch==2.13.0"
python -m pip install -q ./runtime -e ".[test,data,plots,lsp]"
