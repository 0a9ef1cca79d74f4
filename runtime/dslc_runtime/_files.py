"""Opening untrusted paths safely: regular files only, sane names, bounded reads.

A FIFO or a device where a file is expected would block ``open``/``read`` forever or stream
without end, and names taken from a model file (external data, manifest entries) may carry NUL
bytes, absurd lengths or ``..`` components. Every file the runtime reads goes through here.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path
from typing import BinaryIO

from .errors import DslcRuntimeError

# Common file-system limits (Linux NAME_MAX / PATH_MAX); longer names cannot name a real file.
MAX_NAME_BYTES = 255
MAX_PATH_BYTES = 4096

# O_NONBLOCK makes opening a FIFO return at once (it would wait for a writer); regular files
# ignore it. Flags missing on a platform are 0.
_OPEN_FLAGS = (
    os.O_RDONLY
    | getattr(os, "O_NONBLOCK", 0)
    | getattr(os, "O_BINARY", 0)
    | getattr(os, "O_CLOEXEC", 0)
)

ErrorType = type[DslcRuntimeError]


def file_kind(mode: int) -> str:
    """What a non-regular file is, for messages ("a directory", "a FIFO (named pipe)", ...)."""
    kinds = [
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ]
    return next((text for test, text in kinds if test(mode)), "not a regular file")


def check_name(text: str, what: str, error: ErrorType) -> None:
    """Refuse a file name or relative path that no file system can hold (NUL, too long, undecodable)."""
    if "\0" in text:
        raise error(f"{what} {text!r} contains a NUL byte")
    try:
        encoded = os.fsencode(text)
    except UnicodeError:
        raise error(f"{what} {text!r} is not a valid file name (unencodable characters)") from None
    parts = encoded.replace(b"\\", b"/").split(b"/")
    if len(encoded) > MAX_PATH_BYTES or any(len(p) > MAX_NAME_BYTES for p in parts):
        shown = text if len(text) <= 60 else f"{text[:60]}..."
        raise error(
            f"{what} {shown!r} is too long ({len(encoded)} bytes; at most {MAX_NAME_BYTES} per "
            f"component and {MAX_PATH_BYTES} in all)"
        )


def require_regular(path: Path, what: str, error: ErrorType) -> os.stat_result:
    """``os.stat`` of ``path``, refusing anything but a regular file (checked before opening)."""
    check_name(str(path), what, error)
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise error(f"{what} not found: {path}") from None
    except OSError as exc:
        raise error(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(info.st_mode):
        raise error(f"{what} {path} is {file_kind(info.st_mode)}, not a regular file")
    return info


def open_regular(path: Path, what: str, error: ErrorType) -> BinaryIO:
    """Open ``path`` for reading if it is a regular file; never blocks on FIFOs or devices.

    The mode is checked before opening (so devices are never opened) and again on the open
    descriptor (so a file swapped for a FIFO in between is still refused).
    """
    require_regular(path, what, error)
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except OSError as exc:
        raise error(f"cannot open {what} {path}: {exc.strerror or exc}") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise error(f"{what} {path} is {file_kind(mode)}, not a regular file")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_bounded(path: Path, limit: int, what: str, error: ErrorType) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes (larger files are refused unread)."""
    with open_regular(path, what, error) as fh:
        try:
            data = fh.read(limit + 1)
        except OSError as exc:
            raise error(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    if len(data) > limit:
        raise error(f"{what} {path} is larger than {limit // (1 << 20)} MiB; refusing to read it")
    return data


def sha256_of(path: Path, what: str, error: ErrorType) -> str:
    """Hex sha256 of a regular file, read in blocks."""
    digest = hashlib.sha256()
    with open_regular(path, what, error) as fh:
        try:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        except OSError as exc:
            raise error(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    return digest.hexdigest()


def resolve_inside(folder: Path, relative: str, what: str, where: str, error: ErrorType) -> Path:
    """``folder / relative`` resolved; refuses absolute paths, ``..`` and symlinks leaving ``folder``.

    ``where`` names the folder in messages ("the model's folder", "the build directory").
    """
    check_name(relative, what, error)
    parts = relative.replace("\\", "/").split("/")
    rule = "(absolute paths and '..' are not allowed)"
    if not relative:
        raise error(f"{what} is empty")
    if os.path.isabs(relative) or relative.startswith(("/", "\\")) or ":" in parts[0]:
        raise error(f"{what} {relative!r} is absolute, outside {where} {rule}")
    if ".." in parts:
        raise error(f"{what} {relative!r} points outside {where} {rule}")
    try:
        root = folder.resolve()
        target = (root / relative).resolve()
    except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop (Python < 3.13)
        raise error(f"{what} {relative!r} cannot be resolved in {folder}: {exc}") from None
    if not target.is_relative_to(root):
        raise error(f"{what} {relative!r} resolves to {target}, outside {where} {root}")
    return target
