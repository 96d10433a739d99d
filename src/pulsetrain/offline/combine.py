"""Adding up partial results of a reduction: the modules of a chunk, the chunks of a run.

A reduction task computes, per frame, sums and valid-pixel counts per radial bin, peak counts
and pixel moments of *one module*; :func:`combine_parts` adds the modules of one chunk of trains
into per-frame results of the whole detector (sums, counts and peaks add; the moments combine
with Chan's formula), matching frames across modules by (train ID, pulse ID).
:func:`mean_profile` adds the chunks' bin totals into the run's mean profile.  Pure numpy:
used by :mod:`pulsetrain.offline.reduce` on the workers and by
:mod:`pulsetrain.offline.nexus` when it closes a file.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pulsetrain.errors import ConfigurationError

__all__ = ["combine_parts", "mean_profile"]


def _positions(index_tid: np.ndarray, index_pid: np.ndarray, tid: np.ndarray, pid: np.ndarray):
    """Positions of the (train ID, pulse ID) pairs in the index, sorted by (tid, pid); -1 where
    absent."""
    if tid.size == 0:
        return np.zeros(0, np.int64)
    if index_tid.size == 0:
        return np.full(tid.size, -1, np.int64)
    base = int(min(index_tid.min(), tid.min()))
    span = int(max(index_pid.max(), pid.max())) + 1
    width = int(max(index_tid.max(), tid.max())) - base + 1
    if width * span < 2**63:
        keys = (index_tid.astype(np.uint64) - np.uint64(base)) * np.uint64(span) + index_pid
        want = (tid.astype(np.uint64) - np.uint64(base)) * np.uint64(span) + pid
        pos = np.minimum(np.searchsorted(keys, want), keys.size - 1)
        return np.where(keys[pos] == want, pos, -1).astype(np.int64)
    lookup = {
        (int(t), int(p)): i for i, (t, p) in enumerate(zip(index_tid.tolist(), index_pid.tolist()))
    }
    return np.array(
        [lookup.get((int(t), int(p)), -1) for t, p in zip(tid.tolist(), pid.tolist())], np.int64
    )


def combine_parts(
    index: tuple[np.ndarray, np.ndarray, np.ndarray],
    parts: Sequence[dict[str, np.ndarray]],
    npt: int,
    min_peaks: int,
) -> dict[str, np.ndarray]:
    """Add the modules' partial results of one chunk into per-frame results (a Dask task)."""
    tid, pid, _cell = index
    n = tid.size
    sums = np.zeros((n, npt), np.float64)
    counts = np.zeros((n, npt), np.int64)
    peaks = np.zeros(n, np.int64)
    count = np.zeros(n, np.int64)
    total = np.zeros(n, np.float64)
    vmin = np.full(n, np.inf)
    vmax = np.full(n, -np.inf)
    modules = np.zeros(n, np.int16)
    located = []
    for part in parts:
        pos = _positions(tid, pid, part["train_id"], part["pulse_id"])
        if np.any(pos < 0):
            raise ConfigurationError("a module's frame is missing from the chunk's frame index")
        located.append(pos)
        sums[pos] += part["sums"]
        counts[pos] += part["counts"]
        peaks[pos] += part["peaks"]
        count[pos] += part["count"]
        total[pos] += part["sum"]
        has = part["count"] > 0
        vmin[pos[has]] = np.minimum(vmin[pos[has]], part["min"][has])
        vmax[pos[has]] = np.maximum(vmax[pos[has]], part["max"][has])
        modules[pos] += 1
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(count > 0, total / np.maximum(count, 1), np.nan)
        m2 = np.zeros(n, np.float64)
        for part, pos in zip(parts, located):
            c = part["count"]
            pmean = np.where(c > 0, part["sum"] / np.maximum(c, 1), 0.0)
            dev = np.where(c > 0, pmean - mean[pos], 0.0)
            m2[pos] += part["m2"] + c * dev * dev
        std = np.where(count > 0, np.sqrt(m2 / np.maximum(count, 1)), np.nan)
        intensity = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan).astype(np.float32)
    empty = count == 0
    vmin[empty] = np.nan
    vmax[empty] = np.nan
    return {
        "intensity": intensity,
        "n_peaks": peaks,
        "is_hit": peaks >= int(min_peaks),
        "pixel_count": count,
        "pixel_sum": total,
        "pixel_mean": mean,
        "pixel_std": std,
        "pixel_min": vmin,
        "pixel_max": vmax,
        "modules": modules,
        "bin_sums": sums.sum(axis=0),
        "bin_counts": counts.sum(axis=0),
    }


def mean_profile(
    totals: Sequence[tuple[np.ndarray, np.ndarray]], npt: int
) -> tuple[np.ndarray, np.ndarray]:
    """The run's mean profile from the chunks' ``(bin sums, bin counts)``, added in chunk
    order (so the result does not depend on which task finished first)."""
    sums = np.zeros(npt, np.float64)
    counts = np.zeros(npt, np.int64)
    for s, c in totals:
        sums += s
        counts += c
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    return mean, counts
