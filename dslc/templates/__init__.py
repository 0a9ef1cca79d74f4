"""`dslc init`: new specs from templates (each one checks, builds and trains as written)."""

from __future__ import annotations

import tempfile
from importlib import resources
from pathlib import Path

from dslc.errors import DslcError, error
from dslc.fileio import write_atomic
from dslc.pytext import module_name

TEMPLATES = ("cnn", "mlp", "rnn", "transformer", "gan")


def template_text(template: str, model_name: str) -> str:
    if template not in TEMPLATES:
        raise error(None, f"unknown template '{template}'", f"choose one of {', '.join(TEMPLATES)}")
    text = resources.files(__package__).joinpath(f"{template}.model").read_text(encoding="utf-8")
    return text.replace("__NAME__", model_name)


def model_name_for(path: Path, template: str = "cnn") -> str:
    """A valid model name from the file name (`my-net` -> `my_net`, `2d` -> `model_2d`) that the template
    accepts: a name the template's train section already uses (`image`, `loss`) gets a `_model` suffix."""
    name = module_name(path.stem)
    return name if _template_checks(template, name) else f"{name}_model"


def _template_checks(template: str, model_name: str) -> bool:
    from dslc.checker import check_file

    with tempfile.TemporaryDirectory() as folder:
        spec = Path(folder) / "template.model"
        spec.write_text(template_text(template, model_name), encoding="utf-8")
        try:
            check_file(spec)
        except DslcError:
            return False
    return True


def write_template(name: str, template: str = "cnn") -> Path:
    """Write NAME.model (NAME may include folders); refuses to overwrite an existing file or link."""
    path = Path(name if name.endswith(".model") else f"{name}.model")
    if path.exists() or path.is_symlink():
        raise error(None, f"{path} already exists; not overwriting it", "choose another name or remove the file")
    text = template_text(template, model_name_for(path, template))
    write_atomic(path, text)
    return path
