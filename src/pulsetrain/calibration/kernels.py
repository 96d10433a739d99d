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


#: Pixels of one parallel work item of :func:`correct_kernel` (16 rows of a module); the
#: pixels of a frame must be a multiple of it.
CHUNK = 2048
#: Pixels per all-high-gain test inside a chunk (one row of a module).
BLOCK = 128
_LOW_BYTES = np.uint64(0x0202020202020202)  # gain stage 2 in any byte of a uint64 word


@njit(inline="always")
def _correct_high(ra, o0, k0, b0, bad_to_nan, out_data, out_gain, out_mask):  # pragma: no cover
    """Pixels all in high gain: only stage 0's constants are read."""
    nan = np.float32(np.nan)
    for x in range(ra.shape[0]):
        v = (np.float32(ra[x]) - o0[x]) * k0[x]
        m = b0[x]
        if bad_to_nan:
            v = nan if m != 0 else v
        out_data[x] = v
        out_gain[x] = 0
        out_mask[x] = m


@njit(inline="always")
def _correct_mixed(
    ra,
    rd,
    t0,
    t1,
    o0,
    o1,
    k0,
    k1,
    b0,
    b1,
    force_mg,
    mg_threshold,
    force_hg,
    hg_threshold,
    bad_to_nan,
    out_data,
    out_gain,
    out_mask,
):  # pragma: no cover - compiled
    """Pixels in any stage: the gain stage of each, and data and mask as far as stage 1.

    Pixels that end in stage 2 get their gain here but data and mask from stage 1's
    constants; :func:`_fix_low` redoes them.  Only the constants of stages 0 and 1 are read,
    all of them unconditionally, and the stage is kept as two booleans combined with ``&`` and
    ``|`` (no short-circuit), so the loop has no branch and no masked load: LLVM turns the
    selects into vector blends.  Returns the number of pixels in stage 2.
    """
    nan = np.float32(np.nan)
    n_low = 0
    for x in range(ra.shape[0]):
        a = np.float32(ra[x])
        d = np.float32(rd[x])
        off0, off1 = o0[x], o1[x]
        rg0, rg1 = k0[x], k1[x]
        bp0, bp1 = b0[x], b1[x]
        # "not <" rather than ">=": a NaN threshold sends the pixel on, as in the reference
        medium = not d < t0[x]
        low = medium & (not d < t1[x])
        if force_mg:  # stage 2 -> 1
            low = low & (not a - off1 < mg_threshold)
        if force_hg:  # stage 1 (also if forced there) -> 0
            medium = low | (medium & (not a - off0 < hg_threshold))
        o = off1 if medium else off0
        k = rg1 if medium else rg0
        m = bp1 if medium else bp0
        v = (a - o) * k
        if bad_to_nan:
            v = nan if m != 0 else v
        out_data[x] = v
        out_gain[x] = np.uint8(medium) + np.uint8(low)
        out_mask[x] = m
        n_low += low
    return n_low


@njit(inline="always")
def _fix_low(ra, o2, k2, b2, bad_to_nan, out_data, out_gain, out_mask):  # pragma: no cover
    """Redo data and mask of the stage-2 pixels with stage 2's constants.

    Tests the gain bytes eight at a time (the length is a multiple of 8), so stage 2's
    constants are read only near pixels in low gain, a few per cent at most in real data.
    """
    nan = np.float32(np.nan)
    words = out_gain.view(np.uint64)
    for w in range(words.shape[0]):
        if not words[w] & _LOW_BYTES:
            continue
        for x in range(8 * w, 8 * w + 8):
            if out_gain[x] == 2:
                v = (np.float32(ra[x]) - o2[x]) * k2[x]
                m = b2[x]
                if bad_to_nan:
                    v = nan if m != 0 else v
                out_data[x] = v
                out_mask[x] = m


@njit(parallel=True, cache=True, nogil=True)
def correct_kernel(
    raw,
    cells,
    order,
    group_starts,
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

    All arrays C-contiguous; each frame and constant plane is viewed as one flat vector of
    pixels.  One parallel item is a chunk of :data:`CHUNK` pixels of one frame, so that the
    vector loops are long: each has a fixed cost on entry (alias checks, set-up, remainder)
    that loops over single rows of 128 pixels paid again and again.

    The frames come in groups of the same memory cell: ``order`` lists the frames sorted by
    cell, and group ``g`` is ``order[group_starts[g]:group_starts[g + 1]]``.  One parallel
    item is one chunk of one group, its frames corrected one after the other, so in a block
    of several trains each chunk's constants are read from memory once and then found in the
    cache, instead of once per frame (the constants are most of a frame's memory traffic).
    With every cell once, as in one train, an item is one chunk of one frame.

    A first pass tests each row-long block of a frame's chunk for "all pixels in high gain"
    (``digital < thresholds[0]``), the usual case away from Bragg peaks and the water ring:

    * all blocks high: :func:`_correct_high` over the chunk, reading stage 0's constants only;
    * no block high: :func:`_correct_mixed` over the chunk, then :func:`_fix_low` if needed;
    * some: each block by the one or the other.
    """
    n_frames = raw.shape[0]
    n_pixels = raw.shape[2] * raw.shape[3]
    n_cells = thresholds.shape[1]
    n_chunks = n_pixels // CHUNK
    n_groups = group_starts.shape[0] - 1
    n_blocks = CHUNK // BLOCK
    all_high = (1 << n_blocks) - 1
    raw_flat = raw.reshape(n_frames, 2, n_pixels)
    thr = thresholds.reshape(2, n_cells, n_pixels)
    off = offset.reshape(3, n_cells, n_pixels)
    rel = rel_gain.reshape(3, n_cells, n_pixels)
    bad = bad_pixels.reshape(3, n_cells, n_pixels)
    data_flat = data.reshape(n_frames, n_pixels)
    gain_flat = gain.reshape(n_frames, n_pixels)
    mask_flat = mask.reshape(n_frames, n_pixels)
    for item in prange(n_groups * n_chunks):
        g = item // n_chunks
        s = (item - g * n_chunks) * CHUNK
        e = s + CHUNK
        for p in range(group_starts[g], group_starts[g + 1]):
            f = order[p]
            c = cells[f]
            ra = raw_flat[f, 0, s:e]
            rd = raw_flat[f, 1, s:e]
            t0 = thr[0, c, s:e]
            o0 = off[0, c, s:e]
            k0 = rel[0, c, s:e]
            b0 = bad[0, c, s:e]
            out_data = data_flat[f, s:e]
            out_gain = gain_flat[f, s:e]
            out_mask = mask_flat[f, s:e]
            high_blocks = 0  # bit j set: block j all in high gain
            for j in range(n_blocks):
                high = True
                for x in range(j * BLOCK, j * BLOCK + BLOCK):
                    high &= np.float32(rd[x]) < t0[x]
                if high:
                    high_blocks |= 1 << j
            if high_blocks == all_high:
                _correct_high(ra, o0, k0, b0, bad_to_nan, out_data, out_gain, out_mask)
                continue
            t1 = thr[1, c, s:e]
            o1 = off[1, c, s:e]
            o2 = off[2, c, s:e]
            k1 = rel[1, c, s:e]
            k2 = rel[2, c, s:e]
            b1 = bad[1, c, s:e]
            b2 = bad[2, c, s:e]
            # a chunk with no high block is done in one go, others block by block
            step = CHUNK if high_blocks == 0 else BLOCK
            for u in range(0, CHUNK, step):
                v = u + step
                if high_blocks & (1 << (u // BLOCK)):
                    _correct_high(ra[u:v], o0[u:v], k0[u:v], b0[u:v], bad_to_nan,
                                  out_data[u:v], out_gain[u:v], out_mask[u:v])  # fmt: skip
                elif _correct_mixed(ra[u:v], rd[u:v], t0[u:v], t1[u:v], o0[u:v], o1[u:v],
                                    k0[u:v], k1[u:v], b0[u:v], b1[u:v], force_mg, mg_threshold,
                                    force_hg, hg_threshold, bad_to_nan, out_data[u:v],
                                    out_gain[u:v], out_mask[u:v]):  # fmt: skip
                    _fix_low(ra[u:v], o2[u:v], k2[u:v], b2[u:v], bad_to_nan,
                             out_data[u:v], out_gain[u:v], out_mask[u:v])  # fmt: skip


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
