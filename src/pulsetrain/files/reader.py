"""Read run directories back into trains.

:func:`iter_run_trains` opens a run with ``extra_data.RunDirectory`` for its metadata (files,
train IDs, sources, keys, INDEX first/count) and yields ``(train_id, data, meta)`` in the train
convention.  The data itself does not go through EXtra-data's per-train reading:

- uncompressed numeric datasets are served as zero-copy views on a memory map of the file
  (:mod:`pulsetrain.files.mapped`): a train's rows stored back to back are one view, no HDF5
  read and no copy;
- everything else (compressed data, strings, ...) is read through h5py once per *block* of
  trains (one HDF5 read covering the rows of many trains), split into per-train views.

Wrap the iterator in :func:`pulsetrain.files.prefetch.read_ahead` to read in a thread ahead of
the consumer.

Conventions of the yielded data (the same as the writer takes):

- Control keys come as ``<key>.value`` and ``<key>.timestamp`` (one row per train).
- Per-train instrument keys come without a train axis (a camera frame is ``(H, W)``); if a
  source recorded several rows for a train they come as a stacked array.
- Per-frame groups (``image`` of detector module sources by default) always keep the frame
  axis first, even with one frame or zero frames in the train.
- Strings come as ``str``.
- A source is in a train's ``data`` when it recorded something for it (or, for sources with
  per-frame groups, when its file lists the train).
- ``meta[source]`` carries the train's timestamp from ``INDEX/timestamp`` of the file holding
  the source's data; where files have none (format 0.5) it is derived: 100 ms per train from the nearest known timestamp, or from
  the file's creation date, or from the first file's modification time.

:class:`BridgeRun` reads a run for the Karabo bridge instead, in the conventions of EXtra-data's
``karabo-bridge-serve-files`` (what its clients expect): every selected source in every train
(with only its ``metadata`` when it has no data there), strings as the ``bytes`` stored,
``count == 1`` rows without their train axis, arrays of Python objects left out.  See
``docs/bridge-compatibility.md``.
"""

from __future__ import annotations

import calendar
import fnmatch
import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from pulsetrain.errors import ConfigurationError, FileFormatError
from pulsetrain.files.mapped import Column, FileMaps
from pulsetrain.files.naming import default_frame_group
from pulsetrain.files.timestamps import TRAIN_PERIOD_NS, make_meta

__all__ = [
    "BLOCK_BYTES",
    "PRELOAD_BYTES",
    "BridgeRun",
    "RunInfo",
    "iter_run_trains",
    "open_run_dir",
    "run_info",
]

log = logging.getLogger(__name__)

TrainSelection = slice | tuple[int, int] | None

#: Bytes of data read at once (one *block* of trains), by default: of this reader, of the
#: offline module-file reader and of the offline correction and reduction tasks.  It bounds
#: the memory of a reader and of a task, and makes each HDF5 read large.
BLOCK_BYTES = 64 << 20

#: A block may hold this many times ``max_block_bytes`` of data served from memory maps.
_MAPPED_BLOCK_FACTOR = 4


@dataclass(frozen=True)
class RunInfo:
    """Summary of a run directory.

    Attributes
    ----------
    train_ids : numpy.ndarray
        All train IDs of the run (uint64, increasing).
    control_sources, instrument_sources : tuple of str
        Source names (legacy alias names of corrected detectors excluded).
    files : tuple of Path
        The HDF5 files EXtra-data opened.
    metadata : dict
        ``run_metadata()`` of the run (format version, proposal, run number, ...).
    """

    train_ids: np.ndarray
    control_sources: tuple[str, ...]
    instrument_sources: tuple[str, ...]
    files: tuple[Path, ...]
    metadata: dict[str, Any]

    @property
    def sources(self) -> tuple[str, ...]:
        """All sources, sorted."""
        return tuple(sorted(self.control_sources + self.instrument_sources))

    @property
    def n_files(self) -> int:
        return len(self.files)

    @property
    def n_trains(self) -> int:
        return len(self.train_ids)


def open_run_dir(run_dir: str | os.PathLike[str]):  # -> extra_data.DataCollection
    """Open a run directory with ``extra_data.RunDirectory`` (files opened serially).

    If EXtra-data cannot write its cache of the run's files (``karabo_data_map.json``, e.g. on
    a full disk), the files are opened without the cache.  Raises FileFormatError when the
    directory holds no usable run files.
    """
    import extra_data

    try:
        return extra_data.RunDirectory(str(run_dir), parallelize=False)
    except FileNotFoundError as exc:
        raise FileFormatError(f"no run files in {run_dir}: {exc}") from exc
    except OSError as exc:
        log.warning("opening %s without EXtra-data's file cache: %s", run_dir, exc)
        paths = sorted(
            str(p)
            for p in Path(run_dir).iterdir()
            if p.name.endswith(".h5") and p.name.lower() != "overview.h5"
        )
        return extra_data.DataCollection.from_paths(paths, is_single_run=True, parallelize=False)
    except Exception as exc:  # EXtra-data raises a bare Exception for unusable files
        if "unusable" in str(exc):
            raise FileFormatError(f"no usable run files in {run_dir}: {exc}") from exc
        raise


def _sources_of(run) -> tuple[list[str], list[str]]:
    legacy = set(getattr(run, "legacy_sources", {}) or {})
    control = sorted(s for s in run.control_sources if s not in legacy)
    instrument = sorted(s for s in run.instrument_sources if s not in legacy)
    return control, instrument


def run_info(run_dir: str | os.PathLike[str]) -> RunInfo:
    """Train IDs, sources, files and metadata of a run directory."""
    with open_run_dir(run_dir) as run:
        control, instrument = _sources_of(run)
        try:
            metadata = run.run_metadata()
        except Exception:  # noqa: BLE001 - malformed METADATA must not hide the run
            metadata = {}
        return RunInfo(
            train_ids=np.asarray(run.train_ids, dtype=np.uint64),
            control_sources=tuple(control),
            instrument_sources=tuple(instrument),
            files=tuple(sorted(Path(f.filename) for f in run.files)),
            metadata={k: _plain(v) for k, v in metadata.items()},
        )


def iter_run_trains(
    run_dir: str | os.PathLike[str],
    *,
    sources: list[str] | tuple[str, ...] | str | None = None,
    trains: TrainSelection = None,
    require_all: bool = False,
    frame_groups: Callable[[str, str], bool] | None = None,
    max_block_bytes: int = BLOCK_BYTES,
    max_block_trains: int = 256,
    zero_copy: bool = True,
) -> Iterator[tuple[int, dict[str, dict[str, Any]], dict[str, dict[str, Any]]]]:
    """Yield the trains of a run as ``(train_id, data, meta)``.

    Parameters
    ----------
    run_dir : path-like
        Run directory (any EXDF version EXtra-data reads).
    sources : list of str, optional
        Glob patterns of source names (``"*/DET/*"``); default all sources.
    trains : slice or (int, int), optional
        A ``slice`` selects by position in the run's train list; a tuple ``(first, stop)``
        selects train IDs ``first <= tid < stop``.
    require_all : bool
        Skip trains in which any selected source has no data.
    frame_groups : callable, optional
        ``frame_groups(source, group) -> bool``: groups that keep their frame axis.
    max_block_bytes, max_block_trains : int
        Size of the blocks read at once through h5py (memory bound of the reader; data
        served from the memory map costs no memory here).
    zero_copy : bool
        Serve uncompressed numeric data as views on a (private, copy-on-write) memory map of
        the files instead of reading it through HDF5 (see :mod:`pulsetrain.files.mapped`).

    Yields
    ------
    tuple
        ``(train_id, data, meta)``; arrays may be views into a block shared by several trains
        or into the memory map of a file (writeable, but writes are seen by other views of the
        same rows and never reach the file).
    """
    is_frame_group = frame_groups or default_frame_group
    with open_run_dir(run_dir) as run:
        control, instrument = _sources_of(run)
        all_sources = control + instrument
        if sources is not None:
            patterns = [sources] if isinstance(sources, str) else list(sources)
            chosen = set()
            for pattern in patterns:
                matched = [s for s in all_sources if fnmatch.fnmatchcase(s, pattern)]
                if not matched:
                    raise ConfigurationError(
                        f"no source of {run_dir} matches {pattern!r} "
                        f"(sources: {', '.join(all_sources[:8])}{', ...' if len(all_sources) > 8 else ''})"
                    )
                chosen.update(matched)
            control = [s for s in control if s in chosen]
            instrument = [s for s in instrument if s in chosen]
        train_ids = np.asarray(run.train_ids, dtype=np.uint64)
        timestamps = _train_timestamps(run, train_ids)
        selected = _select_trains(train_ids, trains)
        maps = FileMaps(enabled=zero_copy)
        readers = [_SourceReader(run, s, True, is_frame_group, maps) for s in control] + [
            _SourceReader(run, s, False, is_frame_group, maps) for s in instrument
        ]
        readers = [r for r in readers if r.keys]
        if not readers or selected.size == 0:
            return
        copied = mapped = 0
        for r in readers:
            c, m = r.bytes_per_train(train_ids.size)
            copied += c
            mapped += m
        # Views on the map cost no memory, but a block is prepared (and, for files not in
        # the page cache, read ahead) at once: bound it too, more loosely.
        block = min(
            max_block_trains,
            max_block_bytes // max(1, copied),
            _MAPPED_BLOCK_FACTOR * max_block_bytes // max(1, mapped),
        )
        block = int(max(1, block))
        for positions in _blocks(selected, block):
            block_tids = train_ids[positions]
            parts = [r.read_block(block_tids) for r in readers]
            # Files whose trains are all read: drop their maps (views still in use keep theirs)
            for r in readers:
                maps.release(r.release_through(int(block_tids[-1])))
            for j, tid in enumerate(block_tids.tolist()):
                data: dict[str, dict[str, Any]] = {}
                meta: dict[str, dict[str, Any]] = {}
                for reader, (values, stamps) in zip(readers, parts):
                    if values[j] is not None:
                        src = reader.source
                        data[src] = values[j]
                        ns = int(stamps[j]) or int(timestamps[positions[j]])
                        meta[src] = make_meta(src, tid, ns)
                if not data:
                    continue
                if require_all and len(data) != len(readers):
                    continue
                yield tid, data, meta


def _blocks(selected: np.ndarray, size: int) -> Iterator[np.ndarray]:
    """Runs of consecutive positions, at most *size* long (a block is read as one range)."""
    breaks = np.nonzero(np.diff(selected) != 1)[0] + 1
    for run in np.split(selected, breaks):
        for start in range(0, run.size, size):
            yield run[start : start + size]


def _select_trains(train_ids: np.ndarray, trains: TrainSelection) -> np.ndarray:
    positions = np.arange(train_ids.size)
    if trains is None:
        return positions
    if isinstance(trains, slice):
        return positions[trains]
    if isinstance(trains, tuple) and len(trains) == 2:
        first, stop = (int(t) if t is not None else None for t in trains)
        mask = np.ones(train_ids.size, dtype=bool)
        if first is not None:
            mask &= train_ids >= first
        if stop is not None:
            mask &= train_ids < stop
        return positions[mask]
    raise ConfigurationError(f"trains must be a slice or a (first, stop) tuple, not {trains!r}")


class _SourceReader:
    """Reads one source's keys a block of trains at a time."""

    def __init__(self, run, source: str, control: bool, is_frame_group, maps: FileMaps) -> None:
        self.source = source
        self.control = control
        self.maps = maps
        src = run[source]
        self.files = sorted(
            src.files, key=lambda fa: int(fa.train_ids[0]) if fa.train_ids.size else 0
        )
        keys = sorted(src.keys(inc_timestamps=True)) if control else sorted(src.keys())
        self.keys = keys
        self.section = "CONTROL" if control else "INSTRUMENT"
        self.groups: dict[str, list[str]] = {}
        for k in keys:
            group = "" if control else k.split(".", 1)[0]
            self.groups.setdefault(group, []).append(k)
        self.frame_groups = {g for g in self.groups if not control and is_frame_group(source, g)}
        self._columns: dict[tuple[str, str], Column] = {}
        self._stamps: dict[str, np.ndarray] = {}
        self._paths: dict[str, dict[str, str]] = {}
        self._order: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._index: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}
        # (last train ID, file name) of the files not yet released, by last train ID
        self._file_ends = sorted(
            (int(fa.train_ids.max()), fa.filename) for fa in self.files if fa.train_ids.size
        )

    def _raw_dataset(self, fa, key: str) -> h5py.Dataset:
        """The dataset of *key* in file *fa* (found by walking the source group, so HDF5 names
        containing '.' - seen in some mock files - work too)."""
        paths = self._paths.get(fa.filename)
        if paths is None:
            paths = {}
            base = f"{self.section}/{self.source}"

            def visit(name: str, obj: object) -> None:
                if isinstance(obj, h5py.Dataset):
                    paths[name.replace("/", ".")] = f"{base}/{name}"

            fa.file[base].visititems(visit)
            self._paths[fa.filename] = paths
        return fa.file[paths[key]]

    def _column(self, fa, key: str) -> Column:
        cache_key = (fa.filename, key)
        col = self._columns.get(cache_key)
        if col is None:
            col = self._columns[cache_key] = Column(self._raw_dataset(fa, key), self.maps)
        return col

    def release_through(self, train_id: int) -> list[str]:
        """Forget the columns of files holding no train after *train_id*; their names."""
        ends = self._file_ends
        n = 0
        while n < len(ends) and ends[n][0] <= train_id:
            n += 1
        if not n:
            return []
        done = [name for _, name in ends[:n]]
        del ends[:n]
        names = set(done)
        self._columns = {k: c for k, c in self._columns.items() if k[0] not in names}
        return done

    def _get_index(self, fa, group: str) -> tuple[np.ndarray, np.ndarray]:
        cache_key = (fa.filename, group)
        index = self._index.get(cache_key)
        if index is None:
            firsts, counts = fa.get_index(self.source, group)
            index = self._index[cache_key] = (
                np.asarray(firsts, dtype=np.int64),
                np.asarray(counts, dtype=np.int64),
            )
        return index

    def bytes_per_train(self, ntrains: int) -> tuple[int, int]:
        """Bytes of a train of this source (estimated from its first file): read through
        h5py, and served from the memory map."""
        copied = mapped = 0
        fa = self.files[0] if self.files else None
        if fa is None or ntrains == 0:
            return 0, 0
        for group, keys in self.groups.items():
            _, counts = self._get_index(fa, group)
            rows = float(counts.mean()) if counts.size else 0.0
            for key in keys:
                col = self._column(fa, key)
                nbytes = int(max(col.row_bytes, 1) * max(rows, 1.0))
                if col.mapped:
                    mapped += nbytes
                else:
                    copied += nbytes
        return copied, mapped

    def _sorted_ids(self, fa) -> tuple[np.ndarray, np.ndarray]:
        """File positions in train-ID order and the sorted IDs (old files may be unsorted;
        the first of duplicated IDs wins, as in EXtra-data)."""
        cached = self._order.get(fa.filename)
        if cached is None:
            tids = fa.train_ids
            order = np.argsort(tids, kind="stable")
            stids = tids[order]
            keep = np.ones(stids.size, dtype=bool)
            keep[1:] = stids[1:] != stids[:-1]
            cached = self._order[fa.filename] = (order[keep], stids[keep])
        return cached

    def _file_stamps(self, fa) -> np.ndarray:
        stamps = self._stamps.get(fa.filename)
        if stamps is None:
            n = fa.train_ids.size
            f = fa.file
            if "INDEX/timestamp" in f:
                stamps = f["INDEX/timestamp"][:n].astype(np.uint64)
            else:
                stamps = np.zeros(n, dtype=np.uint64)
            self._stamps[fa.filename] = stamps
        return stamps

    def read_block(self, block_tids: np.ndarray) -> tuple[list[dict[str, Any] | None], np.ndarray]:
        """Per train of the block: this source's values (None when it has no data), and the
        train timestamps of the source's files (0 where unknown)."""
        out: list[dict[str, Any] | None] = [None] * block_tids.size
        block_stamps = np.zeros(block_tids.size, dtype=np.uint64)
        lo_tid, hi_tid = int(block_tids[0]), int(block_tids[-1])
        for fa in self.files:
            order, stids = self._sorted_ids(fa)
            if stids.size == 0 or int(stids[-1]) < lo_tid or int(stids[0]) > hi_tid:
                continue
            # Positions of the block's trains in this file (and in the block).
            spos = np.minimum(np.searchsorted(stids, block_tids), stids.size - 1)
            present = stids[spos] == block_tids
            if not present.any():
                continue
            bpos = np.nonzero(present)[0]
            fpos = order[spos[bpos]]
            block_stamps[bpos] = self._file_stamps(fa)[fpos]
            has_frames = bool(self.frame_groups)
            values_per_train: list[dict[str, Any]] = [{} for _ in bpos]
            any_data = np.full(bpos.size, has_frames)
            for group, keys in self.groups.items():
                firsts, counts = self._get_index(fa, group)
                firsts = firsts[fpos]
                counts = counts[fpos]
                any_data |= counts > 0
                per_frame = group in self.frame_groups
                count_list = counts.tolist()
                for key in keys:
                    rows = self._column(fa, key).take(firsts, counts)
                    for i, c in enumerate(count_list):
                        if per_frame or c > 1:
                            values_per_train[i][key] = rows[i]
                        elif c == 1:
                            values_per_train[i][key] = _scalar(rows[i][0])
            for i, b in enumerate(bpos.tolist()):
                if any_data[i]:
                    out[b] = values_per_train[i]
        return out, block_stamps


def _scalar(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", "surrogateescape")
    return value


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, bytes):
        return value.decode("utf-8", "surrogateescape")
    return value


def _train_timestamps(run, train_ids: np.ndarray) -> np.ndarray:
    """Nanosecond timestamp per train from INDEX/timestamp; missing ones derived (see module)."""
    stamps = np.zeros(train_ids.size, dtype=np.uint64)
    known = np.zeros(train_ids.size, dtype=bool)
    creation: int | None = None
    for fa in run.files:
        n = fa.train_ids.size
        if n == 0:
            continue
        f = fa.file
        if creation is None and "METADATA/creationDate" in f:
            creation = _parse_stamp(f["METADATA/creationDate"][0])
        if "INDEX/timestamp" not in f:
            continue
        values = f["INDEX/timestamp"][:n].astype(np.uint64)
        pos = np.searchsorted(train_ids, fa.train_ids)
        pos = np.minimum(pos, train_ids.size - 1)
        ok = (train_ids[pos] == fa.train_ids) & (values > 0) & ~known[pos]
        stamps[pos[ok]] = values[ok]
        known[pos[ok]] = True
    if known.all() or train_ids.size == 0:
        return stamps
    if known.any():
        ref_pos = np.nonzero(known)[0]
        # Nearest known train (by position) for each unknown one.
        idx = np.searchsorted(ref_pos, np.arange(train_ids.size))
        idx = np.clip(idx, 0, ref_pos.size - 1)
        left = ref_pos[np.clip(idx - 1, 0, ref_pos.size - 1)]
        right = ref_pos[idx]
        here = np.arange(train_ids.size)
        nearest = np.where(np.abs(here - left) <= np.abs(right - here), left, right)
        ref_tid = train_ids[nearest].astype(np.int64)
        ref_ns = stamps[nearest].astype(np.int64)
    else:
        if creation is None:
            first = run.files[0].filename
            creation = int(os.stat(first).st_mtime * 1e9)
        ref_tid = np.full(train_ids.size, int(train_ids[0]), dtype=np.int64)
        ref_ns = np.full(train_ids.size, creation, dtype=np.int64)
    derived = ref_ns + (train_ids.astype(np.int64) - ref_tid) * TRAIN_PERIOD_NS
    stamps[~known] = np.maximum(derived[~known], 0).astype(np.uint64)
    return stamps


def _parse_stamp(value: Any) -> int | None:
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    try:
        t = time.strptime(str(value), "%Y%m%dT%H%M%SZ")
    except ValueError:
        return None
    return calendar.timegm(t) * 1_000_000_000


# ----------------------------------------------------------------------------------------------
# Reading for the Karabo bridge (the conventions of karabo-bridge-serve-files)
# ----------------------------------------------------------------------------------------------

#: Datasets up to this size (bytes, per file) are read whole when a :class:`BridgeRun` opens,
#: so that a train of small sources costs no HDF5 read at all; larger ones are read per train.
PRELOAD_BYTES = 16 << 20


class _BridgeKey:
    """One key of one source in one file: preloaded whole, or read per train."""

    __slots__ = ("drop_one", "name", "objects", "read", "scalars", "values")

    def __init__(self, name: str, ds: h5py.Dataset, nrows: int, preload: bool, maps: FileMaps):
        self.name = name
        row_shape = tuple(ds.shape[1:])
        # Variable-length data (strings) comes as arrays of Python objects, which serve-files
        # leaves out: rows with a shape always, scalar rows when a train has several.
        self.objects = ds.dtype.hasobject or h5py.check_vlen_dtype(ds.dtype) is not None
        self.drop_one = self.objects and bool(row_shape)
        self.values: np.ndarray | None = None
        self.scalars: list | None = None
        self.read: Callable[[int, int], Any] | None = None
        if preload:
            self.values = ds[:nrows]
            if not row_shape:
                # The Python value of each single row, converted once: what numpy's .item()
                # gives, and so what the serialiser would send for it.
                self.scalars = self.values.tolist()
        elif not self.objects:
            self.read = Column(ds, maps).rows
        else:
            self.read = lambda a, b, ds=ds: ds[a:b]

    def one(self, row: int) -> Any:
        """The value of a train with one row: the row, without a train axis."""
        if self.scalars is not None:
            return self.scalars[row]
        if self.values is not None:
            return self.values[row]
        return self.read(row, row + 1)[0]

    def many(self, first: int, count: int) -> Any:
        """The rows of a train with several."""
        if self.values is not None:
            return self.values[first : first + count]
        return self.read(first, first + count)


class _BridgeFile:
    """One source in one file: train IDs and timestamps, and per key group its INDEX."""

    __slots__ = ("groups", "stamps", "tids")

    def __init__(self, tids: np.ndarray, stamps: np.ndarray) -> None:
        self.tids = tids
        self.stamps = stamps
        # (firsts, counts, keys) per key group; control sources have the single group ''
        self.groups: list[tuple[list[int], list[int], list[_BridgeKey]]] = []


class _BridgeSource:
    """One selected source: its files, and for each train of the run where its data is."""

    __slots__ = ("control", "file_no", "file_pos", "files", "name")

    def __init__(self, name: str, control: bool, files: list[_BridgeFile], train_ids) -> None:
        self.name = name
        self.control = control
        self.files = files
        # The first file (in EXtra-data's order) that has each train, and the train's position
        # there; -1: no file has it.
        file_no = np.full(train_ids.size, -1, dtype=np.int64)
        file_pos = np.zeros(train_ids.size, dtype=np.int64)
        for i, bf in enumerate(files):
            if bf.tids.size == 0:
                continue
            order = np.argsort(bf.tids, kind="stable")
            stids = bf.tids[order]
            at = np.minimum(np.searchsorted(stids, train_ids), stids.size - 1)
            hit = (stids[at] == train_ids) & (file_no < 0)
            file_no[hit] = i
            file_pos[hit] = order[at[hit]]
        self.file_no: list[int] = file_no.tolist()
        self.file_pos: list[int] = file_pos.tolist()


def _is_compound(dtype: np.dtype) -> bool:
    return dtype.names is not None or (
        dtype.subdtype is not None and dtype.subdtype[0].names is not None
    )


class BridgeRun:
    """A run directory read for the Karabo bridge, as ``karabo-bridge-serve-files`` sends it.

    Opening checks the selection: every source glob must match a source, every key glob a key
    of a selected source, and no selected key may hold a compound (structured) dtype, which the
    bridge protocol cannot describe.  Small datasets (up to ``preload_bytes`` per file) are read
    whole here; larger ones train by train (uncompressed numeric data as views on a memory map
    of the file).

    Parameters
    ----------
    run_dir : path-like
        Run directory (any EXDF version EXtra-data reads).
    sources : list of str, optional
        Source globs (``'*XGM*'``), like serve-files' ``--source``; default all sources.
    keys : list of str, optional
        Key globs (``'data.*'``), like serve-files' ``--key``; default all keys.  As in
        EXtra-data, a glob ending neither in ``.value`` nor in ``*`` selects ``<glob>.value`` of
        control sources.
    preload_bytes : int
        Largest dataset read whole when opening.
    zero_copy : bool
        Serve large uncompressed numeric datasets from a memory map of the files (see
        :mod:`pulsetrain.files.mapped`) instead of reading them through HDF5.

    Raises
    ------
    pulsetrain.errors.ConfigurationError
        A glob matches nothing, or selected keys have a compound dtype (they are named).
    pulsetrain.errors.FileFormatError
        No usable run files.

    Examples
    --------
    >>> with BridgeRun("r0001", sources=["*XGM*"]) as run:  # doctest: +SKIP
    ...     for tid, data, meta in run.trains():
    ...         server.feed(data, meta)
    """

    def __init__(
        self,
        run_dir: str | os.PathLike[str],
        *,
        sources: list[str] | tuple[str, ...] | None = None,
        keys: list[str] | tuple[str, ...] | None = None,
        preload_bytes: int = PRELOAD_BYTES,
        zero_copy: bool = True,
    ) -> None:
        self.run_dir = str(run_dir)
        self._maps = FileMaps(enabled=zero_copy)
        self._run = open_run_dir(run_dir)
        try:
            self._open(list(sources or ["*"]), list(keys or ["*"]), int(preload_bytes))
        except BaseException:
            self.close()
            raise

    def _select(self, source_globs: list[str], key_globs: list[str]):
        """EXtra-data's selection of the (source glob, key glob) pairs that match something."""
        run = self._run
        everything = sorted(run.control_sources | run.instrument_sources)
        for glob in source_globs:
            if not any(fnmatch.fnmatchcase(s, glob) for s in everything):
                more = ", ..." if len(everything) > 8 else ""
                raise ConfigurationError(
                    f"no source of {self.run_dir} matches {glob!r} "
                    f"(sources: {', '.join(everything[:8])}{more})"
                )
        pairs, unmatched = [], set(key_globs)
        for src_glob in source_globs:
            for key_glob in key_globs:
                try:
                    run.select(src_glob, key_glob)
                except Exception:  # noqa: BLE001, S112 - EXtra-data's "no match" (several types)
                    continue
                pairs.append((src_glob, key_glob))
                unmatched.discard(key_glob)
        if unmatched:
            globs = ", ".join(repr(g) for g in sorted(unmatched))
            raise ConfigurationError(f"no key of the selected sources matches {globs}")
        return run.select(pairs)

    def _open(self, source_globs: list[str], key_globs: list[str], preload_bytes: int) -> None:
        import warnings

        sel = self._select(source_globs, key_globs)
        self.train_ids = np.asarray(sel.train_ids, dtype=np.uint64)
        self.sources: list[_BridgeSource] = []
        compound: dict[str, set[str]] = {}
        for name in sorted(sel.control_sources | sel.instrument_sources):
            control = name in sel.control_sources
            with warnings.catch_warnings():  # legacy (alias) names warn; serve-files sends them
                warnings.simplefilter("ignore")
                keys = sorted(sel.keys_for_source(name))
                file_access = list(sel._sources_data[name].files)
            groups: dict[str, list[str]] = {}
            for k in keys:
                groups.setdefault("" if control else k.split(".", 1)[0], []).append(k)
            section = "CONTROL" if control else "INSTRUMENT"
            files = []
            for fa in file_access:
                tids = np.asarray(fa.train_ids, dtype=np.uint64)
                f = fa.file
                if "INDEX/timestamp" in f:
                    stamps = np.asarray(f["INDEX/timestamp"][: tids.size], dtype=np.uint64)
                else:
                    stamps = np.zeros(tids.size, dtype=np.uint64)
                bf = _BridgeFile(tids, stamps)
                datasets = _datasets_of(f, f"{section}/{name}")
                for group, group_keys in groups.items():
                    firsts, counts = (np.asarray(a, np.int64) for a in fa.get_index(name, group))
                    nrows = int((firsts + counts).max(initial=0))
                    entries = []
                    for k in group_keys:
                        ds = datasets.get(k)
                        if ds is None:
                            continue
                        if _is_compound(ds.dtype):
                            compound.setdefault(name, set()).add(k)
                            continue
                        nbytes = nrows * ds.dtype.itemsize * math.prod(ds.shape[1:])
                        preload = nbytes <= preload_bytes
                        entries.append(_BridgeKey(k, ds, nrows, preload, self._maps))
                    bf.groups.append((firsts.tolist(), counts.tolist(), entries))
                files.append(bf)
            self.sources.append(_BridgeSource(name, control, files, self.train_ids))
        if compound:
            listed = "; ".join(f"{s}: {', '.join(sorted(k))}" for s, k in sorted(compound.items()))
            raise ConfigurationError(
                "arrays of compound (structured) dtype cannot be sent through the Karabo "
                f"bridge: {listed}; leave them out with --key"
            )

    @property
    def n_trains(self) -> int:
        """Trains of the run."""
        return int(self.train_ids.size)

    def count(self, trains: TrainSelection = None) -> int:
        """How many trains :meth:`trains` yields for the selection *trains*."""
        return int(_select_trains(self.train_ids, trains).size)

    def trains(
        self, trains: TrainSelection = None
    ) -> Iterator[tuple[int, dict[str, dict[str, Any]], dict[str, dict[str, Any]]]]:
        """Yield ``(train_id, data, meta)`` for the selected trains, in order.

        Parameters
        ----------
        trains : slice or (int, int), optional
            As for :func:`iter_run_trains`.

        Yields
        ------
        tuple
            ``data[source]`` holds every selected source, with its keys that have data in the
            train and ``'metadata'``: ``{'source', 'timestamp.tid'}``, exactly as serve-files
            sends it.  ``meta[source]`` adds the timestamp of the train from ``INDEX/timestamp``
            of the file holding the source's data, where that file has one.
        """
        positions = _select_trains(self.train_ids, trains).tolist()
        tids = self.train_ids.tolist()
        sources = [(s.name, s.files, s.file_no, s.file_pos) for s in self.sources]
        for p in positions:
            tid = tids[p]
            data: dict[str, dict[str, Any]] = {}
            meta: dict[str, dict[str, Any]] = {}
            for name, files, file_no, file_pos in sources:
                m = {"source": name, "timestamp.tid": tid}
                props: dict[str, Any] = {"metadata": m}
                data[name] = props
                fno = file_no[p]
                if fno < 0:
                    meta[name] = m
                    continue
                bf = files[fno]
                row = file_pos[p]
                ns = int(bf.stamps[row])
                meta[name] = make_meta(name, tid, ns) if ns else m
                dropped = False
                for firsts, counts, entries in bf.groups:
                    count = counts[row]
                    if not count:
                        continue
                    first = firsts[row]
                    if count == 1:
                        for e in entries:
                            if e.scalars is not None:
                                props[e.name] = e.scalars[first]
                            elif e.drop_one:
                                dropped = True
                            else:
                                props[e.name] = e.one(first)
                    else:
                        for e in entries:
                            if e.objects:
                                dropped = True
                            else:
                                props[e.name] = e.many(first, count)
                if dropped:
                    _drop_timestamps_of_dropped(props, bf, row)
            yield tid, data, meta

    def close(self) -> None:
        """Close the run's files."""
        run, self._run = getattr(self, "_run", None), None
        if run is not None:
            run.__exit__(None, None, None)  # DataCollection closes its files on leaving `with`

    def __enter__(self) -> BridgeRun:  # noqa: PYI034
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _datasets_of(f: h5py.File, base: str) -> dict[str, h5py.Dataset]:
    """The datasets of a source group by key (one walk: a lookup per key costs far more)."""
    found: dict[str, h5py.Dataset] = {}
    if base not in f:
        return found

    def visit(name: str, obj: object) -> None:
        if isinstance(obj, h5py.Dataset):
            found[name.replace("/", ".")] = obj

    f[base].visititems(visit)
    return found


def _drop_timestamps_of_dropped(props: dict[str, Any], bf: _BridgeFile, row: int) -> None:
    """serve-files leaves out ``<key>.timestamp`` with a left-out ``<key>.value``."""
    for _, counts, entries in bf.groups:
        if not counts[row]:
            continue
        for e in entries:
            if e.objects and e.name.endswith(".value") and e.name not in props:
                props.pop(e.name[: -len(".value")] + ".timestamp", None)
