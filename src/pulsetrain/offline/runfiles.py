"""Run directories as offline jobs see them: which sequence file holds which module, and block
reads of one module's frames from one file.

:func:`scan_run` opens a run with EXtra-data (so every EXDF version it reads works) and maps
detector module sources to their sequence files.  :class:`ModuleFileReader` then reads one
module's per-frame keys from one file, many trains per HDF5 read, following the file's
``INDEX/<source>/image/first,count`` (see ``docs/file-format.md``).  Tasks on Dask workers use
it, so a worker touches only the files of its task.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from pulsetrain.errors import ConfigurationError, FileFormatError
from pulsetrain.files.naming import FILE_NAME_PATTERN, XTDF_SOURCE_PATTERN, parse_file_name
from pulsetrain.files.reader import BLOCK_BYTES

__all__ = [
    "FILE_NAME_PATTERN",
    "FrameBlock",
    "ModuleFileReader",
    "RunLayout",
    "file_crc32",
    "file_sha256",
    "parse_file_name",
    "read_json",
    "scan_run",
    "write_json_atomic",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunLayout:
    """The files of a run, as an offline job splits it into tasks.

    Attributes
    ----------
    run_dir : Path
        The run directory (absolute).
    proposal, run_number : int
        From the files' METADATA.
    sample, run_type, format_version : str
        From the files' METADATA ('' where absent).
    train_ids : numpy.ndarray
        All train IDs of the run.
    start_time : datetime or None
        Timestamp of the first train that has one (UTC).
    module_sources : dict
        Source name → module number, for the detector module sources of the chosen kind.
    module_files : dict
        Source name → its sequence files, in sequence order.
    other_files : list of Path
        Files that hold no module source of the chosen kind (slow data, cameras, ...).
    """

    run_dir: Path
    proposal: int
    run_number: int
    sample: str
    run_type: str
    format_version: str
    train_ids: np.ndarray
    start_time: datetime | None
    module_sources: dict[str, int]
    module_files: dict[str, list[Path]]
    other_files: list[Path] = field(default_factory=list)
    #: Trains (non-zero train IDs) in each file, from EXtra-data's map of the run.
    file_trains: dict[Path, int] = field(default_factory=dict)

    @property
    def modules(self) -> list[int]:
        """Module numbers, sorted."""
        return sorted(self.module_sources.values())

    def source_of(self, module: int) -> str:
        """The source name of module ``module``."""
        for src, m in self.module_sources.items():
            if m == module:
                return src
        raise ConfigurationError(f"{self.run_dir}: no source for module {module}")


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value


def scan_run(
    run_dir: str | os.PathLike[str],
    *,
    kind: str = "DET",
    modules: Sequence[int] | None = None,
    module_of: Callable[[str], int | None] | None = None,
) -> RunLayout:
    """Map a run's detector module sources to their sequence files.

    Parameters
    ----------
    run_dir : path-like
        Run directory.
    kind : {"DET", "CORR"}
        Raw module sources (``…/DET/{m}CH0:xtdf``) or corrected ones (``…/CORR/{m}CH0:output``).
    modules : sequence of int, optional
        Only these modules (default: every module found).
    module_of : callable, optional
        ``module_of(source)``: the module number of a module source of the wanted kind, else
        ``None`` (a detector plug-in's ``raw_module_of``); replaces the XTDF naming rule.

    Raises
    ------
    FileFormatError
        The directory holds no run files, or no module source of that kind (or of those
        modules).
    """
    from pulsetrain.files import open_run_dir

    run_dir = Path(run_dir).expanduser().resolve()
    if not run_dir.is_dir():
        raise FileFormatError(f"{run_dir} is not a directory")
    with open_run_dir(run_dir) as run:
        found = _module_sources(run, run_dir, kind, modules, module_of)
        module_files = {
            src: sorted((Path(fa.filename) for fa in run[src].files), key=_sequence_key)
            for src in found
        }
        all_module_files = set()
        for src in run.instrument_sources:
            if _module_number(src, kind, module_of) is not None:
                all_module_files.update(Path(fa.filename) for fa in run[src].files)
        other_files = sorted(
            (Path(fa.filename) for fa in run.files if Path(fa.filename) not in all_module_files),
            key=lambda p: (p.name.split("-S")[0], _sequence_key(p)),
        )
        file_trains = {Path(fa.filename): int(fa.train_ids.size) for fa in run.files}
        try:
            md = {k: _plain(v) for k, v in run.run_metadata().items()}
        except Exception:  # noqa: BLE001 - old files: METADATA may be incomplete
            md = {}
        train_ids = np.asarray(run.train_ids, dtype=np.uint64)
        start = _start_time(run)
    proposal = int(md.get("proposalNumber") or 0)
    run_number = int(md.get("runNumber") or 0)
    if not run_number:
        first = next(iter(module_files.values()))[0]
        run_number = parse_file_name(first)[1]
    return RunLayout(
        run_dir=run_dir,
        proposal=proposal,
        run_number=run_number,
        sample=str(md.get("sample") or ""),
        run_type=str(md.get("runType") or ""),
        format_version=str(md.get("dataFormatVersion") or ""),
        train_ids=train_ids,
        start_time=start,
        module_sources=found,
        module_files=module_files,
        other_files=other_files,
        file_trains=file_trains,
    )


def _module_number(
    src: str, kind: str, module_of: Callable[[str], int | None] | None
) -> int | None:
    if module_of is not None:
        return module_of(src)
    m = XTDF_SOURCE_PATTERN.match(src)
    return int(m["module"]) if m and m["kind"] == kind else None


def _module_sources(
    run: Any,
    run_dir: Path,
    kind: str,
    modules: Sequence[int] | None,
    module_of: Callable[[str], int | None] | None = None,
) -> dict[str, int]:
    """``{source: module}`` of the run's module sources of this kind (and these modules)."""
    found: dict[str, int] = {}
    for src in sorted(run.instrument_sources):
        number = _module_number(src, kind, module_of)
        if number is not None:
            found[src] = number
    if not found:
        kinds = {mm["kind"] for s in run.instrument_sources if (mm := XTDF_SOURCE_PATTERN.match(s))}
        hint = ""
        if kind == "CORR" and "DET" in kinds:
            hint = " (it holds raw data: run `pulsetrain correct` on it first)"
        elif kind == "DET" and "CORR" in kinds:
            hint = " (it holds corrected data already)"
        what = "raw (…/DET/…:xtdf)" if kind == "DET" else "corrected (…/CORR/…:output)"
        raise FileFormatError(f"{run_dir}: no {what} detector module sources{hint}")
    if modules is None:
        return found
    wanted = {int(m) for m in modules}
    missing = sorted(wanted - set(found.values()))
    if missing:
        raise FileFormatError(
            f"{run_dir}: no data of module(s) {missing} (modules present: {sorted(found.values())})"
        )
    return {s: m for s, m in found.items() if m in wanted}


def _start_time(run: Any) -> datetime | None:
    """Timestamp of the run's first train with one (None in formats without timestamps)."""
    try:
        stamps = np.asarray(run.train_timestamps(), dtype="datetime64[ns]")
    except Exception:  # noqa: BLE001 - no timestamps in old formats
        return None
    good = stamps[~np.isnat(stamps)]
    if not good.size:
        return None
    return datetime.fromtimestamp(int(good[0].astype(np.int64)) / 1e9, tz=timezone.utc)


def _sequence_key(path: Path) -> int:
    try:
        return parse_file_name(path)[3]
    except FileFormatError:
        return 0


@dataclass
class FrameBlock:
    """The frames of consecutive trains of one module, read at once.

    Attributes
    ----------
    train_ids : ndarray of uint64, (trains,)
    timestamps : ndarray of uint64, (trains,)
        ``INDEX/timestamp`` in ns (0 where the file has none).
    counts : ndarray of int64, (trains,)
        Frames of each train.
    starts : ndarray of int64, (trains,)
        Row of each train's first frame in the arrays.
    arrays : dict
        Key (``image.data``, …) → array with all the block's frames along axis 0.
    """

    train_ids: np.ndarray
    timestamps: np.ndarray
    counts: np.ndarray
    starts: np.ndarray
    arrays: dict[str, np.ndarray]

    @property
    def frames(self) -> int:
        return int(self.counts.sum())

    def train(self, i: int) -> dict[str, np.ndarray]:
        """The arrays of the block's ``i``-th train (views)."""
        a, n = int(self.starts[i]), int(self.counts[i])
        return {k: v[a : a + n] for k, v in self.arrays.items()}


class ModuleFileReader:
    """Read one module source's per-frame keys from one sequence file, block by block.

    Parameters
    ----------
    path : path-like
        The sequence file.
    source : str
        Module source, e.g. ``SPB_DET_AGIPD1M-1/DET/3CH0:xtdf``.
    group : str
        Index group of the per-frame keys (``image``).
    chunk_cache_bytes : int
        HDF5 chunk cache per dataset.  Default 0: blocks are read straight into the caller's
        array, chunk by chunk, instead of through the cache (HDF5's default 1 MiB cache holds
        one 1 MiB frame chunk, so every chunk would be read into the cache and copied out).

    Notes
    -----
    Trains with train ID 0 (INDEX padding of old files) are skipped; trains are taken in
    train-ID order, the first of duplicated IDs wins (as in EXtra-data).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        source: str,
        group: str = "image",
        *,
        chunk_cache_bytes: int = 0,
    ) -> None:
        self.path = Path(path)
        self.source = source
        self.group = group
        try:
            self.file = h5py.File(self.path, "r", rdcc_nbytes=int(chunk_cache_bytes))
        except OSError as exc:
            raise FileFormatError(f"cannot open {self.path}: {exc}") from exc
        f = self.file
        index = f.get(f"INDEX/{source}/{group}")  # one look-up each (``in`` then ``[]`` is two)
        first_ds = index.get("first") if isinstance(index, h5py.Group) else None
        count_ds = index.get("count") if isinstance(index, h5py.Group) else None
        if first_ds is None or count_ds is None:
            self.close()
            raise FileFormatError(f"{self.path.name}: no INDEX of {source}/{group}")
        tids = f["INDEX/trainId"][:].astype(np.uint64)
        n = tids.size
        first = first_ds[:n].astype(np.int64)
        count = count_ds[:n].astype(np.int64)
        stamps_ds = f.get("INDEX/timestamp")
        stamps = (
            stamps_ds[:n].astype(np.uint64) if stamps_ds is not None else np.zeros(n, np.uint64)
        )
        order = np.argsort(tids, kind="stable")
        stids = tids[order]
        keep = stids != 0
        keep[1:] &= stids[1:] != stids[:-1]
        order = order[keep]
        self.train_ids = tids[order]
        self.first = first[order]
        self.count = count[order]
        self.timestamps = stamps[order]
        self._datasets: dict[str, h5py.Dataset] = {}
        self._buffers: dict[str, Any] = {}
        self._reuse: set[str] = set()

    def close(self) -> None:
        """Close the file."""
        try:
            self.file.close()
        except Exception:  # closing twice, or after a failed open
            log.debug("closing %s", self.path, exc_info=True)

    def __enter__(self) -> ModuleFileReader:  # noqa: PYI034
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def n_trains(self) -> int:
        return int(self.train_ids.size)

    @property
    def n_frames(self) -> int:
        return int(self.count.sum())

    def has_key(self, key: str) -> bool:
        """Whether the source has ``key`` (``image.cellId``) in this file."""
        try:
            self.dataset(key)
        except FileFormatError:
            return False
        return True

    def dataset(self, key: str) -> h5py.Dataset:
        """The HDF5 dataset of ``key``."""
        ds = self._datasets.get(key)
        if ds is None:
            ds = self.file.get(f"INSTRUMENT/{self.source}/{key.replace('.', '/')}")
            if not isinstance(ds, h5py.Dataset):
                raise FileFormatError(f"{self.path.name}: {self.source} has no key {key!r}")
            self._datasets[key] = ds
        return ds

    def frame_nbytes(self, keys: Sequence[str]) -> int:
        """Bytes of one frame over ``keys``."""
        total = 0
        for key in keys:
            ds = self.dataset(key)
            total += int(np.prod(ds.shape[1:], dtype=np.int64)) * ds.dtype.itemsize
        return total

    def select(self, train_range: tuple[int | None, int | None] | None) -> np.ndarray:
        """Positions of the trains with ``lo <= train ID < hi``."""
        pos = np.arange(self.n_trains)
        if train_range is None:
            return pos
        lo, hi = train_range
        mask = np.ones(self.n_trains, dtype=bool)
        if lo is not None:
            mask &= self.train_ids >= np.uint64(lo)
        if hi is not None:
            mask &= self.train_ids < np.uint64(hi)
        return pos[mask]

    def blocks(
        self,
        keys: Sequence[str],
        *,
        max_block_bytes: int = BLOCK_BYTES,
        train_range: tuple[int | None, int | None] | None = None,
        reuse: Sequence[str] = (),
        buffers: dict[str, Any] | None = None,
    ) -> Iterator[FrameBlock]:
        """Yield the selected trains in blocks of at most ``max_block_bytes`` (at least a train).

        Parameters
        ----------
        keys : sequence of str
            Per-frame keys to read (``image.data``, ``image.cellId``, ...).
        max_block_bytes : int
            Memory bound of one block (all keys).
        train_range : (lo, hi), optional
            Only trains with ``lo <= train ID < hi`` (either end may be None).
        reuse : sequence of str
            Keys read into one buffer that every block reuses (no new allocation and page
            faults per block): their arrays are only valid until the next block is read.
        buffers : dict, optional
            Where the reused buffers are kept (entries ``"read:<key>"``): pass the same dict to
            later readers so they reuse them too (one reader at a time per dict).
        """
        self._buffers = {} if buffers is None else buffers
        self._reuse = set(reuse)
        positions = self.select(train_range)
        if positions.size == 0:
            return
        per_frame = max(1, self.frame_nbytes(keys))
        datasets = {k: self.dataset(k) for k in keys}
        i = 0
        while i < positions.size:
            j = i
            frames = 0
            while j < positions.size:
                c = int(self.count[positions[j]])
                if j > i and (frames + c) * per_frame > max_block_bytes:
                    break
                frames += c
                j += 1
            sel = positions[i:j]
            yield self._read(sel, datasets)
            i = j

    def _read(self, sel: np.ndarray, datasets: dict[str, h5py.Dataset]) -> FrameBlock:
        first = self.first[sel]
        count = self.count[sel]
        starts = np.zeros(sel.size, dtype=np.int64)
        if sel.size > 1:
            starts[1:] = np.cumsum(count)[:-1]
        nonzero = count > 0
        if nonzero.any():
            r0 = int(first[nonzero].min())
            r1 = int((first + count)[nonzero].max())
        else:
            r0 = r1 = 0
        contiguous = bool(np.all(first[nonzero] - r0 == starts[nonzero])) and r1 - r0 == int(
            count.sum()
        )
        arrays = {}
        for key, ds in datasets.items():
            if r1 > r0:
                if r1 > ds.shape[0]:
                    raise FileFormatError(
                        f"{self.path.name}: INDEX of {self.source} points at rows up to {r1} "
                        f"but {key} has {ds.shape[0]}"
                    )
                if contiguous and key in self._reuse:
                    name = f"read:{key}"
                    buf = self._buffers.get(name)
                    if (
                        buf is None
                        or buf.shape[0] < r1 - r0
                        or buf.shape[1:] != ds.shape[1:]
                        or buf.dtype != ds.dtype
                    ):
                        buf = self._buffers[name] = np.empty((r1 - r0,) + ds.shape[1:], ds.dtype)
                    ds.read_direct(buf, np.s_[r0:r1], np.s_[0 : r1 - r0])
                    block = buf[: r1 - r0]
                else:
                    block = ds[r0:r1]
            else:
                block = np.empty((0,) + ds.shape[1:], dtype=ds.dtype)
            if not contiguous:
                block = np.concatenate(
                    [block[a - r0 : a - r0 + c] for a, c in zip(first.tolist(), count.tolist())]
                    or [block[:0]]
                )
            arrays[key] = block
        return FrameBlock(self.train_ids[sel], self.timestamps[sel], count, starts, arrays)


def file_crc32(path: str | os.PathLike[str], bufsize: int = 8 << 20) -> str:
    """CRC-32 of a file's bytes, as 8 hex digits (about 3 GB/s here, 2x SHA-256's speed)."""
    crc = 0
    with open(path, "rb", buffering=0) as f:
        buf = bytearray(bufsize)
        view = memoryview(buf)
        while True:
            n = f.readinto(buf)
            if not n:
                break
            crc = zlib.crc32(view[:n], crc)
    return f"{crc:08x}"


def file_sha256(path: str | os.PathLike[str], bufsize: int = 8 << 20) -> str:
    """SHA-256 of a file's bytes (hex)."""
    h = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        buf = bytearray(bufsize)
        view = memoryview(buf)
        while True:
            n = f.readinto(buf)
            if not n:
                break
            h.update(view[:n])
    return h.hexdigest()


def write_json_atomic(path: str | os.PathLike[str], value: Any) -> None:
    """Write JSON to ``path`` through a temporary file and a rename (never half-written)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(value, indent=1, sort_keys=True, default=_json_default))
    os.replace(tmp, path)


def read_json(path: str | os.PathLike[str]) -> Any | None:
    """The JSON in ``path``, or None if it is missing or unreadable."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (Path, datetime)):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
