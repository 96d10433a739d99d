"""Histograms of pixel values with numpy's bin rule, fast enough for a detector per train.

:func:`histogram` and :func:`pulse_histograms` give exactly what ``numpy.histogram`` gives on
the same values converted to float64 (equal bins, the last bin includes its right edge, values
outside the range and non-finite values are left out), in one single-threaded numba pass that
needs no temporary copies.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from pulsetrain.errors import ConfigurationError

__all__ = [
    "auto_range",
    "bin_edges",
    "bin_indices",
    "finite_moments",
    "finite_range",
    "finite_scan",
    "histogram",
    "pulse_histograms",
    "pulse_histograms_moments",
]


def auto_range(values: np.ndarray) -> tuple[float, float]:
    """``(min, max)`` of the finite values (numpy's rule when equal: ``v ± 0.5``; none: (0, 1)).

    Parameters
    ----------
    values : ndarray
        Any real array.

    Returns
    -------
    tuple of float
    """
    found = finite_range(values)
    if found is None:
        return 0.0, 1.0
    lo, hi = found
    if lo == hi:
        lo, hi = lo - 0.5, hi + 0.5
    return lo, hi


def bin_edges(bins: int, value_range: tuple[float, float]) -> np.ndarray:
    """``numpy.linspace(lo, hi, bins + 1)`` after checking ``bins >= 1`` and ``lo < hi``.

    Raises
    ------
    ConfigurationError
        Bad bin count or range.
    """
    lo, hi = (float(v) for v in value_range)
    if int(bins) < 1:
        raise ConfigurationError(f"bins must be >= 1, got {bins}")
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ConfigurationError(f"histogram range needs finite lo < hi, got ({lo}, {hi})")
    return np.linspace(lo, hi, int(bins) + 1)


@numba.njit(cache=True, nogil=True)
def _histogram_3d(values, edges, counts):  # pragma: no cover - compiled
    """counts[p] += histogram of values[p] (3-D values, any strides, float64 comparisons).

    The first guess of a bin multiplies by ``bins / (hi - lo)`` where numpy divides by
    ``(hi - lo) / bins``; both are then corrected against the edges exactly as numpy does, so
    both land in the bin whose edges hold the value.
    """
    nb = edges.shape[0] - 1
    lo = edges[0]
    hi = edges[nb]
    scale = nb / (hi - lo)
    for p in range(values.shape[0]):
        c = counts[p]
        for r in range(values.shape[1]):
            for j in range(values.shape[2]):
                v = np.float64(values[p, r, j])
                if v >= lo and v <= hi:
                    i = min(int((v - lo) * scale), nb - 1)
                    if v < edges[i]:
                        i -= 1
                    elif i != nb - 1 and v >= edges[i + 1]:
                        i += 1
                    c[i] += 1


@numba.njit(cache=True, nogil=True)
def _histogram_moments_3d(values, edges, counts):  # pragma: no cover - compiled
    """:func:`_histogram_3d` and, in the same pass, count, sum and sum of squares of all finite
    values (in range or not): one read of the data instead of two when the range is known."""
    nb = edges.shape[0] - 1
    lo = edges[0]
    hi = edges[nb]
    scale = nb / (hi - lo)
    n = 0
    s = 0.0
    s2 = 0.0
    for p in range(values.shape[0]):
        c = counts[p]
        for r in range(values.shape[1]):
            for j in range(values.shape[2]):
                v = np.float64(values[p, r, j])
                if math.isfinite(v):
                    n += 1
                    s += v
                    s2 += v * v
                    if v >= lo and v <= hi:
                        i = min(int((v - lo) * scale), nb - 1)
                        if v < edges[i]:
                            i -= 1
                        elif i != nb - 1 and v >= edges[i + 1]:
                            i += 1
                        c[i] += 1
    return n, s, s2


@numba.njit(cache=True, nogil=True)
def _finite_scan(values):  # pragma: no cover - compiled
    """Count, sum, sum of squares, min and max of the finite values, in one pass."""
    n = 0
    s = 0.0
    s2 = 0.0
    lo = np.inf
    hi = -np.inf
    for p in range(values.shape[0]):
        for r in range(values.shape[1]):
            for j in range(values.shape[2]):
                v = np.float64(values[p, r, j])
                if math.isfinite(v):
                    n += 1
                    s += v
                    s2 += v * v
                    lo = min(lo, v)
                    hi = max(hi, v)
    return n, s, s2, lo, hi


def finite_scan(values: np.ndarray) -> tuple[int, float, float, float, float]:
    """``(count, sum, sum of squares, min, max)`` of the finite values (float64, one numba
    pass, no copies); min > max when there is none."""
    v = _as_3d(values)
    if v.size == 0:
        return 0, 0.0, 0.0, math.inf, -math.inf
    n, s, s2, lo, hi = _finite_scan(v)
    return int(n), float(s), float(s2), float(lo), float(hi)


def finite_moments(values: np.ndarray) -> tuple[int, float, float]:
    """``(count, sum, sum of squares)`` of the finite values, in float64 (numba, no copies)."""
    return finite_scan(values)[:3]


def _as_3d(values: np.ndarray) -> np.ndarray:
    """A 3-D view (pulses, rows, columns) of real values, without copying when possible."""
    v = np.asarray(values)
    if v.dtype.kind not in "fiu" or v.dtype.itemsize > 8:
        raise ConfigurationError(f"histogram values must be real numbers, got {v.dtype}")
    if v.ndim == 0:
        v = v.reshape(1, 1, 1)
    elif v.ndim == 1:
        v = v.reshape(1, 1, -1)
    elif v.ndim == 2:
        v = v[:, np.newaxis, :]
    elif v.ndim > 3:
        v = v.reshape(v.shape[0], v.shape[1], -1)
    return v


def finite_range(values: np.ndarray) -> tuple[float, float] | None:
    """``(min, max)`` of the finite values, or None if there is none (numba, no copies)."""
    n, _, _, lo, hi = finite_scan(values)
    return (lo, hi) if n else None


def pulse_histograms(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """One histogram per entry of the first axis (one per pulse).

    Parameters
    ----------
    values : ndarray, shape (n, ...)
        Values of ``n`` pulses (any further shape; NaN and inf are left out).
    edges : ndarray of float64, shape (bins + 1,)
        Equal bins, from :func:`bin_edges`.

    Returns
    -------
    ndarray of int64, shape (n, bins)
        Row ``p`` equals ``numpy.histogram(values[p].astype(float64), bins=edges)[0]``.
    """
    v = _as_3d(values)
    edges = np.ascontiguousarray(edges, dtype=np.float64)
    counts = np.zeros((v.shape[0], len(edges) - 1), dtype=np.int64)
    if v.size:
        _histogram_3d(v, edges, counts)
    return counts


def pulse_histograms_moments(
    values: np.ndarray, edges: np.ndarray
) -> tuple[np.ndarray, int, float, float]:
    """:func:`pulse_histograms` and the moments of :func:`finite_moments`, in one pass.

    Parameters
    ----------
    values : ndarray, shape (n, ...)
        Values of ``n`` pulses (NaN and inf are left out of everything).
    edges : ndarray of float64, shape (bins + 1,)
        Equal bins, from :func:`bin_edges`.

    Returns
    -------
    counts : ndarray of int64, shape (n, bins)
        As :func:`pulse_histograms`.
    count, total, total_sq : int, float, float
        Number, sum and sum of squares (float64) of all finite values, in range or not.
    """
    v = _as_3d(values)
    edges = np.ascontiguousarray(edges, dtype=np.float64)
    counts = np.zeros((v.shape[0], len(edges) - 1), dtype=np.int64)
    if v.size == 0:
        return counts, 0, 0.0, 0.0
    n, s, s2 = _histogram_moments_3d(v, edges, counts)
    return counts, int(n), float(s), float(s2)


def histogram(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Histogram of all values: ``numpy.histogram(values.astype(float64), bins=edges)[0]``.

    Parameters
    ----------
    values : ndarray
        Any shape; NaN and inf are left out.
    edges : ndarray of float64, shape (bins + 1,)
        Equal bins, from :func:`bin_edges`.

    Returns
    -------
    ndarray of int64, shape (bins,)
    """
    v = _as_3d(values)
    return pulse_histograms(v, edges).sum(axis=0)


def bin_indices(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """numpy.histogram's bin of every value (−1: outside the range or not finite).

    Parameters
    ----------
    values : ndarray
        1-D values.
    edges : ndarray of float64
        Equal bins, from :func:`bin_edges`.

    Returns
    -------
    ndarray of intp, same length as ``values``
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    edges = np.asarray(edges, dtype=np.float64)
    nb = len(edges) - 1
    lo, hi = edges[0], edges[-1]
    keep = (v >= lo) & (v <= hi)
    idx = np.full(v.shape, -1, dtype=np.intp)
    vk = v[keep]
    i = (((vk - lo) / (hi - lo)) * nb).astype(np.intp)
    i[i == nb] -= 1
    i[vk < edges[i]] -= 1
    i[(vk >= edges[i + 1]) & (i != nb - 1)] += 1
    idx[keep] = i
    return idx
