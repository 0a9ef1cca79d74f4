"""Generated names: every name the generated code uses is reserved, and a spec name that would clash
with one is refused at check, with its location, instead of breaking build or train."""

from __future__ import annotations

import symtable
from pathlib import Path

import pytest
from torch import nn

from dslc.build import build
from dslc.checker import check_file
from dslc.cse import OPERATOR_STEMS
from dslc.emit_torch import emit_program
from dslc.emit_train import emit_train_script
from dslc.errors import DslcError
from dslc.layers import HELPERS, REGISTRY
from dslc.loader import RESERVED
from dslc.parser import _lark
from dslc.pytext import MODULE_ATTRIBUTES, PYTHON_NAMES, TRAIN_SCRIPT_NAMES, TRAIN_SCRIPT_PREFIXES
from tests.conftest import SPECS

SHIPPED = sorted(SPECS.glob("*.model"))


def spec_names(path: Path) -> set[str]:
    return {t.value for t in _lark().lex(path.read_text(encoding="utf-8")) if t.type == "NAME"}


def scope_names(table: symtable.SymbolTable, skip: set[str]) -> set[str]:
    names = {s.get_name() for s in table.get_symbols()}
    for child in table.get_children():
        if child.get_name() in skip:
            continue  # a helper's own locals never meet spec names
        names |= scope_names(child, skip)
    return names


@pytest.mark.parametrize("spec", SHIPPED, ids=lambda p: p.stem)
def test_model_code_uses_only_reserved_names(spec):
    program = check_file(spec)
    table = symtable.symtable(emit_program(program), "model.py", "exec")
    used = scope_names(table, set(HELPERS)) - spec_names(spec) - {m.class_name for m in program.modules}
    used -= {"__init__", "__class__", ".0", "_"}  # methods and comprehension internals
    used = {n for n in used if not _temporary(n, spec_names(spec))}
    used -= {c.upper() for c in program.constants}  # the spec's constants, as module-level constants
    assert used <= RESERVED | PYTHON_NAMES | MODULE_ATTRIBUTES, sorted(used - RESERVED - PYTHON_NAMES)


@pytest.mark.parametrize("spec", [s for s in SHIPPED if "train {" in s.read_text()], ids=lambda p: p.stem)
def test_training_script_uses_only_reserved_names(spec):
    table = symtable.symtable(emit_train_script(check_file(spec)), "train.py", "exec")
    used = scope_names(table, set()) - spec_names(spec) - {"__file__", "__name__", ".0", "_"}
    unreserved = {n for n in used - TRAIN_SCRIPT_NAMES - PYTHON_NAMES if not n.startswith(TRAIN_SCRIPT_PREFIXES)}
    constants = {n for n in unreserved if n.rstrip("_").lower() in spec_names(spec) and n.isupper()}
    assert not {n for n in unreserved - constants if not _step_temporary(n, spec_names(spec))}


def _step_temporary(name: str, spec: set[str]) -> bool:
    """A train step's temporaries (dslc.cse): `discriminator_out1` holds a model call, `value2` anything else."""
    stem = name.rstrip("0123456789")
    stems = {"value", *OPERATOR_STEMS.values(), *(op.prefix.lower() for op in REGISTRY.values())}
    return stem != name and (stem in stems or stem.removesuffix("_out") in spec)


def test_module_attributes_match_torch():
    public = {n for n in dir(nn.Module) if not n.startswith("_")} | {"T_destination", "training"}
    assert public <= MODULE_ATTRIBUTES


def _temporary(name: str, spec: set[str]) -> bool:
    """The checker's temporaries: `h`, `out0` or spec names joined by `_` (`memory_final`), numbered."""
    stem = name.rstrip("0123456789")
    return stem in ("h", "out") or all(part in spec for part in stem.split("_"))


TRAINED = """
model {model} {{
    input features: float32[batch, 10]
    output {output} = features -> {layer}Linear(1)
}}
train {{
    data = diabetes(validation=0.2)
    loss = mse({output}, target)
    optimizer = sgd(lr=0.01)
    epochs = 1
}}
"""


@pytest.mark.parametrize(
    ("model", "output", "layer", "refused"),
    [
        ("m", "rt", "", "output 'rt'"),
        ("m", "len", "", "output 'len'"),
        ("m", "totals", "", "output 'totals'"),
        ("m", "run", "", "output 'run'"),
        ("m", "models", "", "output 'models'"),
        ("m", "optimizer_train", "", "output 'optimizer_train'"),
        ("list", "y", "", "model 'list'"),
        ("batch", "y", "", "model 'batch'"),
        ("_", "y", "", "model '_'"),
        ("m", "y", "forward: ", "layer name 'forward'"),
        ("m", "y", "training: ", "layer name 'training'"),
        ("m", "y", "_modules: ", "layer name '_modules'"),
    ],
)
def test_clashing_names_are_refused_where_written(write_spec, model, output, layer, refused):
    spec = write_spec(TRAINED.format(model=model, output=output, layer=layer))
    with pytest.raises(DslcError) as info:
        check_file(spec)
    (diag,) = info.value.diagnostics
    assert refused in diag.message and diag.loc is not None


@pytest.mark.parametrize("model", ["f", "mODELS", "nn_", "a_"])
def test_models_named_like_generated_names_build(write_spec, tmp_path, model):
    spec = write_spec(TRAINED.format(model=model, output="y", layer=""))
    result = build(spec, tmp_path / "out")
    assert [r.verified for r in result.models] == [True]


@pytest.mark.parametrize(
    ("param", "refused"),
    [
        ("class", "is a Python keyword"),
        ("self", "a name the generated Python code uses"),
        ("torch", "a name the generated Python code uses"),
        ("F", "a name the generated Python code uses"),
        ("__init__", "two underscores"),
        ("Inner", "the name of a class or constant"),
        ("HEADS", "the name of a class or constant"),
    ],
)
def test_block_parameters_are_valid_argument_names(write_spec, param, refused):
    """A block's parameters are the arguments of its generated class's __init__."""
    spec = write_spec(f"""
        const heads = 2
        block Inner(n: int) {{
            input x: float32[batch, d]
            output y = x -> Linear(n)
        }}
        block B({param}: int = 2) {{
            input x: float32[batch, 4]
            output y = x -> Inner({param})
        }}
        model m {{
            input x: float32[batch, 4]
            output y = x -> B()
        }}
    """)
    with pytest.raises(DslcError) as info:
        check_file(spec)
    (diagnostic,) = info.value.diagnostics
    assert refused in diagnostic.message and diagnostic.loc.line == 6


def test_a_parameter_declared_twice_is_refused(write_spec):
    spec = write_spec("block B(n: int, n: int) {\n input x: float32[batch, 4]\n output y = x -> Linear(n)\n}\n")
    with pytest.raises(DslcError, match="parameter 'n' is declared twice"):
        check_file(spec)


def test_a_parameter_named_forward_builds(write_spec, tmp_path):
    """`forward` is a fine argument name; forward() reads it as `self.forward_`."""
    spec = write_spec("""
        block B(forward: float = 2.0) {
            input x: float32[batch, 4]
            output y = x * forward
        }
        model m {
            input x: float32[batch, 4]
            output y = x -> B()
        }
    """)
    result = build(spec, tmp_path / "out")
    assert "self.forward_ = forward" in result.python_path.read_text() and result.models[0].verified


def test_a_spec_in_a_folder_and_file_not_named_in_utf8_builds_and_runs(tmp_path):
    """Linux names are bytes: Python keeps the bytes that are not UTF-8 as surrogates, which neither ONNX's metadata
    (protobuf strings) nor onnxruntime's path argument can encode."""
    import os

    import numpy as np
    from dslc_runtime import Model

    folder = os.path.join(os.fsencode(tmp_path), b"d\xffir")
    os.mkdir(folder)
    spec = Path(os.fsdecode(os.path.join(folder, b"m\xfe.model")))
    spec.write_text("model m {\n    input x: float32[batch, 4]\n    output y = x -> Linear(2)\n}\n")
    out = spec.parent / "out"
    result = build(spec, out)
    assert result.models[0].verified
    model = Model.load(out, providers="cpu")
    assert model.metadata["dslc.spec"] == "m\ufffd.model"
    assert model(x=np.ones((3, 4), np.float32))["y"].shape == (3, 2)
