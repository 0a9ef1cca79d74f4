"""Reading untrusted ``.npy`` files without unpickling, blocking or over-allocating.

``np.load`` trusts the header: a few bytes claiming ``1e11 x 784`` floats make it try to allocate
hundreds of TiB, and a FIFO makes it wait forever. Here the header is read with numpy's own
format functions and checked against the file size before any array is allocated.
"""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from ._files import open_regular
from .errors import InputError

_HEADER_READERS = {
    (1, 0): np.lib.format.read_array_header_1_0,
    (2, 0): np.lib.format.read_array_header_2_0,
}


def _size(n: int) -> str:
    value, unit = float(n), "bytes"
    for bigger in ("KiB", "MiB", "GiB", "TiB", "PiB"):
        if value < 1024:
            break
        value, unit = value / 1024, bigger
    return f"{n} bytes" if unit == "bytes" else f"{value:.1f} {unit}"


def _header(fh: BinaryIO, where: str) -> tuple[tuple[int, ...], bool, np.dtype[Any]]:
    """Shape and dtype from the header, refusing what cannot be a plain array of data."""
    # numpy's parser of untrusted text raises ValueError, SyntaxError, tokenize.TokenError, ...:
    # whatever it raises, the file is not a usable .npy file.
    try:
        version = np.lib.format.read_magic(fh)
    except Exception as exc:
        raise InputError(f"{where}: not a valid .npy file ({exc})") from None
    reader = _HEADER_READERS.get(version)
    if reader is None:
        raise InputError(
            f"{where}: .npy format version {version[0]}.{version[1]} is not supported (1.0 and 2.0 are)"
        )
    try:
        with warnings.catch_warnings():  # a forged header's "\?" must not print a SyntaxWarning
            warnings.simplefilter("ignore", SyntaxWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            shape, fortran_order, dtype = reader(fh)
    except Exception as exc:
        raise InputError(f"{where}: not a valid .npy file ({type(exc).__name__}: {exc})") from None
    if dtype.hasobject:
        raise InputError(
            f"{where}: the array holds Python objects (pickled data); refusing to unpickle it"
        )
    if any(d < 0 for d in shape):
        raise InputError(f"{where}: the header declares a negative dimension {shape}")
    if dtype.itemsize == 0:  # `|V0` or `|S0`: no data to check the declared shape against
        raise InputError(f"{where}: the array's dtype {dtype} has elements of size 0")
    return shape, fortran_order, dtype


def _read_data(
    fh: BinaryIO, shape: tuple[int, ...], fortran_order: bool, dtype: np.dtype[Any], where: str
) -> np.ndarray:
    """The array data following the header, read straight into a fresh array."""
    array = np.empty(math.prod(shape), dtype)
    if array.nbytes:
        read = fh.readinto(array.view(np.uint8))
        if read != array.nbytes:
            raise InputError(f"{where}: the file ended after {read} of {array.nbytes} data bytes")
    # Fortran order stores the transposed array, as np.lib.format.read_array reads it.
    return array.reshape(shape[::-1]).transpose() if fortran_order else array.reshape(shape)


def load_npy(path: str | os.PathLike[str], what: str = "input") -> np.ndarray:
    """Load one array from a ``.npy`` file; raise :class:`InputError` naming ``what`` and the file."""
    where = f"cannot read {what} from {path}"
    with open_regular(Path(path), f"{what} file", InputError) as fh:
        shape, fortran_order, dtype = _header(fh, where)
        declared = math.prod(shape) * dtype.itemsize
        available = os.fstat(fh.fileno()).st_size - fh.tell()
        if declared > available:
            raise InputError(
                f"{where}: the header declares {dtype}{list(shape)} ({_size(declared)}) but the "
                f"file holds only {_size(available)} of data (truncated or forged header)"
            )
        try:
            return _read_data(fh, shape, fortran_order, dtype, where)
        except MemoryError:
            raise InputError(
                f"{where}: not enough memory for {dtype}{list(shape)} ({_size(declared)})"
            ) from None
        except OSError as exc:
            raise InputError(
                f"{where}: cannot read the array data ({exc.strerror or exc})"
            ) from None
