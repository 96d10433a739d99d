"""Where the arrays of constants live: HDF5 files in a store directory, or bytes in the database.

Both ways record the array's shape, dtype and a SHA-256 checksum of its bytes in C order, so a
constant read back is verified the same way whichever storage it uses.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from pulsetrain.errors import CatalogError

log = logging.getLogger(__name__)

__all__ = [
    "array_checksum",
    "array_from_npy",
    "array_to_npy",
    "check_storable",
    "read_hdf5_array",
    "write_hdf5_array",
]

_UNSAFE = re.compile(r"[^A-Za-z0-9_.+-]+")


def check_storable(array: Any) -> np.ndarray:
    """Return ``array`` as a C-contiguous numpy array, refusing what cannot be stored."""
    arr = np.asarray(array)
    if not arr.flags.c_contiguous:
        arr = arr.copy(order="C")
    if arr.dtype.hasobject or arr.dtype.kind not in "biufc":
        raise CatalogError(
            f"cannot store an array of dtype {arr.dtype}: constants must be numeric or boolean"
        )
    return arr


def array_checksum(array: np.ndarray) -> str:
    """SHA-256 (hex) of the array's bytes in C order."""
    arr = np.ascontiguousarray(array)
    digest = hashlib.sha256()
    if arr.nbytes:
        digest.update(memoryview(arr.reshape(-1)).cast("B"))
    return digest.hexdigest()


def shape_to_text(shape: tuple[int, ...]) -> str:
    """Encode a shape for the ``shape`` column."""
    return json.dumps([int(n) for n in shape])


def shape_from_text(text: str) -> tuple[int, ...]:
    """Decode the ``shape`` column."""
    return tuple(int(n) for n in json.loads(text))


def array_to_npy(array: np.ndarray) -> bytes:
    """Serialise an array in the ``.npy`` format (no pickles)."""
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def array_from_npy(data: bytes) -> np.ndarray:
    """Read an array serialised by :func:`array_to_npy`."""
    try:
        return np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise CatalogError(f"array bytes stored in the database are not valid .npy: {exc}") from exc


def safe_name(text: str) -> str:
    """Make ``text`` usable as one path component."""
    return _UNSAFE.sub("_", text).strip("._") or "_"


def constant_file_path(
    store_dir: Path, detector: str, module_index: int, ctype: str, stamp: str
) -> Path:
    """A new, unique file path for a constant inside the store directory."""
    folder = store_dir / safe_name(detector) / f"M{module_index:02d}" / safe_name(ctype)
    name = f"{safe_name(ctype)}-M{module_index:02d}-{stamp}-{uuid.uuid4().hex[:12]}.h5"
    return folder / name


def write_hdf5_array(
    path: Path, dataset: str, array: np.ndarray, attrs: Mapping[str, Any] | None = None
) -> None:
    """Write ``array`` to a new HDF5 file atomically (temporary file, then rename).

    ``attrs`` are attached to the dataset so the file describes itself without the database.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with h5py.File(tmp, "w") as f:
            ds = f.create_dataset(dataset, data=array)
            for key, value in (attrs or {}).items():
                if value is not None:
                    ds.attrs[key] = value
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def read_hdf5_array(path: Path, dataset: str) -> np.ndarray:
    """Read a whole dataset from an HDF5 file, with errors naming the file and dataset."""
    if not path.is_file():
        raise CatalogError(f"constant file {path} does not exist")
    try:
        with h5py.File(path, "r") as f:
            if dataset not in f:
                raise CatalogError(f"constant file {path} has no dataset {dataset!r}")
            return np.asarray(f[dataset][()])
    except OSError as exc:
        raise CatalogError(f"cannot read constant file {path}: {exc}") from exc
