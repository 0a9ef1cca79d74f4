"""`dslc init`: new specs from templates (each one checks, builds and trains as written)."""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

from dslc.errors import error
from dslc.fileio import write_atomic

TEMPLATES = ("cnn", "mlp", "rnn", "transformer", "gan")


def template_text(template: str, model_name: str) -> str:
    if template not in TEMPLATES:
        raise error(None, f"unknown template '{template}'", f"choose one of {', '.join(TEMPLATES)}")
    text = resources.files(__package__).joinpath(f"{template}.model").read_text(encoding="utf-8")
    return text.replace("__NAME__", model_name)


def model_name_for(path: Path) -> str:
    """A valid model name from the file name: `my-net` -> `my_net`, `2d` -> `model_2d`."""
    name = re.sub(r"\W", "_", path.stem, flags=re.ASCII).strip("_") or "model"
    return f"model_{name}" if name[0].isdigit() else name


def write_template(name: str, template: str = "cnn") -> Path:
    """Write NAME.model (NAME may include folders); refuses to overwrite an existing file."""
    path = Path(name if name.endswith(".model") else f"{name}.model")
    if path.exists():
        raise error(None, f"{path} already exists; not overwriting it", "choose another name or remove the file")
    text = template_text(template, model_name_for(path))
    write_atomic(path, text)
    return path
