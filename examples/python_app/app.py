"""A tiny application embedding dslc_runtime (no torch, no compiler).

    python examples/python_app/app.py                       # demo on random flowers
    python examples/python_app/app.py --json input.json     # outputs as JSON (same format as node_app)

Input JSON format (shared with ``examples/node_app/run.mjs``)::

    {"features": {"dtype": "float32", "shape": [2, 4], "data": [5.1, 3.5, 1.4, 0.2, ...]}}
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from dslc_runtime import Model
from dslc_runtime.cli import outputs_to_json
from dslc_runtime.tasks import classify

DEFAULT_MODEL = Path(__file__).resolve().parent.parent / "models" / "iris"


def read_json_inputs(path: Path) -> dict[str, np.ndarray]:
    raw = json.loads(path.read_text())
    return {name: np.asarray(t["data"], dtype=t["dtype"]).reshape(t["shape"]) for name, t in raw.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(DEFAULT_MODEL), help=".onnx file or build directory")
    parser.add_argument("--json", type=Path, help="inputs as JSON; print outputs as JSON")
    args = parser.parse_args()

    model = Model.load(args.model, providers="auto")
    if args.json is not None:
        print(outputs_to_json(model.run(read_json_inputs(args.json))))
        return

    print(f"loaded {model.name} on {model.provider}")
    print(model.signature.describe())
    flowers = np.array(
        [[5.1, 3.5, 1.4, 0.2], [6.0, 2.7, 4.5, 1.4], [6.9, 3.1, 5.8, 2.2]],
        dtype=np.float32,
    )
    for row, preds in zip(flowers, classify(model, flowers, top_k=2), strict=True):
        ranked = ", ".join(f"{p.label} {p.probability:.2f}" for p in preds)
        print(f"{np.round(row, 1)} -> {ranked}")


if __name__ == "__main__":
    main()
