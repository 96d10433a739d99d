"""One sequence file of a run: the HDF5 layout of METADATA, INDEX, CONTROL, RUN and INSTRUMENT.

:class:`SequenceFile` is the low-level half of :class:`~pulsetrain.files.RunWriter`: it appends
already-validated rows and keeps the INDEX in memory.  It is written under a temporary name
(``<name>.h5.part``) and renamed to its final name only once it is complete and closed, so a run
directory only ever shows complete files.  :meth:`SequenceFile.flush` makes the file on disk
consistent (INDEX, METADATA and all rows so far); after a crash, a ``.part`` file holds the
trains of its last flush (see :mod:`pulsetrain.files.recovery`).
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
import zlib
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import h5py
import numpy as np
from h5py import h5s

from pulsetrain.files.guarded_io import GuardedFile
from pulsetrain.files.naming import PART_SUFFIX

__all__ = ["ColumnSpec", "Layout", "SequenceFile", "SourceSchema"]

log = logging.getLogger(__name__)

_VLEN_BYTES = h5py.special_dtype(vlen=bytes)
_VLEN_STR = h5py.string_dtype("utf-8")
#: Per-frame datasets of small entries hold up to this many frames per train of chunk.
FRAMES_PER_CHUNK_TRAIN = 64
#: Compressed chunks waiting to be written, per dataset (bounds the memory used).
_MAX_PENDING_CHUNKS = 4
#: Entries up to this size are collected in memory and written a whole chunk at a time.
_SMALL_ENTRY_BYTES = 16 * 1024


class ColumnSpec(NamedTuple):
    """Type of one dataset: dtype (``object`` for strings) and the shape of one row."""

    dtype: np.dtype
    entry_shape: tuple[int, ...]
    is_string: bool = False

    @property
    def entry_nbytes(self) -> int:
        return int(self.dtype.itemsize * math.prod(self.entry_shape))


@dataclass
class SourceSchema:
    """What one source looks like in every file of a run.

    ``groups`` maps an index group (``""`` for a control source) to its datasets, each a path
    relative to the source group (``image/data``, ``position/value``) with its
    :class:`ColumnSpec`.  ``frame_groups`` names the groups with one row per frame.
    ``run_values`` (control sources) maps the RUN dataset paths to their single row.
    """

    source: str
    control: bool
    groups: dict[str, dict[str, ColumnSpec]]
    frame_groups: frozenset[str] = frozenset()
    run_values: dict[str, np.ndarray] | None = None
    attributes: dict[str, dict[str, Any]] | None = None
    #: Bytes of one chunk of every dataset: the most a write can allocate beyond its rows.
    chunk_bytes: int = 0


@dataclass(frozen=True)
class Layout:
    """Storage choices shared by all files of a run."""

    chunk_trains: int = 32
    chunk_bytes: int = 1 << 20
    compression: str | None = None
    compression_level: int | None = None
    index_chunk: int = 256
    fsync: bool = False

    def chunk_rows(self, spec: ColumnSpec, per_frame: bool) -> int:
        """Rows per chunk: at most ``chunk_bytes``, and at most ``chunk_trains`` rows of
        per-train data or ``chunk_trains * FRAMES_PER_CHUNK_TRAIN`` rows of per-frame data."""
        limit = self.chunk_trains * (FRAMES_PER_CHUNK_TRAIN if per_frame else 1)
        if spec.is_string:
            return max(1, self.chunk_trains)
        by_bytes = self.chunk_bytes // max(1, spec.entry_nbytes)
        return max(1, min(limit, by_bytes))

    def filters(self) -> dict[str, Any]:
        if self.compression is None:
            return {}
        opts: dict[str, Any] = {"compression": self.compression}
        if self.compression == "gzip":
            opts["compression_opts"] = (
                1 if self.compression_level is None else self.compression_level
            )
        return opts


class _Column:
    """One dataset growing along its first axis; small rows are collected into whole chunks."""

    __slots__ = (
        "buf_start",
        "buffer",
        "capacity",
        "chunk_rows",
        "ds",
        "dsid",
        "entry_zeros",
        "rows",
        "spec",
        "synced",
    )

    def __init__(
        self, parent: h5py.Group, name: str, spec: ColumnSpec, chunk_rows: int, filters: dict
    ) -> None:
        dtype = _VLEN_STR if spec.is_string else spec.dtype
        self.ds = parent.create_dataset(
            name,
            shape=(0,) + spec.entry_shape,
            maxshape=(None,) + spec.entry_shape,
            chunks=(chunk_rows,) + spec.entry_shape,
            dtype=dtype,
            **filters,
        )
        self.dsid = self.ds.id
        self.spec = spec
        self.chunk_rows = chunk_rows
        self.capacity = 0
        self.rows = 0
        self.synced = 0
        self.entry_zeros = (0,) * len(spec.entry_shape)
        buffered = spec.is_string or spec.entry_nbytes <= _SMALL_ENTRY_BYTES
        self.buffer = (
            np.empty((chunk_rows,) + spec.entry_shape, dtype=spec.dtype) if buffered else None
        )
        self.buf_start = 0

    def _reserve(self, needed: int) -> None:
        if needed > self.capacity:
            grow = max(needed, self.capacity + self.capacity // 2, self.chunk_rows)
            new = -(-grow // self.chunk_rows) * self.chunk_rows
            self.dsid.set_extent((new,) + self.spec.entry_shape)
            self.capacity = new

    def _write(self, start: int, arr: np.ndarray) -> None:
        if self.spec.is_string:
            self.ds[start : start + len(arr)] = arr
            return
        fspace = self.dsid.get_space()
        fspace.select_hyperslab((start,) + self.entry_zeros, arr.shape)
        self.dsid.write(h5s.create_simple(arr.shape), fspace, arr)

    def append(self, arr: np.ndarray) -> None:
        """Append rows (``arr.shape == (n,) + entry_shape``, dtype already right)."""
        n = len(arr)
        if n == 0:
            return
        self._reserve(self.rows + n)
        buf = self.buffer
        if buf is None:
            self._write(self.rows, arr)
            self.rows += n
            self.synced = self.rows
            return
        done = 0
        size = len(buf)
        while done < n:
            at = self.rows - self.buf_start
            k = min(size - at, n - done)
            buf[at : at + k] = arr[done : done + k]
            self.rows += k
            done += k
            if self.rows - self.buf_start == size:
                self.sync()
                self.buf_start = self.rows

    def sync(self) -> None:
        """Write rows still held in memory."""
        if self.buffer is not None and self.synced < self.rows:
            lo = self.synced - self.buf_start
            hi = self.rows - self.buf_start
            self._write(self.synced, self.buffer[lo:hi])
            self.synced = self.rows

    def finish(self) -> None:
        """Write pending rows and trim the dataset to the rows written."""
        self.sync()
        if self.capacity != self.rows:
            self.dsid.set_extent((self.rows,) + self.spec.entry_shape)
            self.capacity = self.rows


def _put_rows(dsid: h5py.h5d.DatasetID, start: int, arr: np.ndarray) -> None:
    """Write rows of a 1-D numeric dataset with the low-level API (no selection parsing)."""
    fspace = dsid.get_space()
    fspace.select_hyperslab((start,), arr.shape)
    dsid.write(h5s.create_simple(arr.shape), fspace, arr)


_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


def _compression_pool() -> ThreadPoolExecutor:
    """Threads compressing chunks (zlib releases the GIL), shared by all writers."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(
                max_workers=max(1, os.cpu_count() or 1), thread_name_prefix="pt-deflate"
            )
        return _POOL


class _DeflateColumn(_Column):
    """A gzip-compressed numeric dataset whose chunks are compressed by our own threads (in
    parallel, zlib releases the GIL) and written with ``write_direct_chunk``.

    The bytes are what HDF5's deflate filter writes (a zlib stream of the whole chunk), so any
    HDF5 reader decompresses them.  Rows are collected into a chunk-sized buffer; a partial
    chunk is written at :meth:`sync` (zero-padded) and rewritten once complete.
    """

    __slots__ = ("level", "pending")

    def __init__(
        self,
        parent: h5py.Group,
        name: str,
        spec: ColumnSpec,
        chunk_rows: int,
        filters: dict,
        level: int,
    ) -> None:
        super().__init__(parent, name, spec, chunk_rows, filters)
        self.buffer = np.zeros((chunk_rows,) + spec.entry_shape, dtype=spec.dtype)
        self.level = level
        self.pending: deque[tuple[int, Future]] = deque()

    def append(self, arr: np.ndarray) -> None:
        n = len(arr)
        if n == 0:
            return
        self._reserve(self.rows + n)
        buf = self.buffer
        size = len(buf)
        done = 0
        while done < n:
            at = self.rows - self.buf_start
            k = min(size - at, n - done)
            buf[at : at + k] = arr[done : done + k]
            self.rows += k
            done += k
            if self.rows - self.buf_start == size:
                job = _compression_pool().submit(zlib.compress, buf.tobytes(), self.level)
                self.pending.append((self.buf_start, job))
                self.buf_start = self.rows
                while len(self.pending) > _MAX_PENDING_CHUNKS:
                    self._write_oldest()

    def _write_oldest(self) -> None:
        start, job = self.pending.popleft()
        self.dsid.write_direct_chunk((start,) + self.entry_zeros, job.result())
        if not self.pending:
            self.synced = self.buf_start

    def sync(self) -> None:
        while self.pending:
            self._write_oldest()
        if self.synced < self.rows:
            buf = self.buffer
            buf[self.rows - self.buf_start :] = 0
            data = zlib.compress(buf.tobytes(), self.level)
            self.dsid.write_direct_chunk((self.buf_start,) + self.entry_zeros, data)
            self.synced = self.rows


class _IndexGroup:
    """``INDEX/<source>[/<group>]/first|count`` for one index group, plus its data columns."""

    __slots__ = ("columns", "count", "count_ds", "extent", "first", "first_ds", "rows", "synced")

    def __init__(self, index_group: h5py.Group, ntrains: int, chunk: int) -> None:
        self.first = [0] * ntrains
        self.count = [0] * ntrains
        self.rows = 0
        self.synced = 0
        self.extent = 0
        kw = {"shape": (0,), "maxshape": (None,), "chunks": (chunk,), "dtype": np.uint64}
        self.first_ds = index_group.create_dataset("first", **kw)
        self.count_ds = index_group.create_dataset("count", **kw)
        self.columns: dict[str, _Column] = {}

    def flush(self, ntrains: int) -> None:
        if self.synced == ntrains and self.extent == ntrains:
            return
        if self.extent != ntrains:
            self.first_ds.id.set_extent((ntrains,))
            self.count_ds.id.set_extent((ntrains,))
            self.extent = ntrains
        lo = self.synced
        if lo < ntrains:
            _put_rows(self.first_ds.id, lo, np.asarray(self.first[lo:ntrains], dtype=np.uint64))
            _put_rows(self.count_ds.id, lo, np.asarray(self.count[lo:ntrains], dtype=np.uint64))
        self.synced = ntrains


class _SourceInFile:
    __slots__ = ("groups", "schema")

    def __init__(self, schema: SourceSchema) -> None:
        self.schema = schema
        self.groups: dict[str, _IndexGroup] = {}


class SequenceFile:
    """One ``<CAT>-R<run>-<AGG>-S<seq>.h5`` file being written.

    Parameters
    ----------
    path : Path
        Final path of the file; it is written as ``path + '.part'`` until :meth:`close`.
    sequence : int
        Sequence number (``METADATA/sequenceNumber``).
    metadata : dict
        Static METADATA entries (name -> str or int), written as 1-element datasets.
    layout : Layout
        Chunking, compression and sync choices.
    """

    def __init__(
        self, path: Path, *, sequence: int, metadata: dict[str, Any], layout: Layout
    ) -> None:
        self.path = Path(path)
        self.part_path = self.path.with_name(self.path.name + PART_SUFFIX)
        self.sequence = sequence
        self.layout = layout
        self.train_ids: list[int] = []
        self.timestamps: list[int] = []
        self.payload_bytes = 0
        self.closed = False
        self._synced = 0
        self._sources: dict[str, _SourceInFile] = {}
        self._sources_written = 0
        self._trains_since_flush = 0
        self._last_flush = time.monotonic()
        self._current_sources: set[str] = set()
        self.io = GuardedFile(self.part_path)
        try:
            self.h5 = h5py.File(self.io, "w")
            self._create_skeleton(metadata)
        except BaseException:
            self.io.close()
            raise

    # --- structure ------------------------------------------------------------------------------
    def _create_skeleton(self, metadata: dict[str, Any]) -> None:
        h5 = self.h5
        for name in ("METADATA", "INDEX", "CONTROL", "RUN", "INSTRUMENT"):
            h5.create_group(name)
        md = h5["METADATA"]
        for name, value in metadata.items():
            _write_metadata_value(md, name, value)
        _write_metadata_value(md, "sequenceNumber", np.uint32(self.sequence))
        stamp = _utc_stamp()
        _write_metadata_value(md, "creationDate", stamp)
        _write_metadata_value(md, "updateDate", stamp)
        self._update_ds = md["updateDate"]
        self._update_stamp = stamp
        ds_group = md.create_group("dataSources")
        for name in ("dataSourceId", "root", "deviceId"):
            ds_group.create_dataset(
                name, shape=(0,), maxshape=(None,), chunks=(64,), dtype=_VLEN_BYTES
            )
        index = h5["INDEX"]
        chunk = self.layout.index_chunk
        self._index_ids = tuple(
            index.create_dataset(
                name, shape=(0,), maxshape=(None,), chunks=(chunk,), dtype=dtype
            ).id
            for name, dtype in (
                ("trainId", np.uint64),
                ("timestamp", np.uint64),
                ("flag", np.int32),
                ("origin", np.int32),
            )
        )

    def _add_source(self, schema: SourceSchema) -> _SourceInFile:
        h5 = self.h5
        layout = self.layout
        src = _SourceInFile(schema)
        section = "CONTROL" if schema.control else "INSTRUMENT"
        base = h5[section].create_group(schema.source)
        ntrains = len(self.train_ids)
        filters = {} if schema.control else layout.filters()
        attributes = schema.attributes or {}
        for group_name, columns in schema.groups.items():
            index_path = (
                f"INDEX/{schema.source}"
                if schema.control
                else f"INDEX/{schema.source}/{group_name}"
            )
            group = _IndexGroup(h5.require_group(index_path), ntrains, layout.index_chunk)
            per_frame = group_name in schema.frame_groups
            for path, spec in columns.items():
                rows = layout.chunk_rows(spec, per_frame)
                if filters.get("compression") == "gzip" and not spec.is_string:
                    level = filters["compression_opts"]
                    column: _Column = _DeflateColumn(base, path, spec, rows, filters, level)
                else:
                    column = _Column(base, path, spec, rows, filters)
                group.columns[path] = column
            src.groups[group_name] = group
        for path, attrs in attributes.items():
            _set_attrs(base[path], attrs)
        if schema.control:
            run_base = h5["RUN"].create_group(schema.source)
            for path, row in (schema.run_values or {}).items():
                dtype = _VLEN_STR if row.dtype == object else row.dtype
                run_base.create_dataset(path, data=row, dtype=dtype)
            for path, attrs in attributes.items():
                if path in run_base:
                    _set_attrs(run_base[path], attrs)
        self._sources[schema.source] = src
        return src

    # --- writing --------------------------------------------------------------------------------
    @property
    def ntrains(self) -> int:
        return len(self.train_ids)

    @property
    def last_train_id(self) -> int | None:
        return self.train_ids[-1] if self.train_ids else None

    def has_source_in_last_train(self, source: str) -> bool:
        """Whether *source* already has data for the file's newest train."""
        return bool(self.train_ids) and source in self._current_sources

    def begin_train(self, train_id: int, timestamp_ns: int) -> None:
        """Start a new train (train IDs strictly increasing; checked by the caller)."""
        self.train_ids.append(int(train_id))
        self.timestamps.append(int(timestamp_ns))
        for src in self._sources.values():
            for group in src.groups.values():
                group.first.append(group.rows)
                group.count.append(0)
        self._current_sources = set()
        self._trains_since_flush += 1

    def write_source(self, schema: SourceSchema, rows: dict[str, tuple[int, dict[str, Any]]]):
        """Append one source's data for the current train.

        *rows* maps index group -> (row count, {dataset path: array of that many rows}).
        """
        src = self._sources.get(schema.source)
        if src is None:
            src = self._add_source(schema)
        nbytes = 0
        for group_name, (n, arrays) in rows.items():
            group = src.groups[group_name]
            for path, arr in arrays.items():
                group.columns[path].append(arr)
                nbytes += arr.nbytes if arr.dtype != object else _strings_nbytes(arr)
            group.count[-1] = n
            group.rows += n
            group.synced = min(group.synced, len(group.count) - 1)
        self._current_sources.add(schema.source)
        self.payload_bytes += nbytes
        return nbytes

    # --- consistency points ---------------------------------------------------------------------
    def flush_due(self, every_trains: int | None, every_seconds: float | None) -> bool:
        if not self._trains_since_flush:
            return False
        if every_trains is not None and self._trains_since_flush >= every_trains:
            return True
        return every_seconds is not None and time.monotonic() - self._last_flush >= every_seconds

    def flush(self) -> None:
        """Write pending rows, INDEX and METADATA; the file on disk is then consistent."""
        self._write_index()
        self.h5.flush()
        self._trains_since_flush = 0
        self._last_flush = time.monotonic()

    def _write_index(self) -> None:
        for src in self._sources.values():
            for group in src.groups.values():
                for column in group.columns.values():
                    column.sync()
        n = len(self.train_ids)
        lo = self._synced
        if lo < n:
            ids, stamps, flags, origins = self._index_ids
            for dsid in self._index_ids:
                dsid.set_extent((n,))
            _put_rows(ids, lo, np.asarray(self.train_ids[lo:n], dtype=np.uint64))
            _put_rows(stamps, lo, np.asarray(self.timestamps[lo:n], dtype=np.uint64))
            _put_rows(flags, lo, np.ones(n - lo, dtype=np.int32))
            _put_rows(origins, lo, np.full(n - lo, -1, dtype=np.int32))
            self._synced = n
        for src in self._sources.values():
            for group in src.groups.values():
                group.flush(n)
        if len(self._sources) != self._sources_written:
            self._write_data_sources()
        stamp = _utc_stamp()
        if stamp != self._update_stamp:
            self._update_ds[0] = stamp.encode()
            self._update_stamp = stamp

    def _write_data_sources(self) -> None:
        entries = []
        for name in sorted(self._sources):
            src = self._sources[name]
            if src.schema.control:
                entries.append(("CONTROL", name))
            else:
                entries.extend(("INSTRUMENT", f"{name}/{g}") for g in sorted(src.groups))
        grp = self.h5["METADATA/dataSources"]
        for ds_name, values in (
            ("dataSourceId", [f"{root}/{dev}" for root, dev in entries]),
            ("root", [root for root, _ in entries]),
            ("deviceId", [dev for _, dev in entries]),
        ):
            ds = grp[ds_name]
            ds.resize((len(values),))
            if values:
                ds[:] = np.array([v.encode() for v in values], dtype=object)
        self._sources_written = len(self._sources)

    def close(self) -> Path | None:
        """Finish and close the file; rename it to its final name if nothing failed.

        Returns the final path, or None if a write failed (the ``.part`` file then stays).
        """
        if self.closed:
            return None if self.io.error else self.path
        try:
            if self.io.error is None:
                for src in self._sources.values():
                    for group in src.groups.values():
                        for column in group.columns.values():
                            column.finish()
                self._write_index()
        finally:
            self._close_handles()
        if self.io.error is not None:
            return None
        os.replace(self.part_path, self.path)
        return self.path

    def abandon(self) -> None:
        """Close without finishing; the ``.part`` file stays as it is on disk."""
        if not self.closed:
            self._close_handles()

    def _close_handles(self) -> None:
        self.closed = True
        try:
            self.h5.close()
        finally:
            if self.layout.fsync:
                self.io.fsync()
            self.io.close()

    def sources(self) -> list[str]:
        return sorted(self._sources)

    def chunk_reserve(self) -> int:
        """Bytes the file may still allocate for chunks held in HDF5's chunk cache."""
        return sum(src.schema.chunk_bytes for src in self._sources.values())


def _utc_stamp() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())


def _write_metadata_value(group: h5py.Group, name: str, value: Any) -> None:
    """Write a 1-element METADATA dataset (strings as variable-length bytes)."""
    if isinstance(value, str):
        data = np.array([value.encode("utf-8")], dtype=object)
        dtype: Any = _VLEN_BYTES
    else:
        data = np.atleast_1d(np.asarray(value))
        dtype = data.dtype
    if name in group:
        ds = group[name]
        if ds.dtype == dtype or (dtype is _VLEN_BYTES and ds.dtype.kind == "O"):
            ds[0] = data[0]
            return
        del group[name]
    group.create_dataset(name, data=data, dtype=dtype)


def _set_attrs(obj: h5py.HLObject, attrs: dict[str, Any]) -> None:
    for name, value in attrs.items():
        obj.attrs[name] = value


def _strings_nbytes(arr: np.ndarray) -> int:
    return sum(len(v) if isinstance(v, (str, bytes)) else 0 for v in arr.flat)
