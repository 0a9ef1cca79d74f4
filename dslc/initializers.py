"""How a declared parameter (`param cls_token: float32[1, 1, d] = trunc_normal(std=0.02)`) starts.

One entry per initialiser: its arguments, its documentation, and the PyTorch expression that creates
the tensor (`torch.zeros(1, 1, d)`). The ONNX graph needs none of this: it stores the trained values.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dslc.params import Param
from dslc.pytext import py_literal


@dataclass(frozen=True)
class Initializer:
    name: str
    doc: str
    params: tuple[Param, ...]
    torch: Callable[[str, dict[str, Any]], str]  # (the sizes as arguments, `1, 1, d`) -> the tensor's code
    ordered: tuple[str, str] | None = None  # two bounds, the first at most the second (torch refuses the others)

    def problem(self, args: dict[str, Any]) -> str | None:
        """What is wrong with arguments that pass their own ranges but not together, or None."""
        if self.ordered is not None:
            low, high = self.ordered
            if args[low] > args[high]:
                return f"{self.name}: '{low}' ({args[low]:g}) is above '{high}' ({args[high]:g})"
        return None


def _init_call(function: str, keys: tuple[str, ...]) -> Callable[[str, dict[str, Any]], str]:
    """`nn.init.normal_(torch.empty(1, 1, d), std=0.02)`: arguments written where they differ from torch's."""

    def code(shape: str, args: dict[str, Any]) -> str:
        written = "".join(f", {k}={py_literal(args[k])}" for k in keys if args[k] != TORCH_DEFAULTS[function][k])
        return f"nn.init.{function}(torch.empty({shape}){written})"

    return code


def _as_tuple(sizes: str) -> str:
    return f"({sizes},)" if "," not in sizes else f"({sizes})"


TORCH_DEFAULTS = {
    "normal_": {"mean": 0.0, "std": 1.0},
    "trunc_normal_": {"mean": 0.0, "std": 1.0, "a": -2.0, "b": 2.0},
    "uniform_": {"a": 0.0, "b": 1.0},
}

_STD = Param("std", "float", 1.0, "standard deviation", low=0.0, high=1e3)
_CUT_STD = Param("std", "float", 1.0, "standard deviation", low=0.0, high=1e3, open_low=True)  # the cuts divide by it
_MEAN = Param("mean", "float", 0.0, "mean", low=-1e3, high=1e3)

INITIALIZERS: dict[str, Initializer] = {
    init.name: init
    for init in (
        Initializer("zeros", "All zeros (the default).", (), lambda shape, a: f"torch.zeros({shape})"),
        Initializer("ones", "All ones.", (), lambda shape, a: f"torch.ones({shape})"),
        Initializer(
            "full",
            "Every element `value`.",
            (Param("value", "float", doc="the value", low=-1e6, high=1e6),),
            lambda shape, a: f"torch.full({_as_tuple(shape)}, {py_literal(a['value'])})",
        ),
        Initializer("normal", "Drawn from N(mean, std^2).", (_MEAN, _STD), _init_call("normal_", ("mean", "std"))),
        Initializer(
            "trunc_normal",
            "N(mean, std^2) redrawn outside [a, b], as ViT's position embeddings start.",
            (_MEAN, _CUT_STD, Param("a", "float", -2.0, "lower cut"), Param("b", "float", 2.0, "upper cut")),
            _init_call("trunc_normal_", ("mean", "std", "a", "b")),
            ordered=("a", "b"),
        ),
        Initializer(
            "uniform",
            "Uniform on [a, b).",
            (Param("a", "float", 0.0, "lower bound"), Param("b", "float", 1.0, "upper bound")),
            _init_call("uniform_", ("a", "b")),
            ordered=("a", "b"),
        ),
    )
}
