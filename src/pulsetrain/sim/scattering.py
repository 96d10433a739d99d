"""What the sample scatters: the water-jet ring and the Bragg peaks of crystal hits.

Everything here is in expected photons per pixel; photon counting (Poisson) happens in the
simulator.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from pulsetrain.sim.parameters import SampleParameters

__all__ = ["Peaks", "draw_module_peaks", "draw_pulse_peaks", "render_peaks", "ring_photons"]


def ring_photons(q: np.ndarray, sample: SampleParameters) -> np.ndarray:
    """Expected photons per pixel of the water ring (plus flat background) at ``q`` [1/A]."""
    z = (q - sample.ring_q) / sample.ring_sigma_q
    lam = sample.ring_photons * np.exp(-0.5 * z * z) + sample.background_photons
    return lam.astype(np.float32)


@dataclass
class Peaks:
    """Bragg peaks: module number, centre (slow scan, fast scan; pixel ``i`` spans
    ``[i, i + 1)``) and expected photons at the centre."""

    module: np.ndarray
    ss: np.ndarray
    fs: np.ndarray
    amplitude: np.ndarray

    def on_module(self, module: int) -> Peaks:
        """The peaks that lie on ``module``."""
        sel = self.module == module
        return Peaks(self.module[sel], self.ss[sel], self.fs[sel], self.amplitude[sel])

    def __len__(self) -> int:
        return len(self.module)


def _draw(rng, n, n_modules, module_shape, sample: SampleParameters, module: int | None):
    mods = (
        rng.integers(0, n_modules, n).astype(np.int16)
        if module is None
        else np.full(n, module, np.int16)
    )
    ss = rng.uniform(0.0, module_shape[0], n)
    fs = rng.uniform(0.0, module_shape[1], n)
    lo, hi = sample.peak_photons
    amp = np.exp(rng.uniform(math.log(lo), math.log(hi), n))
    return Peaks(mods, ss, fs, amp)


def draw_pulse_peaks(
    rng: np.random.Generator,
    n_modules: int,
    module_shape: tuple[int, int],
    sample: SampleParameters,
) -> Peaks:
    """The peaks of one hit over the whole detector: ``Poisson(peaks_per_hit)`` of them,
    uniform over the modules' pixels."""
    n = int(rng.poisson(sample.peaks_per_hit))
    return _draw(rng, n, n_modules, module_shape, sample, None)


def draw_module_peaks(
    rng: np.random.Generator,
    module: int,
    n_modules: int,
    module_shape: tuple[int, int],
    sample: SampleParameters,
) -> Peaks:
    """The peaks of one hit on one module: same distribution as the ``module`` part of
    :func:`draw_pulse_peaks` (``Poisson(peaks_per_hit / n_modules)`` peaks)."""
    n = int(rng.poisson(sample.peaks_per_hit / n_modules))
    return _draw(rng, n, n_modules, module_shape, sample, module)


def render_peaks(
    peaks: Peaks, module_shape: tuple[int, int], sample: SampleParameters
) -> tuple[np.ndarray, np.ndarray]:
    """Expected photons of peaks on one module, as sparse pixels.

    Each peak is a 2-D Gaussian of ``peak_sigma_px`` evaluated at pixel centres within
    ``peak_radius_px`` pixels (in slow and fast scan) of its centre pixel and inside the
    module; overlapping peaks add up.

    Returns
    -------
    pixels : numpy.ndarray
        Sorted unique flat pixel indices (intp).
    mu : numpy.ndarray
        float32 expected photons at those pixels.
    """
    ny, nx = module_shape
    if len(peaks) == 0:
        return np.zeros(0, np.intp), np.zeros(0, np.float32)
    r = int(sample.peak_radius_px)
    offs = np.arange(-r, r + 1)
    ci = np.floor(peaks.ss).astype(np.intp)[:, None, None] + offs[None, :, None]
    cj = np.floor(peaks.fs).astype(np.intp)[:, None, None] + offs[None, None, :]
    ci, cj = np.broadcast_arrays(ci, cj)
    di = ci + 0.5 - peaks.ss[:, None, None]
    dj = cj + 0.5 - peaks.fs[:, None, None]
    mu = peaks.amplitude[:, None, None] * np.exp(
        -(di * di + dj * dj) / (2.0 * sample.peak_sigma_px**2)
    )
    inside = (ci >= 0) & (ci < ny) & (cj >= 0) & (cj < nx)
    flat = (ci * nx + cj)[inside]
    pixels, inverse = np.unique(flat, return_inverse=True)
    total = np.bincount(inverse, weights=mu[inside], minlength=len(pixels))
    return pixels.astype(np.intp), total.astype(np.float32)
