"""The data sets a `train { data = ... }` setting may name: parameters and the fields they give.

Torch-free: the checker matches fields to model inputs by name, dtype and shape from here,
without loading anything. `sets.py` holds the loaders under the same names.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dslc.params import BindError, P
from dslc.shapes import Sym, TensorType

BATCH = Sym.named("batch")
VALIDATION = P(
    "validation", "float", 0.2, "fraction held out for validation (0 for none)", low=0.0, high=1.0, open_high=True
)
SAMPLES = P("samples", "int", 2000, "number of generated examples", low=2, high=1_000_000)


@dataclass(frozen=True)
class DatasetDef:
    name: str
    doc: str
    params: tuple[P, ...]
    fields: Callable[[dict[str, Any], Path], dict[str, TensorType]]
    files: tuple[str, ...] = ()  # parameters naming files (resolved against the spec's folder)


def _t(dtype: str, *dims) -> TensorType:
    return TensorType(dtype, (BATCH, *dims))


def _digits(a, base):
    s = a["image_size"]
    if a["flatten"]:
        return {"image": _t("float32", s * s), "label": _t("int64")}
    return {"image": _t("float32", 1, s, s), "label": _t("int64")}


def _sequences(a, base):
    return {"source": _t("int64", a["length"]), "target": _t("int64", a["length"])}


def _speech(a, base):
    frames = a["max_chars"] * 6
    return {
        "features": _t("float32", frames, a["features"]),
        "feature_lengths": _t("int64"),
        "transcript": _t("int64", a["max_chars"]),
        "transcript_lengths": _t("int64"),
    }


def _csv(a, base):
    fields = {"features": _t("float32", len(a["features"]))}
    if a["label"]:
        fields["label"] = _t("int64")
    if a["target"]:
        fields["target"] = _t("float32", 1)
    return fields


NUMPY_DTYPES = {
    "float32": "float32",
    "float64": "float32",
    "float16": "float32",
    "int64": "int64",
    "int32": "int64",
    "int16": "int64",
    "int8": "int64",
    "uint8": "int64",
    "bool": "bool",
}


def _npz(a, base):
    import numpy as np

    path = data_file(a["path"], base)
    try:
        with np.load(path, mmap_mode="r", allow_pickle=False) as arrays:
            return {name: _numpy_field(name, arrays[name]) for name in arrays.files}
    except (OSError, ValueError, EOFError) as exc:
        raise BindError(f"cannot read {path}: {exc}") from None


def _npy(a, base):
    import numpy as np

    fields = {}
    pairs = a["files"]
    if not isinstance(pairs, tuple) or not all(
        isinstance(x, tuple) and len(x) == 2 and all(isinstance(v, str) for v in x) for x in pairs
    ):
        raise BindError('npy: \'files\' must be a list of (field, path) pairs, e.g. [("image", "x.npy")]')
    for name, file in pairs:
        path = data_file(file, base)
        try:
            fields[name] = _numpy_field(name, np.load(path, mmap_mode="r", allow_pickle=False))
        except (OSError, ValueError, EOFError) as exc:
            raise BindError(f"cannot read {path}: {exc}") from None
    return fields


def _numpy_field(name: str, array) -> TensorType:
    dtype = NUMPY_DTYPES.get(str(array.dtype))
    if dtype is None or array.ndim == 0:
        raise BindError(f"array '{name}' has unsupported dtype {array.dtype} or no batch dimension")
    return _t(dtype, *array.shape[1:])


def resolve_path(path: str, base: Path) -> Path:
    p = Path(path)
    return p if p.is_absolute() else base / p


def data_file(path: str, base: Path) -> Path:
    """The data file `path` names; a missing file, a directory or a FIFO (reading it would block) is refused."""
    p = resolve_path(path, base)
    try:
        info = os.stat(p)
    except (OSError, ValueError):
        raise BindError(f"data file '{path}' not found (looked for {p})") from None
    if not stat.S_ISREG(info.st_mode):
        raise BindError(f"data file '{path}' is not a regular file ({p})")
    return p


DATASETS: dict[str, DatasetDef] = {}


def _register(d: DatasetDef) -> None:
    DATASETS[d.name] = d


_register(
    DatasetDef(
        "digits",
        "scikit-learn's 8x8 handwritten digits (1797 images), resized by bilinear interpolation; "
        "fields image float32[batch, 1, S, S] in [0, 1] (or [batch, S*S] with flatten=true) and label int64[batch]",
        (
            P("image_size", "int", 8, "side of the square image", low=1, high=1024),
            VALIDATION,
            P("flatten", "bool", False),
        ),
        _digits,
    )
)
_register(
    DatasetDef(
        "diabetes",
        "scikit-learn's diabetes regression set (442 patients); fields features float32[batch, 10] "
        "(standardised) and target float32[batch, 1] (standardised)",
        (VALIDATION,),
        lambda a, base: {"features": _t("float32", 10), "target": _t("float32", 1)},
    )
)
_register(
    DatasetDef(
        "sequences",
        "generated sequence-to-sequence task: source and target int64[batch, length]; tokens 2..vocab-1, "
        "0 is padding and 1 the start token (see shift_right)",
        (
            P("task", "str", "copy", choices=("copy", "reverse", "sort")),
            P("vocab", "int", 12, low=2, high=1_000_000),
            P("length", "int", 8, low=1, high=100_000),
            SAMPLES,
            P("validation", "float", 0.1, low=0.0, high=1.0, open_high=True),
        ),
        _sequences,
    )
)
_register(
    DatasetDef(
        "sequence_classes",
        "generated sequence classification: sequence float32[batch, length, features], "
        "label int64[batch] = which of the first `classes` features has the largest sum over time",
        (
            P(
                "features",
                "int",
                8,
                "values per time step (the last dimension: channels-last; for a Conv1d model write "
                "`series = transpose(sequence, 1, 2)`)",
            ),
            P("length", "int", 16, "time steps", low=1, high=100_000),
            P("classes", "int", 2, "number of classes", low=2),
            SAMPLES,
            VALIDATION,
        ),
        lambda a, base: {"sequence": _t("float32", a["length"], a["features"]), "label": _t("int64")},
    )
)
_register(
    DatasetDef(
        "text_classes",
        "generated token-sequence classification: tokens int64[batch, length] (ids 1..vocab-1), "
        "label int64[batch] = whether most tokens are in the lower half of the vocabulary",
        (
            P("vocab", "int", 1000, low=2, high=1_000_000),
            P("length", "int", 32, low=1, high=100_000),
            SAMPLES,
            VALIDATION,
        ),
        lambda a, base: {"tokens": _t("int64", a["length"]), "label": _t("int64")},
    )
)
_register(
    DatasetDef(
        "token_tags",
        "generated token classification: tokens int64[batch, length], tags int64[batch, length] "
        "= tag of each token (token id modulo `classes`, shifted by the previous token's parity)",
        (
            P("vocab", "int", 100, low=2, high=1_000_000),
            P("length", "int", 16, low=1, high=100_000),
            P("classes", "int", 4, low=2),
            SAMPLES,
            VALIDATION,
        ),
        lambda a, base: {"tokens": _t("int64", a["length"]), "tags": _t("int64", a["length"])},
    )
)
_register(
    DatasetDef(
        "speech",
        "synthetic speech-like sequences: features float32[batch, frames, features] (frames = 6*max_chars), "
        "feature_lengths, transcript int64[batch, max_chars] (characters 1..26, 0 = CTC blank/padding), transcript_lengths",
        (
            P("features", "int", 20),
            P("max_chars", "int", 8),
            SAMPLES,
            P("validation", "float", 0.1, low=0.0, high=1.0, open_high=True),
        ),
        _speech,
    )
)
_register(
    DatasetDef(
        "csv",
        "a CSV file with a header row: the named numeric columns become features float32[batch, n]; "
        "`label` names a class column (int64[batch], classes = sorted distinct values), `target` a regression column",
        (
            P("path", "str"),
            P("features", "strs"),
            P("label", "str", None),
            P("target", "str", None),
            VALIDATION,
            P("standardize", "bool", True),
        ),
        _csv,
        files=("path",),
    )
)
_register(
    DatasetDef(
        "npz",
        "a NumPy .npz file: every array is a field (first dimension = examples)",
        (P("path", "str"), VALIDATION),
        _npz,
        files=("path",),
    )
)
_register(
    DatasetDef(
        "npy",
        'NumPy .npy files, one per field: npy(files=[("image", "x.npy"), ("label", "y.npy")])',
        (P("files", "any"), VALIDATION),
        _npy,
        files=(),
    )
)
_register(
    DatasetDef(
        "text",
        "a text file, one example per line as LABEL<TAB>TEXT: tokens int64[batch, max_len] (word ids, 0 = <pad>, "
        "1 = <unk>) and label int64[batch]; the vocabulary (built from the training split) is stored with the model",
        (P("path", "str"), P("max_len", "int", 32), P("min_freq", "int", 1), P("lowercase", "bool", True), VALIDATION),
        lambda a, base: {"tokens": _t("int64", a["max_len"]), "label": _t("int64")},
        files=("path",),
    )
)
