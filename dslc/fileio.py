"""Files that survive crashes and full disks.

- `write_atomic`: a reader never sees a half-written file and a crash never leaves one (temp file in
  the same folder, fsync, rename, fsync of the folder). New files get the mode any program would
  create them with (0o666 minus the umask); a replaced file keeps its mode.
- `remove_debris`: what an interrupted write leaves behind (the writer's temp files, dslc's staging
  folders), matched by the exact name patterns dslc uses, so other files are left alone.
- `lock_folder`: one process at a time writes a folder (an flock the kernel drops when the holder
  dies, kill -9 included).
- `spec_sha256`: the one spec hash used everywhere.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import secrets
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path

from dslc.errors import DslcError, error

# the atomic writer's temp files: .<name>.<8 random characters>.tmp (tempfile.mkstemp's pattern, which it used before)
TEMP_FILE = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")
# what older trainers wrote the exported weights through: .<model>.safetensors.tmp
OLD_WEIGHTS_TEMP = re.compile(r"^\..+\.safetensors\.tmp$")
# staging folders of `dslc build` and of the export at the end of training (tempfile.mkdtemp names)
STAGING_DIR = re.compile(r"^\.dslc-(build|export)-[a-z0-9_]{8}$")
LOCK_FILE = ".dslc-lock"
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def spec_sha256(text: str) -> str:
    """The hash of a spec (manifest, ONNX metadata, checkpoints, the export check): sha256 of its text as read
    (UTF-8, universal newlines), so a CRLF copy of a spec hashes like the LF original."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def name_text(path: str | Path) -> str:
    """A file's name as text that encodes anywhere: bytes that are not UTF-8 (which Python keeps as lone
    surrogates) become U+FFFD, as a terminal shows them."""
    name = Path(path).name
    return os.fsencode(name).decode("utf-8", errors="replace")


# ---------------------------------------------------------------- atomic writes


def write_atomic(path: str | Path, data: bytes | str, follow_symlinks: bool = False) -> None:
    """Write `data` (str: UTF-8) to `path` so that it holds either its old content or all of the new, never a part.

    A symlink at `path` is replaced by the new file, so a link planted in an output or run folder
    cannot redirect the write; `follow_symlinks` writes the file it points to instead (for a user's
    own files, as editors do: `dslc fmt`). Errors are DslcErrors that name the file (a full disk says so)."""
    path = Path(path)
    if follow_symlinks and path.is_symlink():
        path = path.resolve()
    payload = data.encode("utf-8") if isinstance(data, str) else data
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp, fd = _create_temp(path)
        try:
            try:
                _keep_mode(fd, path)
                _write_all(fd, payload)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        fsync_folder(path.parent)
    except OSError as exc:
        raise write_error(path, exc) from None


def make_folder(folder: Path) -> None:
    """mkdir -p, with errors as messages naming the folder."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise write_error(folder, exc) from None


def _create_temp(path: Path) -> tuple[Path, int]:
    """A new temp file next to `path`, created with mode 0o666 so that the umask applies as for any new file."""
    for _ in range(100):
        tmp = path.with_name(f".{path.name[:200]}.{secrets.token_hex(4)}.tmp")
        try:
            return tmp, os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temp file name", str(path.parent))


def _keep_mode(fd: int, path: Path) -> None:
    """Replacing a file keeps its permissions, as editors do (a replaced symlink's target is not consulted)."""
    if path.is_symlink():
        return
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode) & 0o777
    except FileNotFoundError:
        return
    os.fchmod(fd, mode)


def _write_all(fd: int, payload: bytes) -> None:
    view = memoryview(payload)
    while view:
        view = view[os.write(fd, view) :]


def fsync_folder(folder: Path) -> None:
    """Make a rename in `folder` durable (the file's content was fsynced before)."""
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):  # file systems that cannot sync a folder
            raise
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    """Flush a file written by other code (e.g. a library that writes by name) to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_error(path: Path, exc: OSError) -> DslcError:
    """A clear message for a failed write of `path`."""
    if exc.errno in DISK_FULL:
        return disk_full_error(path.parent, exc)
    if exc.errno == errno.EFBIG:
        return error(
            None,
            f"cannot write {path}: the file would exceed the file size limit (ulimit -f)",
            "raise the limit, or write to another folder",
        )
    return error(None, f"cannot write {path}: {exc.strerror or exc}")


def disk_full_error(folder: Path, exc: OSError) -> DslcError:
    quota = " (disk quota exceeded)" if exc.errno == errno.EDQUOT else ""
    return error(
        None,
        f"cannot write into {folder}: the disk is full{quota}",
        "free some space or choose a folder on another disk, then run again; the files written before are intact",
    )


@contextlib.contextmanager
def disk_full_errors(folder: Path) -> Iterator[None]:
    """Code that writes files itself (not through write_atomic): a full disk becomes a clear error naming `folder`."""
    try:
        yield
    except OSError as exc:
        if exc.errno in DISK_FULL:
            raise disk_full_error(folder, exc) from None
        if exc.errno == errno.EFBIG:
            raise write_error(Path(exc.filename or folder), exc) from None
        raise


# ---------------------------------------------------------------- debris of interrupted writes


def is_debris(entry: Path) -> bool:
    """A temp file or staging folder that only an interrupted dslc write leaves behind."""
    if entry.is_symlink():
        return False
    if entry.is_dir():
        return bool(STAGING_DIR.match(entry.name))
    return entry.is_file() and bool(TEMP_FILE.match(entry.name) or OLD_WEIGHTS_TEMP.match(entry.name))


def remove_debris(folder: Path) -> list[Path]:
    """Remove the debris directly inside `folder` (call it only while holding the folder's lock: a running write's
    temp file looks the same). Returns what was removed."""
    if not folder.is_dir():
        return []
    removed = []
    for entry in sorted(folder.iterdir()):
        if not is_debris(entry):
            continue
        if entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed


# ---------------------------------------------------------------- folder locks


class FolderBusyError(Exception):
    """Another process holds the folder's lock."""

    def __init__(self, folder: Path, pid: int | None):
        super().__init__(f"{folder} is locked by pid {pid}")
        self.folder, self.pid = folder, pid


_held: dict[Path, int] = {}  # folder (resolved) -> the open lock file, for the locks this process holds


def lock_folder(folder: Path) -> bool:
    """Take `folder`'s lock (a non-blocking flock on FOLDER/.dslc-lock, which then holds this process's pid) until
    `unlock_folder` or the end of the process. False when this process holds it already; FolderBusyError when another
    does."""
    import fcntl  # POSIX only: imported here so that the rest of this module works everywhere

    key = folder.resolve()
    if key in _held:
        return False
    path = folder / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as exc:
        raise write_error(path, exc) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
    except BlockingIOError:
        os.close(fd)
        raise FolderBusyError(folder, lock_holder(folder)) from None
    except OSError as exc:
        os.close(fd)
        raise write_error(path, exc) from None
    except BaseException:
        os.close(fd)
        raise
    _held[key] = fd
    return True


def unlock_folder(folder: Path, remove_if_empty: bool = False) -> None:
    """Release `folder`'s lock; with `remove_if_empty`, first remove the folder when it holds nothing but the lock file
    (while still holding the lock, so no other process can have taken it on the file that goes away)."""
    fd = _held.pop(folder.resolve(), None)
    if fd is None:
        return
    try:
        if remove_if_empty and [p.name for p in folder.iterdir()] == [LOCK_FILE]:
            (folder / LOCK_FILE).unlink()
            with contextlib.suppress(OSError):  # another process created its lock file meanwhile: it keeps the folder
                folder.rmdir()
    finally:
        os.close(fd)  # closing the last descriptor releases the flock


def lock_holder(folder: Path) -> int | None:
    """The pid written in the folder's lock file (by its holder, right after taking the lock)."""
    try:
        return int((folder / LOCK_FILE).read_text().strip())
    except (OSError, ValueError):
        return None


@contextlib.contextmanager
def folder_locked(folder: Path) -> Iterator[None]:
    """Hold `folder`'s lock for the block (re-entrant within a process), creating the folder when needed; a folder
    created here is removed again when the block leaves nothing in it."""
    created = not folder.exists()
    make_folder(folder)
    took = lock_folder(folder)
    try:
        yield
    finally:
        if took:
            unlock_folder(folder, remove_if_empty=created)
