"""Parameters of the simulated detector response and of the simulated sample.

Both are frozen dataclasses with defaults; pass modified copies (``dataclasses.replace``) to
:class:`~pulsetrain.sim.DetectorSimulator` to change the model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pulsetrain.errors import ConfigurationError

__all__ = ["GainModelParameters", "SampleParameters", "hit_probability"]


@dataclass(frozen=True)
class GainModelParameters:
    """The three-stage gain-switching response model of one detector type.

    For stage ``g`` (0 high, 1 medium, 2 low), memory cell ``c`` and pixel ``p``, with
    independent standard normals ``a(p)`` (per pixel), ``b(c)`` (per cell) and ``e(c, p)``
    (per cell and pixel), each drawn separately for every quantity and stage and clipped to
    +/-4::

        offset[g,c,p]  = offset_adu[g] (1 + offset_pixel_rel a) (1 + offset_cell_rel b)
                         + offset_cell_pixel_adu e
        slope[g,c,p]   = slope_adu_per_kev[g] (1 + slope_pixel_rel a) (1 + slope_cell_rel b)
                         (1 + slope_cell_pixel_rel e)
        noise[g,c,p]   = noise_adu[g] (1 + noise_pixel_rel a) (1 + noise_cell_rel b)
        digital[g,c,p] = digital_level_adu[g] (1 + digital_pixel_rel a) + digital_cell_adu b
        switch[k,c,p]  = switch_kev[k] (1 + switch_pixel_rel a) (1 + switch_cell_rel b)

    ``adc_max`` is the largest value the analogue ADC gives (values are clipped to it).
    ``digital_noise_adu`` is the rms noise of the digital gain value.  Bad pixels: the given
    fractions of pixels are dead (constant output), noisy (noise times a factor drawn from
    ``noisy_factor_range``) or hot (offset shifted by +/- ``hot_offset_adu``); the three sets
    are disjoint.
    """

    offset_adu: tuple[float, float, float] = (5400.0, 5700.0, 6000.0)
    offset_pixel_rel: float = 0.04
    offset_cell_rel: float = 0.015
    offset_cell_pixel_adu: float = 8.0
    slope_adu_per_kev: tuple[float, float, float] = (8.0, 8.0 / 45.0, 8.0 / 45.0 / 4.5)
    slope_pixel_rel: float = 0.03
    slope_cell_rel: float = 0.01
    slope_cell_pixel_rel: float = 0.005
    noise_adu: tuple[float, float, float] = (4.5, 3.0, 3.0)
    noise_pixel_rel: float = 0.05
    noise_cell_rel: float = 0.02
    digital_level_adu: tuple[float, float, float] = (4700.0, 6300.0, 7900.0)
    digital_pixel_rel: float = 0.02
    digital_cell_adu: float = 15.0
    digital_noise_adu: float = 12.0
    switch_kev: tuple[float, float] = (800.0, 20000.0)
    switch_pixel_rel: float = 0.05
    switch_cell_rel: float = 0.01
    adc_max: int = 16383
    dead_fraction: float = 0.0015
    noisy_fraction: float = 0.0015
    hot_fraction: float = 0.0015
    noisy_factor_range: tuple[float, float] = (10.0, 20.0)
    hot_offset_adu: float = 4000.0

    def __post_init__(self) -> None:
        if not (0 < self.switch_kev[0] < self.switch_kev[1]):
            raise ConfigurationError(
                f"switch_kev must be increasing and positive, got {self.switch_kev}"
            )
        if min(self.slope_adu_per_kev) <= 0 or min(self.noise_adu) < 0:
            raise ConfigurationError("slopes must be > 0 and noise >= 0")
        if self.dead_fraction + self.noisy_fraction + self.hot_fraction >= 0.5:
            raise ConfigurationError("bad-pixel fractions must add up to less than 0.5")


@dataclass(frozen=True)
class SampleParameters:
    """The scattering sample: a water jet (always present) and crystals (hits).

    Water ring: the expected number of photons per pixel is
    ``ring_photons * exp(-0.5 ((q - ring_q) / ring_sigma_q)**2) + background_photons``
    with ``q`` in inverse angstrom (a function of ``q`` only: no solid-angle or polarisation
    factor), counted with Poisson statistics on every pulse.

    Crystal hits: a pulse is a hit with probability
    ``p_max * exp(-0.5 ((x - sample_centre_mm) / width_mm)**2)`` at sample-motor position
    ``x``.  A hit adds ``Poisson(peaks_per_hit)`` Bragg peaks placed uniformly over the
    detector pixels, each a 2-D Gaussian of ``peak_sigma_px`` (cut off at
    ``peak_radius_px``) whose expected photons at its centre are log-uniform in
    ``peak_photons`` (so peak centres fall in all three gain stages).
    """

    sample_centre_mm: float = 2.5
    width_mm: float = 0.5
    p_max: float = 0.6
    ring_q: float = 2.0
    ring_sigma_q: float = 0.3
    ring_photons: float = 3.0
    background_photons: float = 0.05
    peaks_per_hit: float = 48.0
    peak_sigma_px: float = 1.0
    peak_radius_px: int = 5
    peak_photons: tuple[float, float] = (10.0, 15000.0)

    def __post_init__(self) -> None:
        if not 0.0 <= self.p_max <= 1.0:
            raise ConfigurationError(f"p_max must be within [0, 1], got {self.p_max}")
        if self.width_mm <= 0:
            raise ConfigurationError(f"width_mm must be > 0, got {self.width_mm}")
        if not 0 < self.peak_photons[0] <= self.peak_photons[1]:
            raise ConfigurationError(f"bad peak_photons range {self.peak_photons}")

    def hit_probability(self, sample_position_mm: float) -> float:
        """Probability that one pulse is a crystal hit at this motor position."""
        return hit_probability(sample_position_mm, self.sample_centre_mm, self.width_mm, self.p_max)


def hit_probability(
    sample_position_mm: float,
    sample_centre_mm: float = 2.5,
    width_mm: float = 0.5,
    p_max: float = 0.6,
) -> float:
    """Per-pulse hit probability ``p_max * exp(-0.5 ((x - centre) / width)**2)``."""
    z = (float(sample_position_mm) - sample_centre_mm) / width_mm
    return p_max * math.exp(-0.5 * z * z)
