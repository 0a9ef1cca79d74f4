"""Name resolution and shape/dtype inference: syntax tree -> IR.

Every block is checked once per distinct instantiation (hyperparameters and input types), with
concrete sizes, so every layer's shape is known at compile time. Errors are collected per
statement: a failed statement poisons its targets and checking goes on, so one run reports
several independent mistakes.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dslc import ast, consteval, ir, tensor_rules, traced
from dslc.binding import bind_arguments
from dslc.cse import eliminate_common_subexpressions
from dslc.dce import eliminate_dead_code
from dslc.errors import DslcError, Loc, Reporter, did_you_mean, error
from dslc.fileio import spec_sha256
from dslc.generalize import generalize
from dslc.hints import layer_hint
from dslc.id_flow import position_limits
from dslc.initializers import INITIALIZERS
from dslc.layer_table import LayerTable
from dslc.layers import REGISTRY, AxisName, Op, ShapeError
from dslc.loader import RESERVED, FileScope, Loader, check_identifier, parse_override
from dslc.params import brief
from dslc.pytext import PYTHON_NAMES
from dslc.resolve import (
    PARAM_TYPES,
    check_param_value,
    class_base_name,
    declared_names,
    named_stages,
    names_read,
    resolve_blocks,
)
from dslc.shapes import DTYPES, FLOOR_ATOMS, MAX_EXAMPLE_SIZE, SizeRule, Sym, TensorType, solve_sizes

MAX_BLOCK_INSTANCES = 1_000  # distinct (block, arguments, input types): blocks calling blocks can fan out
MAX_LAYER_INT = 2**31 - 1  # PyTorch and the ONNX exporter pass layer arguments as 32-bit ints
MAX_INLINE_NESTING = 16  # a nested pipeline deeper than this is split into assignments (CPython allows 200)
# 3.2 GB of float32 (GPT-2 large's 774M fit): the ONNX weights go to external data past 1 GiB, and a build peaks at
# about 5.5 copies (11.8 GB measured for 537M parameters), training at 4 (weights, gradients, Adam's two moments)
MAX_PARAMETERS = 800_000_000
MAX_ELEMENTS = 2**28  # per example (symbolic sizes count as 1): 1 GB of float32
MAX_REPEAT = 1024


class Poison:
    """The value of a name whose statement failed: using it reports nothing more."""


POISON = Poison()


class _StatementFailedError(Exception):
    """Stops checking the current statement after an error was reported."""


@dataclass(frozen=True)
class BodyNames:
    layers: set[str]  # the names the spec gives layers
    declared: set[str]  # inputs, outputs, parameters, assigned and loop names
    read: set[str]  # every name the body reads


@dataclass
class LayerInstance:
    """A named submodule, so a later stage can reuse it (shared weights)."""

    attr: str
    key: Any  # what the instance was built for; a reuse must match it
    make_call: Any  # (inputs) -> ir.Expr


@dataclass
class Trace:
    """What an editor reads of a check besides the IR (dslc.lsp): the texts to check in place of the files
    (unsaved buffers, by resolved path), and, filled in by the check, the loader (file scopes), every body
    checked (each use of a block, each model, each train body: their layers, bindings and names) and the IR
    when the check got that far. A check with a trace reports the same diagnostics as one without."""

    sources: dict[str, str] = field(default_factory=dict)
    loader: Loader | None = None
    bodies: list[BodyChecker] = field(default_factory=list)
    program: ir.ProgramIR | None = None


def check_file(
    path: str | Path,
    overrides: list[str] | dict[str, Any] | None = None,
    train_overrides: dict[str, Any] | None = None,
    data_dir: str | Path | None = None,
    trace: Trace | None = None,
) -> ir.ProgramIR:
    """Parse, resolve and check a spec and its imports. Raises DslcError with every problem found. The train
    section's data files are found in `data_dir` (default: the spec's folder)."""
    if isinstance(overrides, list):
        overrides = dict(parse_override(o) for o in overrides)
    checker = Checker()
    loader = Loader(checker.evaluate_const, trace.sources if trace else None)
    checker.reporter = loader.reporter
    if trace is not None:
        checker.trace, trace.loader = trace, loader
    try:
        root = loader.load(path, overrides)
    except DslcError as exc:
        loader.reporter.extend(exc)
        loader.reporter.raise_if_errors()
        raise
    loader.reporter.raise_if_errors()
    program = checker.check_root(root)
    if trace is not None:
        trace.program = program
    loader.reporter.raise_if_errors()
    eliminate_common_subexpressions(program)
    program.classes = generalize(program)
    eliminate_dead_code(program)
    sections = [i for i in root.program.items if isinstance(i, ast.TrainDef)]
    for extra in sections[1:]:
        loader.reporter.error(
            extra.loc,
            f"a spec has one train section; this is a second one (the first is at line {sections[0].loc.line})",
            "put the steps of both in one train { } section",
        )
    loader.reporter.raise_if_errors()
    train = sections[0] if sections else None
    if train is not None:  # the train section, checked by dslc.training (torch-free)
        from dslc.training.check import check_train

        program.train = check_train(program, train, checker, root, train_overrides, data_dir)
        loader.reporter.raise_if_errors()
    return program


class Checker:
    def __init__(self) -> None:
        self.reporter = Reporter()
        self.modules: list[ir.ModuleIR] = []
        self.specializations: dict[Any, ir.ModuleIR] = {}
        self.class_names: set[str] = set()
        self.in_progress: list[str] = []
        self.unresolved: set[int] = set()  # ids of blocks whose names did not resolve (reported once)
        self._body_names: dict[int, tuple[ast.BlockDef, BodyNames]] = {}
        self.trace: Trace | None = None  # set by check_file for an editor

    def body_names(self, block: ast.BlockDef) -> BodyNames:
        """The names a block's body declares, names its layers and reads: walked once, not once per use."""
        cached = self._body_names.get(id(block))
        if cached is None or cached[0] is not block:
            names = BodyNames(set(named_stages(block.body)), declared_names(block.body), names_read(block.body))
            cached = self._body_names[id(block)] = (block, names)
        return cached[1]

    # ------------------------------------------------------------ constants

    def evaluate_const(self, expr: ast.Expr, scope: FileScope) -> Any:
        body = BodyChecker(self, None, scope, {}, None)
        try:
            value = body.ev(expr)
        except _StatementFailedError:
            raise DslcError([]) from None  # already reported
        if isinstance(value, (ir.Expr, Sym, LayerInstance)):
            raise error(expr.loc, "a constant must be a number, bool, string or tuple")
        return traced.plain(value)  # a constant's value is its number; only a model or block reading it traces it

    # ------------------------------------------------------------ program

    def check_root(self, root: FileScope) -> ir.ProgramIR:
        models: list[str] = []
        failed = resolve_blocks(root, self.reporter, self.evaluate_const)
        self.unresolved = {id(b) for b in root.own_blocks() if b.name in failed}
        for block in root.own_blocks():
            if block.is_model:
                try:
                    module = self.instantiate(block, root, {}, None, block.loc)
                    self._check_size_rules(module)
                    if module.param_count > MAX_PARAMETERS:
                        self.reporter.error(
                            block.loc,
                            f"model '{block.name}' has {module.param_count:,} parameters "
                            f"({_gigabytes(module.param_count)} in float32); dslc builds models of up to {MAX_PARAMETERS:,}",
                        )
                    models.append(module.key)
                except DslcError as exc:
                    self.reporter.extend(exc)
                except _StatementFailedError:
                    pass  # already reported
        if not models and not self.reporter.diagnostics:
            self.reporter.error(
                Loc(root.path, 1, 1), "the spec defines no model", "add `model NAME { ... }`", section="models"
            )
        source = root.program.source
        return ir.ProgramIR(
            path=root.path,
            source=source,
            sha256=spec_sha256(source),
            doc=root.program.doc,
            modules=list(self.modules),
            models=models,
            constants=dict(root.consts),
        )

    def _limit_positions(self, module: ir.ModuleIR) -> None:
        """Positions that index a table (a learned position embedding) may count no further than its rows: a fixed
        count beyond them is an error, a symbolic one (`time`) becomes a size rule with a largest size."""
        for limit in position_limits(module, self.modules):
            why = f"{limit.layer} has {limit.rows} rows, and the positions it is given count to '{limit.count}'"
            if isinstance(limit.count, Sym):
                rule = SizeRule(limit.count, 1, why, limit.loc, at_most=limit.rows)
                if rule.key not in {r.key for r in module.size_rules}:
                    module.size_rules.append(rule)
            elif limit.count > limit.rows:
                self.reporter.error(limit.loc or module.loc, why, f"give it at least {limit.count} rows")

    def _check_size_rules(self, module: ir.ModuleIR) -> None:
        """Every model must run for some input sizes: refuse one whose size rules no sizes meet."""
        self._limit_positions(module)
        _, unmet = solve_sizes(ir.default_sizes(module, ir.SMALLEST_SHIFT), module.size_rules)
        largest = ir.example_sizes(module, ir.LARGEST_SHIFT)
        for port in [*module.inputs, *module.outputs]:  # verification runs the model at these sizes
            elements = math.prod(d if isinstance(d, int) else d.evaluate(largest) for d in port.type.shape)
            if elements > MAX_ELEMENTS:
                self.reporter.error(
                    module.loc,
                    f"verifying '{module.spec_name}' needs '{port.name}' as {port.type} with "
                    f"{elements:,} elements at sizes {largest}; at most {MAX_ELEMENTS:,} are allowed",
                )
                break
        for rule in unmet:
            self.reporter.error(rule.loc, *_unmet_rule_message(rule, module.size_rules))

    def instantiate(
        self,
        block: ast.BlockDef,
        scope: FileScope,
        hyper: dict[str, Any],
        input_types: list[TensorType] | None,
        loc: Loc,
    ) -> ir.ModuleIR:
        key = (id(block), tuple(sorted(hyper.items())), tuple(input_types or ()))
        if key in self.specializations:
            if self.specializations[key] is None:  # this instantiation failed and was reported
                raise _StatementFailedError
            return self.specializations[key]
        if id(block) in self.unresolved and not block.is_model:
            raise _StatementFailedError  # its unknown names were reported at their lines
        if block.name in self.in_progress:
            raise error(loc, f"'{block.name}' uses itself")
        if len(self.specializations) >= MAX_BLOCK_INSTANCES:
            raise error(
                loc,
                f"more than {MAX_BLOCK_INSTANCES:,} distinct block uses (each use with other arguments "
                "or input shapes is checked on its own)",
                "do blocks call blocks with ever new arguments?",
            )
        self.in_progress.append(block.name)
        reported = len(self.reporter.diagnostics)
        try:
            module = BodyChecker(self, block, scope, hyper, input_types).run()
        finally:
            self.in_progress.pop()
        if len(self.reporter.diagnostics) > reported:
            # The block's own errors say what is wrong; its uses report nothing more.
            if not block.is_model:
                args = "(" + ", ".join(f"{k}={brief(v)}" for k, v in hyper.items()) + ")" if hyper else ""
                for diag in self.reporter.diagnostics[reported:]:
                    diag.notes.append(f"in {block.name}{args} used at {loc}")
            self.specializations[key] = None
            raise _StatementFailedError
        self.specializations[key] = module
        self.modules.append(module)
        return module

    def class_name_for(self, block: ast.BlockDef) -> str:
        base = class_base_name(block)
        if not base or base in RESERVED or base in PYTHON_NAMES:  # model `_`, or `f` -> `F` (torch.nn.functional)
            base += "Model"
        name, n = base, 2
        while name in self.class_names:
            name, n = f"{base}{n}", n + 1
        self.class_names.add(name)
        return name


class BodyChecker:
    """Checks one instantiation of a model or block body and builds its ModuleIR."""

    def __init__(self, checker: Checker, block: ast.BlockDef | None, scope: FileScope, hyper, input_types):
        self.checker = checker
        self.block = block
        self.scope = scope
        self.hyper = hyper
        self.input_types = input_types
        # Inside a block, each compile-time value remembers how the class computes it (dslc.traced).
        self.generic = block is not None and not block.is_model
        self.env: dict[str, Any] = {k: traced.param(k, v) for k, v in hyper.items()} if self.generic else dict(hyper)
        self.dims: dict[str, Any] = {}
        self.dim_params: list[ir.ClassParam] = []  # the input sizes the block's class may take
        self.body: list[ir.Stmt] = []
        self.bodies: list[list[ir.Stmt]] = [self.body]  # the innermost last: a compile-time if's arm
        names = checker.body_names(block) if block else BodyNames(set(), set(), set())
        self.layers = LayerTable(block.name if block else "", names.layers)
        self.helpers: set[str] = set()
        self.locals: set[str] = set()
        self.inputs: list[ir.Port] = []
        self.outputs: list[ir.Port] = []
        self.ties: list[ir.TiedWeight] = []
        self.current: ast.Stmt | None = None
        self.emitted_locs: set[Loc] = set()
        self.source_texts: dict[Loc, str] = {}
        self.size_rules: dict[tuple[Any, int, int | None], SizeRule] = {}
        self.next_local: dict[str, int] = {}  # fresh()'s next number per stem
        self.declared = names.declared  # fresh temporaries avoid them all
        self.in_train = False  # a train section's body may use losses and noise
        self.bindings: list[tuple[Loc, str, Any]] = []  # (statement, name, value) in order, for an editor
        if checker.trace is not None and (block is not None or type(self) is not BodyChecker):
            checker.trace.bodies.append(self)

    @property
    def reporter(self) -> Reporter:
        return self.checker.reporter

    # ------------------------------------------------------------ driver

    def run(self) -> ir.ModuleIR:
        block = self.block
        for stmt in block.body:
            self.statement(stmt)
        failed_input = any(isinstance(self.env.get(s.name), Poison) for s in block.body if isinstance(s, ast.InputDecl))
        if self.input_types is not None and len(self.inputs) != len(self.input_types) and not failed_input:
            raise error(
                block.loc,
                f"'{block.name}' declares {len(self.inputs)} input(s) but is given {len(self.input_types)}",
            )
        if not self.outputs and not _declares_output(block.body):  # a failed output was reported already
            self.reporter.error(block.loc, f"'{block.name}' declares no output", "add `output NAME = ...`")
        if self.layers.pending:  # layers of a statement that emitted no code: keep them in __init__
            self.body.append(ir.Layers(block.loc, submodules=self.layers.take_pending()))
        signature = block.name
        if block.params:
            signature += "(" + ", ".join(f"{k}={brief(v)}" for k, v in self.hyper.items()) + ")"
        return ir.ModuleIR(
            key=self.checker.class_name_for(block),
            spec_name=block.name,
            kind="model" if block.is_model else "block",
            doc=block.doc,
            signature=signature,
            loc=block.loc,
            inputs=self.inputs,
            outputs=self.outputs,
            submodules=self.layers.top,
            ties=self.ties,
            body=self.body,
            helpers=self.helpers,
            records=self.layers.records,
            comments=block.comments,
            size_rules=list(self.size_rules.values()),
            layer_count=self.layers.count,
            class_params=self.dim_params + self._hyper_params() if self.generic else [],
            names_read=self.checker.body_names(block).read if self.generic else set(),
            class_args={k: traced.plain(v) for k, v in self.hyper.items()},
        )

    def _hyper_params(self) -> list[ir.ClassParam]:
        params = []
        for param in self.block.params:
            default, has_default = None, param.default is not None
            if has_default:
                default = traced.plain(
                    BodyChecker(self.checker, None, self.scope, {}, None).static(param.default, "a default")
                )
            params.append(ir.ClassParam(param.name, param.type, default, has_default))
        return params

    def statement(self, stmt: ast.Stmt) -> None:
        self.current = stmt
        try:
            if isinstance(stmt, ast.InputDecl):
                self.input_decl(stmt)
            elif isinstance(stmt, ast.OutputDecl):
                self.output_decl(stmt)
            elif isinstance(stmt, ast.Assign):
                self.assign(stmt.targets, stmt.value, stmt)
            elif isinstance(stmt, ast.If):
                self.if_stmt(stmt)
            elif isinstance(stmt, ast.ParamDecl):
                self.param_decl(stmt)
            elif isinstance(stmt, ast.Tie):
                self.tie(stmt)
        except DslcError as exc:
            self.reporter.extend(exc)
            self._poison(stmt)
        except _StatementFailedError:
            self._poison(stmt)

    def _poison(self, stmt: ast.Stmt) -> None:
        names = stmt.targets if isinstance(stmt, ast.Assign) else [getattr(stmt, "name", None)]
        for name in names:
            if name:
                self.env[name] = POISON

    def require(self, dim: Any, at_least: int, why: str, loc: Loc) -> None:
        """Record that a symbolic size must be at least `at_least` for the model to run."""
        if isinstance(dim, Sym) and not (at_least <= 1 and _input_size(dim)):
            rule = SizeRule(dim, at_least, why, loc)
            self.size_rules.setdefault(rule.key, rule)

    def require_op_sizes(self, op: Op, at_least: list[tuple[Any, int, str]], loc: Loc) -> None:
        """An op's minimum input sizes (`Inferred.at_least`): a fixed size below one is an error here, a symbolic
        one becomes a size rule (verification picks sizes meeting it; no sizes meeting it is an error)."""
        for dim, minimum, why in at_least:
            dim, minimum = traced.plain(dim), int(traced.plain(minimum))
            if isinstance(dim, Sym):
                if not _always_at_least(dim, minimum):
                    self.require(dim, minimum, f"{op.name}: {why}", loc)
            elif dim < minimum:
                self.fail(loc, f"{op.name}: {why}", section=op.anchor)

    def require_sizes(self, types: list[TensorType], loc: Loc, what: str = "this expression") -> None:
        for t in types:
            for d in t.shape:
                # An input's own size is at least 1; another size needs a rule, whose message is written once.
                if isinstance(d, Sym) and not _input_size(d) and (d, 1, None) not in self.size_rules:
                    self.require(d, 1, f"{what} gives a tensor of size '{d}', which must be at least 1", loc)

    def check_size(self, what: str, outputs: list[TensorType], params: int, loc: Loc) -> None:
        """Refuse a layer too large to build or to run once: its size is spelled out."""
        if params > MAX_PARAMETERS:
            self.fail(
                loc,
                f"{what} has {params:,} parameters ({_gigabytes(params)} in float32); "
                f"dslc builds models of up to {MAX_PARAMETERS:,}",
            )
        for t in outputs:
            elements = 1
            for d in t.shape:
                if isinstance(d, int):
                    if d < 0:
                        self.fail(
                            loc, f"{what} gives {t}, a negative size", "is the input smaller than the kernel or window?"
                        )
                    elements *= int(d)  # int(): a plain product, not a traced one
            if elements > MAX_ELEMENTS:
                self.fail(
                    loc,
                    f"{what} gives {t}, {elements:,} elements per example ({_gigabytes(elements)} in "
                    f"float32); tensors of up to {MAX_ELEMENTS:,} elements are allowed",
                )

    def fail(self, loc: Loc, message: str, hint: str | None = None, section: str | None = None):
        self.reporter.error(loc, message, hint, section=section)
        raise _StatementFailedError

    # ------------------------------------------------------------ statements

    def input_decl(self, stmt: ast.InputDecl) -> None:
        check_identifier(stmt.name, stmt.loc, "input")
        self._new_local(stmt.name, stmt.loc)
        index = len(self.inputs)
        if self.input_types is not None:
            if index >= len(self.input_types):
                self.fail(
                    stmt.loc,
                    f"'{self.block.name}' is given {len(self.input_types)} input(s); this is input {index + 1}",
                )
            actual = self.input_types[index]
            declared = self.tensor_type(stmt.type, actual, input_index=index)
        else:
            declared = self.tensor_type(stmt.type, None)
        if declared.dtype == "bfloat16" and self.block.is_model:  # numpy has no bfloat16; ORT's CPU no kernels
            self.fail(
                stmt.type.loc,
                f"model input '{stmt.name}' is bfloat16, which numpy arrays (the runtime's inputs) cannot hold, "
                "and onnxruntime's CPU kernels, which verify the graph, do not compute",
                "declare it float32 (or float16); `dslc train --amp` trains in bfloat16 where the device has it",
            )
        self.check_size(f"input '{stmt.name}'", [declared], 0, stmt.loc)
        names = [d.id if isinstance(d, ast.Name) else None for d in stmt.type.dims]
        self.inputs.append(ir.Port(stmt.name, declared, " ".join(stmt.comments), names))
        self.env[stmt.name] = ir.Var([declared], stmt.name)
        self.bindings.append((stmt.loc, stmt.name, self.env[stmt.name]))

    def output_decl(self, stmt: ast.OutputDecl) -> None:
        check_identifier(stmt.name, stmt.loc, "output", role="script" if self.block.is_model else "variable")
        if any(p.name == stmt.name for p in self.inputs):  # ONNX names each value once
            self.fail(stmt.loc, f"output '{stmt.name}' has the name of an input", f"write `output y = {stmt.name}`")
        if stmt.value is not None:
            self.assign([stmt.name], stmt.value, stmt)
        value = self.env.get(stmt.name)
        if value is None:
            self.fail(stmt.loc, f"output '{stmt.name}' has no value", f"write `output {stmt.name} = ...`")
        if value is POISON:
            raise _StatementFailedError
        if not isinstance(value, ir.Expr):
            self.fail(stmt.loc, f"output '{stmt.name}' must be a tensor")
        if stmt.type is not None:
            declared = self.tensor_type(stmt.type, value.type)
            if declared != value.type:
                self.fail(stmt.type.loc, f"output '{stmt.name}' is declared {declared} but computes {value.type}")
        if any(o.name == stmt.name for o in self.outputs):
            self.fail(stmt.loc, f"output '{stmt.name}' is declared twice")
        self.outputs.append(ir.Port(stmt.name, value.type, " ".join(stmt.comments)))

    def param_decl(self, stmt: ast.ParamDecl) -> None:
        """A learned tensor of fixed size, a submodule attribute like a layer's weight (`self.cls_token`)."""
        check_identifier(stmt.name, stmt.loc, "parameter", role="attribute")
        if stmt.name in self.env or stmt.name in self.dims:
            self.fail(stmt.loc, f"'{stmt.name}' is already defined")
        texpr = stmt.type
        if texpr.dtype != "float32":
            self.fail(texpr.loc, f"parameters are float32, like every layer's weights; got {texpr.dtype}")
        shape = []
        for dexpr in texpr.dims:
            size = self.static(dexpr, "a parameter's size")
            if isinstance(size, Sym):
                self.fail(dexpr.loc, f"a parameter's sizes are fixed, but '{size}' is known only at run time")
            if not isinstance(size, int) or traced.is_bool(size) or size < 1:
                self.fail(dexpr.loc, f"a parameter's size must be a positive integer, got {brief(size)}")
            shape.append(size)
        initializer, args = self._initializer(stmt.init)
        declared = TensorType("float32", tuple(shape))
        count = math.prod(traced.plain(d) for d in shape)
        self.check_size(f"parameter '{stmt.name}'", [declared], count, stmt.loc)
        init = {"shape": tuple(shape), "initializer": initializer, "args": args}
        self.layers.add(ir.Submodule(stmt.name, "param", stmt.loc, init=init, params=count, layers=0))
        self.layers.record(stmt.loc, stmt.name, "param", [declared], count)
        self.env[stmt.name] = ir.ParamRef([declared], stmt.name)
        self.bindings.append((stmt.loc, stmt.name, self.env[stmt.name]))

    def tie(self, stmt: ast.Tie) -> None:
        """`tie lm_head.weight = transformer.wte.weight`: one tensor under both names, counted once."""
        from dslc.ties import TieError, parameter_shape

        if self.generic:
            self.fail(stmt.loc, "tie is a model's statement, not a block's", "tie the weights in the model")
        if any(value is POISON for value in self.env.values()):
            return  # a statement above failed and was reported: its layers may be the ones tied
        modules = {m.key: m for m in self.checker.specializations.values() if m is not None}
        shapes = []
        for key in (stmt.target, stmt.source):
            try:
                shapes.append(parameter_shape(key, self.layers.top, modules.get))
            except TieError as exc:
                self.fail(
                    stmt.loc, f"tie: {exc}", "tie names the layers above it, by their state_dict keys", section="tie"
                )
        if stmt.target == stmt.source:
            self.fail(stmt.loc, f"tie: '{stmt.target}' is tied to itself")
        if shapes[0] != shapes[1]:
            self.fail(stmt.loc, f"tie: '{stmt.target}' is {list(shapes[0])} but '{stmt.source}' is {list(shapes[1])}")
        taken = {t.target for t in self.ties}
        if stmt.target in taken or stmt.source in taken:
            self.fail(stmt.loc, f"tie: '{stmt.target if stmt.target in taken else stmt.source}' is tied already")
        if any(t.source == stmt.target for t in self.ties):
            self.fail(stmt.loc, f"tie: other parameters are tied to '{stmt.target}'; tie it the other way round")
        self.ties.append(ir.TiedWeight(stmt.target, stmt.source, math.prod(shapes[0])))

    def _initializer(self, expr: ast.Expr | None) -> tuple[str, dict[str, Any]]:
        """`zeros`, `normal(std=0.02)`, ...: the initialiser's name and its checked arguments."""
        if expr is None:
            return "zeros", {}
        name, args, kwargs = None, [], []
        if isinstance(expr, ast.Name):
            name = expr.id
        elif isinstance(expr, ast.Call):
            name, args, kwargs = expr.func, expr.args, expr.kwargs
        init = INITIALIZERS.get(name)
        if init is None:
            hint = did_you_mean(name, INITIALIZERS) if name else None
            self.fail(expr.loc, f"a parameter starts as one of {', '.join(INITIALIZERS)}", hint, section="param")
        bound = bind_arguments(init.params, [], args, kwargs, expr.loc, init.name, self._arg_value)
        problem = init.problem(bound)
        if problem is not None:
            self.fail(expr.loc, problem, section="param")
        return init.name, bound

    def if_stmt(self, stmt: ast.If) -> None:
        body, taken = stmt.orelse, len(stmt.branches)
        for index, (cond, branch) in enumerate(stmt.branches):
            if self.condition(cond, "an if condition"):
                body, taken = branch, index
                break
        # Every condition, the ones after the taken arm too: the class tests them all.
        conditions = [self._trace_condition(cond) for cond, _ in stmt.branches]
        if self.layers.pending:
            self.body_now().append(ir.Layers(stmt.loc, submodules=self.layers.take_pending()))
        arm: list[ir.Stmt] = []
        self.bodies.append(arm)
        try:
            for inner in body:
                self.statement(inner)
        finally:
            self.bodies.pop()
            self.current = stmt
        if self.layers.pending:
            arm.append(ir.Layers(stmt.loc, submodules=self.layers.take_pending()))
        branch = ir.Branch(stmt.loc, conditions, bool(stmt.orelse), taken, arm)
        branch.comments = list(stmt.comments)
        branch.source = _source_text(self.scope, stmt.loc)
        self.body_now().append(branch)

    def body_now(self) -> list[ir.Stmt]:
        return self.bodies[-1]

    def _trace_condition(self, cond: ast.Expr) -> Any:
        """The condition over the block's parameters (`stride != 1 or channels != planes`), for the
        class's own `if`; None when it reads something else (a call, an index)."""
        if isinstance(cond, (ast.Num, ast.Str, ast.Bool)):
            return traced.Lit(cond.value)
        if isinstance(cond, ast.Name):
            value = self.env.get(cond.id, self.dims.get(cond.id))
            if value is None and cond.id in self.scope.consts:
                value = traced.constant(cond.id, self.scope.consts[cond.id])
            return traced.expr_of(value) if isinstance(value, (bool, int, float, str)) else None
        if isinstance(cond, ast.BinOp):
            left, right = self._trace_condition(cond.left), self._trace_condition(cond.right)
            return None if left is None or right is None else traced.Bin(cond.op, left, right)
        if isinstance(cond, ast.UnaryOp):
            operand = self._trace_condition(cond.operand)
            return None if operand is None else traced.Unary(cond.op, operand)
        return None

    def assign(self, targets: list[str], value: ast.Expr, stmt: ast.Stmt) -> None:
        for name in targets:
            check_identifier(name, stmt.loc, "name")
        if isinstance(value, ast.Pipe):
            result = self.pipe(value, targets)
        else:
            result = self.ev(value)
        if isinstance(result, ir.Expr):
            if len(result.types) != len(targets):
                self.fail(
                    stmt.loc,
                    f"the right side gives {len(result.types)} tensor(s) but {len(targets)} name(s) receive them",
                )
            for name in targets:
                self._new_local(name, stmt.loc, rebind=True)
            self.emit(ir.Assign(stmt.loc, targets, result))
            for i, name in enumerate(targets):
                self.env[name] = ir.Var([result.types[i]], name)
        elif isinstance(result, Poison):
            raise _StatementFailedError
        else:
            if len(targets) == 1:
                self.env[targets[0]] = result
            elif isinstance(result, tuple) and len(result) == len(targets):
                self.env.update(zip(targets, result))
            else:
                self.fail(stmt.loc, f"cannot unpack {brief(result)} into {len(targets)} names")
        self.bindings.extend((stmt.loc, name, self.env[name]) for name in targets)

    def emit(self, stmt: ir.Stmt) -> None:
        current = self.current
        if current is not None:
            if current.loc not in self.emitted_locs:  # a statement's comments go before its first line only
                self.emitted_locs.add(current.loc)
                stmt.comments = list(current.comments)
            if current.loc not in self.source_texts:  # a pipeline emits a line per stage: read the text once
                self.source_texts[current.loc] = _source_text(self.scope, current.loc)
            stmt.source = self.source_texts[current.loc]
        stmt.submodules = self.layers.take_pending()
        self.body_now().append(stmt)

    def _new_local(self, name: str, loc: Loc, rebind: bool = False) -> None:
        if not rebind and name in self.env:
            self.fail(loc, f"'{name}' is already defined")
        self.locals.add(name)

    def fresh(self, stem: str) -> str:
        stem = stem or "h"
        name, n = stem, self.next_local.get(stem, 1)
        while name in self.locals or name in self.env or name in self.declared:
            name, n = f"{stem}{n}", n + 1
        self.next_local[stem] = n
        self.locals.add(name)
        return name

    # ------------------------------------------------------------ types

    def tensor_type(
        self, texpr: ast.TensorTypeExpr, actual: TensorType | None, input_index: int | None = None
    ) -> TensorType:
        """Evaluate a declared type. Unknown dim names bind to the actual size (or a new symbol)."""
        if texpr.dtype not in DTYPES:
            self.fail(
                texpr.loc,
                f"unknown dtype '{texpr.dtype}'",
                did_you_mean(texpr.dtype, DTYPES) or f"use one of {', '.join(DTYPES)}",
                section="tensor-types",
            )
        if actual is not None and actual.dtype != texpr.dtype:
            self.fail(texpr.loc, f"expected {texpr.dtype}, got {actual}")
        if actual is not None and actual.rank != len(texpr.dims):
            self.fail(texpr.loc, f"expected rank {len(texpr.dims)} {texpr.dtype}[...], got {actual}")
        dims = []
        for i, dexpr in enumerate(texpr.dims):
            if isinstance(dexpr, ast.Name) and dexpr.id not in self.env and dexpr.id not in self.scope.consts:
                if dexpr.id not in self.dims:
                    check_identifier(dexpr.id, dexpr.loc, "dimension")
                    self._check_renamed_dim(dexpr, actual, i, input_index)
                    self.dims[dexpr.id] = self._bind_dim(dexpr.id, actual, i, input_index)
                dims.append(self.dims[dexpr.id])
                continue
            value = self.static(dexpr, "a dimension")
            if not isinstance(value, (int, Sym)) or traced.is_bool(value):
                self.fail(dexpr.loc, f"a dimension must be an integer or a name, got {brief(value)}")
            if isinstance(value, int) and value < 0:
                self.fail(dexpr.loc, f"a dimension cannot be negative ({value})")
            dims.append(value)
        declared = TensorType(texpr.dtype, tuple(dims))
        if actual is not None and declared.shape != actual.shape:
            self.fail(texpr.loc, f"expected {declared}, got {actual}")
        return declared

    def _check_renamed_dim(
        self, dexpr: ast.Name, actual: TensorType | None, axis: int, input_index: int | None
    ) -> None:
        """A model output's new dimension name for a size that already has a name (`other` for an input's `time`)
        would give the ONNX axis a name the graph does not use: refused, not bound."""
        if actual is None or input_index is not None or not self.block.is_model:
            return
        size = actual.shape[axis]
        if isinstance(size, Sym) and str(size).isidentifier():
            self.fail(
                dexpr.loc,
                f"expected {actual}: dimension {axis} is '{size}', not '{dexpr.id}'",
                f"write '{size}': a model's outputs name their dimensions as its inputs do",
            )

    def _bind_dim(self, name: str, actual: TensorType | None, axis: int, input_index: int | None) -> Any:
        """A dimension name's size: a new symbol on a model's input, the size the use gives in a block
        (traced, so the block's class can take it as an argument: `channels`)."""
        if actual is None:
            return Sym.named(name)
        size = actual.shape[axis]
        if not self.generic or not isinstance(size, int):
            return size
        if input_index is not None:
            self.dim_params.append(ir.ClassParam(name, "int", input=input_index, axis=axis))
        return traced.param(name, int(size))

    # ------------------------------------------------------------ expressions

    def static(self, expr: ast.Expr, what: str) -> Any:
        value = self.ev(expr)
        if isinstance(value, ir.Expr):
            self.fail(expr.loc, f"{what} must be known at compile time, but this is a tensor")
        if isinstance(value, Poison):
            raise _StatementFailedError
        return value

    def tensor(self, expr: ast.Expr) -> ir.Expr:
        value = self.ev(expr)
        if isinstance(value, Poison):
            raise _StatementFailedError
        if not isinstance(value, ir.Expr):
            self.fail(expr.loc, f"expected a tensor, got {brief(value)}")
        return value

    def ev(self, expr: ast.Expr) -> Any:
        """Evaluate an expression: a static value (int, float, str, tuple, ...) or a tensor ir.Expr."""
        if isinstance(expr, (ast.Num, ast.Str, ast.Bool)):
            return expr.value
        if isinstance(expr, ast.NoneLit):
            return None
        if isinstance(expr, ast.Name):
            return self.name(expr)
        if isinstance(expr, (ast.TupleLit, ast.ListLit)):
            items = [self.ev(e) for e in expr.items]
            if any(isinstance(i, Poison) for i in items):
                raise _StatementFailedError
            if any(isinstance(i, ir.Expr) for i in items):
                return _TensorList(items)
            return tuple(items)
        if isinstance(expr, ast.BinOp):
            return self.binop(expr)
        if isinstance(expr, ast.UnaryOp):
            return self.unary(expr)
        if isinstance(expr, ast.Call):
            return self.call(expr)
        if isinstance(expr, ast.Index):
            return self.index(expr)
        if isinstance(expr, ast.Pipe):
            return self.pipe(expr, None)
        if isinstance(expr, ast.CondExpr):
            return self.ev(expr.then if self.condition(expr.cond, "a condition") else expr.orelse)
        self.fail(expr.loc, f"unsupported expression {type(expr).__name__}")

    def condition(self, expr: ast.Expr, what: str) -> bool:
        """A compile-time true or false (`if`, `(a if c else b)`)."""
        value = self.static(expr, what)
        if not traced.is_bool(value):
            self.fail(expr.loc, f"{what} must be true or false, got {brief(value)}")
        return bool(value)

    def name(self, expr: ast.Name) -> Any:
        if expr.id in self.env:
            value = self.env[expr.id]
            if isinstance(value, Poison):
                raise _StatementFailedError
            if isinstance(value, LayerInstance):
                self.fail(expr.loc, f"'{expr.id}' is a layer; apply it with `x -> {expr.id}`")
            return value
        if expr.id in self.dims:
            return self.dims[expr.id]
        if expr.id in self.scope.consts:  # traced, so generated code names it (`HEADS`) rather than repeat 4
            return traced.constant(expr.id, self.scope.consts[expr.id])
        if self.scope.lookup_block(expr.id):
            self.fail(expr.loc, f"'{expr.id}' is a block; use it in a pipeline: x -> {expr.id}(...)")
        candidates = list(self.env) + list(self.dims) + list(self.scope.consts)
        self.fail(expr.loc, f"unknown name '{expr.id}'", did_you_mean(expr.id, candidates))

    def binop(self, expr: ast.BinOp) -> Any:
        if expr.op in ("and", "or"):
            left = self.static(expr.left, f"'{expr.op}'")
            if expr.op == "and":
                return left and self.static(expr.right, "'and'")
            return left or self.static(expr.right, "'or'")
        left, right = self.ev(expr.left), self.ev(expr.right)
        if isinstance(left, Poison) or isinstance(right, Poison):
            raise _StatementFailedError
        if not isinstance(left, ir.Expr) and not isinstance(right, ir.Expr):
            return self.static_binop(expr, left, right)
        return self.tensor_binop(expr, left, right)

    def static_binop(self, expr: ast.BinOp, left: Any, right: Any) -> Any:
        if expr.op == "@":
            self.fail(expr.loc, "'@' needs tensors")
        if expr.op == "/" and isinstance(left, Sym):
            self.fail(expr.loc, "symbolic sizes divide with //")
        if expr.op in tensor_rules.COMPARISONS and (isinstance(left, Sym) or isinstance(right, Sym)):
            self.fail(expr.loc, f"'{expr.op}' on a symbolic size: its value is known only at run time")
        try:
            return consteval.apply(expr.op, left, right)
        except consteval.ConstError as exc:
            message = str(exc)
            if message.startswith("cannot apply"):
                message += f" to {brief(left)} and {brief(right)}"
            self.fail(expr.loc, message)

    def tensor_binop(self, expr: ast.BinOp, left: Any, right: Any) -> ir.Expr:
        operands = []
        for side, value in (("left", left), ("right", right)):
            if isinstance(value, ir.Expr):
                if len(value.types) != 1:
                    self.fail(expr.loc, f"the {side} side of '{expr.op}' is {len(value.types)} tensors, not one")
                operands.append(value)
            elif isinstance(value, (int, float)) and not isinstance(value, bool) or isinstance(value, bool):
                operands.append(ir.Scalar([TensorType("float32" if isinstance(value, float) else "int64", ())], value))
            else:
                self.fail(expr.loc, f"cannot combine a tensor with {brief(value)} using '{expr.op}'")
        a, b = operands
        if expr.op in ("and", "or"):
            self.fail(expr.loc, f"'{expr.op}' works on compile-time values only")
        try:
            result = (
                tensor_rules.matmul_type(a.type, b.type) if expr.op == "@" else tensor_rules.binop_type(expr.op, a, b)
            )
        except ShapeError as exc:
            self.fail(expr.loc, str(exc), exc.hint)
        self.check_size(f"'{expr.op}'", [result], 0, expr.loc)
        return ir.BinOp([result], expr.op, a, b)

    def unary(self, expr: ast.UnaryOp) -> Any:
        value = self.ev(expr.operand)
        if isinstance(value, Poison):
            raise _StatementFailedError
        if expr.op == "not":
            if isinstance(value, ir.Expr):
                self.fail(expr.loc, "'not' works on compile-time values only")
            return not value
        if isinstance(value, ir.Expr):
            return ir.UnaryOp(value.types, "-", value)
        try:
            return consteval.negate(value)
        except consteval.ConstError as exc:
            self.fail(expr.loc, f"{exc} {brief(value)}" if str(exc) == "cannot negate" else str(exc))

    def index(self, expr: ast.Index) -> Any:
        value = self.ev(expr.value)
        if isinstance(value, Poison):
            raise _StatementFailedError
        if isinstance(value, ir.Expr) and len(value.types) > 1:
            return self._pick_output(expr, value)
        if not isinstance(value, ir.Expr):
            if isinstance(value, tuple) and len(expr.items) == 1:
                i = self.static(expr.items[0], "an index")
                try:
                    return value[i]
                except (IndexError, TypeError):
                    self.fail(expr.loc, f"index {brief(i)} is out of range for {brief(value)}")
            self.fail(expr.loc, f"cannot index {brief(value)}")
        items = []
        for item in expr.items:
            if isinstance(item, ast.EllipsisLit):
                items.append(Ellipsis)
            elif isinstance(item, ast.NoneLit):
                items.append(None)
            elif isinstance(item, ast.Slice):
                parts = [
                    None if p is None else self.static(p, "a slice bound") for p in (item.start, item.stop, item.step)
                ]
                if any(p is not None and not isinstance(p, int) for p in parts):
                    self.fail(item.loc, "slice bounds must be integers")
                if parts[2] is not None and parts[2] <= 0:
                    self.fail(item.loc, "slice steps must be positive")
                items.append(ir.SliceItem(*parts))
            else:
                i = self.ev(item)
                if isinstance(i, ir.Expr):
                    self.fail(item.loc, "indexing with a tensor is not supported", "use where(...) or a gather layer")
                if not isinstance(i, int) or traced.is_bool(i):
                    self.fail(item.loc, f"an index must be an integer, got {brief(i)}")
                items.append(i)
        try:
            shape, needs = tensor_rules.index_shape(value.type.shape, items)
        except ShapeError as exc:
            self.fail(expr.loc, str(exc))
        for size, at_least in needs:
            self.require(size, at_least, f"this index needs '{size}' to be at least {at_least}", expr.loc)
        self.require_sizes([value.type.with_shape(shape)], expr.loc)
        return ir.Index([value.type.with_shape(shape)], value, items)

    def _pick_output(self, expr: ast.Index, value: ir.Expr) -> ir.Expr:
        """`model(x)[0]`, `chunk(x, 2)[1]`: one output of an expression that gives several."""
        count = len(value.types)
        if len(expr.items) != 1 or isinstance(expr.items[0], (ast.Slice, ast.EllipsisLit, ast.NoneLit)):
            self.fail(expr.loc, f"this gives {count} tensors; pick one with an integer index, e.g. [0]")
        i = self.static(expr.items[0], "an output index")
        if not isinstance(i, int) or traced.is_bool(i) or not -count <= i < count:
            self.fail(
                expr.loc, f"output index {brief(i)} is out of range: this gives {count} tensors (0 to {count - 1})"
            )
        i = int(traced.plain(i)) % count
        if isinstance(value, ir.TupleExpr):
            return value.items[i]
        return ir.GetItem([value.types[i]], value, i)

    # ------------------------------------------------------------ calls and pipelines

    def call(self, expr: ast.Call) -> Any:
        if expr.func == "range" and "range" not in self.env:
            return self.range(expr)
        if expr.func in self.env and isinstance(self.env[expr.func], LayerInstance):
            if expr.kwargs:
                self.fail(expr.loc, f"'{expr.func}' is a layer instance; it takes tensors only")
            inputs = self.flatten_inputs([self.ev(a) for a in expr.args], expr.loc)
            return self.env[expr.func].make_call(inputs, expr.loc)
        op = REGISTRY.get(expr.func)
        if op is None:
            if self.scope.lookup_block(expr.func):
                self.fail(expr.loc, f"'{expr.func}' is a block; apply it in a pipeline: x -> {expr.func}(...)")
            candidates = [k for k, o in REGISTRY.items() if o.category == "function" or k.islower()]
            self.fail(expr.loc, f"unknown function '{expr.func}'", did_you_mean(expr.func, candidates + list(self.env)))
        if op.category in ("layer",):
            self.fail(expr.loc, f"{op.name} is a layer; apply it in a pipeline: x -> {op.name}(...)")
        if op.train_only and not self.in_train:
            what = "a loss" if op.category == "loss" else "a random draw"
            self.fail(expr.loc, f"{op.name} is {what}: it belongs in the train section, not in a model")
        values = [self.ev(a) for a in expr.args]
        tensors: list[Any] = []
        while values and len(tensors) < op.inputs[1] and self._is_input(values[0], op, bool(tensors)):
            tensors.append(_scalar(values.pop(0)))
        inputs = self.flatten_inputs(tensors, expr.loc)
        return self.apply_op(op, inputs, values, expr.kwargs, expr.loc, None)

    def range(self, expr: ast.Call) -> tuple[int, ...]:
        """`range(n)`, `range(start, stop[, step])`: the integers a compile-time loop walks."""
        if expr.kwargs or not 1 <= len(expr.args) <= 3:
            self.fail(expr.loc, "range takes 1 to 3 integers: range(stop) or range(start, stop[, step])")
        bounds = [self.static(a, "a range bound") for a in expr.args]
        if any(not isinstance(b, int) or traced.is_bool(b) for b in bounds):
            self.fail(expr.loc, f"range takes integers, got {', '.join(brief(b) for b in bounds)}")
        bounds = [int(traced.plain(b)) for b in bounds]
        if len(bounds) == 3 and bounds[2] == 0:
            self.fail(expr.args[2].loc, "range's step cannot be zero")
        items = range(*bounds)
        if len(items) > MAX_REPEAT:
            self.fail(expr.loc, f"range gives {len(items):,} numbers; a loop runs at most {MAX_REPEAT:,} times")
        return tuple(items)

    @staticmethod
    def _is_input(value: Any, op: Op, after_tensor: bool) -> bool:
        """A tensor input of `op`; after the first, a number too where the op takes one for a tensor."""
        if isinstance(value, (ir.Expr, _TensorList, Poison)):
            return True
        return op.scalar_inputs and after_tensor and isinstance(value, (int, float)) and not traced.is_bool(value)

    def flatten_inputs(self, values: list[Any], loc: Loc) -> list[ir.Expr]:
        inputs: list[ir.Expr] = []
        for v in values:
            if isinstance(v, Poison):
                raise _StatementFailedError
            if isinstance(v, _TensorList):
                inputs.extend(self.flatten_inputs(list(v), loc))
            elif isinstance(v, ir.Expr):
                inputs.extend(self.split_outputs(v))
            else:
                self.fail(loc, f"expected a tensor, got {brief(v)}")
        return inputs

    def split_outputs(self, value: ir.Expr) -> list[ir.Expr]:
        if len(value.types) == 1:
            return [value]
        if isinstance(value, ir.TupleExpr):
            return list(value.items)
        names = [self.fresh(f"out{i}") for i in range(len(value.types))]
        self.emit(ir.Assign(self.current.loc, names, value))
        return [ir.Var([t], n) for t, n in zip(value.types, names)]

    def pipe(self, pipe: ast.Pipe, targets: list[str] | None) -> ir.Expr:
        """A statement-level pipeline writes one line per stage into the target; a nested one composes."""
        source = self.ev(pipe.source)
        inputs = self.flatten_inputs([source], pipe.source.loc)
        result: ir.Expr | None = None
        for i, stage in enumerate(pipe.stages):
            result = self.stage(stage, inputs, None)
            last = i == len(pipe.stages) - 1
            if last:
                break
            spill = targets is None and len(result.types) == 1 and ir.nesting(result) > MAX_INLINE_NESTING
            if (targets is not None or spill) and len(result.types) == 1 and not isinstance(result, ir.Var):
                if spill:  # a long nested pipeline: one line per few stages, not one deeply nested call
                    name = self.fresh("h")
                else:
                    name = targets[0]  # the first target holds the intermediate values until the last stage
                self.locals.add(name)
                self.emit(ir.Assign(self.current.loc, [name], result))
                inputs = [ir.Var(result.types, name)]
            else:
                inputs = self.split_outputs(result)
        return result

    def stage(self, stage: ast.Stage, inputs: list[ir.Expr], name: str | None, in_group: bool = False) -> ir.Expr:
        if isinstance(stage, ast.NamedStage):
            if in_group:
                self.fail(stage.loc, "layers inside a named group are numbered; names are not allowed there")
            # A layer name only ever becomes an attribute (`self.NAME`), never a local variable, so the
            # names kept free for locals (`self`, as in HuggingFace's `attention.self`) are allowed.
            check_identifier(stage.name, stage.loc, "layer name", role="attribute")
            if stage.name in self.env:
                self.fail(stage.loc, f"'{stage.name}' is already defined")
            return self.stage(stage.body, inputs, stage.name)
        if isinstance(stage, ast.LayerCall):
            return self.layer_call(stage, inputs, name, in_group)
        if isinstance(stage, ast.Repeat):
            return self.repeat(stage, inputs, name, in_group)
        if isinstance(stage, ast.Group):
            return self.group(stage, inputs, name, in_group)
        if isinstance(stage, (ast.ForStage, ast.IfStage)):
            if name is not None:  # `blocks: for ... { ... }` is a named group of the loop's layers
                return self.group(ast.Group(stage.loc, [stage]), inputs, name, in_group)
            return self.chain([stage], inputs)
        self.fail(stage.loc, "unsupported pipeline stage")

    def chain(self, stages: list[ast.Stage], inputs: list[ir.Expr]) -> ir.Expr:
        """Unnamed stages in turn, each on the previous one's outputs; none at all passes the inputs on."""
        result = inputs[0] if len(inputs) == 1 else ir.TupleExpr([x.type for x in inputs], list(inputs))
        with closing(self.spliced(stages, in_group=False)) as expanded:
            for inner in expanded:
                result = self.stage(inner, inputs, None)
                if len(result.types) == 1 and ir.nesting(result) > MAX_INLINE_NESTING:  # a long loop: a line per few
                    name = self.fresh("h")
                    self.emit(ir.Assign(self.current.loc, [name], result))
                    result = ir.Var(result.types, name)
                inputs = self.split_outputs(result)
        return result

    def spliced(self, stages: list[ast.Stage], in_group: bool) -> Iterator[ast.Stage]:
        """The stages with compile-time loops and ifs expanded (a loop's names bound while its stages are
        checked), and in a named group repeats too: their layers join the group's numbering."""
        for stage in stages:
            if isinstance(stage, ast.Repeat) and in_group:
                for _ in range(self.repeat_count(stage)):
                    yield stage.body
            elif isinstance(stage, ast.ForStage):
                for item in self.loop_items(stage):
                    with self.bound(stage, item):
                        yield from self.spliced(stage.stages, in_group)
            elif isinstance(stage, ast.IfStage):
                arm = next((s for cond, s in stage.branches if self.condition(cond, "an if condition")), stage.orelse)
                yield from self.spliced(arm, in_group)
            else:
                yield stage

    def loop_items(self, stage: ast.ForStage) -> list[tuple[Any, ...]]:
        """Each item of a loop as the values of its names (`for c, n in [(16, 1), (24, 2)]`)."""
        items = self.static(stage.items, "what a loop walks")
        if not isinstance(items, tuple):
            self.fail(stage.items.loc, f"a loop walks a list, a tuple or a range, got {brief(items)}")
        if len(items) > MAX_REPEAT:
            self.fail(stage.items.loc, f"this loop runs {len(items):,} times; at most {MAX_REPEAT:,} are allowed")
        count = len(stage.names)
        if count == 1:
            return [(item,) for item in items]
        for item in items:
            if not isinstance(item, tuple) or len(item) != count:
                self.fail(stage.items.loc, f"cannot unpack {brief(item)} into {count} names")
        return list(items)

    @contextmanager
    def bound(self, stage: ast.ForStage, values: tuple[Any, ...]) -> Iterator[None]:
        """The loop's names hold one item's values while its stages are checked."""
        for name in stage.names:
            check_identifier(name, stage.loc, "loop name")
            if name in self.env or name in self.dims or name in self.scope.consts:
                self.fail(stage.loc, f"'{name}' is already defined; a loop needs new names")
        self.env.update(zip(stage.names, values))
        try:
            yield
        finally:
            for name in stage.names:
                self.env.pop(name, None)

    def layer_call(self, stage: ast.LayerCall, inputs, name, in_group) -> ir.Expr:
        instance = self.env.get(stage.name)
        if isinstance(instance, LayerInstance):
            if not stage.bare or name:
                self.fail(
                    stage.loc, f"'{stage.name}' is an existing layer; reuse it as `-> {stage.name}` (shared weights)"
                )
            return instance.make_call(inputs, stage.loc)
        if isinstance(instance, Poison):
            raise _StatementFailedError
        op = REGISTRY.get(stage.name)
        if op is not None:
            return self.apply_op(op, inputs, [], stage.kwargs, stage.loc, name, stage.args, in_group)
        found = self.scope.lookup_block(stage.name)
        if found is not None:
            return self.apply_block(found, stage, inputs, name)
        candidates = (
            list(REGISTRY) + list(self.scope.blocks) + [k for k, v in self.env.items() if isinstance(v, LayerInstance)]
        )
        self.fail(
            stage.loc,
            f"unknown layer '{stage.name}'",
            layer_hint(stage.name) or did_you_mean(stage.name, candidates),
            section="layers-and-functions",
        )

    def _arg_value(self, expr: ast.Expr, param) -> Any:
        if param is not None and param.kind in ("axis", "axes"):
            if isinstance(expr, ast.Name) and expr.id not in self.env and expr.id not in self.scope.consts:
                return AxisName(expr.id, self.dims.get(expr.id))
            if isinstance(expr, ast.TupleLit):
                return tuple(self._arg_value(e, param) for e in expr.items)
        return self.static(expr, "a layer argument")

    def apply_op(self, op: Op, inputs, args, kwargs, loc, name, arg_exprs=None, in_group=False) -> ir.Expr:
        lo, hi = op.inputs
        if not lo <= len(inputs) <= hi:
            want = str(lo) if lo == hi else f"{lo} to {hi}"
            self.fail(loc, f"{op.name} takes {want} input tensor(s), got {len(inputs)}")
        bound = bind_arguments(op.params, args, arg_exprs or [], kwargs, loc, op.name, self._arg_value)
        types = [x.type for x in inputs]
        try:
            inferred = op.infer(bound, types)
        except ShapeError as exc:
            self.fail(loc, str(exc), exc.hint, section=op.anchor)
        self.require_op_sizes(op, inferred.at_least, loc)
        self.require_sizes(inferred.outputs, loc, op.name)
        if op.param_count(inferred.init):  # dslc's layers hold float32 weights: PyTorch refuses other floats
            for t in types:
                if t.is_float and t.dtype != "float32":
                    self.fail(loc, f"{op.name} has float32 weights but its input is {t.dtype}", "convert with float(x)")
        self.check_size(op.name, inferred.outputs, op.param_count(inferred.init), loc)
        for key, value in bound.items():  # after the size check, which spells out what a huge size means
            for item in value if isinstance(value, tuple) else (value,):
                if isinstance(item, int) and abs(item) > MAX_LAYER_INT:
                    self.fail(loc, f"{op.name}: '{key}' is {item:,}; layer arguments are at most {MAX_LAYER_INT:,}")
        self.helpers.update(op.helpers)
        needs_module = op.stateful or name is not None or in_group
        if needs_module and op.module is None:
            self.fail(loc, f"{op.name} has no module form, so it cannot be named or grouped")
        attr = None
        if needs_module:
            attr = name or self.layers.auto_attr(op.prefix)
            self.layers.add(
                ir.Submodule(
                    attr, "op", loc, op=op.name, init=inferred.init, args=bound, params=op.param_count(inferred.init)
                )
            )
            self.layers.record(loc, attr, f"{op.name}", inferred.outputs, op.param_count(inferred.init))
            if name is not None and not in_group:
                self.env[name] = self._instance(attr, op, bound, inferred.init)
        else:
            self.layers.record(loc, "", op.name, inferred.outputs, 0)
        module = attr
        return ir.OpCall(inferred.outputs, op.name, list(inputs), inferred.init, module, args=bound)

    def _instance(self, attr: str, op: Op, bound: dict, init: dict) -> LayerInstance:
        def make_call(inputs, loc):
            try:
                again = op.infer(bound, [x.type for x in inputs])
            except ShapeError as exc:
                self.fail(loc, f"reusing '{attr}': {exc}", exc.hint)
            if again.init != init:
                self.fail(
                    loc,
                    f"layer '{attr}' was built for other input sizes; it cannot be reused with {[str(x.type) for x in inputs]}",
                )
            self.require_op_sizes(op, again.at_least, loc)
            self.require_sizes(again.outputs, loc, op.name)
            return ir.OpCall(again.outputs, op.name, list(inputs), init, attr)

        return LayerInstance(attr, init, make_call)

    def apply_block(self, found, stage: ast.LayerCall, inputs, name) -> ir.Expr:
        block, scope = found
        hyper = self.block_args(block, stage)
        module = self.checker.instantiate(block, scope, hyper, [x.type for x in inputs], stage.loc)
        for rule in module.size_rules:
            self.size_rules.setdefault(rule.key, rule)
        attr = name or self.layers.auto_attr(_snake(block.name))
        call_args = _call_args(module, hyper, inputs)
        self.layers.add(
            ir.Submodule(
                attr,
                "block",
                stage.loc,
                block=module.key,
                call_args=call_args,
                params=module.param_count,
                layers=module.layer_count,
            )
        )
        types = _output_types(module, call_args)
        self.layers.record(stage.loc, attr, module.signature, types, module.param_count)
        if name is not None and self.layers.at_top:
            self.env[name] = self._block_instance(attr, block, scope, hyper, module)
        return ir.ModuleCall(types, attr, list(inputs))

    def _block_instance(self, attr, block, scope, hyper, module) -> LayerInstance:
        def make_call(inputs, loc):
            again = self.checker.instantiate(block, scope, hyper, [x.type for x in inputs], loc)
            if again is not module:
                self.fail(loc, f"block '{attr}' was built for other input types; it cannot be reused with these inputs")
            return ir.ModuleCall(_output_types(module, _call_args(module, hyper, inputs)), attr, list(inputs))

        return LayerInstance(attr, module, make_call)

    def block_args(self, block: ast.BlockDef, stage: ast.LayerCall) -> dict[str, Any]:
        what = block.name
        values: dict[str, Any] = {}
        if len(stage.args) > len(block.params):
            self.fail(stage.loc, f"{what} takes {len(block.params)} argument(s), got {len(stage.args)}")
        for param, arg in zip(block.params, stage.args):
            values[param.name] = self.static(arg, "a block argument")
        by_name = {p.name: p for p in block.params}
        for key, vexpr in stage.kwargs:
            if key not in by_name:
                self.fail(vexpr.loc, f"{what} has no parameter '{key}'", did_you_mean(key, by_name))
            values[key] = self.static(vexpr, "a block argument")
        hyper = {}
        for param in block.params:
            if param.name in values:
                value = values[param.name]
            elif param.default is not None:
                value = traced.plain(
                    BodyChecker(self.checker, None, self.scope, {}, None).static(param.default, "a default")
                )
            else:
                self.fail(stage.loc, f"{what} is missing its '{param.name}' argument")
            if param.type not in PARAM_TYPES:
                self.fail(param.loc, f"unknown parameter type '{param.type}'", "use int, float, bool or str")
            try:
                hyper[param.name] = check_param_value(param, value)
            except TypeError as exc:
                self.fail(stage.loc, f"{what}: {exc}")
        return hyper

    def repeat_count(self, stage: ast.Repeat) -> int:
        count = self.static(stage.count, "a repeat count")
        if not isinstance(count, int) or isinstance(count, bool) or count < 1:
            self.fail(stage.count.loc, f"repeat needs a positive integer count, got {brief(count)}", section="repeat")
        if count > MAX_REPEAT:
            self.fail(stage.count.loc, f"repeat {count} is more than the {MAX_REPEAT} copies dslc allows")
        return count

    def repeat(self, stage: ast.Repeat, inputs, name, in_group) -> ir.Expr:
        count = self.repeat_count(stage)
        attr = name or self.layers.auto_attr("layers")
        first, extra = inputs[0], inputs[1:]
        with self.layers.children() as children:
            current = first
            for i in range(count):
                out = self.stage(stage.body, [current, *extra], str(i), in_group=True)
                if len(out.types) != 1 or out.type != current.type:
                    got = ", ".join(str(t) for t in out.types) or "nothing"
                    self.fail(
                        stage.loc,
                        f"repeat needs a layer whose output has its input's type; got {current.type} -> {got}",
                    )
                current = ir.Var(out.types, "_")
        kind = "sequential" if not extra else "list"
        params = sum(c.params for c in children)
        self.layers.add(ir.Submodule(attr, kind, stage.loc, children=children, repeat=count, params=params, layers=0))
        self.layers.record(stage.loc, attr, f"repeat {count}", [first.type], params)
        if not extra:
            return ir.ModuleCall([first.type], attr, [first])
        target = self.fresh("h")
        self.emit(ir.RepeatLoop(self.current.loc, target, attr, first, extra))
        return ir.Var([first.type], target)

    def group(self, stage: ast.Group, inputs, name, in_group) -> ir.Expr:
        """An unnamed group is its stages in turn; a named one, or one inside a named group (numbered
        there), is an nn.Sequential whose layers are numbered 0, 1, ... as PyTorch numbers them."""
        if name is None and not in_group:
            return self.chain(stage.stages, inputs)
        start = self.layers.mark()
        with (
            self.layers.children(name) as children,
            closing(self.spliced(stage.stages, in_group=True)) as expanded,
        ):
            current = inputs
            for index, inner in enumerate(expanded):
                out = self.stage(inner, current, str(index), in_group=True)
                if len(out.types) != 1 or len(current) != 1:
                    self.fail(inner.loc, "every layer of a named group takes one tensor and gives one")
                current = [ir.Var(out.types, "_")]
        if not children:
            self.fail(stage.loc, "this group has no layers")
        params = sum(c.params for c in children)
        self.layers.add(ir.Submodule(name, "sequential", stage.loc, children=children, params=params, layers=0))
        self.layers.record(stage.loc, name, "group", current[0].types, params, at=start)
        if not in_group:
            self.env[name] = LayerInstance(name, None, lambda xs, loc: self._fail_reuse(name, loc))
        return ir.ModuleCall(current[0].types, name, list(inputs))

    def _fail_reuse(self, name: str, loc: Loc):
        self.fail(loc, f"the group '{name}' cannot be reused; give its layers names instead")


def _call_args(module: ir.ModuleIR, hyper: dict[str, Any], inputs: list[ir.Expr]) -> dict[str, Any]:
    """The block class's arguments at this use, in the caller's terms (traced if the caller is a block)."""
    args = {p.name: inputs[p.input].type.shape[p.axis] for p in module.class_params if p.input is not None}
    return args | {k: v for k, v in hyper.items() if k in {p.name for p in module.class_params}}


def _output_types(module: ir.ModuleIR, call_args: dict[str, Any]) -> list[TensorType]:
    """The block's output types with its parameters replaced by the caller's arguments."""
    return [o.type.with_shape(traced.substitute(tuple(o.type.shape), call_args)) for o in module.outputs]


def _unmet_rule_message(rule: SizeRule, rules: list[SizeRule]) -> tuple[str, str]:
    """(message, hint) for a size rule no sizes meet; a smallest and a largest that exclude each other name both."""
    others = [r for r in rules if r is not rule and r.dim.atoms() & rule.dim.atoms()]
    limit = next((r for r in others if r.at_most is not None), None)
    if rule.at_most is not None:
        needs = next((r for r in others if r.at_most is None), None)
        but = f"{needs.why} (line {needs.loc.line})" if needs and needs.loc else "no input size meets that"
        return f"{rule.why}, so it is at most {rule.at_most}; but {but}", "a larger table?"
    if limit is not None:
        where = f" (line {limit.loc.line})" if limit.loc else ""
        return f"{rule.why}; but {limit.why}{where}, so it is at most {limit.at_most}", "a larger table?"
    return (
        f"{rule.why}; no input size up to {MAX_EXAMPLE_SIZE} gives that",
        "a kernel, pooling window or index larger than the input?",
    )


def _gigabytes(count: int) -> str:
    """The size of `count` float32 values, in the unit that reads best (6.4 GB, 4.4 TB, 1.2e+09 TB)."""
    size = count * 4 / 1e9
    if size < 1000:
        return f"{size:,.1f} GB"
    return f"{size / 1000:,.1f} TB" if size < 1e9 else f"{size / 1000:.1e} TB"


def _input_size(dim: Sym) -> bool:
    """A lone input dimension (`time`): every run gives it a size of at least 1."""
    if len(dim.terms) != 1:
        return False
    ((monomial, coeff),) = dim.terms.items()
    return coeff == 1 and len(monomial) == 1 and monomial[0] not in FLOOR_ATOMS


def _always_at_least(dim: Sym, minimum: int) -> bool:
    """Whether `dim` is at least `minimum` at every input size (each at least 1): a sum of input sizes and their
    products with positive coefficients (`2*h`, `h*w + 1`) is smallest where every size is 1."""
    if any(c < 0 for m, c in dim.terms.items() if m) or any(a in FLOOR_ATOMS for a in dim.atoms()):
        return False
    return dim.evaluate(dict.fromkeys(dim.atoms(), 1)) >= minimum


def _declares_output(stmts: list[ast.Stmt]) -> bool:
    for stmt in stmts:
        if isinstance(stmt, ast.OutputDecl):
            return True
        if isinstance(stmt, ast.If) and any(_declares_output(b) for b in [*(b for _, b in stmt.branches), stmt.orelse]):
            return True
    return False


def _scalar(value: Any) -> Any:
    """A number standing for a tensor (`bce_with_logits(score, 1.0)`): a float32 scalar."""
    if isinstance(value, (int, float)) and not isinstance(value, ir.Expr):
        return ir.Scalar([TensorType("float32", ())], float(traced.plain(value)))
    return value


class _TensorList(list):
    """A list or tuple literal holding tensors, e.g. the argument of concat([a, b])."""


def _snake(name: str) -> str:
    out = []
    for i, c in enumerate(name):
        if c.isupper() and i and not name[i - 1].isupper():
            out.append("_")
        out.append(c.lower())
    return "".join(out)


def _source_text(scope: FileScope, loc: Loc) -> str:
    """The statement's spec text (without trailing comments) on one line, whitespace collapsed."""
    comments = scope.program.comments  # found by the lexer, so a '#' inside a string is not one
    source_lines = scope.program.lines
    lines = []
    for number in range(loc.line, (loc.end_line or loc.line) + 1):
        line = source_lines[number - 1]
        if number == loc.end_line and loc.end_col:
            line = line[: loc.end_col - 1]
        elif number in comments:  # cut the trailing comment: its text ends the line
            text_start = len(line.rstrip()) - len(comments[number])
            line = line[: line.rfind("#", 0, text_start + 1)]
        lines.append(line)
    return " ".join(" ".join(lines).split())
