"""Per-pulse hit finding by counting Bragg peaks, and a rolling hit rate over trains.

A *peak* is a local maximum above a threshold in a corrected frame: a pixel whose value exceeds
``threshold``, is not smaller than any of its 8 neighbours within the same module (ties go to the
first pixel in memory order, so a flat-topped peak counts once), and has at least
``min_pixels`` pixels above threshold in its 3 × 3 neighbourhood (itself included; 2 or more
rejects isolated hot pixels).  NaN and masked pixels are never peaks and never compete with a
neighbour.  ``method="pixels"`` instead counts every valid pixel above the threshold.

A pulse is a *hit* when it has at least ``min_peaks`` peaks.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable

import numba
import numpy as np

from pulsetrain.errors import ConfigurationError, DataShapeError

log = logging.getLogger(__name__)

METHODS = ("maxima", "pixels")


@numba.njit(inline="always")
def _is_peak(img, mk, use_mask, i, j, threshold, min_pixels):  # pragma: no cover - compiled
    """Whether pixel (i, j), already known to be valid and above threshold, is a counted peak."""
    ny, nx = img.shape
    v = img[i, j]
    above = 0
    for di in range(-1, 2):
        ii = i + di
        if ii < 0 or ii >= ny:
            continue
        for dj in range(-1, 2):
            jj = j + dj
            if jj < 0 or jj >= nx:
                continue
            if use_mask and mk[ii, jj] != 0:
                continue
            w = img[ii, jj]
            if w > threshold:
                above += 1
            if di == 0 and dj == 0:
                continue
            # Neighbours before this pixel in memory order win ties.
            if di < 0 or (di == 0 and dj < 0):
                if w >= v:
                    return False
            elif w > v:
                return False
    return above >= min_pixels


@numba.njit(parallel=True, cache=True, nogil=True)
def _count_peaks(frames, mask, use_mask, threshold, local_max, min_pixels, out):  # pragma: no cover
    """Peaks per (pulse, module) into out (n, nmod); mask is (1 or n, nmod, ny, nx)."""
    n, nmod, ny, nx = frames.shape
    mstep = 1 if mask.shape[0] == n and n > 1 else 0
    for job in numba.prange(n * nmod):
        f = job // nmod
        m = job % nmod
        img = frames[f, m]
        mk = mask[f * mstep, m]
        found = 0
        for i in range(ny):
            # Most rows hold nothing above threshold: find out with a vectorisable count first.
            n_above = 0
            for j in range(nx):
                n_above += img[i, j] > threshold
            if n_above == 0:
                continue
            for j in range(nx):
                if img[i, j] > threshold:  # NaN fails this test
                    if use_mask and mk[i, j] != 0:
                        continue
                    if not local_max or _is_peak(img, mk, use_mask, i, j, threshold, min_pixels):
                        found += 1
        out[f, m] = found


def _as_stack(frames: np.ndarray) -> tuple[np.ndarray, bool]:
    """(n, modules, ss, fs) view of frames; ``single`` tells whether one frame was given."""
    frames = np.asarray(frames)
    if frames.dtype.kind not in "fiu":
        raise DataShapeError(f"frame dtype {frames.dtype} is not numeric")
    if frames.ndim == 3:
        return np.ascontiguousarray(frames)[None], True
    if frames.ndim == 4:
        return np.ascontiguousarray(frames), False
    raise DataShapeError(
        f"frames must be (modules, ss, fs) or (pulses, modules, ss, fs), got {frames.shape}"
    )


def _mask_for(mask: np.ndarray | None, stack: np.ndarray) -> np.ndarray:
    if mask is None:
        return np.zeros((1, 1, 1, 1), dtype=np.uint8)
    mask = np.asarray(mask)
    if mask.dtype == np.bool_:
        mask = mask.view(np.uint8)
    if mask.shape == stack.shape[1:]:
        return np.ascontiguousarray(mask)[None]
    if mask.shape == stack.shape:
        return np.ascontiguousarray(mask)
    raise DataShapeError(f"mask shape {mask.shape} does not fit frames {stack.shape}")


def count_peaks(
    frames: np.ndarray,
    threshold: float,
    *,
    mask: np.ndarray | None = None,
    method: str = "maxima",
    min_pixels: int = 1,
) -> np.ndarray:
    """Count Bragg peaks per pulse.

    Parameters
    ----------
    frames : ndarray, shape (modules, ss, fs) or (pulses, modules, ss, fs)
        Corrected frames (e.g. (n, 16, 512, 128) float32 for AGIPD-1M).
    threshold : float
        A peak pixel must be strictly above this value.
    mask : ndarray, optional
        Nonzero = bad pixel; shape of one frame or of the whole stack.
    method : {"maxima", "pixels"}
        Count local maxima (default) or all pixels above threshold.
    min_pixels : int
        For ``"maxima"``: pixels above threshold required in the 3 × 3 neighbourhood.

    Returns
    -------
    ndarray of int64, shape (pulses,) (or a 0-d array for a single frame)
    """
    if method not in METHODS:
        raise ConfigurationError(f"method must be one of {METHODS}, got {method!r}")
    if not 1 <= int(min_pixels) <= 9:
        raise ConfigurationError(f"min_pixels must be in 1..9, got {min_pixels!r}")
    threshold = float(threshold)
    if np.isnan(threshold):
        raise ConfigurationError("threshold must not be NaN")
    stack, single = _as_stack(frames)
    mk = _mask_for(mask, stack)
    out = np.zeros(stack.shape[:2], dtype=np.int64)
    if stack.size:
        _count_peaks(
            stack, mk, mask is not None, threshold, method == "maxima", int(min_pixels), out
        )
    counts = out.sum(axis=1)
    return counts[0] if single else counts


@dataclasses.dataclass(frozen=True)
class HitResult:
    """Hit-finding result for the pulses of one train.

    Attributes
    ----------
    n_peaks : ndarray of int64, shape (pulses,)
        Peaks found in each pulse.
    is_hit : ndarray of bool, shape (pulses,)
        ``n_peaks >= min_peaks``.
    """

    n_peaks: np.ndarray
    is_hit: np.ndarray

    @property
    def n_hits(self) -> int:
        """Number of hits among the pulses."""
        return int(np.count_nonzero(self.is_hit))

    @property
    def hit_rate(self) -> float:
        """Fraction of pulses that are hits (NaN if there are no pulses)."""
        n = self.is_hit.size
        return self.n_hits / n if n else float("nan")


class HitFinder:
    """Decide per pulse whether it is a hit by counting Bragg peaks.

    Parameters
    ----------
    threshold : float
        Peak pixels must be above this value (in the units of the corrected frames).
    min_peaks : int
        A pulse with at least this many peaks is a hit.
    mask : ndarray, optional
        Static bad-pixel mask (nonzero = bad), shape of one frame.
    method : {"maxima", "pixels"}
        See :func:`count_peaks`.
    min_pixels : int
        See :func:`count_peaks`.
    """

    def __init__(
        self,
        threshold: float,
        min_peaks: int = 10,
        *,
        mask: np.ndarray | None = None,
        method: str = "maxima",
        min_pixels: int = 1,
    ) -> None:
        if int(min_peaks) != min_peaks or min_peaks < 0:
            raise ConfigurationError(f"min_peaks must be a non-negative integer, got {min_peaks!r}")
        if method not in METHODS:
            raise ConfigurationError(f"method must be one of {METHODS}, got {method!r}")
        self.threshold = float(threshold)
        self.min_peaks = int(min_peaks)
        self.mask = None if mask is None else np.asarray(mask)
        self.method = method
        self.min_pixels = int(min_pixels)

    def find(self, frames: np.ndarray, mask: np.ndarray | None = None) -> HitResult:
        """Find hits in a stack of pulses.

        Parameters
        ----------
        frames : ndarray, shape (pulses, modules, ss, fs) or (modules, ss, fs)
        mask : ndarray, optional
            Per-call mask (e.g. the corrected ``image.mask``), combined with the static mask.

        Returns
        -------
        HitResult
        """
        combined = self.mask
        if mask is not None:
            mask = np.asarray(mask)
            combined = mask if combined is None else (mask != 0) | (combined != 0)
        n_peaks = np.atleast_1d(
            count_peaks(
                frames,
                self.threshold,
                mask=combined,
                method=self.method,
                min_pixels=self.min_pixels,
            )
        )
        return HitResult(n_peaks, n_peaks >= self.min_peaks)


class HitRateMeter:
    """Rolling hit rate over the most recent trains.

    The window holds the trains whose train ID lies within ``window_trains`` of the newest train
    seen: ``newest - window_trains < train_id <= newest``.  Trains that arrive with an ID already
    outside the window are ignored (and counted in :attr:`n_stale`).  Without train IDs each
    :meth:`add` is the next train.

    Parameters
    ----------
    window_trains : int
        Window length in trains (at 10 Hz, 10 trains = 1 s).
    """

    def __init__(self, window_trains: int) -> None:
        if int(window_trains) != window_trains or window_trains < 1:
            raise ConfigurationError(
                f"window_trains must be a positive integer, got {window_trains!r}"
            )
        self.window_trains = int(window_trains)
        self.reset()

    def reset(self) -> None:
        """Forget every train (e.g. after the sample has moved)."""
        self._trains: dict[int, list[int]] = {}
        self._newest: int | None = None
        self._hits = 0
        self._pulses = 0
        #: Trains ignored because they were older than the window when they arrived.
        self.n_stale = 0

    def add(self, is_hit: Iterable[bool] | np.ndarray, train_id: int | None = None) -> None:
        """Add one train's per-pulse hit flags."""
        flags = np.asarray(is_hit, dtype=bool).reshape(-1)
        self.add_counts(int(np.count_nonzero(flags)), int(flags.size), train_id)

    def add_counts(self, n_hits: int, n_pulses: int, train_id: int | None = None) -> None:
        """Add one train given its number of hits and of pulses."""
        n_hits, n_pulses = int(n_hits), int(n_pulses)
        if n_pulses < 0 or not 0 <= n_hits <= n_pulses:
            raise ConfigurationError(f"need 0 <= hits <= pulses, got {n_hits}/{n_pulses}")
        if train_id is None:
            train_id = 0 if self._newest is None else self._newest + 1
        train_id = int(train_id)
        if self._newest is not None and train_id <= self._newest - self.window_trains:
            self.n_stale += 1
            log.debug("train %d is older than the hit-rate window; ignored", train_id)
            return
        entry = self._trains.setdefault(train_id, [0, 0])
        entry[0] += n_hits
        entry[1] += n_pulses
        self._hits += n_hits
        self._pulses += n_pulses
        if self._newest is None or train_id > self._newest:
            self._newest = train_id
            cutoff = train_id - self.window_trains
            for old in [t for t in self._trains if t <= cutoff]:
                h, p = self._trains.pop(old)
                self._hits -= h
                self._pulses -= p

    @property
    def n_trains(self) -> int:
        """Trains currently in the window."""
        return len(self._trains)

    @property
    def n_hits(self) -> int:
        """Hits in the window."""
        return self._hits

    @property
    def n_pulses(self) -> int:
        """Pulses in the window."""
        return self._pulses

    @property
    def newest_train_id(self) -> int | None:
        """Highest train ID seen since the last reset."""
        return self._newest

    @property
    def hit_rate(self) -> float:
        """Hits / pulses over the window; NaN when the window holds no pulses."""
        return self._hits / self._pulses if self._pulses else float("nan")
