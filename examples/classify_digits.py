"""Classify scikit-learn's handwritten digits with a trained dslc model, using only the runtime.

    python examples/classify_digits.py runs/cnn        # a `dslc train` run folder (or a build folder)

The images are prepared as the `digits` data set does for training: scaled to [0, 1] and resized
bilinearly to the model's input size (here with numpy, since the app carries no torch).
"""

from __future__ import annotations

import sys

import numpy as np
from dslc_runtime import Model
from dslc_runtime.tasks import classify
from sklearn.datasets import load_digits


def resize_bilinear(images: np.ndarray, size: int) -> np.ndarray:
    """[n, h, w] -> [n, size, size], half-pixel centres (PyTorch's align_corners=False)."""
    n, h, w = images.shape

    def grid(src: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        pos = np.clip((np.arange(size) + 0.5) * src / size - 0.5, 0, src - 1)
        low = np.floor(pos).astype(int)
        return low, np.minimum(low + 1, src - 1), pos - low

    y0, y1, wy = grid(h)
    x0, x1, wx = grid(w)
    top = images[:, y0][:, :, x0] * (1 - wx) + images[:, y0][:, :, x1] * wx
    bottom = images[:, y1][:, :, x0] * (1 - wx) + images[:, y1][:, :, x1] * wx
    return top * (1 - wy)[:, None] + bottom * wy[:, None]


def main(path: str) -> None:
    model = Model.load(path)  # GPU when available, else CPU (model.provider says which)
    size = model.signature.inputs[0].shape[-1]
    digits = load_digits()
    images = resize_bilinear(digits.images / 16.0, size).clip(0, 1).astype(np.float32)[:, None]
    predictions = classify(model, {"image": images}, top_k=1)
    predicted = np.array([int(p[0].label) for p in predictions])
    accuracy = float((predicted == digits.target).mean())
    print(f"{model.name} on {model.provider}: {len(images)} digits, accuracy {accuracy:.3f}")
    for i in range(5):
        best = predictions[i][0]
        print(f"  digit {i}: true {digits.target[i]}, predicted {best.label} (p={best.probability:.2f})")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/cnn")
