"""Extra tensor functions needed by the shipped specs (position ids for position embeddings)."""

from __future__ import annotations

from dslc.layers.base import Inferred, Op, Param, register, resolve_axis
from dslc.shapes import TensorType


def _positions_infer(args, inputs):
    (x,) = inputs
    axis = resolve_axis(args["dim"], x, "positions")
    return Inferred([TensorType("int64", (x.shape[axis],))], {"dim": axis})


register(
    Op(
        name="positions",
        doc="The position ids 0, 1, ..., n-1 along dimension `dim` of the input (int64[n]), e.g. for a "
        "learned position embedding; the length stays dynamic in ONNX.",
        params=(Param("dim", "axis", 1, "the dimension to count along (a size name such as time works)"),),
        infer=_positions_infer,
        category="function",
        functional=lambda xs, a: f"torch.arange({xs[0]}.size({a['dim']}), device={xs[0]}.device)",
        prefix="positions",
        example="pos = positions(tokens, dim=time) -> Embedding(max_len, d_model)",
        shape_rule="[..., n, ...] -> int64[n]",
    )
)
