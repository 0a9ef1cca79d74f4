"""Checks a `train { }` section against the spec's models: train AST -> TrainConfig.

Torch-free (`dslc check` runs it). The settings (data, optimizer, schedule, metrics, the loop's
numbers) are checked here against their registries; the tensors (`loss = ...`, `z = normal(...)`)
by the model checker itself (dslc.training.steps), so a train section is the same language with the
same shape rules. Names resolve, in order, to tensors defined in the step, tensors defined in the
train section, dataset fields, and model outputs (the model runs on the tensors named like its
inputs); models may also be called as functions: `discriminator(generator(z))`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from dslc import ast, ir, traced
from dslc.checker import POISON, Checker, Poison, _StatementFailedError
from dslc.cse import eliminate_in_step
from dslc.errors import DslcError, Loc, did_you_mean, error
from dslc.layers import REGISTRY
from dslc.loader import FileScope, check_identifier
from dslc.params import BindError, P, bind, brief
from dslc.shapes import TensorType
from dslc.training import config as c
from dslc.training.functions import GROUP_PARAMS, METRICS, OPTIMIZERS, SCHEDULES
from dslc.training.steps import TrainBody

if TYPE_CHECKING:
    from dslc.data.registry import DatasetDef

SECTION = "training"
ROOT_SETTINGS = {
    "data": "data = digits(image_size=28, validation=0.2)",
    "epochs": "epochs = 10",
    "batch_size": "batch_size = 64",
    "seed": "seed = 0",
    "metrics": "metrics = [accuracy]",
    "early_stopping": "early_stopping = 3  (epochs without improvement)",
    "monitor": 'monitor = "val_loss"',
    "checkpoint_every": "checkpoint_every = 1",
    "keep_checkpoints": "keep_checkpoints = 2",
    "export": "export = [cnn]",
    "workers": "workers = 0",
    "shuffle": "shuffle = true",
    "augment": "augment = [random_crop(image, padding=4), random_flip(image)]",
    "stop_at": "stop_at = 475.0  (stop once `monitor` reaches it)",
}
# Settings of batches read from memory: an episodes data set plays its own (episodes_per_update, updates_per_epoch).
IN_MEMORY_SETTINGS = ("batch_size", "shuffle", "workers", "augment", "metrics")
STEP_SETTINGS = {
    "loss": "loss = cross_entropy(logits, label)",
    "optimizer": "optimizer = adam(lr=1e-3)",
    "schedule": "schedule = cosine(warmup=1)",
    "clip_grad_norm": "clip_grad_norm = 1.0",
    "accumulate": "accumulate = 4  (micro-batches per optimizer step)",
    "freeze": 'freeze = ["transformer.wte", "transformer.wpe"]  (submodules or parameters kept as they are)',
}
# Names the generated training script uses for its own variables.


def _covers(path: str, layer: str) -> bool:
    """Whether freezing `path` touches the layer at `layer`: the layer, a submodule holding it, or one of its
    parameters (`lm_head.weight`)."""
    return layer == path or layer.startswith(path + ".") or path.startswith(layer + ".")


class _CheckFailedError(Exception):
    """Stops checking one setting after its error was reported."""


def check_train(
    program: ir.ProgramIR,
    train: ast.TrainDef,
    checker: Checker,
    scope: FileScope,
    overrides: dict[str, Any] | None = None,
    data_dir: str | Path | None = None,
) -> c.TrainConfig | None:
    """The checked configuration, or None after reporting errors to the checker's reporter. `scope` is
    the spec's file scope: train tensors are checked by the model checker, with the spec's constants."""
    reporter = checker.reporter
    checker = TrainChecker(program, train, checker, scope, Path(data_dir) if data_dir else Path(program.path).parent)
    try:
        if overrides:
            from dslc.training.overrides import apply_overrides

            apply_overrides(train, overrides)
        return checker.run()
    except _CheckFailedError:
        return None
    except DslcError as exc:
        reporter.extend(exc)
        return None


class TrainChecker:
    def __init__(self, program: ir.ProgramIR, train: ast.TrainDef, checker: Checker, scope: FileScope, data_dir: Path):
        self.program = program
        self.train = train
        self.checker = checker
        self.scope = scope
        self.reporter = checker.reporter
        self.models = {m.spec_name: m for m in program.exported}
        self.consts = program.constants
        self.fields: dict[str, TensorType] = {}
        self.data_loc: Loc | None = None  # the `data = ...` setting, once checked
        self.base = data_dir
        self._step_bodies: dict[str, TrainBody] = {}
        self._losses: dict[str, ir.Expr] = {}
        self.refused: set[str] = set()  # train tensors whose names were refused

    def fail(self, loc: Loc | None, message: str, hint: str | None = None) -> _CheckFailedError:
        self.reporter.error(loc, message, hint, section=SECTION)
        return _CheckFailedError()

    # ------------------------------------------------------------ structure

    def run(self) -> c.TrainConfig | None:
        root_settings, root_lets, steps, groups = self.split(self.train.items, root=True)
        errors_before = len(self.reporter.diagnostics)
        data = self.guard(lambda: self.data(root_settings.get("data"), self.train.loc))
        if data is None:
            return None
        self.fields, self.data_loc = data.fields, data.loc
        act = self.guard(lambda: self.policy(data)) if data.rollout else None
        for key in IN_MEMORY_SETTINGS if data.rollout else ():
            if key in root_settings:
                self.fail(
                    root_settings[key].loc,
                    f"'{key}' does not apply to {data.name}: each batch is the episodes of one update",
                    "set episodes_per_update and updates_per_epoch instead; each epoch records episode_return",
                )
        for name in self.fields:
            if name in self.models:
                self.fail(data.loc, f"dataset field '{name}' has the name of a model; rename the model")
        self.refuse_shadowing(root_lets)
        root = self.body(root_lets, None)
        # every train-level tensor is checked, used or not, and computed once per batch before the steps, which
        # read it from the batch: first, so no step computes on its own what the train section computes
        for name, setting in root_lets.items():
            self.guard(lambda n=name, s=setting: root.tensor_named(n, s.loc))
        checked_steps: list[c.Step] = []
        if steps:
            for key in STEP_SETTINGS:
                if key in root_settings and key in ("loss", "optimizer"):
                    self.fail(
                        root_settings[key].loc,
                        f"'{key}' belongs inside each `step NAME {{ }}` when the train section has steps",
                    )
            if groups:
                self.fail(groups[0].loc, "`group` sections belong inside a step when the train section has steps")
            for section in steps:
                settings, lets, inner, step_groups = self.split(section.items, root=False)
                self.refuse_shadowing(lets)
                merged = {k: v for k, v in root_settings.items() if k in STEP_SETTINGS} | settings
                step = self.guard(
                    lambda s=section, m=merged, lt=lets, g=step_groups: self.step(
                        s.name, s.loc, m, self.body(lt, root), g, True
                    )
                )
                if step:
                    checked_steps.append(step)
        else:
            step = self.guard(
                lambda: self.step("train", self.train.loc, root_settings, self.body({}, root), groups, False)
            )
            if step:
                checked_steps.append(step)
        if len(self.reporter.diagnostics) > errors_before or not checked_steps:
            return None
        metrics = self.guard(lambda: self.metrics(root_settings.get("metrics"), checked_steps[0])) or []
        augment = self.guard(lambda: self.augment(root_settings.get("augment")))
        if augment is None:
            return None
        if data.rollout and act is None:
            return None
        config = self.config(root_settings, data, root, checked_steps, metrics)
        config.act = act
        if augment:
            config.augment = augment
            config.settings["augment"] = augment
        return config

    def augment(self, setting: ast.Setting | None) -> list[dict[str, Any]]:
        """`augment = [random_crop(image, padding=4), ...]`: each call names the dataset field it changes first."""
        from dslc.training.augment import AUGMENTATIONS

        if setting is None:
            return []
        value = setting.value
        items = value.items if isinstance(value, (ast.ListLit, ast.TupleLit)) else [value]
        checked = []
        for item in items:
            name, loc, args, kwargs = self.call_args(item, "augment")
            if name not in AUGMENTATIONS:
                known = ", ".join(AUGMENTATIONS)
                raise self.fail(loc, f"unknown augmentation '{name}'", did_you_mean(name, AUGMENTATIONS) or known)
            if not args or not isinstance(args[0], ast.Name):
                raise self.fail(loc, f"{name} names the dataset field it augments first, e.g. `{name}(image)`")
            field = args[0].id
            if field not in self.fields:
                raise self.fail(
                    args[0].loc,
                    f"{name}: '{field}' is not a field of the data set",
                    did_you_mean(field, self.fields) or f"fields: {', '.join(self.fields)}",
                )
            problem = AUGMENTATIONS[name].check(self.fields[field])
            if problem:
                raise self.fail(args[0].loc, f"{name} {problem}")
            params = AUGMENTATIONS[name].params
            options = self.bind(
                params, [self.static(a) for a in args[1:]], {k: self.static(v) for k, v in kwargs}, name, loc
            )
            checked.append({"name": name, "field": field, **options})
        return checked

    def refuse_shadowing(self, lets: dict[str, ast.Setting]) -> None:
        """A train tensor may not take the name of a dataset field or a model output: each already means a tensor
        where the train tensor would be read (a model run on the field, say). A constant it may shadow."""
        outputs = {p.name: m.spec_name for m in self.models.values() for p in m.outputs}
        for name, setting in list(lets.items()):
            if name in self.fields:
                what, hint = "a dataset field", f"name it otherwise and pass it explicitly: `noisy_{name} = ...`"
            elif name in outputs:
                what = f"an output of model '{outputs[name]}'"
                hint = f"name it otherwise; `{name}` in a loss runs the model"
            else:
                continue
            self.reporter.error(setting.loc, f"train tensor '{name}' has the name of {what}", hint, section=SECTION)
            del lets[name]
            self.refused.add(name)

    def body(self, lets: dict[str, ast.Setting], parent: TrainBody | None) -> TrainBody:
        body = TrainBody(self.checker, self.scope, self.models, self.fields, lets, parent, self.data_loc)
        body.env.update(dict.fromkeys(self.refused, POISON))
        return body

    def guard(self, func):
        try:
            return func()
        except (_CheckFailedError, _StatementFailedError):
            return None
        except DslcError as exc:
            self.reporter.extend(exc)
            return None

    def split(self, items, root: bool):
        settings: dict[str, ast.Setting] = {}
        lets: dict[str, ast.Setting] = {}
        steps, groups = [], []
        allowed = (ROOT_SETTINGS.keys() | STEP_SETTINGS.keys()) if root else STEP_SETTINGS.keys()
        for item in items:
            if isinstance(item, ast.Section):
                if item.kind == "step" and root:
                    if not item.name:
                        self.fail(item.loc, "a step needs a name: `step discriminator { ... }`")
                    elif any(s.name == item.name for s in steps):
                        self.fail(item.loc, f"step '{item.name}' is defined twice")
                    else:
                        steps.append(item)
                elif item.kind == "group":
                    if not item.name:
                        self.fail(item.loc, "a parameter group names a submodule: `group encoder { lr = 1e-4 }`")
                    else:
                        groups.append(item)
                else:
                    kinds = ["step", "group"] if root else ["group"]
                    self.fail(
                        item.loc,
                        f"unknown section '{item.kind}'" + ("" if root else " inside a step"),
                        did_you_mean(item.kind, kinds) or f"sections here: {', '.join(kinds)}",
                    )
                continue
            if item.name in settings or item.name in lets:
                self.fail(item.loc, f"'{item.name}' is set twice")
            elif item.name in allowed:
                settings[item.name] = item
            elif item.name in ROOT_SETTINGS:
                self.fail(item.loc, f"'{item.name}' is a setting of the whole train section, not of a step")
            elif isinstance(item.value, (ast.Num, ast.Str, ast.Bool, ast.NoneLit, ast.ListLit)):
                known = [*allowed, *(ROOT_SETTINGS if not root else [])]
                self.fail(
                    item.loc,
                    f"unknown setting '{item.name}'",
                    did_you_mean(item.name, known) or f"settings: {', '.join(sorted(known))}",
                )
            else:
                try:
                    check_identifier(item.name, item.loc, "tensor", role="script")
                    if item.name in self.models:
                        raise error(item.loc, f"'{item.name}' is a model; choose another name")
                except DslcError as exc:
                    self.reporter.extend(exc)
                    self.refused.add(item.name)  # reported once: its readers say nothing more
                    continue
                lets[item.name] = item
        return settings, lets, steps, groups

    # ------------------------------------------------------------ settings

    def static(self, expr: ast.Expr) -> Any:
        """A compile-time value, evaluated as constants and block arguments are: numbers, strings, bools,
        none, tuples and lists, the spec's constants, arithmetic (`batch_size = 64 // 2`)."""
        try:
            return traced.plain(self.body({}, None).static(expr, "a setting"))
        except _StatementFailedError:
            raise _CheckFailedError from None

    def setting(self, settings: dict[str, ast.Setting], name: str, param: P) -> Any:
        s = settings.get(name)
        if s is None:
            if param.required:
                raise self.fail(
                    self.train.loc,
                    f"the train section needs '{name}'",
                    f"add `{ROOT_SETTINGS.get(name) or STEP_SETTINGS[name]}`",
                )
            return param.default
        value = self.static(s.value)
        try:
            from dslc.params import coerce

            return coerce(param, value, name)
        except BindError as exc:
            raise self.fail(s.value.loc, str(exc), exc.hint) from None

    def call_args(self, expr: ast.Expr, what: str) -> tuple[str, Loc, list[ast.Expr], list[tuple[str, ast.Expr]]]:
        if isinstance(expr, ast.Name):
            return expr.id, expr.loc, [], []
        if isinstance(expr, ast.Call):
            return expr.func, expr.loc, expr.args, expr.kwargs
        raise self.fail(
            expr.loc, f"{what} must be a name or a call, e.g. {ROOT_SETTINGS.get(what) or STEP_SETTINGS.get(what)}"
        )

    def bind(self, params, args, kwargs, what: str, loc: Loc) -> dict[str, Any]:
        try:
            return bind(params, args, kwargs, what)
        except BindError as exc:
            raise self.fail(loc, str(exc), exc.hint) from None

    def data(self, setting: ast.Setting | None, loc: Loc) -> c.Data:
        from dslc.data.registry import DATASETS, resolve_path

        if setting is None:
            raise self.fail(
                loc,
                "the train section needs 'data'",
                f"add `{ROOT_SETTINGS['data']}`; data sets: {', '.join(DATASETS)}",
            )
        name, cloc, args, kwargs = self.call_args(setting.value, "data")
        if name not in DATASETS:
            raise self.fail(
                cloc, f"unknown data set '{name}'", did_you_mean(name, DATASETS) or f"data sets: {', '.join(DATASETS)}"
            )
        dataset = DATASETS[name]
        named = {k: v for k, v in kwargs if k in dataset.names and isinstance(v, ast.Name)}  # policy=logits
        values = {k: v.id if k in named else self.static(v) for k, v in kwargs}
        options = self.bind(dataset.params, [self.static(a) for a in args], values, name, cloc)
        if not 0.0 <= options.get("validation", 0.0) < 1.0:
            raise self.fail(cloc, f"{name}: 'validation' must be in [0, 1), got {options['validation']}")
        self._check_split(dataset, options, cloc)
        for key in dataset.files:
            if not resolve_path(options[key], self.base).is_file():
                raise self.fail(cloc, f"{name}: data file '{options[key]}' not found (looked in {self.base})")
        for key, value in options.items():
            if isinstance(value, int) and not isinstance(value, bool) and value <= 0 and key not in ("validation",):
                raise self.fail(cloc, f"{name}: '{key}' must be positive, got {value}")
        try:
            fields = dataset.fields(options, self.base)
        except BindError as exc:
            raise self.fail(cloc, str(exc), exc.hint) from None
        for field in fields:
            check_identifier(field, cloc, "dataset field")
        locs = {k: named[k].loc if k in named else cloc for k in dataset.names}
        return c.Data(name, options, fields, cloc, dataset.rollout, dict(dataset.records), locs)

    def _check_split(self, dataset: DatasetDef, options: dict[str, Any], loc: Loc) -> None:
        """Both splits of a data set whose size the options give hold examples (files are counted by `fields`)."""
        from dslc.data.registry import check_split

        n = dataset.examples(options)
        if n is not None:
            try:
                check_split(dataset.name, n, options.get("validation", 0.0))
            except BindError as exc:
                raise self.fail(loc, str(exc), exc.hint) from None

    def _check_class_ids(self, data: c.Data, checks: list[c.LabelCheck]) -> None:
        """The class ids a data set holds fit the losses' numbers of classes (`dslc train` checks all of them)."""
        from dslc.data.registry import DATASETS, check_class_ids

        if not checks or data.rollout:
            return
        try:
            known = DATASETS[data.name].class_ids(data.options, self.base)
        except BindError as exc:
            raise self.fail(data.loc, str(exc), exc.hint) from None
        for check in checks:
            try:
                check_class_ids(data.name, check.field, known.get(check.field, ()), check.classes, check.ignore_index)
            except BindError as exc:
                raise self.fail(data.loc, str(exc), exc.hint) from None

    def policy(self, data: c.Data) -> c.Body:
        """An episodes data set's policy: the model output it names, run on the observation alone, one score per
        action of the environment. Returns the body the rollouts call (`act()` in the script)."""
        from dslc.data.registry import env_spaces

        name, loc = data.options["policy"], data.locs["policy"]
        _, actions = env_spaces(data.options["env"])
        body = TrainBody(self.checker, self.scope, self.models, {"observation": self.fields["observation"]}, {})
        try:
            scores = body.tensor_named(name, loc)
        except _StatementFailedError:
            raise _CheckFailedError from None
        if not isinstance(body.env.get(name), ir.Var) or not any(isinstance(s, ir.Assign) for s in body.body):
            raise self.fail(loc, f"{data.name}: policy '{name}' must be a model output, run on the observation")
        want = f"float[batch, {actions}]"
        if not scores.type.is_float or scores.type.rank != 2 or scores.type.shape[-1] != actions:
            raise self.fail(
                loc,
                f"{data.name}: policy '{name}' is {scores.type}, but {data.options['env']} needs one score per "
                f"action, {want}",
                f"the model's last layer must have {actions} outputs, e.g. Linear({actions})",
            )
        return self.finish_body(body, set())

    # ------------------------------------------------------------ steps

    def step(
        self, name: str, loc: Loc, settings: dict[str, ast.Setting], body: TrainBody, groups, explicit: bool
    ) -> c.Step:
        if "loss" not in settings:
            raise self.fail(
                loc,
                f"{'step ' + repr(name) if explicit else 'the train section'} needs a 'loss'",
                f"add `{STEP_SETTINGS['loss']}`",
            )
        loss = self.loss(settings["loss"], body)
        reached = _models_reached(loss, body)
        optimizer = self.optimizer(settings.get("optimizer"), name, loc, explicit, groups, reached)
        for model in optimizer.models:
            if model not in reached and self.models[model].param_count:
                raise self.fail(
                    settings["loss"].loc,
                    f"{'step ' + repr(name) + ': the' if explicit else 'the'} loss does not reach the parameters of "
                    f"'{model}', which the optimizer trains",
                    "its gradient stops at detach(...), at integer values, or it never calls the model"
                    + (f"; the loss reaches {', '.join(sorted(reached))}" if reached else ""),
                )
        schedule = self.schedule(settings.get("schedule"))
        clip = self.setting(settings, "clip_grad_norm", P("clip_grad_norm", "float", None, low=0.0))
        if clip is not None and clip <= 0:
            raise self.fail(settings["clip_grad_norm"].loc, "clip_grad_norm must be positive")
        accumulate = self.setting(settings, "accumulate", P("accumulate", "int", 1, low=1))
        if accumulate < 1:
            raise self.fail(settings["accumulate"].loc, "accumulate must be at least 1")
        frozen = self.frozen(settings.get("freeze"), optimizer) if "freeze" in settings else []
        for let_name, let in body.lets.items():  # check every step tensor, used or not
            self.guard(lambda n=let_name, s=let: body.tensor_named(n, s.loc))
        self._step_bodies[name] = body
        self._losses[name] = loss
        return c.Step(name, loc, c.Body([], [], [], []), optimizer, schedule, clip, accumulate, [], frozen)

    def frozen(self, setting: ast.Setting, optimizer: c.Optimizer) -> list[c.Frozen]:
        """`freeze = ["transformer.wte", ...]`: submodules or parameters of the trained models (state_dict names)
        that keep their values; at least one parameter must still train."""
        paths = self.static(setting.value)
        if not isinstance(paths, (list, tuple)) or not paths or not all(isinstance(p, str) for p in paths):
            raise self.fail(setting.value.loc, "freeze is a list of submodule names", f"e.g. {STEP_SETTINGS['freeze']}")
        layers = {
            m: [(path, size) for path, _, _, size in self.program.layer_params(self.models[m])]
            for m in optimizer.models
        }
        frozen: list[c.Frozen] = []
        whole: dict[str, set[str]] = {m: set() for m in optimizer.models}  # layers frozen with all their parameters
        for path in paths:
            owners = [m for m, found in layers.items() if any(_covers(path, layer) for layer, _ in found)]
            if not owners:
                names = sorted({".".join(layer.split(".")[:n]) for found in layers.values() for layer, _ in found
                                for n in range(1, layer.count(".") + 2)})  # fmt: skip
                raise self.fail(
                    setting.value.loc,
                    f"freeze: '{path}' names no submodule or parameter of {', '.join(optimizer.models)}",
                    did_you_mean(path, names) or f"its submodules: {', '.join(n for n in names if '.' not in n)}",
                )
            for m in owners:
                frozen.append(c.Frozen(m, path))
                whole[m] |= {layer for layer, _ in layers[m] if layer == path or layer.startswith(path + ".")}
        left = {m: sum(size for layer, size in layers[m] if layer not in whole[m]) for m in optimizer.models}
        if not any(left.values()):
            raise self.fail(setting.value.loc, "freeze leaves no parameter to train", "freeze fewer submodules")
        return frozen

    def loss(self, setting: ast.Setting, body: TrainBody) -> ir.Expr:
        """Check `loss = ...` as the step's statement `loss = ...`; the loss is a scalar."""
        body.statement(ast.Assign(setting.loc, ["loss"], setting.value))
        value = body.env.get("loss")
        if not isinstance(value, ir.Expr):
            if not isinstance(value, Poison):
                self.fail(setting.value.loc, f"the loss must be a tensor, got {brief(value)}")
            raise _CheckFailedError
        if value.type.rank != 0 or not value.type.is_float:
            raise self.fail(
                setting.value.loc,
                f"the loss must be a single number (a float scalar tensor), got {value.type}",
                "reduce it with mean(...) or use a loss function such as cross_entropy(...)",
            )
        return value

    def optimizer(self, setting, step: str, loc: Loc, explicit: bool, groups, reached: set[str]) -> c.Optimizer:
        """The optimizer; written without models it trains those of the spec's models the loss reaches."""
        if setting is None:
            name, oloc, args, kwargs = "adam", loc, [], []
        else:
            name, oloc, args, kwargs = self.call_args(setting.value, "optimizer")
        if name not in OPTIMIZERS:
            raise self.fail(
                oloc,
                f"unknown optimizer '{name}'",
                did_you_mean(name, OPTIMIZERS) or f"optimizers: {', '.join(OPTIMIZERS)}",
            )
        models = []
        for a in args:
            if not isinstance(a, ast.Name) or a.id not in self.models:
                raise self.fail(
                    a.loc,
                    f"{name}: positional arguments name the models it trains; '{_text(a)}' is not a model",
                    did_you_mean(_text(a), self.models) or f"models: {', '.join(self.models)}",
                )
            models.append(a.id)
        if not models:
            if explicit and len(self.models) > 1:
                raise self.fail(
                    oloc,
                    f"the optimizer of step '{step}' must name the model(s) it trains",
                    f"e.g. {name}({next(iter(self.models))}, lr=1e-3)",
                )
            models = [m for m, mod in self.models.items() if mod.param_count > 0 and m in reached] or [
                m for m, mod in self.models.items() if mod.param_count > 0
            ]
        if not any(self.models[m].param_count for m in models):
            raise self.fail(
                oloc, f"{name}: {', '.join(models)} ha{'s' if len(models) == 1 else 've'} no parameters to train"
            )
        options = self.bind(OPTIMIZERS[name].params, [], {k: self.static(v) for k, v in kwargs}, name, oloc)
        if options.get("nesterov") and not options.get("momentum"):  # PyTorch refuses it when it builds the optimizer
            raise self.fail(oloc, f"{name}: nesterov needs a momentum above 0", "add momentum=0.9")
        checked_groups = []
        for g in groups:
            owner = next((m for m in models if any(s.attr == g.name for s in self.models[m].submodules)), None)
            if owner is None:
                attrs = [s.attr for m in models for s in self.models[m].submodules]
                raise self.fail(
                    g.loc,
                    f"group '{g.name}': no submodule of that name in {', '.join(models)}",
                    did_you_mean(g.name, attrs) or f"submodules: {', '.join(attrs)}",
                )
            values = {}
            for item in g.items:
                if isinstance(item, ast.Section):
                    raise self.fail(item.loc, "a group holds settings only (lr, weight_decay, momentum)")
                values[item.name] = self.static(item.value)
            opts = self.bind(GROUP_PARAMS, [], values, f"group {g.name}", g.loc)
            checked_groups.append(c.Group(owner, g.name, {k: v for k, v in opts.items() if v is not None}, g.loc))
        return c.Optimizer(name, models, options, checked_groups, oloc)

    def schedule(self, setting) -> c.Schedule:
        if setting is None:
            return c.Schedule("constant", {"warmup": 0.0})
        name, sloc, args, kwargs = self.call_args(setting.value, "schedule")
        if name not in SCHEDULES:
            raise self.fail(
                sloc,
                f"unknown schedule '{name}'",
                did_you_mean(name, SCHEDULES) or f"schedules: {', '.join(SCHEDULES)}",
            )
        options = self.bind(
            SCHEDULES[name].params, [self.static(a) for a in args], {k: self.static(v) for k, v in kwargs}, name, sloc
        )
        return c.Schedule(name, options)

    # ------------------------------------------------------------ metrics and the result

    def metrics(self, setting: ast.Setting | None, step: c.Step) -> list[c.MetricUse]:
        if setting is None:
            return []
        items = setting.value.items if isinstance(setting.value, (ast.ListLit, ast.TupleLit)) else [setting.value]
        body = self._step_bodies[step.name]
        pred, target = _default_pair(self._losses[step.name], body)
        uses: list[c.MetricUse] = []
        for item in items:
            name, mloc, args, kwargs = self.call_args(item, "metrics")
            metric = METRICS.get(name)
            if metric is None:
                raise self.fail(
                    mloc, f"unknown metric '{name}'", did_you_mean(name, METRICS) or f"metrics: {', '.join(METRICS)}"
                )
            tensor_args: list[str] = []
            if args and isinstance(args[0], ast.Name) and args[0].id not in self.consts:
                if len(args) < 2 or not isinstance(args[1], ast.Name):
                    raise self.fail(mloc, f"{name} takes two tensor names (prediction, target) before its options")
                tensor_args, args = [args[0].id, args[1].id], args[2:]
            p, t = tensor_args or (pred, target)
            if p is None:
                raise self.fail(
                    mloc,
                    f"{name}: name the prediction and target, e.g. {name}(logits, label)",
                    "the loss has no (prediction, target) pair to default to",
                )
            options = self.bind(
                metric.params, [self.static(a) for a in args], {k: self.static(v) for k, v in kwargs}, name, mloc
            )
            ptype, ttype = body.tensor_named(p, mloc).type, body.tensor_named(t, mloc).type
            self.metric_types(metric, ptype, ttype, mloc, options)
            key = metric.key(options)
            if any(u.key == key for u in uses):
                raise self.fail(mloc, f"metric '{key}' is listed twice")
            extra = _ctc_lengths(self._losses[step.name], body, p, t) if name == "cer" else []
            for n in extra:
                body.tensor_named(n, mloc)
            uses.append(c.MetricUse(name, key, p, t, options, extra))
            for n in (p, t, *extra):
                if n not in step.outputs:
                    step.outputs.append(n)
        return uses

    def metric_types(self, metric, ptype, ttype, loc, options: dict[str, Any]) -> None:
        problem = metric.check(ptype, ttype, options)
        if problem:
            raise self.fail(loc, f"{metric.name}{'' if problem.startswith('(') else ' '}{problem}")

    def finish_body(self, body: TrainBody, taken: set[str]) -> c.Body:
        """The body's statements, `loss = ...` last, each expression and model call computed once."""
        statements = [s for s in body.body if not _assigns_loss(s)] + [s for s in body.body if _assigns_loss(s)]
        taken = taken | set(body.bound) | set(body.reads) | set(self.fields) | set(self.models)
        return c.Body(eliminate_in_step(statements, taken), body.reads, body.models_used, body.bound)

    def config(self, settings, data, root: TrainBody, steps: list[c.Step], metrics: list[c.MetricUse]) -> c.TrainConfig:
        prepare = self.finish_body(root, set())
        label_checks = []
        for step in steps:
            body = self._step_bodies[step.name]
            step.body = self.finish_body(body, set(prepare.bound))
            label_checks += _label_checks(self._losses[step.name], body, self.fields)
        self._check_class_ids(data, _unique(label_checks))
        epochs = self.setting(settings, "epochs", P("epochs", "int", 10, low=0))
        batch_size = self.setting(settings, "batch_size", P("batch_size", "int", 32, low=1, high=2**31 - 1))
        for key, value in (("epochs", epochs), ("batch_size", batch_size)):
            if value < 1:
                raise self.fail(settings[key].value.loc, f"{key} must be at least 1")
        patience = self.setting(settings, "early_stopping", P("early_stopping", "int", None, low=1))
        validation = data.options.get("validation", 0.0) > 0
        keys = ["train_loss", *(["val_loss"] if validation else []), *(u.key for u in metrics), *data.records]
        if len(steps) > 1:
            keys += [f"{p}_loss_{s.name}" for s in steps for p in (("train", "val") if validation else ("train",))]
        default = next(iter(data.records), "val_loss" if validation else "train_loss")  # episodes: episode_return
        monitor = self.setting(settings, "monitor", P("monitor", "str", default))
        if monitor not in keys:
            loc = settings["monitor"].value.loc if "monitor" in settings else self.train.loc
            raise self.fail(
                loc,
                f"monitor '{monitor}' is not a recorded value",
                did_you_mean(monitor, keys) or f"recorded: {', '.join(keys)}",
            )
        use = next((u for u in metrics if u.key == monitor), None)
        higher = METRICS[use.metric].higher_is_better if use else data.records.get(monitor, False)
        mode = "max" if higher else "min"
        stop_at = self.setting(settings, "stop_at", P("stop_at", "float", None))
        export = list(self.models)
        if "export" in settings:
            items = settings["export"].value
            items = items.items if isinstance(items, (ast.ListLit, ast.TupleLit)) else [items]
            export = []
            for i in items:
                if not isinstance(i, ast.Name) or i.id not in self.models:
                    raise self.fail(
                        i.loc, f"export lists models; '{_text(i)}' is not one", did_you_mean(_text(i), self.models)
                    )
                export.append(i.id)
        checkpoint_every = self.setting(settings, "checkpoint_every", P("checkpoint_every", "int", 1, low=1))
        keep = self.setting(settings, "keep_checkpoints", P("keep_checkpoints", "int", 2, low=1))
        workers = self.setting(settings, "workers", P("workers", "int", 0, low=0, high=256))
        if checkpoint_every < 1 or keep < 1 or workers < 0:
            raise self.fail(
                self.train.loc, "checkpoint_every and keep_checkpoints must be at least 1, workers at least 0"
            )
        config = c.TrainConfig(
            loc=self.train.loc,
            data=data,
            prepare=prepare,
            steps=steps,
            metrics=metrics,
            models=list(self.models),
            epochs=epochs,
            batch_size=batch_size,
            seed=self.setting(settings, "seed", P("seed", "int", 0, low=0, high=2**32 - 1)),
            early_stopping=patience,
            monitor=monitor,
            monitor_mode=mode,
            checkpoint_every=checkpoint_every,
            keep_checkpoints=keep,
            export=export,
            workers=workers,
            shuffle=self.setting(settings, "shuffle", P("shuffle", "bool", True)),
            label_checks=_unique(label_checks),
            stop_at=stop_at,
        )
        config.settings = settings_json(config)
        return config


def _unique(checks: list[c.LabelCheck]) -> list[c.LabelCheck]:
    seen, out = set(), []
    for ch in checks:
        key = (ch.field, ch.classes, ch.ignore_index)
        if key not in seen:
            seen.add(key)
            out.append(ch)
    return out


def _assigns_loss(stmt: ir.Stmt) -> bool:
    return isinstance(stmt, ir.Assign) and stmt.targets == ["loss"]


def _definitions(body: TrainBody) -> dict[str, ir.Expr]:
    """Each tensor the step (or the train section before it) computes, by name: the expression computing it."""
    definitions: dict[str, ir.Expr] = {}
    for scope in (body.parent, body):
        for stmt in scope.body if scope else ():
            if isinstance(stmt, ir.Assign):
                definitions.update(dict.fromkeys(stmt.targets, stmt.value))
    return definitions


def _terms(e: ir.Expr, body: TrainBody) -> list[ir.Expr]:
    """Every expression `e` computes, the tensors it reads followed into their definitions."""
    definitions = _definitions(body)
    found, stack, seen = [], [e], set()
    while stack:
        node = stack.pop()
        if isinstance(node, ir.Var) and node.name in definitions and node.name not in seen:
            seen.add(node.name)
            stack.append(definitions[node.name])
        found.append(node)
        stack.extend(reversed(ir.operands(node)))
    return found


def _models_reached(loss: ir.Expr, body: TrainBody) -> set[str]:
    """The models whose parameters the loss's gradient reaches: through model calls and their inputs (the
    generator inside `discriminator(generator(z))`) and the train tensors read, not through detach(...) or
    integer and bool values."""
    definitions = _definitions(body)
    reached, stack, seen = set(), [loss], set()
    while stack:
        node = stack.pop()
        if not any(t.is_float for t in node.types):
            continue
        if isinstance(node, ir.Var):
            if node.name in definitions and node.name not in seen:
                seen.add(node.name)
                stack.append(definitions[node.name])
            continue
        if isinstance(node, ir.OpCall) and not REGISTRY[node.op].differentiable:
            continue
        if isinstance(node, ir.ModelCall):
            reached.add(node.model)
        stack.extend(ir.operands(node))
    return reached


def _loss_calls(loss: ir.Expr, body: TrainBody) -> list[ir.OpCall]:
    return [t for t in _terms(loss, body) if isinstance(t, ir.OpCall) and REGISTRY[t.op].category == "loss"]


def _default_pair(loss: ir.Expr, body: TrainBody) -> tuple[str | None, str | None]:
    """The (prediction, target) names of the first loss term, for metrics written without arguments."""
    for call in _loss_calls(loss, body):
        if len(call.inputs) >= 2 and all(isinstance(x, ir.Var) for x in call.inputs[:2]):
            return call.inputs[0].name, call.inputs[1].name
    return None, None


def _ctc_lengths(loss: ir.Expr, body: TrainBody, pred: str, target: str) -> list[str]:
    """The (input, target) lengths a loss over (pred, target) reads, when they are plain names (cer needs them)."""
    for call in _loss_calls(loss, body):
        names = [x.name if isinstance(x, ir.Var) else None for x in call.inputs]
        lengths = REGISTRY[call.op].lengths
        if lengths and names[:2] == [pred, target] and all(names[i] for i in lengths):
            return [names[i] for i in lengths]
    return []


def _label_checks(loss: ir.Expr, body: TrainBody, fields: dict[str, TensorType]) -> list[c.LabelCheck]:
    """Class ids read straight from the data: the script checks their range once, before training."""
    checks = []
    for call in _loss_calls(loss, body):
        rule = REGISTRY[call.op].class_ids
        found = rule(call.init) if rule else None
        if found is not None:
            index, classes, ignore_index = found
            target = call.inputs[index]
            if isinstance(target, ir.Var) and target.name in fields and isinstance(classes, int):
                checks.append(c.LabelCheck(target.name, int(classes), ignore_index))
    return checks


def _text(e: ast.Expr) -> str:
    return e.id if isinstance(e, ast.Name) else type(e).__name__.lower()


def settings_json(cfg: c.TrainConfig) -> dict[str, Any]:
    """The resolved settings, as written to config.json and compared on --resume."""

    def plain(v):
        return list(v) if isinstance(v, tuple) else v

    return {
        "data": {"name": cfg.data.name, **{k: plain(v) for k, v in cfg.data.options.items()}},
        "epochs": cfg.epochs,
        "batch_size": cfg.batch_size,
        "seed": cfg.seed,
        "steps": [
            {
                "name": s.name,
                "optimizer": {
                    "name": s.optimizer.kind,
                    "models": s.optimizer.models,
                    **{k: plain(v) for k, v in s.optimizer.options.items()},
                    "groups": [{"module": f"{g.model}.{g.attr}", **g.options} for g in s.optimizer.groups],
                },
                "schedule": {"name": s.schedule.kind, **s.schedule.options},
                "clip_grad_norm": s.clip_grad_norm,
                "accumulate": s.accumulate,
                **({"freeze": [f"{f.model}.{f.path}" for f in s.frozen]} if s.frozen else {}),
            }
            for s in cfg.steps
        ],
        "metrics": [u.key for u in cfg.metrics],
        "early_stopping": cfg.early_stopping,
        "monitor": cfg.monitor,
        "monitor_mode": cfg.monitor_mode,
        "keep_checkpoints": cfg.keep_checkpoints,
        "checkpoint_every": cfg.checkpoint_every,
        "export": cfg.export,
        "shuffle": cfg.shuffle,
        **({"stop_at": cfg.stop_at} if cfg.stop_at is not None else {}),
    }
