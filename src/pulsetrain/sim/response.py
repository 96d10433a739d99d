"""The detector response: deposited energy to raw analogue and digital values.

For each pixel the gain stage is 0 while the deposited energy ``E < switch_kev[0]``, 1 while
``E < switch_kev[1]``, else 2 (or forced, in dark mode); then

* ``analog  = rint(offset[g] + E * slope[g] + noise[g] * N(0, 1))`` clipped to ``[0, adc_max]``
* ``digital = rint(digital_level[g] + digital_noise * N(0, 1))`` clipped to ``[0, adc_max]``

with the constants of the pixel's memory cell.  Two standard normals per pixel are drawn, the
analogue one first (the digital one only when the model has digital noise).
"""

from __future__ import annotations

import numpy as np

from pulsetrain.sim.truth import CellTruth

__all__ = ["respond"]


def respond(
    energy_kev: np.ndarray | None,
    cell: CellTruth,
    rng: np.random.Generator,
    adc_max: int,
    *,
    forced_stage: int | None = None,
    pixels: np.ndarray | None = None,
    digital_noise: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Raw values of one frame (or of some of its pixels).

    Parameters
    ----------
    energy_kev : numpy.ndarray or None
        Deposited energy [keV], shape ``(ss, fs)`` (or ``(n,)`` with ``pixels``); ``None``
        means no X-rays.
    cell : CellTruth
        Constants of the frame's memory cell.
    rng : numpy.random.Generator
        Source of the noise.
    adc_max : int
        Largest ADC value.
    forced_stage : int, optional
        Force every pixel into this gain stage (dark runs in fixed gain).
    pixels : numpy.ndarray, optional
        Flat pixel indices: compute only these pixels (``energy_kev`` then has shape ``(n,)``).
    digital_noise : bool
        Whether the model has digital noise (draws the second normal).

    Returns
    -------
    analog, digital : numpy.ndarray
        uint16 arrays of the pixels' shape.
    stage : numpy.ndarray
        uint8 gain stage of each pixel.
    """
    offset, slope, noise = cell.offset, cell.slope, cell.noise
    levels, switch, dnoise = cell.digital_level, cell.switch_kev, cell.digital_noise
    if pixels is not None:
        offset = offset.reshape(3, -1)[:, pixels]
        slope = slope.reshape(3, -1)[:, pixels]
        noise = noise.reshape(3, -1)[:, pixels]
        levels = levels.reshape(3, -1)[:, pixels]
        switch = switch.reshape(2, -1)[:, pixels]
        dnoise = dnoise.reshape(-1)[pixels]
    shape = offset.shape[1:]

    if forced_stage is not None:
        g = int(forced_stage)
        stage = np.full(shape, g, dtype=np.uint8)
        off, slp, sig, lev = offset[g], slope[g], noise[g], levels[g]
    else:
        if energy_kev is None:
            energy_kev = np.zeros(shape, np.float32)
        stage = (energy_kev >= switch[0]).view(np.uint8)
        if stage.any():
            stage += (energy_kev >= switch[1]).view(np.uint8)
            sel = stage[None]
            off = np.take_along_axis(offset, sel, 0)[0]
            slp = np.take_along_axis(slope, sel, 0)[0]
            sig = np.take_along_axis(noise, sel, 0)[0]
            lev = np.take_along_axis(levels, sel, 0)[0]
        else:  # all in high gain (no hit): no gather needed
            off, slp, sig, lev = offset[0], slope[0], noise[0], levels[0]

    analog = rng.standard_normal(shape, dtype=np.float32)
    analog *= sig
    analog += off
    if energy_kev is not None:
        analog += energy_kev * slp
    np.rint(analog, out=analog)
    np.clip(analog, 0, adc_max, out=analog)

    if digital_noise:
        digital = rng.standard_normal(shape, dtype=np.float32)
        digital *= dnoise
        digital += lev
    else:
        digital = lev.astype(np.float32, copy=True)
    np.rint(digital, out=digital)
    np.clip(digital, 0, adc_max, out=digital)
    return analog.astype(np.uint16), digital.astype(np.uint16), stage
