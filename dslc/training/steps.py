"""A train section's tensors, checked by the model checker: the same language, ops and shape rules.

`TrainBody` is the model body checker with three kinds of names more: the data set's fields, the
train section's tensors (`z = normal(batch, noise)`, checked on first use, in any order) and the
outputs of the spec's models (a model whose output is named runs on the tensors named like its
inputs). A model is also called as a function, `discriminator(detach(fake))`, typed by its
signature: its symbolic sizes bind to the argument's sizes. The result is IR statements, so the
common-subexpression pass and the PyTorch printer apply to train steps as they do to models.
"""

from __future__ import annotations

from typing import Any

from dslc import ast, ir
from dslc.checker import POISON, BodyChecker, Checker, Poison, _StatementFailedError
from dslc.errors import Loc, did_you_mean
from dslc.layers import Op
from dslc.loader import FileScope, check_identifier
from dslc.params import brief
from dslc.shapes import Sym, TensorType, substitute

BATCH = Sym.named("batch")


class TrainBody(BodyChecker):
    """The tensors of one step (or, with no parent, of the whole train section)."""

    def __init__(
        self,
        checker: Checker,
        scope: FileScope,
        models: dict[str, ir.ModuleIR],
        fields: dict[str, TensorType],
        lets: dict[str, ast.Setting],
        parent: TrainBody | None = None,
        data_loc: Loc | None = None,
    ) -> None:
        super().__init__(checker, None, scope, {}, None)
        self.in_train = True
        self.models = models
        self.fields = fields
        self.data_loc = data_loc  # the `data = ...` setting: where a field a model is fed implicitly comes from
        self.lets = lets
        self.parent = parent
        self.resolving: list[str] = []
        self.reads: list[str] = []  # names read from the batch: data fields, and the train section's tensors
        self.models_used: list[str] = []
        self.bound: list[str] = []  # names this body computes, in order

    # ------------------------------------------------------------ names

    def provides(self, name: str) -> bool:
        """Whether `name` is (or can be) computed here or by the parent, not counting model outputs."""
        return name in self.lets or name in self.bound or bool(self.parent and self.parent.provides(name))

    def tensor_named(self, name: str, loc: Loc) -> ir.Expr:
        """The tensor `name` stands for (computing it here if needed); raises after reporting an error."""
        value = self.name(ast.Name(loc, name))
        if isinstance(value, Poison):
            raise _StatementFailedError
        if not isinstance(value, ir.Expr):
            self.fail(loc, f"'{name}' must be a tensor, got {brief(value)}")
        return value

    def name(self, expr: ast.Name) -> Any:
        name, loc = expr.id, expr.loc
        if name in self.env:
            return super().name(expr)
        if name in self.lets:
            self._define(name)
        elif name in self.fields:
            self._read(name, self.fields[name])
        elif self.parent is not None and self.parent.provides(name):
            value = self.parent.tensor_named(name, loc)
            self._read(name, value.type)
        elif producer := self._producer(name, loc):
            self._auto_run(producer, loc)
        elif name == "batch":
            return BATCH
        elif name in self.models:
            self.fail(loc, f"'{name}' is a model; call it: {name}(...)")
        elif name not in self.scope.consts:
            self.fail(loc, f"unknown name '{name}'", self._unknown_hint(name))
        return super().name(expr)

    def _read(self, name: str, ttype: TensorType) -> None:
        self.env[name] = ir.Var([ttype], name)
        self.reads.append(name)

    def _define(self, name: str) -> None:
        """Check the train tensor `name` where it is first read; its statement goes before the reader's."""
        if name in self.resolving:
            cycle = " -> ".join([*self.resolving[self.resolving.index(name) :], name])
            self.fail(self.lets[name].loc, f"'{name}' is defined in terms of itself: {cycle}")
        setting = self.lets[name]
        reader = self.current
        self.resolving.append(name)
        try:
            self.statement(ast.Assign(setting.loc, [name], setting.value))
        finally:
            self.resolving.pop()
            self.current = reader
        value = self.env.get(name)
        if isinstance(value, Poison):
            return
        if not isinstance(value, ir.Expr):
            self.env[name] = POISON
            hint = did_you_mean(name, _settings())
            self.reporter.error(
                setting.loc,
                f"'{name}' must be a tensor, but it is {brief(value)}",
                hint and f"is it a setting? {hint}",
            )
            return
        self.bound.append(name)

    def _is_field(self, name: str) -> bool:
        """Whether `name` reads the data set's field, not a train tensor of that name."""
        return name in self.fields and name not in self.lets and (self.parent is None or self.parent._is_field(name))

    def _producer(self, name: str, loc: Loc) -> ir.ModuleIR | None:
        producers = [m for m in self.models.values() if any(p.name == name for p in m.outputs)]
        if len(producers) > 1:
            names = " and ".join(f"'{m.spec_name}'" for m in producers)
            self.fail(loc, f"'{name}' is an output of both {names}", "call the model explicitly: model(inputs)[i]")
        return producers[0] if producers else None

    def _auto_run(self, model: ir.ModuleIR, loc: Loc) -> None:
        """`logits` read in a loss: run the model that outputs it on the tensors named like its inputs."""
        inputs = []
        for port in model.inputs:
            if not (port.name in self.fields or self.provides(port.name) or self._producer(port.name, loc)):
                self.fail(
                    loc,
                    f"model '{model.spec_name}' needs input '{port.name}' ({port.type}), but no dataset field or "
                    f"train tensor has that name (fields: {', '.join(self.fields)})",
                    did_you_mean(port.name, [*self.fields, *self._all_lets()])
                    or f"define it in the train section, e.g. `{port.name} = ...`, or call the model explicitly",
                )
            inputs.append(self.tensor_named(port.name, loc))
        fields = [self.data_loc is not None and self._is_field(p.name) for p in model.inputs]
        call = self.model_call(
            model,
            inputs,
            loc,
            [self.data_loc if field else loc for field in fields],
            [f"the data set's '{p.name}'" if field else "this" for p, field in zip(model.inputs, fields)],
        )
        targets = [p.name for p in model.outputs]
        for target in targets:
            check_identifier(target, model.loc, "model output", role="script")
        self.emit(ir.Assign(loc, targets, call))
        for target, ttype in zip(targets, call.types):
            self.env[target] = ir.Var([ttype], target)
        self.bound.extend(targets)

    def _all_lets(self) -> list[str]:
        return [*self.lets, *(self.parent._all_lets() if self.parent else [])]

    def _unknown_hint(self, name: str) -> str | None:
        outputs = [p.name for m in self.models.values() for p in m.outputs]
        return did_you_mean(name, [*self.fields, *self._all_lets(), *outputs, *self.scope.consts]) or (
            f"available: dataset fields {', '.join(self.fields)}; model outputs {', '.join(outputs)}"
        )

    # ------------------------------------------------------------ calls

    def index(self, expr: ast.Index) -> Any:
        call = expr.value
        if isinstance(call, ast.Call) and call.func in self.models and len(self.models[call.func].outputs) == 1:
            output = self.models[call.func].outputs[0].name
            self.fail(
                expr.loc,
                f"model '{call.func}' has one output ('{output}'), so this index would pick its rows, not an output",
                f"drop the index: {call.func}(...) is '{output}'; to index its rows, name it first",
            )
        return super().index(expr)

    def call(self, expr: ast.Call) -> Any:
        model = self.models.get(expr.func)
        if model is None:
            if self.scope.lookup_block(expr.func):
                self.fail(expr.loc, f"'{expr.func}' is a block; blocks belong in a model, not in the train section")
            return super().call(expr)
        if expr.kwargs:
            self.fail(expr.loc, f"call model '{expr.func}' with positional inputs ({_port_names(model)})")
        if len(expr.args) != len(model.inputs):
            self.fail(
                expr.loc,
                f"model '{expr.func}' takes {len(model.inputs)} input(s) ({_port_names(model)}), got {len(expr.args)}",
            )
        inputs = []
        for arg, port in zip(expr.args, model.inputs):
            value = self.ev(arg)
            if isinstance(value, Poison):
                raise _StatementFailedError
            if not isinstance(value, ir.Expr):
                self.fail(arg.loc, f"model '{expr.func}' input '{port.name}' must be a tensor, got {brief(value)}")
            if len(value.types) != 1:
                self.fail(arg.loc, f"this gives {len(value.types)} tensors; pick one with [i]")
            inputs.append(value)
        return self.model_call(model, inputs, expr.loc, [a.loc for a in expr.args])

    def model_call(
        self,
        model: ir.ModuleIR,
        inputs: list[ir.Expr],
        loc: Loc,
        arg_locs: list[Loc] | None = None,
        subjects: list[str] | None = None,
    ) -> ir.ModelCall:
        """The call, its output types in the caller's sizes (`time` of the model is the field's `frames`); a mismatch
        is reported at the argument's location, calling it by its subject ("this", "the data set's 'image'")."""
        sizes: dict[str, Any] = {}
        for i, (value, port) in enumerate(zip(inputs, model.inputs)):
            where, subject = (arg_locs[i] if arg_locs else loc), (subjects[i] if subjects else "this")
            self._match_port(value.type, port, model, where, sizes, subject)
        self._check_size_rules(model, sizes, arg_locs[0] if arg_locs else loc)
        types = [o.type.with_shape(tuple(substitute(d, sizes) for d in o.type.shape)) for o in model.outputs]
        if model.spec_name not in self.models_used:
            self.models_used.append(model.spec_name)
        return ir.ModelCall(types, model.spec_name, list(inputs))

    def _check_size_rules(self, model: ir.ModuleIR, sizes: dict[str, Any], loc: Loc) -> None:
        """A rule of the model's sizes (a position table's rows, a kernel's width) that the call's fixed sizes break."""
        fixed = {name: size for name, size in sizes.items() if isinstance(size, int)}
        for rule in model.size_rules:
            if rule.dim.atoms() <= fixed.keys() and not rule.holds(fixed):
                at = ", ".join(f"{name}={fixed[name]}" for name in sorted(rule.dim.atoms()))
                where = f" (model line {rule.loc.line})" if rule.loc else ""
                self.fail(
                    loc,
                    f"model '{model.spec_name}' cannot run at {at}: {rule.why}{where}, which needs {rule}",
                    "change the data set's size options (e.g. its length) or the model",
                )

    def _match_port(
        self, actual: TensorType, port: ir.Port, model: ir.ModuleIR, loc: Loc, sizes: dict, subject: str = "this"
    ) -> None:
        want = port.type
        problem = None
        if actual.dtype != want.dtype:
            problem = "convert with float(x)" if want.is_float else f"convert with {want.dtype}-typed data"
        elif actual.rank != want.rank:
            problem = "the ranks differ"
        else:
            for expected, got in zip(want.shape, actual.shape):
                atom = _size_name(expected)
                if atom is not None:  # a named size of the model: it takes the argument's size
                    if atom in sizes and sizes[atom] != got:
                        problem = f"'{atom}' is {sizes[atom]} for an earlier input but {got} here"
                        break
                    sizes[atom] = got
                elif isinstance(expected, int) and isinstance(got, int) and expected != got:
                    problem = "change the data set's size options (e.g. digits(image_size=28)) or the model input"
                    break
        if problem:
            self.fail(
                loc, f"{subject} is {actual} but model '{model.spec_name}' input '{port.name}' expects {want}", problem
            )

    # ------------------------------------------------------------ what a train section may not hold

    def apply_op(self, op: Op, inputs, args, kwargs, loc, name, arg_exprs=None, in_group=False) -> ir.Expr:
        if op.stateful or name is not None or in_group:
            self.fail(loc, f"{op.name} is a layer with state; layers belong in a model, not in the train section")
        return super().apply_op(op, inputs, args, kwargs, loc, name, arg_exprs, in_group)

    def apply_block(self, found, stage: ast.LayerCall, inputs, name) -> ir.Expr:
        self.fail(stage.loc, f"block '{stage.name}' has layers; blocks belong in a model, not in the train section")


def _size_name(d: Any) -> str | None:
    """`time` for the size Sym(time), None for a number or a compound size (`2*time`)."""
    return d.plain_name if isinstance(d, Sym) else None


def _port_names(model: ir.ModuleIR) -> str:
    return ", ".join(p.name for p in model.inputs)


def _settings() -> list[str]:
    from dslc.training.check import ROOT_SETTINGS, STEP_SETTINGS

    return [*ROOT_SETTINGS, *STEP_SETTINGS]
