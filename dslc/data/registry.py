"""The data sets a `train { data = ... }` setting may name: parameters and the fields they give.

Torch-free: the checker matches fields to model inputs by name, dtype and shape from here,
without loading anything. `sets.py` holds the loaders under the same names.
"""

from __future__ import annotations

import codecs
import contextlib
import csv as csv_module
import fnmatch
import functools
import io
import math
import os
import stat
import warnings
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from dslc.errors import did_you_mean
from dslc.params import BindError, P
from dslc.shapes import Sym, TensorType

BATCH = Sym.named("batch")
VALIDATION = P(
    "validation", "float", 0.2, "fraction held out for validation (0 for none)", low=0.0, high=1.0, open_high=True
)
RAW_PIXELS = P(
    "raw_pixels",
    "bool",
    False,
    "the exported ONNX takes pixel values 0-255, as an image file holds them, and scales them itself "
    "(training sees [0, 1])",
)
SAMPLES = P("samples", "int", 2000, "number of generated examples", low=2, high=1_000_000)


@dataclass(frozen=True)
class DatasetDef:
    name: str
    doc: str
    params: tuple[P, ...]
    fields: Callable[[dict[str, Any], Path], dict[str, TensorType]]
    files: tuple[str, ...] = ()  # parameters naming files (resolved against the spec's folder)
    # a source whose batches are played by the model being trained (episodes), not read from memory
    rollout: bool = False
    names: tuple[str, ...] = ()  # parameters written as a tensor name (`policy=logits`), kept as the name
    records: tuple[tuple[str, bool], ...] = ()  # (key, higher is better): what it adds to each epoch's record
    size: int | None = None  # the number of examples of a fixed data set (a generated one has `samples`)
    # field -> the class ids it holds, where check can know them without reading gigabytes (a prefix of a file
    # may give some of them): losses over these fields are checked against the model's number of classes
    class_ids: Callable[[dict[str, Any], Path], dict[str, Sequence[int]]] = lambda a, base: {}

    def examples(self, options: dict[str, Any]) -> int | None:
        """How many examples the options give, where that is known without reading files."""
        if self.size is not None:
            return self.size
        return options["samples"] if any(p is SAMPLES for p in self.params) else None


def check_split(name: str, examples: int, validation: float) -> None:
    """Both splits of a data set of `examples` examples hold some at this validation fraction (dslc.data.sets.load
    rounds the held-out count the same way); a BindError says which split would be empty."""
    if validation == 0.0:
        return
    held_out = int(round(examples * validation))
    if 0 < held_out < examples:
        return
    empty = "validation" if held_out == 0 else "training"
    if examples < 2:
        hint = "one example cannot be split: validation=0"
    else:
        low, high = 1 / examples, 1 - 1 / examples
        hint = f"hold out at least one example and keep one: validation between {low:.3g} and {high:.3g}"
        hint += ", or 0 for no validation" if held_out == 0 else ""
    raise BindError(
        f"{name}: validation={validation:g} of its {examples:,} examples leaves the {empty} split empty", hint
    )


def check_class_ids(where: str, field: str, values: Sequence[int], classes: int, ignore_index: int | None) -> None:
    """Sorted distinct class ids `values` lie in [0, classes) or equal `ignore_index`; else a BindError naming the
    lowest below 0 or the highest beyond. Both are among the first two and the last two values, so a range of a
    million ids costs four looks. `dslc check` and the training script (before its first step) both ask this."""
    ends = [value for value in (*values[:2], *values[-2:]) if value != ignore_index]
    if not ends:
        return
    low, high = min(ends), max(ends)
    bad = low if low < 0 else high if high >= classes else None
    if bad is not None:
        raise BindError(
            f"{where}: field '{field}' holds class id {bad}, outside [0, {classes}) for a model with {classes} outputs",
            "the model's last layer must have as many outputs as there are classes",
        )


def _t(dtype: str, *dims) -> TensorType:
    return TensorType(dtype, (BATCH, *dims))


def _digits(a, base):
    s = a["image_size"]
    if a["flatten"]:
        return {"image": _t("float32", s * s), "label": _t("int64")}
    return {"image": _t("float32", 1, s, s), "label": _t("int64")}


def _image_folder(a, base):
    images = image_files(data_folder(a["path"], base))
    for path, _ in images[:: max(1, len(images) // CHECK_IMAGES)][:CHECK_IMAGES]:  # a sample's headers
        with open_image(path):
            pass
    check_split("image_folder", len(images), a["validation"])
    s = a["size"]
    return {"image": _t("float32", 1 if a["grayscale"] else 3, s, s), "label": _t("int64")}


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
    p = data_file(a["path"], base)
    table = read_csv(p, limit=CHECK_BYTES)
    features = select_columns(p, table.header, a["features"])
    numeric = [*features, *([a["target"]] if a["target"] else [])]
    check_columns(p, table.header, [*numeric, *([a["label"]] if a["label"] else [])])
    for line, row in table.rows:
        for column in numeric:
            csv_number(p, line, row, column)
    if table.complete:
        check_split("csv", len(table.rows), a["validation"])
    fields = {"features": _t("float32", len(features))}
    if a["label"]:
        fields["label"] = _t("int64")
    if a["target"]:
        fields["target"] = _t("float32", 1)
    return fields


def _text_lm(a, base):
    path = data_file(a["path"], base)
    size = path.stat().st_size
    if size < a["length"] + 1:
        raise BindError(
            f"text_lm: {a['path']} holds {size} bytes, fewer than one example of length {a['length']} (+1)",
            "use a longer text or a smaller length",
        )
    check_split("text_lm", len(range(0, size - a["length"], a["stride"] or a["length"])), a["validation"])
    return {"input_ids": _t("int64", a["length"]), "labels": _t("int64", a["length"])}


def _text(a, base):
    text_examples(data_file(a["path"], base), limit=CHECK_BYTES)
    return {"tokens": _t("int64", a["max_len"]), "label": _t("int64")}


def _text_class_ids(a, base) -> dict[str, range]:
    return {"label": range(len({label for label, _ in text_examples(data_file(a["path"], base), CHECK_BYTES)}))}


def _csv_class_ids(a, base) -> dict[str, range]:
    """A label column's classes are its distinct values (ids 0..n-1), here those of the file's start."""
    if not a["label"]:
        return {}
    table = read_csv(data_file(a["path"], base), limit=CHECK_BYTES)
    return {"label": range(len({row[a["label"]] for _, row in table.rows}))}


def _episodes(a, base):
    observation, _ = env_spaces(a["env"])
    return {"observation": _t("float32", *observation), "action": _t("int64"), "returns": _t("float32")}


@functools.cache
def env_spaces(env: str) -> tuple[tuple[int, ...], int]:
    """(the observation's shape, the number of actions) of a gymnasium environment with a Box observation and a
    Discrete action space; anything else is a BindError."""
    from dslc.extras import require

    gym = require("gymnasium", "the episodes data set")
    try:
        made = gym.make(env)
    except Exception as exc:  # gymnasium raises its own errors (NameNotFound, VersionNotFound, ...) and others
        raise BindError(
            f"episodes: gymnasium cannot make the environment '{env}' ({_shown(str(exc), 160)})",
            did_you_mean(env, list(gym.registry)) or 'e.g. env="CartPole-v1"',
        ) from None
    try:
        observation, action = made.observation_space, made.action_space
    finally:
        made.close()
    if not isinstance(observation, gym.spaces.Box) or not observation.shape:
        raise BindError(f"episodes: {env} observes {observation}, expected a Box of numbers")
    if not isinstance(action, gym.spaces.Discrete):
        raise BindError(f"episodes: {env} acts in {action}; the policy samples discrete actions (a Discrete space)")
    return tuple(int(d) for d in observation.shape), int(action.n)


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
    path = data_file(a["path"], base)
    arrays = {}
    with _read_errors(path), zipfile.ZipFile(path) as archive:
        for member in archive.infolist():
            name = member.filename.removesuffix(".npy")
            if name == member.filename:
                raise BindError(f"{path}: member '{_shown(name)}' is not a .npy array")
            with archive.open(member) as stream:
                arrays[name] = _array_field(stream, member.file_size, f"{path}: array '{_shown(name)}'")
    return _array_fields("npz", arrays, a["validation"])


def _npy(a, base):
    arrays = {}
    pairs = a["files"]
    if not isinstance(pairs, tuple) or not all(
        isinstance(x, tuple) and len(x) == 2 and all(isinstance(v, str) for v in x) for x in pairs
    ):
        raise BindError('npy: \'files\' must be a list of (field, path) pairs, e.g. [("image", "x.npy")]')
    for name, file in pairs:
        path = data_file(file, base)
        with _read_errors(path), open(path, "rb") as stream:
            arrays[name] = _array_field(stream, os.fstat(stream.fileno()).st_size, str(path))
    return _array_fields("npy", arrays, a["validation"])


CHECK_CLASS_BYTES = 64 << 20  # dslc check reads integer arrays up to this size to see the class ids they hold


def _npy_class_ids(a, base) -> dict[str, list[int]]:
    ids = {}
    for name, file in a["files"]:
        path = data_file(file, base)
        with _read_errors(path), open(path, "rb") as stream:
            values = _small_int_values(stream)
        if values is not None:
            ids[name] = values
    return ids


def _npz_class_ids(a, base) -> dict[str, list[int]]:
    ids, path = {}, data_file(a["path"], base)
    with _read_errors(path), zipfile.ZipFile(path) as archive:
        for member in archive.infolist():
            with archive.open(member) as stream:
                values = _small_int_values(stream)
            if values is not None:
                ids[member.filename.removesuffix(".npy")] = values
    return ids


def _small_int_values(stream: BinaryIO) -> list[int] | None:
    """The distinct values of the integer .npy array `stream` holds (checked by `_array_field` already), or None when
    it holds no integers or more than CHECK_CLASS_BYTES of them."""
    import numpy as np

    shape, dtype = _npy_header(stream, "a .npy array")
    size = math.prod(shape) * dtype.itemsize
    if dtype.kind not in "iu" or size > CHECK_CLASS_BYTES:
        return None
    return np.unique(np.frombuffer(stream.read(size), dtype=dtype)).tolist()  # the layout does not change the set


@contextlib.contextmanager
def _read_errors(path: Path):
    try:
        yield
    # RuntimeError, NotImplementedError: an encrypted .npz member, a compression method Python lacks
    except (OSError, ValueError, EOFError, RuntimeError, NotImplementedError, zipfile.BadZipFile) as exc:
        raise BindError(f"cannot read {path}: {exc}") from None


def _array_fields(source: str, arrays: dict[str, tuple[TensorType, int]], validation: float) -> dict[str, TensorType]:
    """The fields of arrays read by `_array_field`: one row per example in each, so their row counts agree."""
    if not arrays:
        raise BindError(f"{source}: no arrays, so no fields")
    rows = {name: n for name, (_, n) in arrays.items()}
    if len(set(rows.values())) > 1:
        sizes = ", ".join(f"'{_shown(name)}' {n:,}" for name, n in rows.items())
        raise BindError(f"{source}: the arrays hold different numbers of examples ({sizes})", "one row per example")
    check_split(source, next(iter(rows.values())), validation)
    return {name: field for name, (field, _) in arrays.items()}


def _npy_header(stream: BinaryIO, where: str) -> tuple[tuple[int, ...], Any]:
    """(shape, dtype) from a .npy stream's header, which leaves the stream at the data."""
    from numpy.lib import format as npy

    version = npy.read_magic(stream)
    if version not in ((1, 0), (2, 0)):
        raise BindError(f"{where}: .npy format version {version[0]}.{version[1]} is not supported (1.0 or 2.0)")
    read_header = npy.read_array_header_1_0 if version == (1, 0) else npy.read_array_header_2_0
    shape, _, dtype = read_header(stream)
    return shape, dtype


def _array_field(stream: BinaryIO, size: int, where: str) -> tuple[TensorType, int]:
    """The field a .npy array gives and its number of rows (examples), from its header alone (the data may be
    gigabytes, or compressed in an .npz)."""
    shape, dtype = _npy_header(stream, where)
    if dtype.hasobject:
        raise BindError(f"{where}: holds Python objects (pickled); only numeric arrays are read")
    needed = stream.tell() + math.prod(shape) * dtype.itemsize
    if needed > size:
        raise BindError(f"{where}: truncated, the header promises {needed:,} bytes and the file holds {size:,}")
    if str(dtype) not in NUMPY_DTYPES or not shape:
        raise BindError(f"{where}: unsupported dtype {dtype} or no batch dimension (one array row per example)")
    return _t(NUMPY_DTYPES[str(dtype)], *shape[1:]), shape[0]


# ---------------------------------------------------------------- reading user files (dslc check and the loaders)

CHECK_BYTES = 1 << 20  # dslc check reads this much of a text data file: its header and first rows


@dataclass
class CsvTable:
    header: list[str]
    rows: list[tuple[int, dict[str, str]]]  # (the line a row starts on, its values by column)
    complete: bool = True  # False when read up to a limit: the file holds more rows


def read_csv(p: Path, limit: int | None = None) -> CsvTable:
    """The header and the data rows of a CSV file, each row with the line it starts on (1-based, the header is line 1
    when it comes first); a row with more or fewer fields than the header is an error at that line. Blank lines are
    skipped. With `limit`, only the rows that end in the first `limit` bytes."""
    text, complete = read_text(p, limit)
    reader = csv_module.reader(io.StringIO(text, newline=""))
    records: list[tuple[int, list[str]]] = []
    end = 0  # the line the previous record ended on
    try:
        for record in reader:
            line, end = end + 1, reader.line_num
            if record:
                records.append((line, record))
    except csv_module.Error as exc:
        raise BindError(f"{p}:{reader.line_num}: not valid CSV ({exc})") from None
    if not complete and records:
        records.pop()  # cut at `limit` bytes: the last record may be cut short
    if not records:
        if complete:
            raise BindError(f"{p}: empty file, expected a header row naming the columns")
        raise BindError(f"{p}: no header row in the first {limit:,} bytes", "is this a CSV file?")
    (header_line, header), *data = records
    table = CsvTable(_csv_header(p, header_line, header), [], complete)
    for line, record in data:
        if len(record) != len(header):
            raise BindError(
                f"{p}:{line}: {len(record)} field{'s' if len(record) != 1 else ''}, expected {len(header)} "
                f"as in the header ({_some_columns(header)})",
                "every row needs one value per column; quote values that contain commas",
            )
        table.rows.append((line, dict(zip(header, record))))
    if complete and not table.rows:
        raise BindError(f"{p}: no data rows")
    return table


def _csv_header(p: Path, line: int, names: list[str]) -> list[str]:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise BindError(
                f"{p}:{line}: the header names column '{_shown(name)}' twice", "give every column its own name"
            )
        seen.add(name)
    return names


def check_columns(p: Path, header: list[str], columns: list[str]) -> None:
    """Every column the spec names is in the header; else the nearest names (a header of numbers is no header)."""
    for column in columns:
        if column in header:
            continue
        if all(_is_number(name) for name in header):
            hint = "its first row holds numbers: the file needs a header row naming the columns"
        else:
            hint = did_you_mean(column, [_shown(name) for name in header]) or f"columns: {_some_columns(header)}"
        raise BindError(f"{p}: no column '{column}'", hint)


def select_columns(p: Path, header: list[str], selection: tuple[str, ...]) -> list[str]:
    """The feature columns a selection names, in its order: a column's name, `FIRST:LAST` (the header's columns from
    FIRST through LAST), or a glob (`t*`, `x[0-9]`: the matching columns in header order). A name the header holds
    means that column even when it contains `:` or `*`."""
    chosen: list[str] = []
    for item in selection:
        if item in header:
            found = [item]
        elif ":" in item:
            first, _, last = item.partition(":")
            check_columns(p, header, [first, last])
            i, j = header.index(first), header.index(last)
            if i > j:
                raise BindError(
                    f"{p}: column range '{_shown(item)}' is empty: '{_shown(first)}' comes after '{_shown(last)}'",
                    f"write '{_shown(last)}:{_shown(first)}'",
                )
            found = header[i : j + 1]
        elif any(ch in item for ch in "*?["):
            found = [name for name in header if fnmatch.fnmatchcase(name, item)]
            if not found:
                raise BindError(f"{p}: no column matches '{_shown(item)}'", f"columns: {_some_columns(header)}")
        else:
            found = [item]  # check_columns reports it with the nearest names
        for name in found:
            if name in chosen:
                raise BindError(f"{p}: features select column '{_shown(name)}' twice", "name every column once")
            chosen.append(name)
    if not chosen:
        raise BindError(f"{p}: 'features' selects no column", 'e.g. features="x0:x9" or features=["a", "b"]')
    return chosen


def _some_columns(names: list[str], n: int = 8) -> str:
    return ", ".join(map(_shown, names[:n])) + (f", ... {len(names) - n} more" if len(names) > n else "")


def _shown(text: str, n: int = 40) -> str:
    """A name or value from a data file as a message shows it: control characters escaped, at most `n` characters."""
    text = text if text.isprintable() else repr(text)[1:-1]
    return text if len(text) <= n else text[: n - 3] + "..."


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def csv_number(p: Path, line: int, row: dict[str, str], column: str) -> float:
    text = row[column]
    try:
        value = float(text)
    except ValueError:
        what = "is empty" if not text.strip() else f"holds '{_shown(text)}'"
        raise BindError(f"{p}:{line}: column '{column}' {what}, expected a number") from None
    if not math.isfinite(value):
        raise BindError(f"{p}:{line}: column '{column}' holds '{_shown(text)}', expected a finite number")
    return value


def text_examples(p: Path, limit: int | None = None) -> list[tuple[str, str]]:
    """A text data set's (label, text) lines, blank lines skipped; with `limit`, the lines in the first `limit`
    bytes."""
    text, complete = read_text(p, limit)
    lines = text.split("\n")
    if not complete:
        lines.pop()  # cut at `limit` bytes: the last line may be cut short
    examples = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        label, sep, body = line.removesuffix("\r").partition("\t")
        if not sep:
            raise BindError(f"{p}:{number}: expected LABEL<TAB>TEXT", "separate the label from the text by a tab")
        examples.append((label.strip(), body))
    if complete and not examples:
        raise BindError(f"{p}: no examples", "one example per line: LABEL<TAB>TEXT")
    return examples


def read_text(p: Path, limit: int | None = None) -> tuple[str, bool]:
    """A data file's text (UTF-8, with or without a byte order mark), and whether it is all of it: with `limit`, only
    the first `limit` bytes are read. Anything but UTF-8 is an error at its line."""
    try:
        with open(p, "rb") as file:
            raw = file.read() if limit is None else file.read(limit + 1)
    except OSError as exc:
        raise BindError(f"{p}: cannot read ({exc.strerror or exc})") from None
    complete = limit is None or len(raw) <= limit
    body = raw.removeprefix(codecs.BOM_UTF8) if complete else raw[:limit].removeprefix(codecs.BOM_UTF8)
    try:  # not final when cut: a character split at the cut is left out, not an error
        return codecs.getincrementaldecoder("utf-8")().decode(body, final=complete), complete
    except UnicodeDecodeError as exc:
        line = body.count(b"\n", 0, exc.start) + 1
        column = exc.start - body.rfind(b"\n", 0, exc.start)
        raise BindError(
            f"{p}:{line}: not UTF-8 text (byte 0x{body[exc.start]:02x} at column {column})",
            "save the file as UTF-8 (e.g. a Latin-1 'é' is the single byte 0xe9)",
        ) from None


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


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
CHECK_IMAGES = 64  # dslc check opens this many images of a folder (their headers): the loader reads them all


def data_folder(path: str, base: Path) -> Path:
    """The data folder `path` names; a missing one, or a file, is refused."""
    p = resolve_path(path, base)
    try:
        info = os.stat(p)
    except (OSError, ValueError):
        raise BindError(f"data folder '{path}' not found (looked for {p})") from None
    if not stat.S_ISDIR(info.st_mode):
        raise BindError(f"data folder '{path}' is not a folder ({p})", "image_folder reads one folder per class")
    return p


def image_files(root: Path) -> list[tuple[Path, int]]:
    """(image, class id) for every PNG/JPEG file directly inside a class folder of `root` (the classes are the
    sorted folder names; hidden entries and other files are skipped). A link may not lead out of `root`, and an
    entry that is not a regular file (a FIFO would block the read) is refused."""
    real = root.resolve()
    classes = sorted(e.name for e in _entries(root, real) if not e.name.startswith(".") and e.is_dir())
    if not classes:
        raise BindError(
            f"{root}: no class folders", "image_folder expects one folder per class holding PNG/JPEG images"
        )
    found: list[tuple[Path, int]] = []
    for index, name in enumerate(classes):
        folder = root / name
        files = sorted(
            e.name
            for e in _entries(folder, real)
            if not e.name.startswith(".") and e.name.lower().endswith(IMAGE_SUFFIXES)
        )
        for file in files:
            if not (folder / file).is_file():
                raise BindError(f"{folder / file}: not a regular file", "the class folders must hold image files")
        if not files:
            raise BindError(f"{folder}: class folder '{_shown(name)}' holds no PNG or JPEG image")
        found += [(folder / file, index) for file in files]
    return found


def image_classes(root: Path) -> list[str]:
    return sorted({path.parent.name for path, _ in image_files(root)})


def _entries(folder: Path, root: Path) -> list[os.DirEntry]:
    try:
        with os.scandir(folder) as it:
            entries = list(it)
    except OSError as exc:
        raise BindError(f"{folder}: cannot list the folder ({exc.strerror or exc})") from None
    for e in entries:
        if e.is_symlink() and not Path(e.path).resolve().is_relative_to(root):
            raise BindError(f"{e.path}: a link out of the data folder {root}", "copy the files into the folder")
    return entries


@contextlib.contextmanager
def open_image(path: Path):
    """A Pillow image (opened lazily: its header is read); anything unreadable, or a decompression bomb, is a
    BindError naming the file."""
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(path) as image:
                if image.format not in ("PNG", "JPEG"):
                    raise BindError(f"{path}: a {image.format} image, expected PNG or JPEG")
                yield image
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise BindError(f"{path}: cannot read the image ({_shown(str(exc), 120)})") from None


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
            RAW_PIXELS,
        ),
        _digits,
        size=1797,
        class_ids=lambda a, base: {"label": range(10)},
    )
)
_register(
    DatasetDef(
        "diabetes",
        "scikit-learn's diabetes regression set (442 patients); fields features float32[batch, 10] "
        "(standardised) and target float32[batch, 1] (standardised)",
        (VALIDATION,),
        lambda a, base: {"features": _t("float32", 10), "target": _t("float32", 1)},
        size=442,
    )
)
_register(
    DatasetDef(
        "sequences",
        "generated sequence-to-sequence task: source and target int64[batch, length]; tokens 2..vocab-1, "
        "0 is padding and 1 the start token (see shift_right)",
        (
            P("task", "str", "copy", choices=("copy", "reverse", "sort")),
            P("vocab", "int", 12, low=3, high=1_000_000),  # 0 and 1 are reserved: at least one token is left
            P("length", "int", 8, low=1, high=100_000),
            SAMPLES,
            P("validation", "float", 0.1, low=0.0, high=1.0, open_high=True),
        ),
        _sequences,
        class_ids=lambda a, base: {"source": range(a["vocab"]), "target": range(a["vocab"])},
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
        class_ids=lambda a, base: {"label": range(a["classes"])},
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
        class_ids=lambda a, base: {"label": range(2)},
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
        class_ids=lambda a, base: {"tags": range(a["classes"])},
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
            P(
                "features",
                "strs",
                doc='feature columns: names, ranges "t0:t23" (header order, both ends included) or globs "x*"',
            ),
            P("label", "str", None),
            P("target", "str", None),
            VALIDATION,
            P(
                "standardize",
                "bool",
                True,
                "standardise the features with the training split's mean and std, stored with the model: the "
                "exported ONNX takes raw rows",
            ),
        ),
        _csv,
        files=("path",),
        class_ids=_csv_class_ids,
    )
)
_register(
    DatasetDef(
        "image_folder",
        "a folder of PNG/JPEG images, one subfolder per class (`cats/`, `dogs/`): image float32[batch, C, size, size] "
        "in [0, 1] (resized, bilinear; C = 1 with grayscale=true, else 3) and label int64[batch]; the class names "
        "(sorted folder names) are stored with the model",
        (
            P("path", "str", doc="the folder, relative to the spec's folder"),
            P("size", "int", 32, "side of the square image the files are resized to", low=1, high=4096),
            P("grayscale", "bool", False, "one channel (L) instead of RGB"),
            VALIDATION,
            RAW_PIXELS,
            P(
                "standardize",
                "bool",
                False,
                "standardise each channel with the training split's mean and std, stored with the model",
            ),
        ),
        _image_folder,
        class_ids=lambda a, base: {"label": range(len(image_classes(data_folder(a["path"], base))))},
    )
)
_register(
    DatasetDef(
        "npz",
        "a NumPy .npz file: every array is a field (first dimension = examples)",
        (P("path", "str"), VALIDATION),
        _npz,
        files=("path",),
        class_ids=_npz_class_ids,
    )
)
_register(
    DatasetDef(
        "npy",
        'NumPy .npy files, one per field: npy(files=[("image", "x.npy"), ("label", "y.npy")])',
        (P("files", "any"), VALIDATION),
        _npy,
        files=(),
        class_ids=_npy_class_ids,
    )
)
_register(
    DatasetDef(
        "text_lm",
        "a UTF-8 text file for language modelling, as byte ids (0-255): input_ids int64[batch, length] are "
        "consecutive bytes and labels the bytes one further on (next-token targets); examples start every `stride` "
        "bytes (default: length); the vocabulary (the 256 byte values) is stored with the model",
        (
            P("path", "str", doc="the text file, relative to the spec's folder"),
            P("length", "int", 128, "bytes per example", low=1),
            P("stride", "int", None, "bytes between example starts (default: length)", low=1),
            VALIDATION,
        ),
        _text_lm,
        files=("path",),
        class_ids=lambda a, base: {"input_ids": range(256), "labels": range(256)},
    )
)
_register(
    DatasetDef(
        "text",
        "a text file, one example per line as LABEL<TAB>TEXT: tokens int64[batch, max_len] (word ids, 0 = <pad>, "
        "1 = <unk>) and label int64[batch]; the vocabulary (built from the training split) is stored with the model",
        (P("path", "str"), P("max_len", "int", 32), P("min_freq", "int", 1), P("lowercase", "bool", True), VALIDATION),
        _text,
        files=("path",),
        class_ids=_text_class_ids,
    )
)
_register(
    DatasetDef(
        "episodes",
        "episodes of a gymnasium environment played by the policy being trained (reinforcement learning, "
        "REINFORCE): each batch is one update's episodes, actions sampled from the softmax of the model output "
        "`policy`; fields observation float32[batch, ...] (the environment's observation), action int64[batch] "
        "(the action taken) and returns float32[batch] (the discounted return from that step on); `batch` is the "
        "number of steps played. Each epoch records `episode_return`, the mean return of its episodes",
        (
            P("env", "str", doc='a gymnasium environment id with discrete actions, e.g. "CartPole-v1"'),
            P("policy", "str", "logits", "the model output holding one score per action (a tensor name)"),
            P("episodes_per_update", "int", 10, "episodes played for each optimizer step", low=1, high=100_000),
            P("updates_per_epoch", "int", 10, "optimizer steps per epoch", low=1, high=1_000_000),
            P("gamma", "float", 0.99, "discount factor of the returns", low=0.0, high=1.0),
            P("max_steps", "int", None, "steps at most per episode (default: the environment's own limit)", low=1),
            P("normalize", "bool", True, "standardise the returns over each batch (a baseline and a scale)"),
        ),
        _episodes,
        rollout=True,
        names=("policy",),
        records=(("episode_return", True),),
    )
)
