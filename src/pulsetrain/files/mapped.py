"""Zero-copy rows of uncompressed HDF5 datasets, through a memory map of the file.

An uncompressed dataset stores each chunk (or, with contiguous layout, the whole dataset) as
one run of bytes in the file, in C order.  When a chunk holds whole rows (the chunk shape is
``(rows, *entry_shape)``), rows ``r0:r1`` that lie in chunks stored one after the other are
one run of bytes, so they can be handed out as a numpy view on a memory map of the file: no
HDF5 read, no copy.  Rows spread over chunks stored apart are copied chunk by chunk from the
map into one new array (one copy, instead of HDF5's read into its chunk cache and copy out).
A dataset is mapped only when every chunk within its extent has been written.

Anything else - compressed or filtered data, strings and other types HDF5 would convert,
compact or virtual layouts, chunks never written (fill values), files with a user block or a
driver other than ``sec2`` - is read through h5py as usual.  :class:`Column` hides the
difference.

Pages of the map are read from the disk when first touched (usually by the thread that
sends them).  When that makes the process wait for the disk (major page faults), the views
handed out next come with a ``MADV_WILLNEED`` hint, so the kernel reads them ahead while
earlier trains are being sent; files already in the page cache get no hints (they would only
cost time).

The map is private (copy-on-write): arrays are writeable like ones h5py returns, writes never
reach the file.  Views keep the map alive; it is unmapped when the last one is gone.  As with
any memory map, a file truncated while mapped makes later access fail with SIGBUS; European
XFEL run files are never modified once closed (pulsetrain's writer renames finished files to
``.h5``).
"""

from __future__ import annotations

import logging
import mmap
import os
from typing import Any

import h5py
import numpy as np

try:
    import resource
except ImportError:  # pragma: no cover - not on Windows
    resource = None

__all__ = ["Column", "FileMaps"]

log = logging.getLogger(__name__)

#: Numeric kinds whose in-file bytes are exactly numpy's (no HDF5 type conversion).
_PLAIN_KINDS = "iuf"

#: Views smaller than this get no read-ahead hint (not worth a system call).
_ADVISE_MIN_BYTES = 256 << 10

#: After a major page fault, this many views get a read-ahead hint.
_ADVISE_AFTER_FAULT = 256


def _major_faults() -> int:
    """Page faults of this process that had to wait for the disk (0 where unknown)."""
    if resource is None:
        return 0
    return resource.getrusage(resource.RUSAGE_SELF).ru_majflt


class FileMaps:
    """Memory maps of the files of one reading pass, made on first use.

    ``FileMaps(enabled=False)`` maps nothing (every column is read through h5py).
    """

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self._maps: dict[str, np.ndarray | None] = {}
        self._faults = _major_faults()
        self._advise_left = 0

    def will_need(self, data: np.ndarray, start: int, nbytes: int) -> None:
        """Ask the kernel to read bytes ``start:start+nbytes`` of a map ahead of use.

        Only while the process has recently had to wait for the disk (major page faults):
        for data already in the page cache the hint would only cost time.
        """
        if nbytes < _ADVISE_MIN_BYTES:
            return
        faults = _major_faults()
        if faults != self._faults:
            self._faults = faults
            if not self._advise_left:
                log.debug("run files not (all) in the page cache: reading ahead")
            self._advise_left = _ADVISE_AFTER_FAULT
        if not self._advise_left:
            return
        self._advise_left -= 1
        mm = data.base.obj if isinstance(data.base, memoryview) else None
        if mm is None:
            return
        begin = start - start % mmap.PAGESIZE
        try:
            mm.madvise(mmap.MADV_WILLNEED, begin, start + nbytes - begin)
        except (OSError, ValueError, AttributeError):
            pass  # only a hint

    def bytes_of(self, h5file: h5py.File) -> np.ndarray | None:
        """The whole file as a uint8 array on a private map, or None if it cannot be mapped."""
        if not self.enabled:
            return None
        name = h5file.filename
        if name in self._maps:
            return self._maps[name]
        data = None
        try:
            if h5file.driver == "sec2" and h5file.userblock_size == 0:
                with open(name, "rb") as fh:
                    size = os.fstat(fh.fileno()).st_size
                    if size > 0:
                        data = np.frombuffer(
                            mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_COPY), dtype=np.uint8
                        )
        except (OSError, ValueError) as exc:
            log.info("cannot map %s (read through h5py): %s", name, exc)
        self._maps[name] = data
        return data

    def release(self, names: list[str]) -> None:
        """Forget the maps of files *names* (each is unmapped once no array uses it any more;
        a later :meth:`bytes_of` maps the file again)."""
        for name in names:
            self._maps.pop(name, None)


class Column:
    """Rows of one dataset of one file, as zero-copy views where the layout allows.

    Parameters
    ----------
    ds : h5py.Dataset
        The dataset (rows along the first axis).
    maps : FileMaps
        Where to get the file's memory map.
    """

    def __init__(self, ds: h5py.Dataset, maps: FileMaps) -> None:
        self.strings = h5py.check_string_dtype(ds.dtype) is not None
        self.ds = ds.asstr() if self.strings else ds
        self.dtype = np.dtype(object) if self.strings else ds.dtype
        self.entry_shape: tuple[int, ...] = tuple(ds.shape[1:])
        self.nrows = int(ds.shape[0]) if ds.shape else 0
        self.row_bytes = int(np.prod(self.entry_shape, dtype=np.int64)) * ds.dtype.itemsize
        self._bytes: np.ndarray | None = None
        self._chunk_rows = 0
        self._offsets: np.ndarray | None = None  # byte offset of each chunk in the file
        self._run: np.ndarray | None = None  # chunks stored back to back share a run number
        self._align = max(1, ds.dtype.alignment)
        if ds.shape and not self.strings and self.row_bytes > 0:
            try:
                self._map_layout(ds, maps)
            except Exception as exc:  # noqa: BLE001 - any surprise: read through h5py
                log.debug("%s: read through h5py (%s)", ds.name, exc)
                self._bytes = None

    @property
    def mapped(self) -> bool:
        """True if rows come from the memory map (no HDF5 read)."""
        return self._bytes is not None

    def _map_layout(self, ds: h5py.Dataset, maps: FileMaps) -> None:
        if ds.dtype.kind not in _PLAIN_KINDS or ds.dtype.hasobject:
            return
        if not h5py.h5t.py_create(ds.dtype).equal(ds.id.get_type()):
            return  # HDF5 would convert the stored type
        dcpl = ds.id.get_create_plist()
        if dcpl.get_nfilters() != 0:
            return
        layout = dcpl.get_layout()
        if layout == h5py.h5d.CONTIGUOUS:
            offset = ds.id.get_offset()
            if offset is None:
                return  # never written: fill values
            chunk_rows = max(1, self.nrows)
            offsets = np.array([offset], dtype=np.int64)
        elif layout == h5py.h5d.CHUNKED:
            chunks = ds.chunks
            if chunks is None or tuple(chunks[1:]) != self.entry_shape:
                return  # a chunk does not hold whole rows
            chunk_rows = int(chunks[0])
            offsets = self._chunk_offsets(ds, chunk_rows)
            if offsets is None:
                return
        else:
            return  # compact, virtual
        data = maps.bytes_of(ds.file)
        if data is None:
            return
        if offsets.size == 0 or (offsets < 0).any():
            return  # chunks never written (fill values): HDF5 makes them up
        if int((offsets + chunk_rows * self.row_bytes).max()) > data.size:
            return  # layout points beyond the end of the file
        follows = np.zeros(offsets.size, dtype=bool)
        follows[1:] = offsets[1:] == offsets[:-1] + chunk_rows * self.row_bytes
        self._run = np.cumsum(~follows)
        self._offsets = offsets
        self._chunk_rows = chunk_rows
        self._bytes = data
        self._maps = maps

    def _chunk_offsets(self, ds: h5py.Dataset, chunk_rows: int) -> np.ndarray | None:
        n_chunks = -(-self.nrows // chunk_rows)
        offsets = np.full(n_chunks, -1, dtype=np.int64)
        full = chunk_rows * self.row_bytes
        bad = []

        def record(row: int, offset: int, size: int, filter_mask: int) -> None:
            k = row // chunk_rows
            if k < n_chunks:
                if size != full or filter_mask != 0:
                    bad.append(k)
                offsets[k] = offset

        dsid = ds.id
        if hasattr(dsid, "chunk_iter"):
            dsid.chunk_iter(
                lambda info: record(
                    info.chunk_offset[0], info.byte_offset, info.size, info.filter_mask
                )
            )
        else:  # older HDF5: one query per chunk
            for i in range(dsid.get_num_chunks()):
                info = dsid.get_chunk_info(i)
                record(info.chunk_offset[0], info.byte_offset, info.size, info.filter_mask)
        if bad:
            return None
        return offsets

    # ----------------------------------------------------------------------------------------

    def empty(self) -> np.ndarray:
        """Zero rows of this column's dtype and entry shape."""
        return np.empty((0,) + self.entry_shape, dtype=self.dtype)

    def rows(self, r0: int, r1: int) -> np.ndarray:
        """Rows ``r0:r1`` (a view on the map when they are stored back to back)."""
        if r1 <= r0:
            return self.empty()
        if self._bytes is None or r1 > self.nrows:
            return self.ds[r0:r1]
        start = self._contiguous_start(r0, r1)
        if start is not None:
            return self._view(start, r1 - r0)
        c = self._chunk_rows
        k0, k1 = r0 // c, (r1 - 1) // c
        offsets = self._offsets
        out = np.empty((r1 - r0,) + self.entry_shape, dtype=self.dtype)
        flat = out.reshape(-1).view(np.uint8)
        pos = 0
        for k in range(k0, k1 + 1):
            a = max(r0, k * c)
            b = min(r1, (k + 1) * c)
            start = int(offsets[k]) + (a - k * c) * self.row_bytes
            n = (b - a) * self.row_bytes
            flat[pos : pos + n] = self._bytes[start : start + n]
            pos += n
        return out

    def _view(self, start: int, n: int) -> np.ndarray:
        self._maps.will_need(self._bytes, start, n * self.row_bytes)
        raw = self._bytes[start : start + n * self.row_bytes]
        return raw.view(self.dtype).reshape((n,) + self.entry_shape)

    def take(self, firsts: np.ndarray, counts: np.ndarray) -> list[Any]:
        """Per train ``i``: rows ``firsts[i] : firsts[i] + counts[i]`` (empty where 0).

        One h5py read covers all trains (unmapped columns), or one view when all rows are
        stored back to back; otherwise one view (or copy) per train.
        """
        firsts_list = firsts.tolist()
        counts_list = counts.tolist()
        r0 = r1 = -1
        for f, n in zip(firsts_list, counts_list):
            if n > 0:
                if r0 < 0 or f < r0:
                    r0 = f
                r1 = max(r1, f + n)
        if r0 < 0:
            return [self.empty()] * len(counts_list)
        block = None
        if self._bytes is None or r1 > self.nrows:
            block = self.ds[r0:r1]
        else:
            start = self._contiguous_start(r0, r1)
            if start is not None:
                block = self._view(start, r1 - r0)
        out: list[Any] = []
        empty = None
        for f, n in zip(firsts_list, counts_list):
            if n == 0:
                if empty is None:
                    empty = self.empty()
                out.append(empty)
            elif block is not None:
                out.append(block[f - r0 : f - r0 + n])
            else:
                out.append(self.rows(f, f + n))
        return out

    def _contiguous_start(self, r0: int, r1: int) -> int | None:
        """Byte offset of rows ``r0:r1`` in the map if they are stored back to back (and
        aligned for a view), else None."""
        c = self._chunk_rows
        k0, k1 = r0 // c, (r1 - 1) // c
        if self._run[k0] != self._run[k1]:
            return None
        start = int(self._offsets[k0]) + (r0 - k0 * c) * self.row_bytes
        return start if start % self._align == 0 else None
