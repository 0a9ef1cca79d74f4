"""The one way text from a spec reaches generated Python.

Generated code holds three kinds of spec-derived text, each made safe here and nowhere else:
literals (`py_literal`: strings, numbers, tuples, always valid escaped Python), comments and
docstrings (`comment`, `docstring_lines`: one line each, no character that could end them early or
reorder what a reader sees), and names (`module_name`: a file stem made into an importable module
name; every other generated name is a spec identifier checked by `dslc.loader.check_identifier`).
"""

from __future__ import annotations

import builtins
import json
import keyword
import re
import sys
import unicodedata
from typing import Any

from dslc.pyformat import slice_text
from dslc.traced import PREFIX, is_bool, is_traced, python_expr

# Names a spec may not give to what becomes a Python variable, class or attribute. Each set is
# checked against the generated code by tests/compiler/test_names.py, so it cannot fall behind.
PYTHON_NAMES = frozenset(keyword.kwlist + keyword.softkwlist + [n for n in dir(builtins) if not n.startswith("_")])
# Module-level and forward() names of the model code (helper functions are added by the loader).
MODEL_CODE_NAMES = frozenset({"self", "torch", "nn", "F", "math", "block", "annotations", "MODELS"})
# Names the training script binds; a model, a model output or a train tensor becomes a variable there.
TRAIN_SCRIPT_NAMES = frozenset(
    {
        "BATCH_SIZE", "CONFIG", "DEVICE", "MODELS", "Path", "SPEC", "annotations", "args", "argv", "batch", "batches",
        "epoch", "epochs", "eval_batches", "evaluate", "first_step", "i", "load_data", "loss", "loss_sums", "lr_factor", "main",
        "math", "model", "models", "n", "name", "nn", "outputs", "p", "params", "prepare", "progress", "record", "rt",
        "run", "seed", "sets", "start_epoch", "step", "steps_per_epoch", "sys", "torch", "F", "total", "totals",
        "train_batches", "train_models", "warmup", "optimizer", "scheduler", "data", "batch_size", "HERE", "data_dir",
        "act", "prefix",
    }
)  # fmt: skip
TRAIN_SCRIPT_PREFIXES = ("step_", "make_optimizer_", "optimizer_", "scheduler_", "scaler_", "params_")
# nn.Module's own attributes: a layer named `forward` or `training` would replace them.
MODULE_ATTRIBUTES = frozenset(
    {
        "T_destination", "add_module", "apply", "bfloat16", "buffers", "call_super_init", "children", "compile",
        "cpu", "cuda", "double", "dump_patches", "eval", "extra_repr", "float", "forward", "get_buffer",
        "get_extra_state", "get_parameter", "get_submodule", "half", "ipu", "load_state_dict", "modules", "mtia",
        "named_buffers", "named_children", "named_modules", "named_parameters", "parameters",
        "register_backward_hook", "register_buffer", "register_forward_hook", "register_forward_pre_hook",
        "register_full_backward_hook", "register_full_backward_pre_hook", "register_load_state_dict_post_hook",
        "register_load_state_dict_pre_hook", "register_module", "register_parameter",
        "register_state_dict_post_hook", "register_state_dict_pre_hook", "requires_grad_", "set_extra_state",
        "set_submodule", "share_memory", "state_dict", "to", "to_empty", "train", "training", "type", "xpu",
        "zero_grad",
    }
)  # fmt: skip

MAX_MODULE_NAME = 64  # keeps `<name>_train.py` far below any file system's name limit

# Top-level modules a generated module must not shadow: the generated files sit on sys.path next to
# the training script, so `torch.py` there would replace torch itself.
_SHADOWED = frozenset(sys.stdlib_module_names) | {
    "torch",
    "torchvision",
    "numpy",
    "onnx",
    "onnxruntime",
    "lark",
    "click",
    "rich",
    "safetensors",
    "sklearn",
    "gymnasium",
    "dslc",
    "dslc_runtime",
    "setuptools",
    "pkg_resources",
}


def py_literal(value: Any) -> str:
    """Python source for a plain value: None, bool, int, float, str, or tuples and lists of them.

    Inside a generated block class, a traced value (dslc.traced) is written as its expression over
    the class's parameters (validated identifiers), e.g. `planes * 4`."""
    if is_traced(value) and PREFIX.get() is not None:
        return python_expr(value.expr, py_literal)
    if value is None or isinstance(value, bool):
        return repr(value)
    if is_bool(value):  # a bool parameter, written outside its class
        return repr(bool(value))
    if isinstance(value, int):
        return repr(int(value))
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            return f'float("{value}")'
        return repr(float(value))
    if isinstance(value, str):
        return json.dumps(value)  # escapes quotes, backslashes, control and non-ASCII characters
    if isinstance(value, (tuple, list)):
        items = ", ".join(py_literal(v) for v in value)
        if isinstance(value, tuple):
            return f"({items},)" if len(value) == 1 else f"({items})"
        return f"[{items}]"
    raise TypeError(f"no Python literal for {type(value).__name__}")


def index_text(item: Any) -> str:
    """One item of an index as Python: an int, `...`, `None` (a new axis) or a slice (an ir.SliceItem)."""
    if item is Ellipsis:
        return "..."
    if item is None:
        return "None"
    if isinstance(item, int):
        return py_literal(item)
    start, stop = ("" if p is None else py_literal(p) for p in (item.start, item.stop))
    return slice_text(start, stop, None if item.step is None else py_literal(item.step))


def _visible(char: str) -> str:
    # Control, format (bidirectional overrides: "Trojan Source"), surrogate, private-use and separator
    # characters could end a comment, hide code from a reader or fail to encode: they become spaces.
    if char == " ":
        return char
    category = unicodedata.category(char)
    return " " if category[0] in "CZ" else char


_UNSAFE = re.compile(r"[^\x21-\x7e]")


def _printable(text: str) -> str:
    return _UNSAFE.sub(lambda m: _visible(m.group()), text)


def comment(text: str) -> str:
    """Spec text made into the body of one `#` comment line."""
    return _printable(text).strip()


def docstring_lines(text: str) -> list[str]:
    """Spec text as the lines of a triple-quoted docstring that it cannot end early or escape from.

    Backslashes are doubled (no escape sequence or line continuation survives) and every run of three
    double quotes is escaped; `docstring` keeps a final quote off the closing quotes.
    """
    escaped = text.replace("\\", "\\\\").replace('"""', r"\"\"\"")
    return [_printable(line).rstrip() for line in escaped.strip().split("\n")]


def docstring(lines: list[str], indent: str) -> list[str]:
    """A docstring statement from lines made by `docstring_lines` (or generator text)."""
    if not lines:
        return []
    last = lines[-1] + (" " if lines[-1].endswith('"') else "")
    lines = [*lines[:-1], last]
    if len(lines) == 1:
        return [f'{indent}"""{lines[0]}"""']
    return [f'{indent}"""{lines[0]}', *[f"{indent}{line}" if line else "" for line in lines[1:]], f'{indent}"""']


def module_name(stem: str) -> str:
    """The importable module name for the code generated from `<stem>.model`.

    The file name is never code: anything but ASCII letters, digits and `_` becomes `_`, a leading
    digit gets a `model_` prefix, and names that are keywords or would shadow a module the generated
    code imports get a `_model` suffix (`my-net` -> `my_net`, `2layer` -> `model_2layer`,
    `torch` -> `torch_model`).
    """
    name = re.sub(r"[^A-Za-z0-9_]", "_", stem)[:MAX_MODULE_NAME].strip("_") or "model"
    if name[0].isdigit():
        name = f"model_{name}"
    if keyword.iskeyword(name) or keyword.issoftkeyword(name) or name in _SHADOWED or name.startswith("__"):
        name = f"{name}_model"
    return name
