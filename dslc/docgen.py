"""Writes docs/reference.md, the language reference, from the registries so it cannot drift.

    python -m dslc.docgen            # rewrite docs/reference.md
    python -m dslc.docgen --check    # exit 1 if it is stale (the tests do the same)

The constructs of the language are described by the prose below (each with an example that the
tests check); every layer and function comes from `dslc.layers.REGISTRY`, and the training
registries (losses, metrics, optimizers, schedules, datasets) are read from their modules when
they exist. Every heading carries an explicit anchor: diagnostics point at them (`see: ...#anchor`).
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any

from dslc import checker, consteval, parser
from dslc.errors import DOCS_URL, MAX_SHOWN
from dslc.layers import REGISTRY, Op
from dslc.layers.base import op_anchor
from dslc.params import dsl_value, signature
from dslc.shapes import DTYPES, MAX_EXAMPLE_SIZE

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / DOCS_URL
CATEGORIES = [
    ("layer", "Layers", "Layers with learned parameters (and pooling). Apply them in a pipeline: `x -> Linear(10)`."),
    ("activation", "Activations", "Element-wise activations; each also works as a function: `relu(x)`."),
    ("shape", "Reshaping", "Layers that only rearrange a tensor's elements."),
    ("function", "Tensor functions", "Called like functions, `mean(h, dim=time)`, or applied in a pipeline."),
    ("loss", "Losses", "A train section's losses, `loss = cross_entropy(logits, label)`: each gives a float32 scalar."),
]
# (module, attribute, title, anchor, what it is): the training registries, documented when they exist.
TRAINING_REGISTRIES = [
    ("dslc.training.functions", "METRICS", "Metrics", "train-metrics"),
    ("dslc.training.functions", "OPTIMIZERS", "Optimizers", "train-optimizers"),
    ("dslc.training.functions", "SCHEDULES", "Learning-rate schedules", "train-schedules"),
    ("dslc.data.registry", "DATASETS", "Datasets", "train-datasets"),
    ("dslc.training.augment", "AUGMENTATIONS", "Augmentations", "train-augmentations"),
]

CONSTRUCTS = r'''
<a id="file-structure"></a>
## File structure

A spec is a UTF-8 text file ending in `.model`. It may start with a docstring (a string literal,
usually triple-quoted) and then holds, in any order: imports, constants, blocks, models and train
sections. Newlines and indentation carry no meaning, so a statement may span lines (break before
`->` or an operator). `#` starts a comment that runs to the end of the line; `dslc fmt` keeps every
comment, and comments on inputs and statements are carried into the generated PyTorch code.

```dslc
"""A tiny regression model. This docstring becomes the generated module's docstring."""

const hidden = 16   # a constant, overridable with --set hidden=32

model regressor {
    input features: float32[batch, 8]   # 8 measurements per example
    output prediction = features -> Linear(hidden) -> ReLU -> Linear(1)
}
```

<a id="models"></a>
## Models

`model NAME { ... }` declares a network that is exported: it becomes an `nn.Module` class
(`regressor` -> `Regressor`), one ONNX file per model, and an entry in `MODELS`. A spec needs at
least one model and may hold several (a GAN's generator and discriminator, an encoder and a decoder
step). The body is a docstring (optional) followed by statements: inputs, assignments, `if` and
outputs. Every model declares at least one `input` and one `output`.

<a id="blocks"></a>
## Blocks

`block Name(param: type = default, ...) { ... }` declares a reusable sub-network. Parameters are
compile-time values of type `int`, `float`, `bool` or `str`; those without a default are required.
A block is used like a layer, in a pipeline: `x -> Residual(64)`, `x -> Residual(size=64)`. Each
use with different arguments or input shapes is checked separately, with concrete sizes, so every
shape is known and an error inside a block names the use that causes it. Names in the block's
input types bind to the sizes it is given (below, `d` is whatever the last dimension of `x` is).

A block becomes one PyTorch class, whatever the number of uses: its constructor takes the sizes of
its inputs that its code needs, then its parameters (`Residual(d, size, drop=0.1)`), and each use
builds it with its own arguments (`Residual(32, 64)`, `Residual(32, 128, drop=0.2)`). Values the
block computes from them stay expressions in the class (`nn.Linear(d, size * 4)`), so the class
works for arguments no use had. `dslc check --ir` shows each checked use and the class it becomes.

```dslc
block Residual(size: int, drop: float = 0.1) {
    """x + MLP(x): a residual feed-forward block."""
    input x: float32[batch, d]
    h = x -> Linear(size) -> ReLU -> Linear(d) -> Dropout(drop)
    output y = (x + h) -> LayerNorm
}

model deep {
    input x: float32[batch, 32]
    output y = x -> Residual(64) -> Residual(128, drop=0.2)
}
```

A block with several inputs takes a tuple, `(a, b) -> Block()`, and one with several outputs is
unpacked: `mu, logvar = x -> Encoder()`.

<a id="imports"></a>
## Imports

Blocks and constants can live in other spec files, found relative to the importing file:

```text
import "blocks.model"                  # use as blocks.Residual(64), blocks.hidden
import "blocks.model" as b             # use as b.Residual(64)
from "blocks.model" import Residual    # use as Residual(64)
```

Only the importing file's own models are exported.

<a id="constants"></a>
## Constants

`const NAME = expression` defines a compile-time value: an integer, a float, a bool (`true`,
`false`), a string, `none`, or a tuple or list of those. Constants may use earlier constants
(`const ffn = 4 * d_model`). `dslc check/build --set NAME=VALUE` overrides a constant for one run
without editing the file; a list constant takes a list written as in a spec, which may use the constants
defined before it (`--set 'STAGES=[[64], [128], [256, 256]]'`).

<a id="inputs-and-outputs"></a>
## Inputs and outputs

`input NAME: TYPE` declares an input tensor; the order of the inputs is the order of the `forward`
arguments and of the ONNX inputs. `output NAME = expression` computes and returns an output;
`output NAME: TYPE = expression` also states its type, and the checker verifies it; `output NAME`
alone returns an existing value. A comment on an input line documents it (in the generated code,
the manifest and the ONNX metadata).

```text
input image: float32[batch, 1, 28, 28]      # grey-scale digits
output logits: float32[batch, 10] = image -> Flatten -> Linear(10)
output probabilities = softmax(logits, dim=-1)
```

<a id="tensor-types"></a>
## Tensor types and dimensions

A tensor type is a dtype and a list of dimensions: `float32[batch, time, 64]`. The dtypes are
DTYPE_LIST (a model's inputs are not bfloat16: numpy, which feeds the graph, has no such type; train in
bfloat16 with `dslc train --amp`). A dimension is an integer, a constant, or a name. In a model's input, a name (`batch`,
`time`) is a symbolic size: it stays dynamic in the ONNX graph (a named dynamic axis) and the
checker tracks it through every layer (`time - 2`, `(time - 11) // 2 + 1`, `2 * time`). The same
name means the same size everywhere in a model. In a block's input, a name binds to the size the
block is given. `dslc check --shapes` prints every layer's output type.

<a id="assignments"></a>
## Assignments

`name = expression` names a value; `a, b = expression` unpacks an expression with several outputs
(a recurrent layer's outputs and state, `split`, a block with several outputs). A name is assigned
once per body.

<a id="pipelines"></a>
## Pipelines

`source -> stage -> stage ...` feeds a tensor through layers, left to right. A stage is a layer or
block call (`Linear(128)`), a layer without arguments (`ReLU`, `Flatten`), a tensor function used
as a layer (`softmax(dim=-1)`), a named stage, a reused layer, a group or a `repeat`. The source of
a pipeline is any expression; several inputs are passed as a tuple: `(x, memory) -> MultiheadAttention(8)`.
A layer's input sizes are inferred: `Linear(128)` only states its output size.

```dslc
model cnn_demo {
    input image: float32[batch, 1, 28, 28]
    features = image
        -> Conv2d(32, kernel=3, padding="same") -> ReLU -> MaxPool2d(2)
        -> Flatten
    output logits = features -> Linear(128) -> ReLU -> Linear(10)
}
```

<a id="named-layers"></a>
## Named layers and shared weights

`name: Layer(...)` names the layer's submodule (its attribute in PyTorch and its parameters'
names); unnamed layers are numbered (`fc1`, `conv2`, ...). Writing a name alone later in a pipeline,
`-> name`, applies the same layer again: the weights are shared.

```dslc
model siamese {
    input left: float32[batch, 16]
    input right: float32[batch, 16]
    a = left -> embed: Linear(8)
    b = right -> embed          # the same Linear: shared weights
    output distance = sum(abs(a - b), dim=-1)
}
```

<a id="groups"></a>
## Groups

`name: (A -> B -> C)` puts several layers into one named `nn.Sequential` (for example a residual
shortcut `downsample: (Conv2d(128, kernel=1, stride=2) -> BatchNorm2d)`). Layers inside a group
are numbered, not named, as `nn.Sequential` numbers them. A group inside a named group is a
numbered `nn.Sequential` of its own, to any depth, so torchvision's layouts are written as they
are: in `features: ((Conv2d(32, kernel=3, stride=2, padding=1, bias=false) -> BatchNorm2d -> ReLU6)
-> ...)` the convolution's weight is `features.0.0.weight`. A `repeat`, a loop or an `if` inside a
named group adds its layers to the group's numbering.

<a id="loops"></a>
## Loops and stage conditionals

`for NAME in ITEMS { stages }` repeats pipeline stages once per item, at compile time; ITEMS is a
list, a tuple or `range(stop)` / `range(start, stop[, step])`, and each item may be unpacked into
several names (`for t, c, n, s in SETTINGS`). `if condition { stages } elif ... else { stages }`
chooses stages at compile time. Both splice their stages into the pipeline, and into the numbering
of the named group around them, exactly as PyTorch's loops building an `nn.Sequential` number them:

```dslc
const WIDTHS = [16, 32, 64]

model vgg_like {
    input image: float32[batch, 3, 32, 32]
    h = image -> features: (
        for width in WIDTHS {
            Conv2d(width, kernel=3, padding=1) -> ReLU -> MaxPool2d(2)
        })
    output logits = h -> Flatten -> classifier: Linear(10)
}
```

Here `features.0` is the first convolution, `features.3` the second. A value that depends on a
compile-time condition is written `(a if condition else b)`, in parentheses:
`Block(c, stride=(s if i == 0 else 1))`.

<a id="param"></a>
## Declared parameters

`param NAME: float32[sizes] = INIT` declares a learned tensor of the module (ViT's class token and
position embeddings): it is stored under its own name in the state dict (`embeddings.cls_token`),
trained and exported like a layer's weight, and read by name in expressions
(`concat([expand(cls_token, batch, -1, -1), patches], dim=1)`). Its sizes are fixed (constants,
block parameters, input sizes that a block is given). INIT is one of INITIALIZER_LIST, `zeros`
when omitted.

```dslc
model learned_bias {
    input x: float32[batch, 8]
    param offset: float32[8] = normal(std=0.02)
    output y = x + offset
}
```

<a id="tie"></a>
## Tied weights

`tie TARGET = SOURCE` in a model makes the parameter at state_dict key TARGET the one at SOURCE (GPT-2's
output projection reading the token embedding: `tie lm_head.weight = transformer.wte.weight`). Both names
stay in the state dict, the tensor is one (trained once, counted once, one initializer in ONNX), and a
checkpoint holding only SOURCE, as HuggingFace saves tied models, loads strictly. The keys name layers
above the statement; the shapes must agree. Linear, Conv1D and Embedding weights (and declared
parameters) can be tied.

```dslc
model lm {
    input tokens: int64[batch, time]
    h = tokens -> wte: Embedding(256, 64) -> ln: LayerNorm
    output logits = h -> lm_head: Linear(256, bias=false)
    tie lm_head.weight = wte.weight
}
```

<a id="repeat"></a>
## Repeat

`repeat N Stage` applies N copies (separate weights) of a layer or block in sequence; N is an integer
literal, a constant or a parenthesised expression. The stage's output must have its input's type.
With a name, `encoder: repeat layers EncoderLayer(heads, ffn)`, the copies form an `nn.Sequential`
(`encoder.0`, `encoder.1`, ...).

<a id="expressions"></a>
## Expressions

Tensors combine with `+ - * / @` (broadcasting as in PyTorch; `@` is matrix multiplication) and
unary `-`. Compile-time values (constants, block parameters, sizes) also have `//` (floor
division), `%`, `**`, comparisons `== != < <= > >=`, and `and`, `or`, `not`. Literals: integers
(`1_000`), floats (`1e-3`, `0.5`), strings (`"same"` or `'same'`), `true`, `false`, `none`, tuples
`(3, 3)` and lists `[1, 2]`. Function calls take positional arguments then keyword arguments:
`mean(h, dim=time)`; a dimension argument may be an index or the name of a symbolic size.

Precedence, loosest first: `->`; `or`; `and`; `not`; comparisons; `+ -`; `* / // % @`; unary `-`;
`**`; indexing `x[...]`. Parentheses group as usual.

<a id="indexing"></a>
## Indexing and slicing

`x[i]`, `x[:, 0]`, `x[:, -1]`, `x[:, 1:5]`, `x[..., ::2]` select with integers, slices (start, stop,
step; steps are positive) and `...`. Bounds are compile-time integers.

<a id="if"></a>
## Conditionals

`if condition { ... } elif condition { ... } else { ... }` chooses statements at compile time: the
condition must be a compile-time bool (constants, block parameters, sizes). Only the chosen branch is
compiled. In a model the generated code has no branch; in a block the class keeps the condition,
over its constructor arguments, in `__init__` and `forward`, with the arms its uses took (an arm no
use took raises `NotImplementedError` when the class is built that way).

```dslc
const use_norm = true

model conditional {
    input x: float32[batch, 4]
    h = x -> Linear(4)
    if use_norm {
        output y = h -> LayerNorm
    } else {
        output y = h
    }
}
```

<a id="training"></a>
## Train sections

`train [NAME] { ... }` describes how to train the spec's model(s): settings `name = expression` and
named sections `kind [name] { ... }` holding more settings. Settings name the dataset, the loss (an
expression over the model's outputs and the dataset's fields), the optimizer, the schedule, the
metrics and the training loop's parameters; `dslc train` runs it. See [training.md](training.md)
for the full description, and the registries below for every dataset, loss, metric, optimizer and
schedule.

```text
train {
    data = digits(image_size=28, validation=0.2)   # fields: image, label
    loss = cross_entropy(logits, label)
    optimizer = adam(lr=2e-3)
    epochs = 8
    batch_size = 64
    metrics = [accuracy]
}
```

<a id="names"></a>
## Names

Names are ASCII identifiers (`[A-Za-z_][A-Za-z0-9_]*`) of at most MAX_NAME_LENGTH characters. The
keywords KEYWORD_LIST cannot be used as names where they start a statement. A name becomes a Python
name in the generated code, so names that code needs are refused where they are written: Python
keywords and built-ins (`len`, `list`, `sum`, ...), `self`, `torch`, `nn`, `F`, `math`, `block`,
`MODELS`, names starting with `__`, and for models, model outputs and train tensors also the variables
of the training script (`models`, `batch`, `loss`, `run`, `rt`, `totals`, ...). Layer names become
attributes (`self.conv1`), so they may be `self` or a built-in but not one of `nn.Module`'s own
attributes (`forward`, `training`, `to`, ...) or start with `_`. The generated file takes its name
from the spec's file name made into a module name (`my-net.model` -> `my_net.py`, `2layer.model` ->
`model_2layer.py`, `torch.model` -> `torch_model.py`). Layer and function names are looked up in the
registry below; a misspelt name gets a "did you mean" hint.

<a id="limits"></a>
## Limits

What would make checking slow or a model impossible to build is refused at its location:

LIMITS_TABLE

Symbolic sizes: every layer and index records what its sizes need (a kernel of 25 needs a length
of at least 25, `x[:, -10]` needs at least 10), and `dslc build` exports and verifies at sizes that
meet every such rule. A model no size up to MAX_EXAMPLE_SIZE can run is refused by `dslc check`.

<a id="diagnostics"></a>
## Diagnostics

Errors are reported as `FILE:LINE:COL: error: message`, with the source line, a caret under the
problem, often a `hint:`, and a `see:` link to the section of this reference that explains it. One
run reports every independent mistake it finds. A block is checked where it is used, once per distinct
use (arguments and input shapes); an error inside it carries a `note:` naming that use. `dslc check`
exits 0 when the spec is clean and 1 on errors.
'''


def limits_table() -> list[str]:
    rows = [
        ("spec size", f"{parser.MAX_SPEC_CHARS:,} characters"),
        ("brackets and braces nested", f"{parser.MAX_NESTING} levels"),
        ("expression depth without brackets (`- - x`, `a ** b ** c`, long sums)", f"{parser.MAX_TREE_DEPTH} levels"),
        ("name length", f"{parser.MAX_NAME_LENGTH} characters"),
        ("integers (literals and compile-time arithmetic)", "2**63 - 1"),
        ("strings and tuples built with `*` or `+`", f"{consteval.MAX_ITEMS:,} items"),
        ("layer arguments (sizes, kernels, strides)", f"{checker.MAX_LAYER_INT:,}"),
        ("parameters of a layer or a model", f"{checker.MAX_PARAMETERS:,} (3.2 GB of float32)"),
        ("elements of one tensor per example (symbolic sizes count as 1)", f"{checker.MAX_ELEMENTS:,}"),
        ("copies made by `repeat`", f"{checker.MAX_REPEAT:,}"),
        ("errors printed per run (all are counted)", f"{MAX_SHOWN}"),
    ]
    return ["| what | at most |", "|---|---|", *(f"| {what} | {limit} |" for what, limit in rows)]


def initializer_list() -> str:
    """`zeros` (all zeros), `normal(mean=0.0, std=1.0)` (...), ...: each initialiser with its arguments."""
    from dslc.initializers import INITIALIZERS

    return ", ".join(f"`{signature(i.name, i.params) if i.params else i.name}` ({i.doc.rstrip('.').lower()})"
                     for i in INITIALIZERS.values())  # fmt: skip


def keywords() -> list[str]:
    """The grammar's keywords: every quoted word in grammar/dslc.lark."""
    import re

    from dslc.grammar import GRAMMAR_PATH

    text = re.sub(r"//[^\n]*", "", GRAMMAR_PATH.read_text(encoding="utf-8"))
    return sorted(set(re.findall(r'"([a-z]+)"', text)))


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def param_table(params) -> list[str]:
    if not params:
        return ["No arguments."]
    rows = ["| argument | kind | default | meaning |", "|---|---|---|---|"]
    for p in params:
        default = "required" if p.required else f"`{dsl_value(p.default)}`"
        doc = getattr(p, "doc", "") or ""
        choices = getattr(p, "choices", None)
        if choices:
            doc += ("; " if doc else "") + "one of " + ", ".join(f"`{dsl_value(c)}`" for c in choices)
        rows.append(f"| `{p.name}` | {p.kind} | {default} | {_cell(doc)} |")
    return rows


def unique_ops() -> list[Op]:
    seen: dict[str, Op] = {}
    for op in REGISTRY.values():
        seen.setdefault(op.name, op)
    return list(seen.values())


def op_section(op: Op) -> list[str]:
    lo, hi = op.inputs
    inputs = f"{lo}" if lo == hi else f"{lo} to {hi}"
    lines = [f'<a id="{op_anchor(op.name)}"></a>', f"### {op.name}", "", op.doc, ""]
    lines += ["```text", signature(op.name, op.params), "```", ""]
    facts = [f"Tensor inputs: {inputs}."]
    if op.shape_rule:
        facts.append(f"Shape: `{op.shape_rule}`.")
    if op.aliases:
        facts.append("Also written " + ", ".join(f"`{a}`" for a in op.aliases) + ".")
    if op.train_only:
        facts.append("In a train section only.")
    elif not op.deterministic:
        facts.append("A random draw: every call draws anew.")
    lines += [" ".join(facts), ""]
    lines += param_table(op.params) + [""]
    if op.example:
        lines += ["Example: `" + op.example + "`", ""]
    return lines


def _registry_entries(module: str, attr: str) -> dict[str, Any] | None:
    try:
        registry = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError):
        return None
    return registry if isinstance(registry, dict) and registry else None


def registry_section(title: str, anchor: str, entries: dict[str, Any]) -> list[str]:
    lines = [f'<a id="{anchor}"></a>', f"## {title}", ""]
    by_kind: dict[str, list[tuple[str, Any]]] = {}
    for name, entry in entries.items():
        by_kind.setdefault(getattr(entry, "kind", ""), []).append((name, entry))
    for kind, items in sorted(by_kind.items()):
        if kind and len(by_kind) > 1:
            lines += [f"**{kind}**", ""]
        for name, entry in items:
            params = entry if isinstance(entry, tuple) else tuple(getattr(entry, "params", ()))
            tensors = tuple(getattr(entry, "tensors", ()))
            sig_params = [*(_Named(t) for t in tensors), *params]
            lines += [f'<a id="{anchor}-{name.lower()}"></a>', f"### {name}", ""]
            doc = getattr(entry, "doc", "") or ""
            if getattr(entry, "torch_class", None):
                doc = (doc + " " if doc else "") + f"PyTorch: `{entry.torch_class}`."
            if doc:
                lines += [doc, ""]
            lines += ["```text", signature(name, sig_params), "```", ""]
            if params:
                lines += param_table(params) + [""]
    return lines


class _Named:
    """A required positional (tensor) argument, for signatures."""

    def __init__(self, name: str):
        self.name = name
        self.required = True


def cli_section() -> list[str]:
    import click

    from dslc.cli import main

    lines = ['<a id="command-line"></a>', "## Command line", ""]
    lines += ["| command | what it does |", "|---|---|"]
    ctx = click.Context(main, info_name="dslc")
    for name in sorted(main.commands):
        cmd = main.commands[name]
        usage = " ".join(cmd.collect_usage_pieces(ctx))
        lines.append(f"| `dslc {name} {usage}` | {_cell(cmd.get_short_help_str(limit=200))} |")
    lines += ["", "Every command has `--help` with examples. Shell completion: see `dslc completion --help`.", ""]
    return lines


def render() -> str:
    from dslc.grammar import GRAMMAR_PATH

    ops = unique_ops()
    out = [
        "# dslc language reference",
        "",
        "<!-- Generated by `python -m dslc.docgen` from the op registry and the training registries. -->",
        "<!-- Do not edit by hand: edit dslc/docgen.py or the registries, then regenerate. -->",
        "",
        "New to dslc? Start with the [tutorial](tutorial.md). This page describes every construct of the",
        "language, then every layer, function and training component the compiler knows.",
        "",
        "**Constructs:** "
        + ", ".join(
            f"[{t}](#{a})"
            for t, a in [
                ("file structure", "file-structure"),
                ("models", "models"),
                ("blocks", "blocks"),
                ("imports", "imports"),
                ("constants", "constants"),
                ("inputs and outputs", "inputs-and-outputs"),
                ("tensor types", "tensor-types"),
                ("assignments", "assignments"),
                ("pipelines", "pipelines"),
                ("named layers", "named-layers"),
                ("groups", "groups"),
                ("loops", "loops"),
                ("declared parameters", "param"),
                ("tied weights", "tie"),
                ("repeat", "repeat"),
                ("expressions", "expressions"),
                ("indexing", "indexing"),
                ("conditionals", "if"),
                ("train sections", "training"),
                ("names", "names"),
                ("limits", "limits"),
                ("diagnostics", "diagnostics"),
            ]
        ),
        "",
    ]
    for category, title, _ in CATEGORIES:
        names = [op.name for op in ops if op.category == category]
        out.append(f"**{title}:** " + ", ".join(f"[{n}](#{op_anchor(n)})" for n in names))
        out.append("")
    training = [(t, a, e) for m, attr, t, a in TRAINING_REGISTRIES if (e := _registry_entries(m, attr))]
    if training:
        out += ["**Training:** " + ", ".join(f"[{t.lower()}](#{a})" for t, a, _ in training), ""]
    out += ["**Also:** [command line](#command-line), [grammar](#grammar)", ""]

    body = CONSTRUCTS.strip("\n")
    body = body.replace("DTYPE_LIST", ", ".join(f"`{d}`" for d in DTYPES))
    body = body.replace("KEYWORD_LIST", ", ".join(f"`{k}`" for k in keywords()))
    body = body.replace("LIMITS_TABLE", "\n".join(limits_table()))
    body = body.replace("INITIALIZER_LIST", initializer_list())
    body = body.replace("MAX_NAME_LENGTH", f"{parser.MAX_NAME_LENGTH:,}").replace(
        "MAX_EXAMPLE_SIZE", f"{MAX_EXAMPLE_SIZE:,}"
    )
    out += ["# The language", "", body, ""]

    out += ['<a id="layers-and-functions"></a>', "# Layers and functions", ""]
    out += [
        "Arguments are given positionally in the order shown or by name. Kinds: `int`, `float`, `bool`,",
        "`str`; `ints` is an integer or a tuple of integers (one per spatial dimension); `axis` is a",
        "dimension index (negative counts from the end) or the name of a symbolic size (`dim=time`);",
        "`axes` is one or several of those; `dims` is a list of sizes. Activations and tensor functions",
        "are written either as a pipeline stage (`x -> ReLU`) or as a call (`relu(x)`).",
        "",
    ]
    for category, title, intro in CATEGORIES:
        anchor = "losses" if category == "loss" else f"{category}s"
        out += [f'<a id="{anchor}"></a>', f"## {title}", "", intro, ""]
        for op in ops:
            if op.category == category:
                out += op_section(op)
    for title, anchor, entries in training:
        out += registry_section(title, anchor, entries)
    out += cli_section()
    grammar = GRAMMAR_PATH.read_text(encoding="utf-8").rstrip("\n")
    out += ['<a id="grammar"></a>', "## Grammar", "", "The complete grammar (Lark, LALR), `grammar/dslc.lark`:", ""]
    out += ["```lark", grammar, "```", ""]
    return "\n".join(out).rstrip("\n") + "\n"


def anchors(text: str) -> set[str]:
    import re

    return set(re.findall(r'<a id="([^"]+)"></a>', text))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    text = render()
    if "--check" in argv:
        current = REFERENCE.read_text(encoding="utf-8") if REFERENCE.exists() else ""
        if current != text:
            print(f"{REFERENCE} is stale: run `python -m dslc.docgen`", file=sys.stderr)
            return 1
        return 0
    from dslc.fileio import write_atomic

    write_atomic(REFERENCE, text)
    print(f"wrote {REFERENCE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
