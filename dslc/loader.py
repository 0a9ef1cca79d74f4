"""Loads a spec and its imports into file scopes, and applies `--set` overrides to constants."""

from __future__ import annotations

import keyword
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dslc import ast
from dslc.errors import DslcError, Loc, Reporter, did_you_mean, error, read_source
from dslc.layers import HELPERS, REGISTRY
from dslc.params import dsl_value
from dslc.parser import parse
from dslc.pytext import MODEL_CODE_NAMES, MODULE_ATTRIBUTES, PYTHON_NAMES, TRAIN_SCRIPT_NAMES, TRAIN_SCRIPT_PREFIXES

# Names generated code relies on; a spec may not rebind them.
RESERVED = MODEL_CODE_NAMES | set(HELPERS)


@dataclass
class FileScope:
    """The top-level names one file sees: its own definitions and what it imports."""

    path: str
    program: ast.Program
    consts: dict[str, Any] = field(default_factory=dict)
    const_locs: dict[str, Loc] = field(default_factory=dict)
    blocks: dict[str, tuple[ast.BlockDef, FileScope]] = field(default_factory=dict)
    aliases: dict[str, FileScope] = field(default_factory=dict)

    def lookup_block(self, name: str) -> tuple[ast.BlockDef, FileScope] | None:
        if "." in name:
            alias, _, rest = name.partition(".")
            scope = self.aliases.get(alias)
            return scope.lookup_block(rest) if scope else None
        return self.blocks.get(name)

    def own_blocks(self) -> list[ast.BlockDef]:
        return [item for item in self.program.items if isinstance(item, ast.BlockDef)]


def check_identifier(name: str, loc: Loc, what: str, role: str = "variable") -> None:
    """Spec names become Python names in generated code: refuse anything unsafe for their role.

    `variable`: a variable or class of the model code (no keyword, builtin or generator name);
    `script`: also a variable of the training script (models, model outputs, train tensors);
    `attribute`: a layer, stored as `self.NAME` (no nn.Module attribute); `constant`: compile time only.
    """
    if not name.isidentifier() or not name.isascii():
        raise error(loc, f"{what} '{name}' is not a valid identifier")
    if name.startswith("__"):
        raise error(loc, f"{what} '{name}' may not start with two underscores")
    if keyword.iskeyword(name):
        raise error(loc, f"{what} '{name}' is a Python keyword; choose another name")
    if role == "attribute":
        if name in MODULE_ATTRIBUTES or name.startswith("_"):
            raise error(loc, f"{what} '{name}' would replace nn.Module's own '{name}'; choose another name")
        return
    if name in RESERVED or (role != "constant" and name in PYTHON_NAMES):
        raise error(loc, f"{what} '{name}' is a name the generated Python code uses; choose another name")
    if role == "script" and (name in TRAIN_SCRIPT_NAMES or name.startswith(TRAIN_SCRIPT_PREFIXES)):
        raise error(loc, f"{what} '{name}' is a name the generated training script uses; choose another name")


def parse_override(text: str) -> tuple[str, Any]:
    """`hidden=256` -> ("hidden", 256); values are ints, floats, true/false or strings (bare or quoted)."""
    name, sep, raw = text.partition("=")
    name = name.strip()
    if not sep or not name:
        raise error(None, f"--set expects NAME=VALUE, got {text!r}")
    raw = raw.strip()
    for convert in (int, float):
        try:
            return name, convert(raw)
        except ValueError:
            pass
    if raw in ("true", "false"):
        return name, raw == "true"
    if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "\"'":  # written as the spec writes a string
        return name, raw[1:-1]
    return name, raw


class Loader:
    def __init__(self, evaluate_const, sources: dict[str, str] | None = None):
        self.evaluate_const = evaluate_const  # (expr, FileScope) -> value; provided by the checker
        self.sources = sources or {}  # resolved path -> the text to check instead of the file's (an editor's buffer)
        self.scopes: dict[Path, FileScope] = {}
        self.loading: list[Path] = []
        self.reporter = Reporter()

    def load(self, path: str | Path, overrides: dict[str, Any] | None = None) -> FileScope:
        root = self._load(Path(path), None, overrides or {})
        return root

    def _load(self, path: Path, loc: Loc | None, overrides: dict[str, Any]) -> FileScope:
        try:
            key = path.resolve()
        except (OSError, ValueError, RuntimeError):  # a NUL byte, a symlink loop
            raise error(loc, f"cannot import {str(path)!r}: not a valid file name") from None
        if key in self.loading:
            chain = " -> ".join(p.name for p in self.loading[self.loading.index(key) :] + [key])
            raise error(loc, f"import cycle: {chain}")
        if key in self.scopes:
            return self.scopes[key]
        try:
            source = self.sources[str(key)] if str(key) in self.sources else read_source(path)
        except DslcError as exc:
            if loc is None:
                raise
            problem = exc.diagnostics[0].message.removeprefix(f"{path}: ")
            raise error(loc, f"cannot import '{path}': {problem}") from None
        self.reporter.sources[str(path)] = source
        program = parse(source, str(path))
        scope = FileScope(str(path), program)
        self.loading.append(key)
        try:
            self._define(scope, overrides)
        finally:
            self.loading.pop()
        self.scopes[key] = scope
        return scope

    def _define(self, scope: FileScope, overrides: dict[str, Any]) -> None:
        base = Path(scope.path).parent
        for item in scope.program.items:
            try:
                if isinstance(item, ast.Import):
                    self._import(scope, item, base)
                elif isinstance(item, ast.Const):
                    check_identifier(item.name, item.loc, "constant", role="constant")
                    if item.name in scope.consts:
                        raise error(item.loc, f"constant '{item.name}' is defined twice")
                    value = self.evaluate_const(item.value, scope)
                    if item.name in overrides:
                        try:
                            override = overrides[item.name]
                            if isinstance(value, tuple) and isinstance(override, str):  # `--set STAGES=[[64], [128]]`
                                override = self._list_override(item.name, override, scope)
                            value = _coerce_override(item.name, value, override)
                        except DslcError as exc:  # keep the spec's value so later uses check cleanly
                            self.reporter.extend(exc)
                    scope.consts[item.name] = value
                    scope.const_locs[item.name] = item.loc
                elif isinstance(item, ast.BlockDef):
                    check_identifier(
                        item.name,
                        item.loc,
                        "model" if item.is_model else "block",
                        role="script" if item.is_model else "variable",
                    )
                    if item.name in REGISTRY:
                        raise error(
                            item.loc,
                            f"'{item.name}' is a built-in layer; give the {'model' if item.is_model else 'block'} another name",
                        )
                    if item.name in scope.blocks and scope.blocks[item.name][1] is scope:
                        raise error(item.loc, f"'{item.name}' is defined twice")
                    scope.blocks[item.name] = (item, scope)
            except DslcError as exc:
                self.reporter.extend(exc)
        for name in overrides:
            if name not in scope.consts:
                hint = did_you_mean(name, scope.consts)
                self.reporter.error(None, f"--set {name}: no constant '{name}'", hint)

    def _list_override(self, name: str, text: str, scope: FileScope) -> Any:
        """A list constant's --set value, written as in a spec (`[[64], [128, 128]]`) and evaluated as one."""
        from dslc.parser import parse

        try:
            (const,) = parse(f"const {name} = {text}\n", f"--set {name}").items
            return self.evaluate_const(const.value, scope)
        except (DslcError, ValueError) as exc:
            message = exc.diagnostics[0].message if isinstance(exc, DslcError) else str(exc)
            hint = "write a list as in the spec: [[64], [128, 128]]"
            raise error(None, f"--set {name}: {message} in {text!r}", hint) from None

    def _import(self, scope: FileScope, item: ast.Import, base: Path) -> None:
        other = self._load(base / item.path, item.loc, {})
        if item.names is not None:
            for name in item.names:
                if name in other.blocks:
                    scope.blocks[name] = other.blocks[name]
                elif name in other.consts:
                    scope.consts[name] = other.consts[name]
                else:
                    known = list(other.blocks) + list(other.consts)
                    raise error(item.loc, f"'{item.path}' defines no '{name}'", did_you_mean(name, known))
        elif item.alias:
            check_identifier(item.alias, item.loc, "import alias", role="constant")
            scope.aliases[item.alias] = other
        else:
            scope.blocks.update(other.blocks)
            scope.consts.update(other.consts)


def _coerce_override(name: str, old: Any, value: Any) -> Any:
    """An override must keep the constant's type (an int may stand for a float)."""
    if isinstance(old, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if type(old) is not type(value):
        raise error(None, f"--set {name}: expected {_kind(old)} like {_shown_value(old)}, got {_shown_value(value)}")
    return value


def _kind(value: Any) -> str:
    """A constant's kind as the language says it (a list constant is held as a tuple)."""
    kinds = {bool: "a bool", int: "an integer", float: "a number", str: "a string", tuple: "a list", list: "a list"}
    return kinds.get(type(value), type(value).__name__)


def _shown_value(value: Any) -> str:
    """`value` as a spec writes it, lists in brackets, cut to a line."""
    text = _written(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _written(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(_written(v) for v in value) + "]"
    return dsl_value(value)
