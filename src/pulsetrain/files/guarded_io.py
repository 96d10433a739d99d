"""A file object for HDF5 that never lets a failed write reach the HDF5 library.

HDF5 (2.0 with h5py 3.16, verified) does not survive a failed write: after ``ENOSPC`` the file
cannot be closed, and the next HDF5 call on *any* file may crash the process (segmentation
fault).  A DAQ writer must instead report the full disk and keep its process alive.

:class:`GuardedFile` is handed to ``h5py.File`` (its ``fileobj`` driver).  The first failing
write is recorded in :attr:`GuardedFile.error` and HDF5 is told it succeeded; from then on
writes are kept in memory only (so HDF5 reads back what it believes it wrote) and nothing more
reaches the disk.  The caller checks :attr:`error` after each HDF5 operation, raises its own
error, and can still close the HDF5 file cleanly.  The file on disk then holds exactly what was
written before the failure.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

__all__ = ["DISK_FULL_ERRNOS", "GuardedFile"]

#: errno values that mean "no space": device full, quota exceeded, file too large.
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})

# The system calls used, as module attributes so that tests can simulate failures.
_pwrite = os.pwrite
_ftruncate = os.ftruncate


class GuardedFile:
    """Seekable binary file over a file descriptor, whose write failures are contained.

    Parameters
    ----------
    path : path-like
        File to create (truncated if it exists).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        self._pos = 0
        self._size = 0
        #: The first OSError met while writing (None while all is well).
        self.error: OSError | None = None
        # Writes made after a failure: (offset, bytes), replayed over reads.
        self._shadow: list[tuple[int, bytes]] = []

    # --- the file-object interface used by h5py's fileobj driver -------------------------------
    def seek(self, pos: int, whence: int = os.SEEK_SET) -> int:
        if whence == os.SEEK_SET:
            self._pos = pos
        elif whence == os.SEEK_CUR:
            self._pos += pos
        else:
            self._pos = self._size + pos
        return self._pos

    def tell(self) -> int:
        return self._pos

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        n = view.nbytes
        pos = self._pos
        if self.error is None:
            try:
                done = 0
                while done < n:
                    done += _pwrite(self._fd, view[done:], pos + done)
            except OSError as exc:
                self.error = exc
                self._shadow.append((pos, bytes(view)))
        else:
            self._shadow.append((pos, bytes(view)))
        self._pos = pos + n
        self._size = max(self._size, self._pos)
        return n

    def readinto(self, buffer) -> int:
        view = memoryview(buffer).cast("B")
        n = view.nbytes
        pos = self._pos
        got = 0
        try:
            while got < n:
                k = os.preadv(self._fd, [view[got:]], pos + got)
                if k == 0:
                    break
                got += k
        except OSError:
            got = 0
        if got < n:
            view[got:] = bytes(n - got)
        for start, blob in self._shadow:
            lo, hi = max(start, pos), min(start + len(blob), pos + n)
            if lo < hi:
                view[lo - pos : hi - pos] = blob[lo - start : hi - start]
        self._pos = pos + n
        return n

    def read(self, size: int = -1) -> bytes:
        if size < 0:
            size = max(0, self._size - self._pos)
        buffer = bytearray(size)
        self.readinto(buffer)
        return bytes(buffer)

    def truncate(self, size: int | None = None) -> int:
        size = self._pos if size is None else size
        if self.error is None:
            try:
                _ftruncate(self._fd, size)
            except OSError as exc:
                self.error = exc
        self._size = size
        return size

    def flush(self) -> None:
        """Nothing to do: every write already went to the operating system."""

    def fsync(self) -> None:
        """Force the written data to stable storage (records a failure like a write does)."""
        if self.error is None and self._fd >= 0:
            try:
                os.fsync(self._fd)
            except OSError as exc:
                self.error = exc

    def close(self) -> None:
        """Close the file descriptor (idempotent)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self._shadow.clear()

    # --- helpers --------------------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        return self._fd < 0

    @property
    def disk_full(self) -> bool:
        """Whether the recorded error means the disk (or quota) is full."""
        return self.error is not None and self.error.errno in DISK_FULL_ERRNOS

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True
