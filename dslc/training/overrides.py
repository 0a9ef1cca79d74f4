"""`--set` values: split into spec constants and train settings and checked against the spec (an error names the
`--set` argument and the nearest constant or setting), then applied to the syntax tree so an override is checked
exactly like written source."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

from dslc import ast
from dslc.data.registry import DATASETS
from dslc.errors import DslcError, Loc, Reporter, argument_loc, error, read_source
from dslc.loader import parse_override
from dslc.params import BindError, P, coerce, dsl_value, signature
from dslc.parser import parse
from dslc.training.check import ROOT_SETTINGS, STEP_SETTINGS
from dslc.training.functions import OPTIMIZERS, SCHEDULES

SETTINGS = ROOT_SETTINGS.keys() | STEP_SETTINGS.keys()
# The settings whose value is a call: `--set optimizer.lr=0.1` sets one argument, `--set optimizer=sgd` the name.
CALLS: dict[str, dict[str, tuple[P, ...]]] = {
    "optimizer": {name: o.params for name, o in OPTIMIZERS.items()},
    "schedule": {name: s.params for name, s in SCHEDULES.items()},
    "data": {name: d.params for name, d in DATASETS.items()},
}
NOUNS = {"optimizer": "optimizer", "schedule": "schedule", "data": "data set"}
DEFAULT_CALLS = {"optimizer": "adam", "schedule": "constant"}
# A step's own settings: at the top of a train section with steps the checker refuses them.
PER_STEP = ("loss", "optimizer")


def split_overrides(path: str | Path, overrides: list[str]) -> tuple[list[str], dict[str, Any]]:
    """`--set` values for spec constants (as given, for the loader) vs. train settings (`epochs`, `optimizer.lr`).
    Every problem is reported at once, each naming its `--set` argument."""
    if not overrides:  # nothing to split: the spec is parsed once, by the check itself
        return [], {}
    program = parse(read_source(path), str(path))
    train = next((i for i in program.items if isinstance(i, ast.TrainDef)), None)
    consts = {i.name for i in program.items if isinstance(i, ast.Const)}
    reporter = Reporter()
    const_texts: list[str] = []
    settings: dict[str, tuple[str, Any]] = {}  # key -> (argument text, value)
    for text in overrides:
        try:
            key, value = parse_override(text)
            if key in consts:
                const_texts.append(text)
                continue
            _check_key(text, key, consts, train)
            settings[key] = (text, value)
        except DslcError as exc:
            reporter.extend(exc)
    for key, (text, value) in settings.items():
        try:
            _check_value(text, key, value, train, settings)
        except DslcError as exc:
            reporter.extend(exc)
    reporter.raise_if_errors()
    return const_texts, {key: value for key, (_, value) in settings.items()}


def _check_key(text: str, key: str, consts: set[str], train: ast.TrainDef | None) -> None:
    """`key` names a train setting (or an argument of one) that an override can reach."""
    head, dot, _ = key.partition(".")
    if head not in SETTINGS and head not in consts:
        kinds = {name: "a train setting" for name in SETTINGS}
        if not dot:
            kinds |= {name: "a constant" for name in consts}
        what = "train setting" if dot else "constant or train setting"
        raise error(None, f"--set {text}: no {what} '{head}'", _nearest(head, kinds))
    if dot and head not in CALLS:
        kind = "a constant" if head in consts else "a train setting"
        raise error(
            None,
            f"--set {text}: '{head}' is {kind} without arguments; only optimizer, schedule and data take them",
            f"set the whole value: --set {head}=VALUE",
        )
    if train is None:
        raise error(None, f"--set {text}: the spec has no train section", "add `train { data = ...  loss = ... }`")
    steps = [s for s in train.items if isinstance(s, ast.Section) and s.kind == "step"]
    if head in STEP_SETTINGS and steps and (head in PER_STEP or any(_find_setting(s.items, head) for s in steps)):
        raise error(
            None,
            f"--set {text}: '{head}' is set in each step ({', '.join(str(s.name) for s in steps)}), "
            "which --set cannot reach",
            "change it in the spec's step sections",
        )


def _check_value(text: str, key: str, value: Any, train: ast.TrainDef, settings: dict[str, tuple[str, Any]]) -> None:
    """A call setting's name is one of its registry; an argument is one its call takes, of its kind."""
    head, _, arg = key.partition(".")
    if head not in CALLS:
        return  # a plain setting: the checker checks its value, like written source
    registry, noun = CALLS[head], NOUNS[head]
    if not arg:
        if not isinstance(value, str) or not value.isidentifier():
            raise error(
                None,
                f"--set {text}: expected the name of one of the {noun}s ({', '.join(registry)})",
                f"set its arguments one by one: --set {head}.NAME=VALUE",
            )
        if value not in registry:
            hint = _nearest(value, dict.fromkeys(registry, "")) or f"{noun}s: {', '.join(registry)}"
            raise error(None, f"--set {text}: unknown {noun} '{value}'", hint)
        return
    name = settings[head][1] if head in settings else _call_name(train, head)
    if name not in registry:
        return  # the spec's own setting is wrong: the checker reports it where it is written
    params = {p.name: p for p in registry[name]}
    if arg not in params:
        what = name if head in settings or _find_setting(train.items, head) else f"{name} (the default {head})"
        raise error(
            None,
            f"--set {text}: {what} has no argument '{arg}'",
            _nearest(arg, dict.fromkeys(params, "")) or signature(name, registry[name]),
        )
    try:
        coerce(params[arg], value, name)
    except BindError as exc:
        raise error(None, f"--set {text}: {exc}", exc.hint) from None


def _call_name(train: ast.TrainDef, head: str) -> str | None:
    """The function a call setting names in the spec (or its default when the spec leaves it out)."""
    target = _find_setting(train.items, head)
    if target is None:
        return DEFAULT_CALLS.get(head)
    if isinstance(target.value, ast.Name):
        return target.value.id
    return target.value.func if isinstance(target.value, ast.Call) else None


def _nearest(name: str, kinds: dict[str, str]) -> str | None:
    """`did you mean 'epochs' (a train setting)?`: the close names, each with its kind when it has one. A name's
    initials count as close (`learning_rate` for `lr`, `wd` for `weight_decay`)."""
    matches = [m for m in sorted(kinds) if _initials(m) == name or m == _initials(name)]
    matches += [m for m in difflib.get_close_matches(name, sorted(kinds), n=3, cutoff=0.6) if m not in matches]
    if not matches:
        return None
    return "did you mean " + " or ".join(f"'{m}' ({kinds[m]})" if kinds[m] else f"'{m}'" for m in matches) + "?"


def _initials(name: str) -> str:
    words = name.split("_")
    return "".join(w[:1] for w in words) if len(words) > 1 else ""


def apply_overrides(train: ast.TrainDef, overrides: dict[str, Any]) -> None:
    """Replace settings in the syntax tree, so the override is checked like written source. Whole values first:
    `--set optimizer.lr=0.1 --set optimizer=sgd` sets sgd's lr."""
    for key, value in sorted(overrides.items(), key=lambda item: "." in item[0]):
        head, _, arg = key.partition(".")
        given = argument_loc(f"--set {key}={value if isinstance(value, str) else dsl_value(value)}")
        target = _find_setting(train.items, head)
        if target is None and arg and head in DEFAULT_CALLS:  # the default call, with this argument
            target = ast.Setting(train.loc, head, ast.Name(train.loc, DEFAULT_CALLS[head]))
            train.items.append(target)
        if target is None:
            if arg or head not in SETTINGS:
                hint = _nearest(head, dict.fromkeys(SETTINGS, "a train setting"))
                raise error(None, f"--set {key}: the train section has no setting '{head}'", hint)
            train.items.append(ast.Setting(given, head, _literal(head, value, given)))
            continue
        if not arg:
            target.value = _literal(head, value, given)
        elif isinstance(target.value, ast.Call):
            _set_argument(head, target.value, arg, _literal(None, value, given))
        elif isinstance(target.value, ast.Name):
            target.value = ast.Call(target.value.loc, target.value.id, [], [(arg, _literal(None, value, given))])
        else:
            raise error(target.loc, f"--set {key}: setting '{head}' is not a call with arguments")


def _set_argument(head: str, call: ast.Call, arg: str, value: ast.Expr) -> None:
    """Set `arg` of `call`, in place of the positional argument that gives it (`csv("a.csv", ...)` and data.path)."""
    params = [p.name for p in CALLS.get(head, {}).get(call.func, ())]
    if arg in params[: len(call.args)]:
        call.args[params.index(arg)] = value
        return
    call.kwargs = [(k, v) for k, v in call.kwargs if k != arg] + [(arg, value)]


def _find_setting(items, name: str) -> ast.Setting | None:
    return next((i for i in items if isinstance(i, ast.Setting) and i.name == name), None)


def _literal(head: str | None, value: Any, loc: Loc) -> ast.Expr:
    if isinstance(value, bool):
        return ast.Bool(loc, value)
    if isinstance(value, (int, float)):
        return ast.Num(loc, value)
    if head in CALLS:  # `--set optimizer=sgd` names a function
        return ast.Name(loc, str(value))
    return ast.Str(loc, str(value))
