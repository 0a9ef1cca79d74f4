"""The train section's per-batch code: `prepare()` (the train-level tensors) and one `step_<name>()` per
step (its loss, and the tensors the metrics read), written from the checked train section."""

from __future__ import annotations

from typing import Any

from dslc.pytext import comment, py_literal
from dslc.training import config as c
from dslc.training.functions import FUNCTIONS

I1 = "    "
PREC = {"+": 1, "-": 1, "*": 2, "/": 2}


# ---------------------------------------------------------------- expressions


def texpr(e: c.TExpr) -> str:
    return _texpr(e)[0]


def _texpr(e: c.TExpr) -> tuple[str, int]:
    if isinstance(e, c.Ref):
        return e.name, 9
    if isinstance(e, c.Number):
        text = py_literal(e.value)
        return text, 9 if not text.startswith("-") else 3
    if isinstance(e, c.FnCall):
        fn = FUNCTIONS[e.fn]
        codes = [_paren_if_compound(a) for a in e.args]
        return fn.emit(codes, e.kwargs, [a.type for a in e.args]), 9
    if isinstance(e, c.ModelCall):
        return f"{e.model}({', '.join(texpr(a) for a in e.args)})", 9
    if isinstance(e, c.Item):
        return f"{texpr(e.value)}[{e.index}]", 9
    if isinstance(e, c.Neg):
        inner, prec = _texpr(e.operand)
        return f"-{inner if prec >= 3 else f'({inner})'}", 3
    if isinstance(e, c.BinOp):
        prec = PREC[e.op]
        left, lp = _texpr(e.left)
        right, rp = _texpr(e.right)
        left = left if lp >= prec else f"({left})"
        right = right if rp > prec or (rp == prec and e.op in "+*") else f"({right})"
        return f"{left} {e.op} {right}", prec
    raise TypeError(type(e).__name__)


def _paren_if_compound(e: c.TExpr) -> str:
    code, prec = _texpr(e)
    return code if prec >= 9 else f"({code})"


def _refs(e: Any, out: list[str]) -> None:
    if isinstance(e, c.Ref):
        if e.name not in out:
            out.append(e.name)
    elif isinstance(e, (c.FnCall, c.ModelCall)):
        for a in e.args:
            _refs(a, out)
    elif isinstance(e, c.Item):
        _refs(e.value, out)
    elif isinstance(e, c.BinOp):
        _refs(e.left, out)
        _refs(e.right, out)
    elif isinstance(e, c.Neg):
        _refs(e.operand, out)


def _models_used(e: Any, out: list[str]) -> None:
    if isinstance(e, c.ModelCall) and e.model not in out:
        out.append(e.model)
    for child in _children(e):
        _models_used(child, out)


def _children(e: Any) -> list[Any]:
    if isinstance(e, (c.FnCall, c.ModelCall)):
        return list(e.args)
    if isinstance(e, c.Item):
        return [e.value]
    if isinstance(e, c.BinOp):
        return [e.left, e.right]
    if isinstance(e, c.Neg):
        return [e.operand]
    return []


def _body(
    plan: list[c.Let | c.AutoRun], finals: list[c.TExpr], cfg: c.TrainConfig, source_lines: list[str]
) -> tuple[list[str], list[str]]:
    """Lines computing `plan`, preceded by the model and batch reads they need; and the models used."""
    bound: set[str] = set()
    used = _names(cfg)
    reads: list[str] = []
    models: list[str] = []
    code: list[str] = []
    for item in plan:
        if isinstance(item, c.AutoRun):
            names = item.inputs
            if item.model not in models:
                models.append(item.model)
            code.append(f"{', '.join(item.outputs)} = {item.model}({', '.join(item.inputs)})")
            outs = item.outputs
        else:
            names = []
            _refs(item.value, names)
            _models_used(item.value, models)
            text = source_lines[item.loc.line - 1].strip() if 0 < item.loc.line <= len(source_lines) else item.name
            code.append(f"# line {item.loc.line}: {comment(text)}")
            value = _hoist(item.value, code, used, top=True)
            code.append(f"{item.name} = {texpr(value)}")
            outs = [item.name]
        reads += [n for n in names if n not in bound and n not in reads]
        bound.update(outs)
    for e in finals:
        names = []
        _refs(e, names)
        _models_used(e, models)
        reads += [n for n in names if n not in bound and n not in reads]
    head = [f'{m} = models["{m}"]' for m in models]
    batch_reads = [n for n in reads if n != "BATCH_SIZE"]
    if batch_reads:
        head.append(f"{', '.join(batch_reads)} = {', '.join(f'batch[{py_literal(n)}]' for n in batch_reads)}")
    if "BATCH_SIZE" in reads:
        head.append(f"BATCH_SIZE = len(batch[{py_literal(next(iter(cfg.data.fields)))}])")
    return head + code, models


def _hoist(e: c.TExpr, lines: list[str], used: set[str], top: bool = False) -> c.TExpr:
    """Give every model call inside an expression its own variable, so that it runs once even when
    the generated code mentions the result twice (e.g. `torch.ones_like(score)`)."""
    if isinstance(e, (c.FnCall, c.ModelCall)):
        e = type(e)(**{**e.__dict__, "args": [_hoist(a, lines, used) for a in e.args]})
    elif isinstance(e, c.Item):
        e = c.Item(e.loc, e.type, _hoist(e.value, lines, used, top=True), e.index)
    elif isinstance(e, c.BinOp):
        e = c.BinOp(e.loc, e.type, e.op, _hoist(e.left, lines, used), _hoist(e.right, lines, used))
    elif isinstance(e, c.Neg):
        e = c.Neg(e.loc, e.type, _hoist(e.operand, lines, used))
    if isinstance(e, c.ModelCall) and not top:
        n = 1
        while f"{e.model}_out{n}" in used:
            n += 1
        name = f"{e.model}_out{n}"
        used.add(name)
        lines.append(f"{name} = {texpr(e)}")
        return c.Ref(e.loc, e.type, name)
    return e


def _names(cfg: c.TrainConfig) -> set[str]:
    used = set(cfg.data.fields) | set(cfg.models)
    for plan in [cfg.prepare, *(s.plan for s in cfg.steps)]:
        for item in plan:
            used.update([item.name] if isinstance(item, c.Let) else item.outputs)
    return used


def prepare_function(cfg: c.TrainConfig, source_lines: list[str]) -> str:
    lines, _ = _body(cfg.prepare, [], cfg, source_lines)
    bound = [i.name for i in cfg.prepare if isinstance(i, c.Let)] + [
        o for i in cfg.prepare if isinstance(i, c.AutoRun) for o in i.outputs
    ]
    extra = ", ".join(f"{py_literal(n)}: {n}" for n in bound)
    return "\n".join(
        [
            "def prepare(models: dict[str, nn.Module], batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:",
            f'{I1}"""The train-level tensors, computed once per batch and shared by every step."""',
            *[I1 + x for x in lines],
            f"{I1}return {{**batch, {extra}}}",
        ]
    )


def step_function(cfg: c.TrainConfig, step: c.Step, source_lines: list[str]) -> str:
    lines, _ = _body(step.plan, [step.loss, *[c.Ref(step.loc, None, n) for n in step.outputs]], cfg, source_lines)
    hoisted: list[str] = []
    loss = _hoist(step.loss, hoisted, _names(cfg))
    outputs = ", ".join(f"{py_literal(n)}: {n}" for n in step.outputs)
    loss_line = step.loss.loc.line
    text = source_lines[loss_line - 1].strip() if 0 < loss_line <= len(source_lines) else "loss"
    return "\n".join(
        [
            f"def step_{step.name}(models: dict[str, nn.Module], batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:",
            f'{I1}"""Step \'{step.name}\': its loss, and the tensors the metrics read."""',
            *[I1 + x for x in lines],
            f"{I1}# line {loss_line}: {comment(text)}",
            *[I1 + x for x in hoisted],
            f"{I1}loss = {texpr(loss)}",
            f"{I1}return loss, {{{outputs}}}",
        ]
    )
