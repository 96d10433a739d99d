"""Recycled output buffers for the fast path.

Fresh multi-megabyte arrays cost page faults on first touch, which on a busy machine takes
longer than filling them.  A :class:`BufferPool` keeps a few buffers and hands one out again
only when no array made from it is alive any more (its reference count says so), so reuse is
always safe: a train kept by the caller is never overwritten.
"""

from __future__ import annotations

import sys
import threading

import numpy as np

__all__ = ["BufferPool"]


class BufferPool:
    """Arrays of one shape and dtype, backed by recycled buffers.

    Parameters
    ----------
    shape : tuple of int
        Shape of the arrays.
    dtype : numpy dtype
        Their dtype.
    max_buffers : int
        Buffers kept for reuse; when all are in use a fresh, unpooled array is returned.
    """

    def __init__(self, shape: tuple[int, ...], dtype, max_buffers: int = 4):
        self.shape = tuple(int(n) for n in shape)
        self.dtype = np.dtype(dtype)
        self.nbytes = int(np.prod(self.shape)) * self.dtype.itemsize
        self.max_buffers = int(max_buffers)
        self._buffers: list[bytearray] = []
        self._lock = threading.Lock()

    def _array(self, buffer: bytearray) -> np.ndarray:
        return np.frombuffer(buffer, dtype=self.dtype).reshape(self.shape)

    def get(self) -> np.ndarray:
        """An array to fill (contents undefined)."""
        with self._lock:
            for buffer in self._buffers:
                # referenced only by the list, this loop and getrefcount's argument: free
                if sys.getrefcount(buffer) == 3:
                    return self._array(buffer)
            if len(self._buffers) < self.max_buffers:
                buffer = bytearray(self.nbytes)
                self._buffers.append(buffer)
                return self._array(buffer)
        return np.empty(self.shape, self.dtype)

    @property
    def pooled_nbytes(self) -> int:
        """Memory held by the pool, in bytes."""
        return len(self._buffers) * self.nbytes
