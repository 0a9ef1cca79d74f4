"""The checked train section: what emit_train.py reads. Torch-free, plain data."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dslc import ir
from dslc.errors import Loc
from dslc.shapes import TensorType

# ---------------------------------------------------------------- per-batch code


@dataclass
class Body:
    """Checked tensors of one step (or of the whole train section): IR statements in order."""

    statements: list[ir.Stmt]
    reads: list[str]  # names read from the batch: data fields, and (in a step) the train section's tensors
    models: list[str]  # the models it calls
    bound: list[str]  # names it computes

    def __bool__(self) -> bool:
        return bool(self.statements)


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
class Frozen:
    """`freeze = ["transformer.wte"]`: a trained model's submodule or parameter that keeps its values."""

    model: str
    path: str  # a state_dict name or its prefix


@dataclass
class Step:
    name: str
    loc: Loc
    body: Body  # computes `loss` (the last statement) and every tensor of the step
    optimizer: Optimizer
    schedule: Schedule
    clip_grad_norm: float | None
    accumulate: int
    outputs: list[str]  # names the step returns for the metrics
    frozen: list[Frozen] = field(default_factory=list)


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
    rollout: bool = False  # played by the model being trained (episodes), not read from memory
    records: dict[str, bool] = field(default_factory=dict)  # what it adds to each epoch's record: higher is better
    locs: dict[str, Loc] = field(default_factory=dict)  # where its tensor-name options (policy=logits) are written


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
    prepare: Body  # the train section's own tensors, computed once per batch before the steps
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
    augment: list[dict[str, Any]] = field(default_factory=list)  # {"name", "field", options}: training batches only
    settings: dict[str, Any] = field(default_factory=dict)  # the resolved settings, for config.json
    stop_at: float | None = None  # stop once `monitor` reaches it (at least it for "max", at most for "min")
    act: Body | None = None  # episodes: the policy's scores for a batch of observations, which the rollouts sample
