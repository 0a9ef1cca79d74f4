"""The checked train section: what emit_train.py reads. Torch-free, plain data."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dslc.errors import Loc
from dslc.shapes import TensorType

# ---------------------------------------------------------------- expressions
# `type` is a TensorType, a float (a number), or a list of TensorTypes (a multi-output model call).


@dataclass
class TExpr:
    loc: Loc
    type: Any


@dataclass
class Ref(TExpr):
    name: str


@dataclass
class Number(TExpr):
    value: float | int


@dataclass
class FnCall(TExpr):
    fn: str
    args: list[TExpr]
    kwargs: dict[str, Any]


@dataclass
class ModelCall(TExpr):
    model: str
    args: list[TExpr]


@dataclass
class Item(TExpr):
    value: TExpr
    index: int


@dataclass
class BinOp(TExpr):
    op: str  # + - * /
    left: TExpr
    right: TExpr


@dataclass
class Neg(TExpr):
    operand: TExpr


# ---------------------------------------------------------------- bindings


@dataclass
class Let:
    """`z = normal(batch, 64)`: a tensor computed per batch."""

    name: str
    value: TExpr
    loc: Loc


@dataclass
class AutoRun:
    """A model run on the tensors named like its inputs; its outputs become names."""

    model: str
    inputs: list[str]
    outputs: list[str]


@dataclass
class Group:
    model: str
    attr: str
    options: dict[str, Any]
    loc: Loc


@dataclass
class Optimizer:
    kind: str
    models: list[str]
    options: dict[str, Any]
    groups: list[Group]
    loc: Loc


@dataclass
class Schedule:
    kind: str
    options: dict[str, Any]


@dataclass
class Step:
    name: str
    loc: Loc
    loss: TExpr
    optimizer: Optimizer
    schedule: Schedule
    clip_grad_norm: float | None
    accumulate: int
    plan: list[Let | AutoRun]  # in order; computes what the loss (and the metrics) need
    outputs: list[str]  # names the step returns for the metrics


@dataclass
class MetricUse:
    metric: str
    key: str
    pred: str
    target: str
    options: dict[str, Any]
    extra: list[str] = field(default_factory=list)  # further tensors it reads (cer: the ctc loss's lengths)


@dataclass
class Data:
    name: str
    options: dict[str, Any]
    fields: dict[str, TensorType]
    loc: Loc


@dataclass
class LabelCheck:
    """Class ids in `field` must lie in [0, classes) (or equal ignore_index)."""

    field: str
    classes: int
    ignore_index: int | None


@dataclass
class TrainConfig:
    loc: Loc
    data: Data
    prepare: list[Let | AutoRun]  # train-level tensors, computed once per batch before the steps
    steps: list[Step]
    metrics: list[MetricUse]
    models: list[str]  # the spec's models, in order (all are built; trained ones have optimizers)
    epochs: int
    batch_size: int
    seed: int
    early_stopping: int | None
    monitor: str
    monitor_mode: str  # min | max
    checkpoint_every: int
    keep_checkpoints: int
    export: list[str]
    workers: int
    shuffle: bool
    label_checks: list[LabelCheck] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)  # the resolved settings, for config.json
