"""`--set` values for the train section: split from spec constants, then applied to the syntax tree so an
override is checked exactly like written source."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dslc import ast
from dslc.errors import Loc, did_you_mean, error
from dslc.loader import parse_override
from dslc.training.check import ROOT_SETTINGS, STEP_SETTINGS


def split_overrides(path: str | Path, overrides: list[str]) -> tuple[list[str], dict[str, Any]]:
    """`--set` values for the train section (its setting names, `optimizer.lr`) vs. spec constants."""
    from dslc.errors import read_source
    from dslc.parser import parse

    program = parse(read_source(path), str(path))
    train = next((i for i in program.items if isinstance(i, ast.TrainDef)), None)
    names = set(ROOT_SETTINGS) | set(STEP_SETTINGS)
    if train is not None:
        names |= {i.name for i in train.items if isinstance(i, ast.Setting)}
    consts, settings = [], {}
    for text in overrides:
        key, value = parse_override(text)
        if "." in key or (key in names and not any(isinstance(i, ast.Const) and i.name == key for i in program.items)):
            settings[key] = value
        else:
            consts.append(text)
    return consts, settings


def apply_overrides(train: ast.TrainDef, overrides: dict[str, Any]) -> None:
    """Replace settings in the syntax tree, so the override is checked like written source."""
    for key, value in overrides.items():
        head, _, arg = key.partition(".")
        target = _find_setting(train.items, head)
        if target is None and arg and head in ("optimizer", "schedule"):  # the default call, with this argument
            target = ast.Setting(train.loc, head, ast.Name(train.loc, "adam" if head == "optimizer" else "constant"))
            train.items.append(target)
        if target is None:
            if arg or head not in ROOT_SETTINGS | STEP_SETTINGS.keys():
                known = [i.name for i in train.items if isinstance(i, ast.Setting)] + list(ROOT_SETTINGS)
                raise error(None, f"--set {key}: the train section has no setting '{head}'", did_you_mean(head, known))
            train.items.append(ast.Setting(train.loc, head, _literal(value, train.loc)))
            continue
        if not arg:
            target.value = _literal(value, target.loc)
        elif isinstance(target.value, ast.Call):
            target.value.kwargs = [(k, v) for k, v in target.value.kwargs if k != arg] + [
                (arg, _literal(value, target.loc))
            ]
        elif isinstance(target.value, ast.Name):
            target.value = ast.Call(target.value.loc, target.value.id, [], [(arg, _literal(value, target.loc))])
        else:
            raise error(target.loc, f"--set {key}: setting '{head}' is not a call with arguments")


def _find_setting(items, name: str) -> ast.Setting | None:
    return next((i for i in items if isinstance(i, ast.Setting) and i.name == name), None)


def _literal(value: Any, loc: Loc) -> ast.Expr:
    if isinstance(value, bool):
        return ast.Bool(loc, value)
    if isinstance(value, (int, float)):
        return ast.Num(loc, value)
    return ast.Str(loc, str(value))
