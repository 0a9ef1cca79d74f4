#!/usr/bin/env bash
# The CUDA paths in one run, for a machine with an NVIDIA GPU (run from the repository root):
#   1. what the machine has: the GPU, torch's CUDA, onnxruntime's providers;
#   2. the fast tests with CUDA visible (training picks the GPU with --device auto; the runtime the CUDA provider);
#   3. dslc train --device cuda --amp on a shipped spec, then its ONNX through the CUDA provider;
#   4. cached generation with the CUDA provider and IOBinding (the cache stays on the device): tokens equal CPU's;
#   5. the fp16, bf16 and int8 graphs on the CUDA provider (bf16 runs nowhere else): within their tolerance of float32;
#   6. the GPU benches: generation (runtime vs HuggingFace generate() on the GPU), the runtime's call overhead, and
#      the precisions' latency and accuracy on CUDA.
# Figures go to stdout and to $OUT (default ./gpu_check) so a remote run brings them back.
# Needs onnxruntime-gpu with its CUDA libraries and a CUDA build of torch (a CPU machine fails at step 1).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/gpu_check}"
mkdir -p "$OUT"
PY="${PYTHON:-.venv/bin/python}"
DSLC="${DSLC:-.venv/bin/dslc}"
status=0
step() { echo; echo "== $*"; }
run() { "$@" 2>&1 | tee -a "$OUT/log.txt"; local rc=${PIPESTATUS[0]}; [ "$rc" -eq 0 ] || { echo "FAILED ($rc): $*"; status=1; }; }

step "1. the machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee "$OUT/gpu.txt" || status=1
run "$PY" - <<'EOF'
import onnxruntime as ort
import torch

print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
print("onnxruntime", ort.__version__, ort.get_available_providers())
assert torch.cuda.is_available(), "torch sees no GPU"
assert "CUDAExecutionProvider" in ort.get_available_providers(), "onnxruntime has no CUDA provider"
EOF

step "2. fast tests with CUDA visible (training, runtime, generation)"
run timeout 900 "$PY" -m pytest -q -m "not slow" -x tests/training tests/runtime -p no:cacheprovider

step "3. dslc train --device cuda --amp, then the ONNX on the CUDA provider"
rm -rf "$OUT/cnn_cuda"
run "$DSLC" train specs/cnn.model --device cuda --amp --epochs 1 -o "$OUT/cnn_cuda"
run "$PY" - "$OUT/cnn_cuda" <<'EOF'
import sys

import numpy as np
from dslc_runtime import Model

image = np.random.default_rng(0).random((8, 1, 28, 28), dtype=np.float32)
cpu = Model.load(sys.argv[1], providers="cpu").run(image=image)["logits"]
gpu = Model.load(sys.argv[1], providers="cuda")
got = gpu.run(image=image)["logits"]
print(f"{gpu.provider}: logits max abs diff to CPU {np.abs(got - cpu).max():.2e}")
assert gpu.provider == "CUDAExecutionProvider" and np.abs(got - cpu).max() < 1e-3
EOF

step "4. cached generation on the CUDA provider with IOBinding: the same tokens as on the CPU"
rm -rf "$OUT/gpt2"
run "$DSLC" build specs/gpt2.model -o "$OUT/gpt2"
run "$PY" - "$OUT/gpt2" <<'EOF'
import sys
import time

import numpy as np
from dslc_runtime import Generator

build = sys.argv[1]
prompt = np.random.default_rng(0).integers(0, 256, size=(4, 20)).astype(np.int64)
cpu = Generator.load(build, providers="cpu").generate(prompt, 64)
gpu = Generator.load(build, providers="cuda", io_binding=True)
start = time.perf_counter()
tokens = gpu.generate(prompt, 64)
elapsed = time.perf_counter() - start
print(f"cuda + IOBinding: {gpu.provider}; 4 x 64 tokens in {elapsed:.3f} s; equal to CPU: {np.array_equal(tokens, cpu)}")
assert gpu.provider == "CUDAExecutionProvider", gpu.provider
assert np.array_equal(tokens, cpu), "CUDA tokens differ from CPU tokens"
EOF

step "5. fp16, bf16 and int8 graphs on the CUDA provider, against the float32 graph on the CPU"
for spec in cnn bert_classifier; do
  rm -rf "$OUT/precision_$spec"
  run "$DSLC" build "specs/$spec.model" -o "$OUT/precision_$spec/fp16" --precision fp16 --quantize int8
  run "$DSLC" build "specs/$spec.model" -o "$OUT/precision_$spec/bf16" --precision bf16
  run "$PY" - "$OUT/precision_$spec" <<'EOF'
import sys
from pathlib import Path

import numpy as np
from dslc_runtime import Model
from dslc_runtime.cli import random_inputs

root = Path(sys.argv[1])
full = Model.load(root / "fp16", providers="cpu")
feeds = random_inputs(full, 8)
want = full.run(feeds)
scale = max(1.0, max(float(np.abs(w).max()) for w in want.values()))
for folder, variant, tolerance in (("fp16", "fp16", 1e-2), ("fp16", "int8", 0.05), ("bf16", "bf16", 0.05)):
    model = Model.load(root / folder, variant=variant, providers="cuda")
    got = model.run(feeds)
    diff = max(float(np.abs(got[k] - want[k]).max()) for k in want)
    print(f"{root.name} {variant} on {model.provider}: max abs diff to float32 {diff:.2e} (allowed {tolerance * scale:.2e})")
    assert model.provider == "CUDAExecutionProvider" and diff <= tolerance * scale, variant
EOF
done

step "6. GPU benches"
run "$PY" bench/bench_generate.py --providers cuda --prompts 32,128 --new 512
run "$PY" bench/bench_runtime.py --rounds 11
run "$PY" bench/bench_precision.py --cuda

echo
[ "$status" -eq 0 ] && echo "gpu_check: all steps passed" || echo "gpu_check: some steps FAILED (see above)"
exit "$status"
