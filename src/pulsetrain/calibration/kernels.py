"""numba kernels behind :func:`pulsetrain.calibration.correct_agipd` and the dark statistics.

These functions do no validation: the public wrappers normalise every argument to one set of
types (C-contiguous arrays of fixed dtypes, float32 scalars, Python bools), so each kernel is
compiled once and then loaded from numba's on-disk cache (``cache=True``).

``fastmath`` is deliberately off: NaN constants and the NaN option for bad pixels must behave as
IEEE says, and the results must equal the numpy reference bit for bit.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

__all__ = ["accumulate_kernel", "common_mode_kernel", "correct_kernel", "parallel_copy"]

#: Side of the square ASIC over which common mode is estimated.
ASIC_SIZE = 64


@njit(parallel=True, cache=True, nogil=True)
def correct_kernel(
    raw,
    cells,
    thresholds,
    offset,
    rel_gain,
    bad_pixels,
    force_mg,
    mg_threshold,
    force_hg,
    hg_threshold,
    bad_to_nan,
    data,
    gain,
    mask,
):  # pragma: no cover - compiled (coverage cannot see inside)
    """Gain stage, force thresholds, offset, relative gain and mask of every pixel.

    One parallel item is one row of 128 pixels of one frame.  A first vectorised loop checks
    whether the whole row is in high gain (``digital < thresholds[0]``), the usual case away
    from Bragg peaks: then only the high-gain planes of the constants are read.  Otherwise one
    loop does all steps per pixel; it loads the constants of all three stages and *selects*
    (no data-dependent loads or branches), so LLVM vectorises it even though the gain stage
    changes from pixel to pixel.  The force thresholds can only move pixels that are not in
    high gain, so an all-high row needs neither.
    """
    n_frames = raw.shape[0]
    n_rows = raw.shape[2]
    n_cols = raw.shape[3]
    nan = np.float32(np.nan)
    for item in prange(n_frames * n_rows):
        f = item // n_rows
        r = item - f * n_rows
        c = cells[f]
        ra = raw[f, 0, r]
        rd = raw[f, 1, r]
        t0 = thresholds[0, c, r]
        o0 = offset[0, c, r]
        k0 = rel_gain[0, c, r]
        b0 = bad_pixels[0, c, r]
        out_data = data[f, r]
        out_gain = gain[f, r]
        out_mask = mask[f, r]
        all_high = True
        for x in range(n_cols):
            all_high &= np.float32(rd[x]) < t0[x]
        if all_high:
            for x in range(n_cols):
                v = (np.float32(ra[x]) - o0[x]) * k0[x]
                m = b0[x]
                if bad_to_nan:
                    v = nan if m != 0 else v
                out_data[x] = v
                out_gain[x] = 0
                out_mask[x] = m
            continue
        t1 = thresholds[1, c, r]
        o1 = offset[1, c, r]
        o2 = offset[2, c, r]
        k1 = rel_gain[1, c, r]
        k2 = rel_gain[2, c, r]
        b1 = bad_pixels[1, c, r]
        b2 = bad_pixels[2, c, r]
        for x in range(n_cols):
            a = np.float32(ra[x])
            d = np.float32(rd[x])
            # unconditional loads: lets LLVM turn the selects below into vector blends
            off0, off1, off2 = o0[x], o1[x], o2[x]
            rg0, rg1, rg2 = k0[x], k1[x], k2[x]
            bp0, bp1, bp2 = b0[x], b1[x], b2[x]
            g = np.uint8(0) if d < t0[x] else (np.uint8(1) if d < t1[x] else np.uint8(2))
            if force_mg:
                g = np.uint8(1) if (g == 2 and a - off1 < mg_threshold) else g
            if force_hg:
                g = np.uint8(0) if (g == 1 and a - off0 < hg_threshold) else g
            o = off0 if g == 0 else (off1 if g == 1 else off2)
            k = rg0 if g == 0 else (rg1 if g == 1 else rg2)
            m = bp0 if g == 0 else (bp1 if g == 1 else bp2)
            v = (a - o) * k
            if bad_to_nan:
                v = nan if m != 0 else v
            out_data[x] = v
            out_gain[x] = g
            out_mask[x] = m


@njit(cache=True, nogil=True)
def select_kth(values, k):  # pragma: no cover - compiled
    """Reorder ``values`` in place so that ``values[k]`` is its k-th smallest element, with
    nothing larger before it and nothing smaller after it (quickselect, median-of-3 pivot).

    ``values`` must not contain NaN.  Written out instead of ``np.partition``, which takes
    numba several seconds longer to compile.
    """
    lo = 0
    hi = values.shape[0] - 1
    while hi > lo:
        a, b, c = values[lo], values[(lo + hi) // 2], values[hi]
        pivot = max(min(a, b), min(max(a, b), c))
        i = lo
        j = hi
        while i <= j:
            while values[i] < pivot:
                i += 1
            while values[j] > pivot:
                j -= 1
            if i <= j:
                values[i], values[j] = values[j], values[i]
                i += 1
                j -= 1
        if k <= j:
            hi = j
        elif k >= i:
            lo = i
        else:
            break
    return values[k]


@njit(cache=True, nogil=True)
def median_of(values):  # pragma: no cover - compiled
    """Median of a non-empty float32 vector without NaN (reordered in place), as float32.

    For an even count the two middle values are averaged in float64 and rounded once to
    float32, exactly as the numpy reference does, so both give the same bits.
    """
    n = values.shape[0]
    k = n // 2
    hi = select_kth(values, k)
    if n % 2 == 1:
        return hi
    lo = values[0]
    for i in range(1, k):
        lo = max(lo, values[i])
    return np.float32(0.5 * (np.float64(lo) + np.float64(hi)))


@njit(parallel=True, cache=True, nogil=True)
def common_mode_kernel(data, gain, mask, threshold, min_pixels):  # pragma: no cover - compiled
    """Subtract, per frame and 64x64 ASIC, the median of its good, dark high-gain pixels.

    A pixel takes part in the estimate if it is in gain stage 0, its mask is 0 and its value
    is finite and below ``threshold``; if fewer than ``min_pixels`` take part the ASIC is left
    alone.  The median is subtracted from the high-gain pixels of the ASIC only.
    """
    n_frames, n_rows, n_cols = data.shape
    asic_rows = n_rows // ASIC_SIZE
    asic_cols = n_cols // ASIC_SIZE
    per_frame = asic_rows * asic_cols
    ninf = np.float32(-np.inf)
    for item in prange(n_frames * per_frame):
        f = item // per_frame
        rest = item - f * per_frame
        r0 = (rest // asic_cols) * ASIC_SIZE
        x0 = (rest % asic_cols) * ASIC_SIZE
        buf = np.empty(ASIC_SIZE * ASIC_SIZE, np.float32)
        n = 0
        for r in range(r0, r0 + ASIC_SIZE):
            for x in range(x0, x0 + ASIC_SIZE):
                v = data[f, r, x]
                if gain[f, r, x] == 0 and mask[f, r, x] == 0 and v < threshold and v > ninf:
                    buf[n] = v
                    n += 1
        if n > 0 and n >= min_pixels:
            cm = median_of(buf[:n])
            for r in range(r0, r0 + ASIC_SIZE):
                for x in range(x0, x0 + ASIC_SIZE):
                    if gain[f, r, x] == 0:
                        data[f, r, x] = data[f, r, x] - cm


@njit(parallel=True, cache=True, nogil=True)
def accumulate_kernel(raw, cells, reference, sum1, sum2):  # pragma: no cover - compiled
    """Add one chunk of dark frames to per-cell sums of ``raw - reference`` and its square.

    ``raw`` (frames, planes, rows, cols) uint16, ``reference`` (cells, planes, rows, cols)
    uint16, sums (cells, planes, rows, cols) float64.  Integer differences make the sums exact
    (below 2**53), and a pixel that never changes gets exactly zero variance.
    """
    n_frames, n_planes, n_rows, n_cols = raw.shape
    for item in prange(n_planes * n_rows):
        p = item // n_rows
        r = item - p * n_rows
        for f in range(n_frames):
            c = cells[f]
            for x in range(n_cols):
                v = np.float64(np.int32(raw[f, p, r, x]) - np.int32(reference[c, p, r, x]))
                sum1[c, p, r, x] += v
                sum2[c, p, r, x] += v * v


@njit(parallel=True, cache=True, nogil=True)
def parallel_copy(src, dst):  # pragma: no cover - compiled
    """``dst[:] = src`` for 1-d arrays, split over the numba threads (for benchmarks)."""
    for i in prange(src.shape[0]):
        dst[i] = src[i]
