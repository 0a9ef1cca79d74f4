"""Regenerate ``examples/models/iris/`` (a tiny classifier + manifest) without the compiler.

Dev-time only (needs the ``onnx`` package); the apps themselves only need dslc_runtime or
onnxruntime-node. The layout mirrors a dslc build directory: ``manifest.json`` + ``<model>.onnx``
whose ``metadata_props`` carry the ``dslc.*`` keys.

    python examples/make_example_model.py
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OUT = Path(__file__).parent / "models" / "iris"
LABELS = ["setosa", "versicolor", "virginica"]
INPUTS = [
    {
        "name": "features",
        "dtype": "float32",
        "shape": ["batch", 4],
        "doc": "sepal/petal sizes in cm",
    }
]
OUTPUTS = [{"name": "logits", "dtype": "float32", "shape": ["batch", 3], "doc": "class scores"}]
SPEC = "model iris { input features: float32[batch, 4]; ... }  # placeholder spec text\n"


# Class means of the iris data set (sepal length/width, petal length/width, cm).
CENTROIDS = np.array([[5.0, 3.4, 1.5, 0.2], [5.9, 2.8, 4.3, 1.3], [6.6, 3.0, 5.6, 2.0]], dtype=np.float32)


def build() -> onnx.ModelProto:
    # Nearest-centroid classifier written as a linear layer: -|x - c|^2 = 2 c.x - |c|^2 - |x|^2.
    w = (2.0 * CENTROIDS.T).astype(np.float32)
    b = -(CENTROIDS**2).sum(axis=1).astype(np.float32)
    nodes = [helper.make_node("Gemm", ["features", "w", "b"], ["logits"])]
    graph = helper.make_graph(
        nodes,
        "iris",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")],
    )
    # IR 8 / opset 17: loadable by every onnxruntime (Python and Node) from 1.14 on.
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    spec_sha = hashlib.sha256(SPEC.encode()).hexdigest()
    helper.set_model_props(
        model,
        {
            "dslc.version": "0.1.0",
            "dslc.spec_sha256": spec_sha,
            "dslc.model": "iris",
            "dslc.inputs": json.dumps(INPUTS),
            "dslc.outputs": json.dumps(OUTPUTS),
            "dslc.labels": json.dumps(LABELS),
        },
    )
    onnx.checker.check_model(model)
    return model


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    model = build()
    onnx.save(model, OUT / "iris.onnx")
    manifest = {
        "dslc_version": "0.1.0",
        "spec": "iris.model",
        "spec_sha256": hashlib.sha256(SPEC.encode()).hexdigest(),
        "models": [
            {
                "name": "iris",
                "onnx": "iris.onnx",
                "onnx_sha256": hashlib.sha256((OUT / "iris.onnx").read_bytes()).hexdigest(),
                "inputs": INPUTS,
                "outputs": OUTPUTS,
            }
        ],
    }
    (OUT / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
