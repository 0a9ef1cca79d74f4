"""Metrics, optimizers and learning-rate schedules of the train section, and how each is written in PyTorch.

Torch-free. Losses and the train section's tensor functions are ops of the one registry
(dslc.layers.training), shared with model bodies. Generated code holds only validated identifiers
and `py_literal` text from the spec.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dslc.layers.base import py_literal
from dslc.layers.training import IGNORE_INDEX
from dslc.params import P
from dslc.shapes import TensorType

# ---------------------------------------------------------------- metrics


@dataclass(frozen=True)
class Metric:
    name: str
    doc: str
    params: tuple[P, ...]
    higher_is_better: bool
    check: Callable[[TensorType, TensorType, dict[str, Any]], str | None]  # what's wrong with (prediction, target)
    key: Callable[[dict[str, Any]], str]  # the name in metrics.jsonl
    total: Callable[[str, str, dict[str, Any]], tuple[str, str]]  # (sum expression, count expression)
    final: Callable[[str], str] = lambda mean: mean  # the recorded value from the mean's expression


def _scores_and_ids(p: TensorType, t: TensorType, a: dict[str, Any]) -> str | None:
    if not p.is_float or t.is_float or t.shape != p.shape[:-1]:
        return f"compares scores [..., classes] with class ids [...] of the same leading shape; got {p} and {t}"
    return None


def _top_k_check(p: TensorType, t: TensorType, a: dict[str, Any]) -> str | None:
    classes = p.shape[-1] if p.rank else None
    if isinstance(classes, int) and a["k"] > classes:
        return f"(k={a['k']}) needs at least {a['k']} classes; there are {classes}"
    return _scores_and_ids(p, t, a)


def _cer_check(p: TensorType, t: TensorType, a: dict[str, Any]) -> str | None:
    if not p.is_float or t.is_float or p.rank != 3 or t.rank != 2 or p.shape[0] != t.shape[0]:
        return f"compares per-frame scores [batch, time, classes] with padded targets [batch, length]; got {p} and {t}"
    return None


def _same_shape(p: TensorType, t: TensorType, a: dict[str, Any]) -> str | None:
    if not p.is_float or p.shape != t.shape:
        return f"compares a float prediction with a target of the same shape; got {p} and {t}"
    return None


def _acc_total(p, t, a):
    ign = a.get("ignore_index")
    if ign is None:
        return f"({p}.argmax(-1) == {t}).sum()", f"{t}.numel()"
    keep = f"({t} != {py_literal(ign)})"
    return f"(({p}.argmax(-1) == {t}) & {keep}).sum()", f"{keep}.sum()"


def _topk_total(p, t, a):
    return f"({p}.topk({py_literal(a['k'])}, dim=-1).indices == {t}.unsqueeze(-1)).any(-1).sum()", f"{t}.numel()"


def _ppl_total(p, t, a):
    x, tt = (f"{p}.flatten(0, -2)", f"{t}.flatten()")
    ign = a["ignore_index"]
    return (
        f'F.cross_entropy({x}, {tt}, ignore_index={py_literal(ign)}, reduction="sum")',
        f"({t} != {py_literal(ign)}).sum()",
    )


def _cer_total(p, t, a):
    """`a["lengths"]`: the (input_lengths, target_lengths) tensor names of the ctc loss on the same pair, if any."""
    blank = py_literal(a["blank"])
    lengths = a.get("lengths") or []
    if len(lengths) == 2:
        return f"rt.ctc_char_errors({p}, {t}, {lengths[0]}, {lengths[1]}, blank={blank})", f"{lengths[1]}.sum()"
    return f"rt.ctc_char_errors({p}, {t}, blank={blank})", f"({t} != {blank}).sum()"


METRICS: dict[str, Metric] = {}
for _m in (
    Metric(
        "accuracy",
        "fraction of correct argmax predictions",
        (P("ignore_index", "int", None),),
        True,
        _scores_and_ids,
        lambda a: "accuracy",
        _acc_total,
    ),
    Metric(
        "top_k",
        "fraction of targets among the k highest scores",
        (P("k", "int", 5, low=1),),
        True,
        _top_k_check,
        lambda a: f"top{a['k']}_accuracy",
        _topk_total,
    ),
    Metric(
        "perplexity",
        "exp of the mean token cross-entropy",
        (IGNORE_INDEX,),
        False,
        _scores_and_ids,
        lambda a: "perplexity",
        _ppl_total,
        lambda mean: f"math.exp(min({mean}, 50.0))",  # a diverged run records a large number, not an overflow
    ),
    Metric(
        "cer",
        "character error rate of CTC output: edit distance of the greedy decoding (best path, repeats merged, "
        "blanks dropped) to the target, per target character; lengths come from the ctc loss on the same pair",
        (P("blank", "int", 0),),
        False,
        _cer_check,
        lambda a: "cer",
        _cer_total,
    ),
    Metric(
        "mae",
        "mean absolute error",
        (),
        False,
        _same_shape,
        lambda a: "mae",
        lambda p, t, a: (f"({p} - {t}).abs().sum()", f"{t}.numel()"),
    ),
    Metric(
        "mse",
        "mean squared error",
        (),
        False,
        _same_shape,
        lambda a: "mse",
        lambda p, t, a: (f"({p} - {t}).pow(2).sum()", f"{t}.numel()"),
    ),
    Metric(
        "rmse",
        "root mean squared error",
        (),
        False,
        _same_shape,
        lambda a: "rmse",
        lambda p, t, a: (f"({p} - {t}).pow(2).sum()", f"{t}.numel()"),
        lambda mean: f"math.sqrt({mean})",
    ),
):
    METRICS[_m.name] = _m


# ---------------------------------------------------------------- optimizers and schedules


@dataclass(frozen=True)
class OptimizerDef:
    name: str
    torch_class: str
    params: tuple[P, ...]
    defaults: dict[str, Any]  # PyTorch's defaults: equal values are left out of the generated call


_WD = P("weight_decay", "float", 0.0, low=0.0)
_BETAS = P("betas", "floats", (0.9, 0.999), low=0.0, high=1.0, open_high=True, length=2)
OPTIMIZERS = {
    "sgd": OptimizerDef(
        "sgd",
        "torch.optim.SGD",
        (P("lr", "float", 0.01, low=0.0), P("momentum", "float", 0.0, low=0.0), P("nesterov", "bool", False), _WD),
        {"momentum": 0.0, "nesterov": False, "weight_decay": 0.0},
    ),
    "adam": OptimizerDef(
        "adam",
        "torch.optim.Adam",
        (P("lr", "float", 1e-3, low=0.0), _BETAS, P("eps", "float", 1e-8, low=0.0), _WD),
        {"betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0},
    ),
    "adamw": OptimizerDef(
        "adamw",
        "torch.optim.AdamW",
        (
            P("lr", "float", 1e-3, low=0.0),
            _BETAS,
            P("eps", "float", 1e-8, low=0.0),
            P("weight_decay", "float", 0.01, low=0.0),
        ),
        {"betas": (0.9, 0.999), "eps": 1e-8},
    ),
    "rmsprop": OptimizerDef(
        "rmsprop",
        "torch.optim.RMSprop",
        (
            P("lr", "float", 0.01, low=0.0),
            P("alpha", "float", 0.99, low=0.0),
            P("momentum", "float", 0.0, low=0.0),
            _WD,
        ),
        {"alpha": 0.99, "momentum": 0.0, "weight_decay": 0.0},
    ),
}
GROUP_PARAMS = (
    P("lr", "float", None, low=0.0),
    P("weight_decay", "float", None, low=0.0),
    P("momentum", "float", None, low=0.0),
)

_WARMUP = P("warmup", "float", 0.0, "epochs of linear warmup from 0", low=0.0)


@dataclass(frozen=True)
class ScheduleDef:
    """A learning-rate schedule, stepped once per optimizer step. `factor` writes the body of the script's
    `lr_factor(step)` after the warmup, with `start` the first step after it and `total` (when a line reads it) the
    number of steps of the run; `scheduler` instead writes a PyTorch scheduler of its own from (options, lr)."""

    name: str
    doc: str
    params: tuple[P, ...]
    factor: Callable[[dict[str, Any], str], list[str]] | None = None
    scheduler: Callable[[dict[str, Any], float], str] | None = None

    def changes_lr(self, options: dict[str, Any]) -> bool:
        """Whether the script needs a scheduler at all (a constant rate without warmup does not)."""
        return self.name != "constant" or bool(options.get("warmup"))


def _progress(start: str) -> str:
    return f"progress = min(1.0, (step - {start}) / max(1, total - {start}))"


def _cosine(o: dict[str, Any], start: str) -> list[str]:
    scale = f"{py_literal(o['min_factor'])} + {py_literal(1.0 - o['min_factor'])} * " if o["min_factor"] else ""
    return [_progress(start), f"return {scale}0.5 * (1.0 + math.cos(math.pi * progress))"]


def _one_cycle(o: dict[str, Any], lr: float) -> str:
    max_lr = o["max_lr"] if o["max_lr"] is not None else lr
    return (
        f"torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr={py_literal(max_lr)}, "
        f"total_steps=max(1, epochs * steps_per_epoch), pct_start={py_literal(o['pct_start'])})"
    )


SCHEDULES: dict[str, ScheduleDef] = {
    s.name: s
    for s in (
        ScheduleDef(
            "constant", "the optimizer's learning rate throughout", (_WARMUP,), lambda o, start: ["return 1.0"]
        ),
        ScheduleDef(
            "step",
            "multiplied by `gamma` every `every` epochs",
            (P("every", "int", 10, "epochs between decays", low=1), P("gamma", "float", 0.1, low=0.0), _WARMUP),
            lambda o, start: [
                f"return {py_literal(o['gamma'])} ** ((step - {start}) // ({o['every']} * steps_per_epoch))"
            ],
        ),
        ScheduleDef(
            "cosine",
            "half a cosine from the learning rate down to `min_factor` of it",
            (_WARMUP, P("min_factor", "float", 0.0, "final learning rate as a fraction of the initial one")),
            _cosine,
        ),
        ScheduleDef(
            "linear",
            "a straight line from the learning rate down to `min_factor` of it",
            (_WARMUP, P("min_factor", "float", 0.0)),
            lambda o, start: [_progress(start), f"return 1.0 - {py_literal(1.0 - o['min_factor'])} * progress"],
        ),
        ScheduleDef(
            "one_cycle",
            "PyTorch's one-cycle policy: up to `max_lr`, then annealed down (its own warmup)",
            (
                P("max_lr", "float", None, "peak learning rate (default: the optimizer's lr)", low=0.0),
                P("pct_start", "float", 0.3, low=0.0, high=1.0, open_high=True),
            ),
            scheduler=_one_cycle,
        ),
    )
}
