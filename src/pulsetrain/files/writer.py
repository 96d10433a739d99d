"""Write trains into a European XFEL run directory (EXDF format 1.2 / 1.3).

:class:`RunWriter` takes trains in the bridge convention (``data[source][key]``,
``meta[source]``), sorts each source into its aggregator's sequence file, and writes CONTROL,
RUN, INSTRUMENT, INDEX and METADATA as EXtra-data and ``extra-data-validate`` expect them.
See ``docs/file-format.md`` for the layout, the choices made and the failure behaviour.
"""

from __future__ import annotations

import errno
import fnmatch
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pulsetrain.errors import (
    ConfigurationError,
    FileFormatError,
    StorageError,
    TrainOrderError,
)
from pulsetrain.files.guarded_io import DISK_FULL_ERRNOS
from pulsetrain.files.naming import (
    DATA_CATEGORIES,
    FORMAT_VERSIONS,
    PART_SUFFIX,
    check_aggregator,
    default_aggregator,
    default_frame_group,
    is_control_source,
    run_file_name,
    split_key,
)
from pulsetrain.files.sequence_file import ColumnSpec, Layout, SequenceFile, SourceSchema
from pulsetrain.files.timestamps import meta_to_ns

__all__ = ["RunWriter", "aggregator_by_patterns"]

log = logging.getLogger(__name__)

_DEFAULT_METADATA = {
    "daqLibrary": "pulsetrain",
    "karaboFramework": "n/a",
}
_METADATA_ALIASES = {
    "sample": "sample",
    "sample_name": "sample",
    "sampleName": "sample",
    "run_type": "runType",
    "runType": "runType",
    "daq_library": "daqLibrary",
    "daqLibrary": "daqLibrary",
    "karabo_framework": "karaboFramework",
    "karaboFramework": "karaboFramework",
}
_RESERVED_METADATA = {
    "dataFormatVersion",
    "proposalNumber",
    "runNumber",
    "sequenceNumber",
    "creationDate",
    "updateDate",
    "dataSources",
}


@dataclass
class _AggregatorState:
    name: str
    file: SequenceFile | None = None
    next_sequence: int = 0
    last_train: int | None = None


@dataclass
class _SourcePlan:
    schema: SourceSchema
    rows: dict[str, tuple[int, dict[str, np.ndarray]]]
    nbytes: int
    control_stamps: dict[str, int] = field(default_factory=dict)


@dataclass
class _AggregatorPlan:
    train_id: int
    timestamp_ns: int
    sources: list[_SourcePlan] = field(default_factory=list)


class RunWriter:
    """Write one run of trains into European XFEL HDF5 sequence files.

    Parameters
    ----------
    run_dir : path-like
        Directory of the run (created if missing).  It must not already hold files of the same
        data category and run number.
    proposal, run_number : int
        Proposal (``METADATA/proposalNumber``) and run number (file names, ``runNumber``).
    data_category : {"RAW", "CORR"}
        First part of the file names: raw DAQ data or corrected data.
    format_version : {"1.3", "1.2"}
        ``METADATA/dataFormatVersion``.  1.3 adds ``runType``/``sample`` and key attributes.
    sequence_trains, sequence_bytes : int, optional
        Start a new sequence file of an aggregator once its current file holds this many
        trains, or this many bytes of array data (uncompressed).  None: no limit.
    chunk_trains : int
        Rows per HDF5 chunk of per-train data (and of INDEX datasets: ``index_chunk``).
    chunk_bytes : int
        Largest chunk in bytes; per-frame data gets ``chunk_bytes // frame bytes`` rows.
    compression : {None, "gzip", "lzf"}
        Filter for INSTRUMENT datasets (CONTROL and INDEX are never compressed).
    compression_level : int, optional
        gzip level (default 1).
    aggregator_of : callable, optional
        ``aggregator_of(source) -> str | None``; None falls back to the default rule
        (:func:`~pulsetrain.files.naming.default_aggregator`).
    frame_groups : callable, optional
        ``frame_groups(source, index_group) -> bool``: groups whose arrays carry one row per
        frame (frame axis first).  Default: the ``image`` group of detector module sources.
    run_metadata : mapping, optional
        Extra METADATA: ``sample``, ``run_type``, ``daq_library``, ``karabo_framework`` or any
        other identifier (str, int or float values).
    run_values : mapping, optional
        ``{source: {key: value}}``: RUN-only keys (e.g. ``classId``) of control sources.
    key_attributes : mapping, optional
        ``{source: {key: {attribute: value}}}`` written on the key (format 1.3 only), e.g.
        ``{"unitSymbol": "m", "metricPrefixSymbol": "m"}``.
    flush_trains, flush_interval : int, float, optional
        Make each open file consistent on disk (INDEX and rows) after this many new trains or
        seconds, whichever comes first.  Bounds what a crash can lose (see docs).
    min_free_bytes : int
        Refuse a train (StorageError, all open files closed and valid) when the file system's
        free space would drop below this.  0 disables the check; a full disk is then only
        noticed when a write fails.
    fsync : bool
        ``fsync`` each file when it is closed (protects closed files against power loss).

    Notes
    -----
    Not thread-safe beyond a lock around each public call: one producer per writer.
    """

    def __init__(
        self,
        run_dir: str | os.PathLike[str],
        *,
        proposal: int = 900001,
        run_number: int = 1,
        data_category: str = "RAW",
        format_version: str = "1.3",
        sequence_trains: int | None = None,
        sequence_bytes: int | None = None,
        chunk_trains: int = 32,
        chunk_bytes: int = 1 << 20,
        compression: str | None = None,
        compression_level: int | None = None,
        aggregator_of: Callable[[str], str | None] | None = None,
        frame_groups: Callable[[str, str], bool] | None = None,
        run_metadata: Mapping[str, Any] | None = None,
        run_values: Mapping[str, Mapping[str, Any]] | None = None,
        key_attributes: Mapping[str, Mapping[str, Mapping[str, Any]]] | None = None,
        flush_trains: int | None = 10,
        flush_interval: float | None = 1.0,
        min_free_bytes: int = 64 << 20,
        fsync: bool = False,
    ) -> None:
        _check_options(
            data_category=data_category,
            format_version=format_version,
            proposal=proposal,
            run_number=run_number,
            sequence_trains=sequence_trains,
            sequence_bytes=sequence_bytes,
            flush_trains=flush_trains,
            chunk_trains=chunk_trains,
            chunk_bytes=chunk_bytes,
            compression=compression,
            compression_level=compression_level,
        )
        self.run_dir = Path(run_dir)
        self.proposal = int(proposal)
        self.run_number = int(run_number)
        self.data_category = data_category
        self.format_version = format_version
        self.sequence_trains = sequence_trains
        self.sequence_bytes = sequence_bytes
        self.flush_trains = flush_trains
        self.flush_interval = flush_interval
        self.min_free_bytes = int(min_free_bytes)
        self._layout = Layout(
            chunk_trains=int(chunk_trains),
            chunk_bytes=int(chunk_bytes),
            compression=compression,
            compression_level=compression_level,
            index_chunk=max(64, int(chunk_trains) * 8),
            fsync=bool(fsync),
        )
        self._aggregator_of = aggregator_of
        self._frame_groups = frame_groups or default_frame_group
        self._metadata = self._build_metadata(run_metadata or {})
        self._run_values = {s: dict(v) for s, v in (run_values or {}).items()}
        self._key_attributes = {s: dict(v) for s, v in (key_attributes or {}).items()}
        self._claim_run_dir()

        self._lock = threading.RLock()
        self._aggregators: dict[str, _AggregatorState] = {}
        self._aggregator_cache: dict[str, str] = {}
        self._schemas: dict[str, SourceSchema] = {}
        self._control_stamps: dict[tuple[str, str], int] = {}
        self._files: list[Path] = []
        self._records: list[dict[str, Any]] = []
        self._train_ids: set[int] = set()
        self._bytes_written = 0
        self._failure: StorageError | None = None
        self._closed = False
        self._started = time.time()

    def _claim_run_dir(self) -> None:
        """Create the run directory; refuse one holding files of this category and run."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        prefix = f"{self.data_category}-R{self.run_number:04d}-"
        existing = sorted(
            p.name
            for p in self.run_dir.iterdir()
            if p.name.startswith(prefix) and p.name.endswith((".h5", ".h5" + PART_SUFFIX))
        )
        if existing:
            raise ConfigurationError(
                f"run directory {self.run_dir} already holds files of run {self.run_number} "
                f"({existing[0]}, ...): use a new run number or directory"
            )

    # --- public properties ------------------------------------------------------------------
    @property
    def files(self) -> list[Path]:
        """Sequence files closed so far (complete and valid), in closing order."""
        return list(self._files)

    @property
    def bytes_written(self) -> int:
        """Bytes of array data handed to the files (uncompressed payload)."""
        return self._bytes_written

    @property
    def trains_written(self) -> int:
        """Number of distinct train IDs written (in any file)."""
        return len(self._train_ids)

    @property
    def failed(self) -> StorageError | None:
        """The storage error that stopped this writer, or None."""
        return self._failure

    @property
    def closed(self) -> bool:
        return self._closed

    # --- writing -------------------------------------------------------------------------------
    def write_train(
        self,
        data: Mapping[str, Mapping[str, Any]],
        meta: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> int:
        """Write the data of one train (any subset of sources).

        Parameters
        ----------
        data : mapping
            ``data[source][key]`` in the train convention.  Control keys may end in ``.value``
            / ``.timestamp``; a key without such a suffix is stored as ``<key>.value``.
        meta : mapping, optional
            ``meta[source]`` with ``timestamp.tid`` (the train ID) and the timestamp; for
            protocol 1.0 style data, ``data[source]["metadata"]`` is used instead.

        Returns
        -------
        int
            Number of sources written.

        Raises
        ------
        TrainOrderError
            The train ID is not above the last one of an aggregator, or a source is written
            twice for the same train.  Nothing of the train is written.
        FileFormatError
            The data cannot be stored (missing train ID, keys or shapes differing from the
            run's first train, unsupported types).  Nothing of the train is written.
        StorageError
            The disk is full or a write failed; the writer is closed and unusable.
        """
        with self._lock:
            self._check_usable()
            plans = self._prepare(data, meta or {})
            if not plans:
                return 0
            # Rows plus, at most, one newly allocated chunk per dataset written and one
            # chunk per dataset of the open files (still in HDF5's chunk cache).
            nbytes = sum(
                sp.nbytes + sp.schema.chunk_bytes for plan in plans.values() for sp in plan.sources
            )
            self._check_space(nbytes)
            written = 0
            current: SequenceFile | None = None
            try:
                for aggregator, plan in plans.items():
                    current = self._file_for(aggregator, plan.train_id, plan.timestamp_ns)
                    for sp in plan.sources:
                        self._ensure_schema(sp.schema)
                        self._bytes_written += current.write_source(sp.schema, sp.rows)
                        for key, stamp in sp.control_stamps.items():
                            self._control_stamps[(sp.schema.source, key)] = stamp
                        written += 1
                    self._aggregators[aggregator].last_train = plan.train_id
                    self._train_ids.add(plan.train_id)
                    self._raise_if_failed(current)
                current = None
                for state in self._aggregators.values():
                    f = state.file
                    if f is not None and f.flush_due(self.flush_trains, self.flush_interval):
                        current = f
                        f.flush()
                        self._raise_if_failed(f)
            except _WriteFailed as exc:
                self._fail(exc.file, exc.error, exc.path)
            except OSError as exc:
                self._fail(current, exc)
            return written

    def flush(self) -> None:
        """Make every open file consistent on disk now (INDEX, METADATA, all rows)."""
        with self._lock:
            self._check_usable()
            current: SequenceFile | None = None
            try:
                for state in self._aggregators.values():
                    current = state.file
                    if current is not None:
                        current.flush()
                        self._raise_if_failed(current)
            except _WriteFailed as exc:
                self._fail(exc.file, exc.error, exc.path)
            except OSError as exc:
                self._fail(current, exc)

    def close(self) -> list[Path]:
        """Finish and close all open files; return every closed file of the run.

        Raises StorageError if finishing a file fails (the other files are still closed).
        After an earlier StorageError this only returns the files closed before it.
        """
        with self._lock:
            if self._closed:
                return self.files
            self._closed = True
            error: tuple[SequenceFile, OSError] | None = None
            for state in self._aggregators.values():
                f = state.file
                if f is None:
                    continue
                state.file = None
                try:
                    self._close_file(state, f)
                except _WriteFailed as exc:
                    error = error or (exc.file, exc.error)
                except OSError as exc:
                    error = error or (f, exc)
            if error is not None and self._failure is None:
                self._failure = _storage_error(error[0], error[1], len(self._files))
                raise self._failure
            log.info(
                "run %d closed: %d files, %d trains, %.3g GB",
                self.run_number,
                len(self._files),
                self.trains_written,
                self._bytes_written / 1e9,
            )
            return self.files

    def __enter__(self) -> RunWriter:  # noqa: PYI034
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            try:
                self.close()
            except Exception:  # the original exception matters more
                log.exception("closing run %d after an error failed", self.run_number)

    def manifest(self) -> dict[str, Any]:
        """Machine-readable summary of the run (JSON-serialisable) for a run catalogue.

        Keys: ``run_dir``, ``proposal``, ``run_number``, ``data_category``,
        ``format_version``, ``files`` (one dict per closed file: ``name``, ``aggregator``,
        ``sequence``, ``trains``, ``first_train``, ``last_train``, ``sources``, ``bytes``),
        ``trains``, ``first_train``, ``last_train``, ``sources``, ``bytes`` (on disk),
        ``payload_bytes``, ``metadata``, ``closed``, ``error``.
        """
        with self._lock:
            tids = self._train_ids
            sources = sorted(self._schemas)
            return {
                "run_dir": str(self.run_dir),
                "proposal": self.proposal,
                "run_number": self.run_number,
                "data_category": self.data_category,
                "format_version": self.format_version,
                "files": [dict(r) for r in self._records],
                "trains": len(tids),
                "first_train": min(tids) if tids else None,
                "last_train": max(tids) if tids else None,
                "sources": sources,
                "control_sources": [s for s in sources if self._schemas[s].control],
                "instrument_sources": [s for s in sources if not self._schemas[s].control],
                "bytes": sum(r["bytes"] for r in self._records),
                "payload_bytes": self._bytes_written,
                "metadata": {k: _plain(v) for k, v in self._metadata.items()},
                "started": self._started,
                "closed": self._closed,
                "error": str(self._failure) if self._failure else None,
            }

    # --- internals: configuration ---------------------------------------------------------------
    def _build_metadata(self, run_metadata: Mapping[str, Any]) -> dict[str, Any]:
        md: dict[str, Any] = {"dataFormatVersion": self.format_version}
        md.update(_DEFAULT_METADATA)
        md["proposalNumber"] = np.uint32(self.proposal)
        md["runNumber"] = np.uint32(self.run_number)
        if self.format_version == "1.3":
            md["runType"] = ""
            md["sample"] = ""
        for key, value in run_metadata.items():
            name = _METADATA_ALIASES.get(key, key)
            if name in _RESERVED_METADATA or not str(name).isidentifier():
                raise ConfigurationError(f"run_metadata key {key!r} cannot be set")
            if isinstance(value, (bool, np.bool_)):
                value = int(value)
            if isinstance(value, (int, np.integer)):
                value = np.int64(value)
            elif isinstance(value, (float, np.floating)):
                value = np.float64(value)
            elif not isinstance(value, str):
                raise ConfigurationError(
                    f"run_metadata[{key!r}] must be a str, int or float, not {type(value).__name__}"
                )
            md[name] = value
        return md

    def _aggregator(self, source: str) -> str:
        name = self._aggregator_cache.get(source)
        if name is None:
            custom = self._aggregator_of(source) if self._aggregator_of else None
            name = check_aggregator(custom or default_aggregator(source), source)
            self._aggregator_cache[source] = name
        return name

    # --- internals: validation ------------------------------------------------------------------
    def _check_usable(self) -> None:
        if self._failure is not None:
            raise StorageError(f"run writer stopped after an earlier error: {self._failure}")
        if self._closed:
            raise FileFormatError(f"run {self.run_number} is closed; no more trains can be written")

    def _prepare(
        self, data: Mapping[str, Mapping[str, Any]], meta: Mapping[str, Mapping[str, Any]]
    ) -> dict[str, _AggregatorPlan]:
        plans: dict[str, _AggregatorPlan] = {}
        for source, values in data.items():
            if not isinstance(source, str) or not source or source.startswith("/"):
                raise FileFormatError(f"invalid source name {source!r}")
            src_meta = meta.get(source)
            if src_meta is None and isinstance(values, Mapping):
                src_meta = values.get("metadata")
            if not src_meta or "timestamp.tid" not in src_meta:
                raise FileFormatError(
                    f"no train ID for source {source!r}: meta[{source!r}]['timestamp.tid'] missing"
                )
            try:
                tid = int(src_meta["timestamp.tid"])
            except (TypeError, ValueError):
                raise FileFormatError(
                    f"train ID of {source!r} is not an integer: {src_meta['timestamp.tid']!r}"
                ) from None
            if not 0 < tid < 2**64:
                raise FileFormatError(f"train ID {tid} of {source!r} out of range (must be > 0)")
            ts_ns = meta_to_ns(src_meta)
            source_plan = self._prepare_source(source, values, ts_ns)
            if source_plan is None:
                continue
            aggregator = self._aggregator(source)
            plan = plans.get(aggregator)
            if plan is None:
                plan = plans[aggregator] = _AggregatorPlan(tid, ts_ns)
            elif plan.train_id != tid:
                raise TrainOrderError(
                    f"sources of aggregator {aggregator} carry different train IDs in one call "
                    f"({plan.train_id} and {tid} for {source!r})"
                )
            plan.sources.append(source_plan)
        for aggregator, plan in plans.items():
            state = self._aggregators.get(aggregator)
            last = state.last_train if state else None
            if last is None or plan.train_id > last:
                continue
            if plan.train_id < last:
                raise TrainOrderError(
                    f"train {plan.train_id} arrived after train {last} for aggregator "
                    f"{aggregator} (sources {[sp.schema.source for sp in plan.sources]}); "
                    "trains must come in increasing train ID order; not written"
                )
            f = state.file
            for sp in plan.sources:
                if f is None or f.has_source_in_last_train(sp.schema.source):
                    raise TrainOrderError(
                        f"train {plan.train_id} of source {sp.schema.source!r} was already "
                        "written; duplicate not written"
                    )
        return plans

    def _prepare_source(
        self, source: str, values: Mapping[str, Any], ts_ns: int
    ) -> _SourcePlan | None:
        if not isinstance(values, Mapping):
            raise FileFormatError(f"data[{source!r}] must be a mapping of keys to values")
        if is_control_source(source):
            return self._prepare_control(source, values, ts_ns)
        return self._prepare_instrument(source, values)

    def _prepare_control(
        self, source: str, values: Mapping[str, Any], ts_ns: int
    ) -> _SourcePlan | None:
        fields: dict[str, dict[str, Any]] = {}
        for key, value in values.items():
            if key == "metadata":
                continue
            if key.endswith(".value"):
                base, kind = key[:-6], "value"
            elif key.endswith(".timestamp"):
                base, kind = key[:-10], "timestamp"
            else:
                base, kind = key, "value"
            path = "/".join(_split(source, base))
            slot = fields.setdefault(path, {})
            if kind in slot:
                raise FileFormatError(
                    f"source {source!r}: key {base!r} given twice (with and without '.value')"
                )
            slot[kind] = value
        if not fields:
            log.debug("source %s has no keys; skipped", source)
            return None
        columns: dict[str, np.ndarray] = {}
        stamps: dict[str, int] = {}
        for path, slot in fields.items():
            if "value" not in slot:
                raise FileFormatError(
                    f"source {source!r}: '{path.replace('/', '.')}.timestamp' has no value"
                )
            arr = _as_array(source, path, slot["value"])
            stamp = _control_stamp(source, path, slot.get("timestamp"), ts_ns)
            last = self._control_stamps.get((source, path), 0)
            if stamp < last:
                log.warning(
                    "%s %s: timestamp %d earlier than previous %d; stored as %d "
                    "(CONTROL timestamps must not decrease)",
                    source,
                    path,
                    stamp,
                    last,
                    last,
                )
                stamp = last
            stamps[path] = stamp
            columns[f"{path}/value"] = arr.reshape((1,) + arr.shape)
            columns[f"{path}/timestamp"] = np.array([stamp], dtype=np.uint64)
        schema = self._schema_for(source, True, {"": columns}, frozenset())
        rows = {"": (1, self._conform(schema, "", columns))}
        nbytes = sum(a.nbytes for a in columns.values() if a.dtype != object)
        return _SourcePlan(schema, rows, nbytes, stamps)

    def _prepare_instrument(self, source: str, values: Mapping[str, Any]) -> _SourcePlan | None:
        groups: dict[str, dict[str, np.ndarray]] = {}
        counts: dict[str, int] = {}
        frame_groups = set()
        for key, value in values.items():
            if key == "metadata":
                continue
            parts = _split(source, key)
            if len(parts) < 2:
                raise FileFormatError(
                    f"source {source!r}: key {key!r} has no index group; instrument keys are "
                    f"'<group>.<name>', e.g. 'data.{key}'"
                )
            group = parts[0]
            arr = _as_array(source, key, value)
            per_frame = bool(self._frame_groups(source, group))
            if per_frame:
                frame_groups.add(group)
                if arr.ndim == 0:
                    raise FileFormatError(
                        f"source {source!r}: {key!r} is per frame and needs the frame axis first"
                    )
                n = arr.shape[0]
            else:
                arr = arr.reshape((1,) + arr.shape)
                n = 1
            if counts.setdefault(group, n) != n:
                raise FileFormatError(
                    f"source {source!r}: arrays of group {group!r} differ in their number of "
                    f"frames ({counts[group]} vs {n} for {key!r})"
                )
            groups.setdefault(group, {})["/".join(parts)] = arr
        if not groups:
            log.debug("source %s has no keys; skipped", source)
            return None
        schema = self._schema_for(source, False, groups, frozenset(frame_groups))
        rows = {g: (counts[g], self._conform(schema, g, cols)) for g, cols in groups.items()}
        nbytes = sum(a.nbytes for cols in rows.values() for a in cols[1].values())
        return _SourcePlan(schema, rows, nbytes)

    def _schema_for(
        self,
        source: str,
        control: bool,
        groups: dict[str, dict[str, np.ndarray]],
        frame_groups: frozenset[str],
    ) -> SourceSchema:
        schema = self._schemas.get(source)
        if schema is not None:
            return schema
        specs = {
            g: {
                path: ColumnSpec(arr.dtype, arr.shape[1:], arr.dtype == object)
                for path, arr in cols.items()
            }
            for g, cols in groups.items()
        }
        run_values = None
        if control:
            run_values = {path: arr[:1] for path, arr in groups[""].items()}
            for key, value in self._run_values.get(source, {}).items():
                base = key.removesuffix(".value")
                path = "/".join(_split(source, base))
                if f"{path}/value" in run_values:
                    continue
                arr = _as_array(source, path, value)
                run_values[f"{path}/value"] = arr.reshape((1,) + arr.shape)
                run_values[f"{path}/timestamp"] = np.zeros(1, dtype=np.uint64)
        attributes = None
        if self.format_version == "1.3" and source in self._key_attributes:
            attributes = {}
            for key, attrs in self._key_attributes[source].items():
                base = key[:-6] if control and key.endswith(".value") else key
                attributes["/".join(_split(source, base))] = dict(attrs)
        chunk_bytes = sum(
            self._layout.chunk_rows(spec, g in frame_groups) * max(spec.entry_nbytes, 16)
            for g, cols in specs.items()
            for spec in cols.values()
        )
        # Not registered until the first train is written (see _ensure_schema).
        return SourceSchema(
            source, control, specs, frame_groups, run_values, attributes, chunk_bytes
        )

    def _ensure_schema(self, schema: SourceSchema) -> None:
        if schema.source not in self._schemas:
            self._schemas[schema.source] = schema

    def _conform(
        self, schema: SourceSchema, group: str, columns: dict[str, np.ndarray]
    ) -> dict[str, np.ndarray]:
        specs = schema.groups.get(group)
        source = schema.source
        if specs is None:
            raise FileFormatError(
                f"source {source!r}: index group {group!r} was not in the source's first train"
            )
        if specs.keys() != columns.keys():
            missing = sorted(specs.keys() - columns.keys())
            extra = sorted(columns.keys() - specs.keys())
            raise FileFormatError(
                f"source {source!r}: keys differ from the run's first train "
                f"(missing {_keys(missing)}, new {_keys(extra)})"
            )
        out = {}
        for path, arr in columns.items():
            spec = specs[path]
            if arr.shape[1:] != spec.entry_shape:
                raise FileFormatError(
                    f"source {source!r} key {_key(path)!r}: shape of one entry changed from "
                    f"{spec.entry_shape} to {arr.shape[1:]}"
                )
            if spec.is_string != (arr.dtype == object):
                raise FileFormatError(
                    f"source {source!r} key {_key(path)!r}: strings and numbers mixed"
                )
            if arr.dtype != spec.dtype:
                if not np.can_cast(arr.dtype, spec.dtype, "same_kind"):
                    raise FileFormatError(
                        f"source {source!r} key {_key(path)!r}: dtype {arr.dtype} cannot be "
                        f"stored as {spec.dtype}"
                    )
                arr = arr.astype(spec.dtype)
            out[path] = np.ascontiguousarray(arr)
        return out

    # --- internals: files -----------------------------------------------------------------------
    def _check_space(self, nbytes: int) -> None:
        if self.min_free_bytes <= 0:
            return
        try:
            free = shutil.disk_usage(self.run_dir).free
        except OSError:
            return
        nbytes += sum(s.file.chunk_reserve() for s in self._aggregators.values() if s.file)
        if free < nbytes + self.min_free_bytes:
            open_names = [
                s.file.path.name for s in self._aggregators.values() if s.file is not None
            ]
            message = (
                f"disk full: only {free / 1e6:.1f} MB free in {self.run_dir}, a train needs up "
                f"to {nbytes / 1e6:.1f} MB plus the reserve min_free_bytes="
                f"{self.min_free_bytes / 1e6:.1f} MB; train not written"
            )
            self._close_all()
            closed_now = [n for n in open_names if (self.run_dir / n).exists()]
            self._failure = StorageError(
                f"{message}; open files closed and valid: {', '.join(closed_now) or 'none'}"
            )
            self._failure.errno = errno.ENOSPC
            log.error("%s", self._failure)
            raise self._failure

    def _file_for(self, aggregator: str, train_id: int, timestamp_ns: int) -> SequenceFile:
        state = self._aggregators.get(aggregator)
        if state is None:
            state = self._aggregators[aggregator] = _AggregatorState(aggregator)
        f = state.file
        if f is not None and f.last_train_id == train_id:
            return f
        if f is not None and self._should_roll(f):
            state.file = None
            self._close_file(state, f)
            f = None
        if f is None:
            path = self.run_dir / run_file_name(
                self.data_category, self.run_number, aggregator, state.next_sequence
            )
            metadata = dict(self._metadata)
            try:
                f = SequenceFile(
                    path, sequence=state.next_sequence, metadata=metadata, layout=self._layout
                )
            except OSError as exc:
                raise _WriteFailed(None, exc, path) from exc
            state.next_sequence += 1
            state.file = f
            log.debug("opened %s", path.name)
            self._raise_if_failed(f)
        f.begin_train(train_id, timestamp_ns)
        return f

    def _should_roll(self, f: SequenceFile) -> bool:
        if self.sequence_trains is not None and f.ntrains >= self.sequence_trains:
            return True
        return self.sequence_bytes is not None and f.payload_bytes >= self.sequence_bytes

    def _close_file(self, state: _AggregatorState, f: SequenceFile) -> None:
        path = f.close()
        if path is None:
            raise _WriteFailed(f, f.io.error or OSError("write failed"))
        self._files.append(path)
        self._records.append(
            {
                "name": path.name,
                "aggregator": state.name,
                "sequence": f.sequence,
                "trains": f.ntrains,
                "first_train": f.train_ids[0] if f.train_ids else None,
                "last_train": f.train_ids[-1] if f.train_ids else None,
                "sources": f.sources(),
                "bytes": path.stat().st_size,
                "payload_bytes": f.payload_bytes,
            }
        )
        log.info("closed %s (%d trains)", path.name, f.ntrains)

    def _raise_if_failed(self, f: SequenceFile) -> None:
        if f.io.error is not None:
            raise _WriteFailed(f, f.io.error)

    def _close_all(self) -> None:
        """Close every open file, keeping those that finish cleanly; never raises."""
        for state in self._aggregators.values():
            f = state.file
            if f is None:
                continue
            state.file = None
            try:
                self._close_file(state, f)
            except Exception as exc:  # noqa: BLE001 - a failed file stays as .part
                log.error("could not finish %s: %s; left as %s", f.path.name, exc, f.part_path)
                try:
                    f.abandon()
                except Exception:
                    log.exception("closing %s failed", f.part_path)
        self._closed = True

    def _fail(self, f: SequenceFile | None, error: OSError, path: Path | None = None) -> None:
        if f is not None:
            try:
                f.abandon()
            except Exception:
                log.exception("closing %s failed", f.part_path)
        self._close_all()
        self._failure = _storage_error(f, error, len(self._files), path)
        log.error("%s", self._failure)
        raise self._failure from error


def _check_options(
    *,
    data_category: str,
    format_version: str,
    proposal: int,
    run_number: int,
    sequence_trains: int | None,
    sequence_bytes: int | None,
    flush_trains: int | None,
    chunk_trains: int,
    chunk_bytes: int,
    compression: str | None,
    compression_level: int | None,
) -> None:
    """Raise ConfigurationError for an option of :class:`RunWriter` out of its range."""
    if data_category not in DATA_CATEGORIES:
        raise ConfigurationError(
            f"data_category must be one of {DATA_CATEGORIES}, not {data_category!r}"
        )
    if format_version not in FORMAT_VERSIONS:
        raise ConfigurationError(
            f"format_version must be one of {FORMAT_VERSIONS}, not {format_version!r} "
            "(1.1 inverts INDEX/flag and is never written)"
        )
    if not 0 < int(proposal) <= 999_999:
        raise ConfigurationError(f"proposal must be 1..999999, not {proposal!r}")
    if not 0 < int(run_number) <= 9999:
        raise ConfigurationError(f"run_number must be 1..9999, not {run_number!r}")
    for name, value in (
        ("sequence_trains", sequence_trains),
        ("sequence_bytes", sequence_bytes),
        ("flush_trains", flush_trains),
    ):
        if value is not None and int(value) < 1:
            raise ConfigurationError(f"{name} must be at least 1 (or None), not {value!r}")
    if int(chunk_trains) < 1 or int(chunk_bytes) < 1:
        raise ConfigurationError("chunk_trains and chunk_bytes must be positive")
    if compression not in (None, "gzip", "lzf"):
        raise ConfigurationError(f"compression must be None, 'gzip' or 'lzf', not {compression!r}")
    if compression_level is not None and (compression != "gzip" or not 0 <= compression_level <= 9):
        raise ConfigurationError("compression_level needs compression='gzip' and 0..9")


class _WriteFailed(Exception):
    """Internal: a file's write failed (error recorded by its GuardedFile)."""

    def __init__(self, file: SequenceFile | None, error: OSError, path: Path | None = None):
        super().__init__(str(error))
        self.file = file
        self.error = error
        self.path = path


def _storage_error(
    f: SequenceFile | None, error: OSError, nclosed: int, path: Path | None = None
) -> StorageError:
    if f is not None:
        name, where, part = f.path.name, f.path.parent, f.part_path.name
    elif path is not None:
        name, where, part = path.name, path.parent, None
    else:
        name, where, part = "?", "?", None
    if getattr(error, "errno", None) in DISK_FULL_ERRNOS:
        what = f"disk full: no space left on device while writing {name} in {where}"
    else:
        what = f"I/O error while writing {name} in {where}"
    left = f"; the unfinished file stays as {part}" if part else ""
    exc = StorageError(
        f"{what} ({error.strerror or error}); the {nclosed} files closed before it are "
        f"complete and valid{left}"
    )
    exc.errno = getattr(error, "errno", None)
    return exc


def _split(source: str, key: str) -> list[str]:
    try:
        return split_key(key)
    except ValueError as exc:
        raise FileFormatError(f"source {source!r}: {exc}") from None


def _key(path: str) -> str:
    return path.replace("/", ".")


def _keys(paths: Iterable[str]) -> list[str]:
    return [_key(p) for p in paths]


def _as_array(source: str, key: str, value: Any) -> np.ndarray:
    """Convert one value to an array: numbers keep their dtype, strings become objects."""
    if isinstance(value, str):
        return np.array(value, dtype=object)
    if isinstance(value, bytes):
        return np.array(value.decode("utf-8", "surrogateescape"), dtype=object)
    arr = np.asarray(value)
    kind = arr.dtype.kind
    if kind in "biufc":
        return arr
    if kind in "US" or kind == "O":
        out = np.empty(arr.shape, dtype=object)
        flat = out.reshape(-1)
        for i, item in enumerate(arr.reshape(-1)):
            if isinstance(item, bytes):
                item = item.decode("utf-8", "surrogateescape")
            elif not isinstance(item, str):
                raise FileFormatError(
                    f"source {source!r} key {_key(key)!r}: unsupported value of type "
                    f"{type(item).__name__} in an object array"
                )
            flat[i] = item
        return out
    raise FileFormatError(
        f"source {source!r} key {_key(key)!r}: unsupported dtype {arr.dtype} "
        "(numbers, booleans and strings can be stored)"
    )


def _control_stamp(source: str, path: str, value: Any, ts_ns: int) -> int:
    """Timestamp of a control value in ns: given integers are ns, floats are seconds."""
    if value is None:
        return ts_ns
    arr = np.asarray(value)
    if arr.size != 1:
        raise FileFormatError(f"source {source!r}: '{_key(path)}.timestamp' must be a scalar")
    item = arr.reshape(()).item()
    if isinstance(item, float):
        return max(0, round(item * 1e9))
    if isinstance(item, (int, np.integer)) and not isinstance(item, bool):
        return max(0, int(item))
    raise FileFormatError(f"source {source!r}: '{_key(path)}.timestamp' must be a number")


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def aggregator_by_patterns(rules: Mapping[str, str]) -> Callable[[str], str | None]:
    """Build an ``aggregator_of`` callable from ``{source glob: aggregator}`` (first match)."""
    items = list(rules.items())

    def aggregator_of(source: str) -> str | None:
        for pattern, name in items:
            if fnmatch.fnmatchcase(source, pattern):
                return name
        return None

    return aggregator_of
