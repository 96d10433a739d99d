"""Binned statistics for correlations: the mean and spread of y in bins of x."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pulsetrain.analysis.histogram import auto_range, bin_edges, bin_indices

__all__ = ["BinnedStatistics", "binned_statistics"]


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
