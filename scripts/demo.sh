#!/usr/bin/env bash
# The main job: compile a shipped spec, train it on embedded data, run the trained ONNX.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/dslc ] || ./scripts/setup.sh
. .venv/bin/activate
dslc check specs/cnn.model --shapes
dslc build specs/cnn.model -o build/cnn
dslc train specs/cnn.model --out runs/cnn --epochs 3
python examples/classify_digits.py runs/cnn
