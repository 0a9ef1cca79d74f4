"""Saving outputs as ``DIR/<name>.npy`` when the names come from an untrusted model file.

An output named ``../escaped`` or ``/tmp/abs`` must not write outside ``DIR``, so names are
reduced to a safe alphabet, bounded in length and disambiguated deterministically (graph order),
and every file is written through a temporary file in ``DIR`` and renamed into place, which
replaces a planted symlink instead of writing through it.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from .errors import OutputError
from .signature import quoted

MAX_STEM = 100
"""Longest file stem kept from an output name (file systems allow 255 bytes per name)."""

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")
_LEADING_DOTS = re.compile(r"^\.+")
# Device names Windows reserves in every folder ("nul.npy" is the null device there).
_RESERVED = {
    "CON",
    "PRN",
    "AUX",
    "NUL",
    *(f"COM{i}" for i in range(10)),
    *(f"LPT{i}" for i in range(10)),
}


def safe_stem(name: str) -> str:
    """A file stem made of ``[A-Za-z0-9_.-]`` only, never hidden, ``.``/``..`` or a device name."""
    stem = _UNSAFE.sub("_", name)[:MAX_STEM]
    stem = _LEADING_DOTS.sub(lambda m: "_" * len(m.group()), stem)
    if not stem:
        return "output"
    return f"_{stem}" if stem.split(".")[0].upper() in _RESERVED else stem


def output_file_names(names: Sequence[str]) -> dict[str, str]:
    """Map output names to distinct ``<stem>.npy`` file names, in order: later duplicates get ``-2``, ...

    Collisions are compared case-insensitively so that the files stay distinct on macOS and
    Windows file systems too.
    """
    files: dict[str, str] = {}
    taken: set[str] = set()
    for name in names:
        stem = candidate = safe_stem(name)
        number = 1
        while candidate.casefold() in taken:
            number += 1
            candidate = f"{stem}-{number}"
        taken.add(candidate.casefold())
        files[name] = f"{candidate}.npy"
    return files


def _storable(name: str, array: np.ndarray) -> np.ndarray:
    """The array as ``np.save`` can write it without pickling (string outputs become unicode)."""
    if array.dtype.kind != "O":
        return array
    if all(isinstance(v, str) for v in array.flat):
        return array.astype(str)
    raise OutputError(
        f"output {quoted(name)} holds Python objects; it cannot be saved as .npy without pickling"
    )


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _write(folder: Path, file_name: str, array: np.ndarray) -> Path:
    root = folder.resolve()
    target = Path(os.path.normpath(root / file_name))
    if target.parent != root:  # cannot happen with safe_stem's names; the last line of defence
        raise OutputError(f"refusing to write {file_name!r}: it would land outside {root}")
    fd, temp = tempfile.mkstemp(dir=root, prefix=".", suffix=".npy.tmp")
    try:
        os.fchmod(
            fd, 0o666 & ~_umask()
        )  # mkstemp makes 0600; a saved output gets a new file's usual mode
        with os.fdopen(fd, "wb") as fh:
            np.save(fh, array, allow_pickle=False)
        os.replace(temp, target)  # replaces a symlink at ``target``, never follows it
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return target


def save_outputs(folder: Path, arrays: Mapping[str, np.ndarray]) -> dict[str, Path]:
    """Write every output into ``folder`` (created if needed); return ``{output name: file}``."""
    files = output_file_names(list(arrays))
    storable = {name: _storable(name, array) for name, array in arrays.items()}
    try:
        folder.mkdir(parents=True, exist_ok=True)
        return {name: _write(folder, files[name], array) for name, array in storable.items()}
    except OSError as exc:
        raise OutputError(f"cannot save outputs in {folder}: {exc.strerror or exc}") from None
