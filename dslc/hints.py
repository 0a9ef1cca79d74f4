"""Hints for names from other frameworks: a PyTorch or Keras layer or argument that dslc spells differently.

They come before the near-miss spelling hint (`did_you_mean`), which guesses from letters alone: `activation`
looks like `dilation`, but a Keras user means an activation function. Every dslc form named here is checked
against the registry by the tests.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from dslc.params import Param

_INFERRED = "in_channels come from the input"

# Layer names dslc does not have -> the hint, with the dslc form in backticks.
LAYERS: dict[str, str] = {
    "Conv2D": f"Keras's Conv2D(filters, kernel_size) is `Conv2d(out_channels, kernel)` in dslc; {_INFERRED}",
    "Conv2DTranspose": f"Keras's Conv2DTranspose is `ConvTranspose2d(out_channels, kernel)` in dslc; {_INFERRED}",
    "BatchNormalization": "Keras's BatchNormalization is `BatchNorm2d` (images) or `BatchNorm1d` ([batch, "
    "features]) in dslc; the feature count comes from the input",
    "LayerNormalization": "Keras's LayerNormalization is `LayerNorm` in dslc",
    "MaxPooling1D": "Keras's MaxPooling1D(pool_size) is `MaxPool1d(kernel)` in dslc",
    "MaxPooling2D": "Keras's MaxPooling2D(pool_size) is `MaxPool2d(kernel)` in dslc",
    "AveragePooling1D": "Keras's AveragePooling1D(pool_size) is `AvgPool1d(kernel)` in dslc",
    "AveragePooling2D": "Keras's AveragePooling2D(pool_size) is `AvgPool2d(kernel)` in dslc",
    "GlobalAveragePooling1D": "write `-> AdaptiveAvgPool1d(1) -> Flatten` (or the function mean(x, dim=-1))",
    "GlobalAveragePooling2D": "write `-> AdaptiveAvgPool2d(1) -> Flatten` (or the function mean(x, dim=(2, 3)))",
    "GlobalMaxPooling2D": "use the function: h = max(x, dim=(2, 3))",
    "Activation": "an activation is a layer of its own in dslc: `-> ReLU`, `-> GELU`, `-> Tanh`, `-> Softmax`",
    "SimpleRNN": "Keras's SimpleRNN(units) is `RNN(hidden_size)` in dslc",
    "MultiHeadAttention": "Keras's MultiHeadAttention(num_heads, key_dim) is `MultiheadAttention(heads)` in dslc; "
    "the model size comes from the input",
    "Sequential": "a pipeline is dslc's Sequential: `x -> Linear(64) -> ReLU -> Linear(10)`",
}

# Keras's activation strings -> dslc's activation layers (None: Keras's "linear" is no activation).
ACTIVATIONS: dict[str, str | None] = {
    "relu": "ReLU",
    "gelu": "GELU",
    "tanh": "Tanh",
    "sigmoid": "Sigmoid",
    "softmax": "Softmax",
    "swish": "SiLU",
    "silu": "SiLU",
    "elu": "ELU",
    "leaky_relu": "LeakyReLU",
    "softplus": "Softplus",
    "linear": None,
}

# Argument names -> the dslc names they may stand for, the first the layer has wins.
RENAMES: dict[str, tuple[str, ...]] = {
    "kernel_size": ("kernel",),
    "pool_size": ("kernel",),
    "strides": ("stride",),
    "dilation_rate": ("dilation",),
    "filters": ("out_channels",),
    "units": ("out_features", "hidden_size"),
    "out_channels": ("out_features",),
    "rate": ("p",),
    "use_bias": ("bias",),
    "input_dim": ("num_embeddings",),
    "output_dim": ("embedding_dim",),
    "epsilon": ("eps",),
    "num_layers": ("layers",),
    "num_heads": ("heads",),
    "alpha": ("negative_slope",),
    "axis": ("dim", "dims"),
    "keepdims": ("keepdim",),
}

# Arguments dslc reads from the input's shape.
INFERRED = ("in_channels", "in_features", "num_features", "input_size", "input_dim", "embed_dim", "input_shape")

# Arguments with no dslc counterpart -> what to do instead.
DROPPED: dict[str, str] = {
    "inplace": "dslc's generated code computes out of place; leave it out",
    "batch_first": "dslc's recurrent layers and attention are always batch-first; leave it out",
    "return_sequences": 'dslc writes it as returns="sequence" (the default) or returns="last"',
}


# Layers dslc has under a name another framework uses for something else: the hint when a call of it fails.
CALLS: dict[str, str] = {
    "Conv1D": "Keras's Conv1D(filters, kernel_size) is `Conv1d(out_channels, kernel)` in dslc; dslc's Conv1D is "
    "GPT-2's (Hugging Face's) linear layer with an [in, out] weight: `Conv1D(out_features)`",
}


def call_hint(op: str) -> str | None:
    """The hint for a failed call of `op`, when another framework's layer of that name takes other arguments."""
    return CALLS.get(op)


def layer_hint(name: str) -> str | None:
    """The hint for a layer name from another framework, or None."""
    return LAYERS.get(name)


def argument_hint(op: str, key: str, params: Sequence[Param], value: Any = None) -> str | None:
    """The hint for an argument `key` that `op` (with parameters `params`) lacks, or None. `value` is the
    argument's literal value where it has one, to write the dslc form with it."""
    if key == "activation":
        layer = ACTIVATIONS.get(value, "ReLU") if isinstance(value, str) else "ReLU"
        if layer is None:
            return "Keras's linear activation is no activation; leave it out"
        return f"an activation is a layer of its own in dslc: write `-> {op}(...) -> {layer}`"
    names = [p.name for p in params]
    target = next((name for name in RENAMES.get(key, ()) if name in names), None)
    if target is None:
        return f"dslc infers {key} from the input's shape; leave it out" if key in INFERRED else DROPPED.get(key)
    positional = target == names[0] and (params[0].required or len(params) == 1)  # BatchNorm2d's eps is not
    if not positional:
        return f"dslc calls it '{target}'"
    hint = f"dslc calls it '{target}', {op}'s first positional argument"
    alone = not any(p.required for p in params[1:])  # `Linear(64)` is the whole call; `Embedding(100)` is not
    if alone and isinstance(value, (int, float)) and not isinstance(value, bool):
        hint += f": `{op}({value})`"
    return hint
