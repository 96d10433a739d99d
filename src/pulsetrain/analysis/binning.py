"""Binned statistics for correlations: the mean and spread of y in bins of x."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pulsetrain.analysis.histogram import auto_range, bin_edges, bin_indices

__all__ = ["BinnedStatistics", "ScatterPoints", "binned_statistics"]


@dataclass(frozen=True)
class BinnedStatistics:
    """Per-bin count, mean and standard deviation (ddof 0) of y; NaN for empty bins."""

    edges: np.ndarray
    count: np.ndarray
    mean: np.ndarray
    std: np.ndarray

    @property
    def centres(self) -> np.ndarray:
        """Bin centres."""
        return 0.5 * (self.edges[:-1] + self.edges[1:])


def binned_statistics(
    x: np.ndarray,
    y: np.ndarray,
    bins: int,
    value_range: tuple[float, float] | None = None,
) -> BinnedStatistics:
    """Bin the points ``(x, y)`` in ``x`` and give the count, mean and std of ``y`` per bin.

    Parameters
    ----------
    x, y : ndarray, shape (k,)
        The points (non-finite ones are left out).
    bins : int
        Number of equal bins.
    value_range : (float, float), optional
        Bin range in x; None or (0, 0): min and max of the finite x (equal: ±0.5).

    Returns
    -------
    BinnedStatistics
        A point's bin is ``numpy.histogram``'s (the last bin includes its right edge).
    """
    x = np.asarray(x, dtype=np.float64).ravel()
    y = np.asarray(y, dtype=np.float64).ravel()
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if value_range is None or tuple(float(v) for v in value_range) == (0.0, 0.0):
        value_range = auto_range(x)
    edges = bin_edges(bins, value_range)
    idx = bin_indices(x, edges)
    nb = len(edges) - 1
    count = np.bincount(idx[idx >= 0], minlength=nb).astype(np.int64)
    mean = np.full(nb, np.nan)
    std = np.full(nb, np.nan)
    order = np.argsort(idx, kind="stable")
    sorted_idx = idx[order]
    starts = np.searchsorted(sorted_idx, np.arange(nb), side="left")
    ends = np.searchsorted(sorted_idx, np.arange(nb), side="right")
    for b in np.flatnonzero(count):
        values = y[order[starts[b] : ends[b]]]
        mean[b] = np.mean(values)
        std[b] = np.std(values)
    return BinnedStatistics(edges, count, mean, std)


class ScatterPoints:
    """The newest ``capacity`` points ``(x, y, train ID)`` in preallocated arrays.

    Parameters
    ----------
    capacity : int
        Points kept (>= 1); older ones are dropped first.
    """

    def __init__(self, capacity: int) -> None:
        self._alloc(int(capacity))

    def _alloc(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self._x = np.empty(capacity)
        self._y = np.empty(capacity)
        self._tid = np.empty(capacity, dtype=np.uint64)
        self._n = 0
        self._head = 0  # where the next point goes

    def __len__(self) -> int:
        return self._n

    def add(self, x: float, y: float, train_id: int) -> None:
        """Add a point (dropping the oldest when full)."""
        i = self._head
        self._x[i], self._y[i], self._tid[i] = x, y, train_id
        self._head = (i + 1) % self.capacity
        self._n = min(self._n + 1, self.capacity)

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(x, y, train IDs)``, oldest first (new arrays)."""
        if self._n < self.capacity:
            return self._x[: self._n].copy(), self._y[: self._n].copy(), self._tid[: self._n].copy()
        order = np.r_[self._head : self.capacity, 0 : self._head]
        return self._x[order], self._y[order], self._tid[order]

    def clear(self) -> None:
        """Forget all points."""
        self._n = 0
        self._head = 0

    def resize(self, capacity: int) -> None:
        """Keep the newest ``capacity`` points."""
        x, y, tid = self.arrays()
        self._alloc(int(capacity))
        for xi, yi, ti in zip(x[-capacity:], y[-capacity:], tid[-capacity:]):
            self.add(float(xi), float(yi), int(ti))
