"""The train section's per-batch code: `prepare()` (the train section's own tensors) and one
`step_<name>()` per step (its loss, and the tensors the metrics read).

The bodies are checked IR statements (dslc.training.steps), written by the PyTorch emitter's own
statement printer, so a train step reads like a model's forward(). The spec's constants the steps
read become module-level constants, named as the model code names them (`NOISE = 100`).
"""

from __future__ import annotations

from contextlib import contextmanager

from dslc import emit_torch, ir, traced
from dslc.emit_torch import WIDTH, shorten, split_comment
from dslc.layers import REGISTRY
from dslc.layers.training import BATCH_SIZE
from dslc.pytext import TRAIN_SCRIPT_NAMES, comment, py_literal
from dslc.shapes import Sym
from dslc.training import config as c

I1 = "    "
STEP_SIGNATURE = "(models: dict[str, nn.Module], batch: dict[str, torch.Tensor])"


def step_functions(cfg: c.TrainConfig, source_lines: list[str]) -> list[str]:
    """The constants the steps read, `prepare()` when the train section has tensors of its own, and the steps."""
    writer = _StepWriter(cfg, source_lines)
    with writer.constant_names():
        parts = [writer.prepare()] if cfg.prepare.statements else []
        parts += [writer.step(s) for s in cfg.steps]
        if cfg.act is not None:
            parts.append(writer.act())
    return [writer.constants_block(), *parts] if writer.constants else parts


class _StepWriter:
    def __init__(self, cfg: c.TrainConfig, source_lines: list[str]) -> None:
        self.cfg = cfg
        self.source_lines = source_lines
        self.constants: dict[traced.Const, str] = {}

    @contextmanager
    def constant_names(self):
        """Write the spec's constants by name (`NOISE`), numbers as numbers; no block parameters exist here."""
        prefix, constants = traced.PREFIX.set({}), traced.CONSTANTS.set(self.constant_name)
        try:
            yield
        finally:
            traced.PREFIX.reset(prefix)
            traced.CONSTANTS.reset(constants)

    def constant_name(self, const: traced.Const) -> str:
        """`noise` -> NOISE, kept clear of the script's own names (a constant `config` is CONFIG_)."""
        if const not in self.constants:
            name = const.name.upper()
            while name in TRAIN_SCRIPT_NAMES or name in self.constants.values():
                name += "_"
            self.constants[const] = name
        return self.constants[const]

    def constants_block(self) -> str:
        lines = ["# The spec's constants the steps read (`--set name=value` writes other values)."]
        lines += [f"{name} = {py_literal(const.value)}" for const, name in self.constants.items()]
        return "\n".join(lines)

    def prepare(self) -> str:
        body = self.cfg.prepare
        returned = ", ".join(f"{py_literal(n)}: {n}" for n in body.bound)
        return "\n".join(
            [
                f"def prepare{STEP_SIGNATURE} -> dict[str, torch.Tensor]:",
                f'{I1}"""The train section\'s own tensors, computed once per batch and shared by every step."""',
                *[I1 + line for line in self.body_lines(body)],
                f"{I1}return {{**batch, {returned}}}",
            ]
        )

    def step(self, step: c.Step) -> str:
        outputs = ", ".join(f"{py_literal(n)}: {n}" for n in step.outputs)
        return "\n".join(
            [
                f"def step_{step.name}{STEP_SIGNATURE} -> tuple[torch.Tensor, dict[str, torch.Tensor]]:",
                f'{I1}"""Step \'{step.name}\': its loss{", and the tensors the metrics read" if outputs else ""}."""',
                *[I1 + line for line in self.body_lines(step.body)],
                f"{I1}return loss, {{{outputs}}}",
            ]
        )

    def act(self) -> str:
        """Episodes: the policy's action scores for a batch of observations; the rollouts sample from their softmax."""
        policy = self.cfg.data.options["policy"]
        return "\n".join(
            [
                "@torch.no_grad()",
                f"def act{STEP_SIGNATURE} -> torch.Tensor:",
                f'{I1}"""The action scores `{policy}` for the observations in `batch`: each action played is sampled '
                'from their softmax."""',
                *[I1 + line for line in self.body_lines(self.cfg.act)],
                f"{I1}return {policy}",
            ]
        )

    def body_lines(self, body: c.Body) -> list[str]:
        """The models and batch entries the body reads, then its statements, each spec line named once."""
        lines = [f"{m} = models[{py_literal(m)}]" for m in body.models]
        reads = f"{', '.join(body.reads)} = {', '.join(f'batch[{py_literal(n)}]' for n in body.reads)}"
        if body.reads and len(I1 + reads) <= WIDTH:
            lines.append(reads)
        else:
            lines += [f"{n} = batch[{py_literal(n)}]" for n in body.reads]
        code, last_line = [], None
        for stmt in body.statements:
            if stmt.loc.line != last_line and 0 < stmt.loc.line <= len(self.source_lines):
                last_line = stmt.loc.line
                code += _source_comment(last_line, self.source_lines[last_line - 1])
            if _outside_autocast(stmt):
                code.append("with torch.autocast(DEVICE.type, enabled=False):  # PyTorch computes this in float32 only")
                code += [I1 + line for line in emit_torch.statement(stmt)]
            else:
                code += emit_torch.statement(stmt)
        if _draws_batch_sized(body.statements):
            first = next(iter(self.cfg.data.fields))
            lines.append(f"{BATCH_SIZE} = len(batch[{py_literal(first)}])")
        return lines + code


def _source_comment(number: int, line: str) -> list[str]:
    """`# line 40: loss = ...` and the spec's own comment, on the same line when both fit."""
    code, note = split_comment(line.strip())
    code, note = comment(code), comment(note.lstrip("#").strip())
    lines = [f"# line {number}: {shorten(code, WIDTH - 20)}"]
    if note:
        together = f"{lines[0]}  # {note}"
        lines = [together] if len(I1 + together) <= WIDTH else [*lines, f"# {shorten(note, WIDTH - 10)}"]
    return lines


def _outside_autocast(stmt: ir.Stmt) -> bool:
    """Whether the statement calls an op that PyTorch refuses under CUDA autocast (bce on probabilities)."""
    return any(
        _op(e) is not None and not _op(e).autocast for value in ir.values(stmt) for e in ir.subexpressions(value)
    )


def _draws_batch_sized(statements: list[ir.Stmt]) -> bool:
    """Whether a random draw's sizes name `batch`: the code then reads the current batch's size."""
    return any(
        _op(e) is not None and not _op(e).deterministic and any(isinstance(d, Sym) for d in e.init.get("shape", ()))
        for stmt in statements
        for value in ir.values(stmt)
        for e in ir.subexpressions(value)
    )


def _op(e: ir.Expr):
    return REGISTRY[e.op] if isinstance(e, ir.OpCall) else None
