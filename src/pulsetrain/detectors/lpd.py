"""LPD-1M (FXE): 16 modules of 256 x 256 pixels, up to 512 memory cells, three gain stages.

Facts (EXtra-data's ``LPD1M`` component, EuXFEL calibration):

* raw source ``FXE_DET_LPD1M-1/DET/{m}CH0:xtdf``, key ``image.data`` uint16 of shape
  ``(frames, 1, 256, 256)``: the 12-bit ADC value in bits 0-11 and the gain stage in bits
  12-13 (0 high, 1 medium, 2 low; 3 is no stage); ``image.cellId`` gives each frame's memory
  cell;
* corrected source ``FXE_DET_LPD1M-1/CORR/{m}CH0:output`` with ``image.data`` float32,
  ``image.gain`` uint8 and ``image.mask`` uint32, each ``(frames, 256, 256)``;
* the gain stage is read from the data (no thresholds), so the dark procedure is one dark run
  per stage with the gain forced to it, giving offset and noise per memory cell, stage and
  pixel and the dark bad pixels;
* correction: ``(adc - Offset[g, cell]) * RelativeGain[g, cell] * FlatField[cell]``, masked with
  ``BadPixelsDark[g, cell]``.  ``RelativeGain`` is in keV per ADU (per stage: it includes the
  ratio between the stages' amplifications), ``FlatField`` the relative flat field per pixel;
* geometry: EXtra-geom's ``LPD_1MGeometry`` from the four quadrant positions (FXE's standard
  positions by default).
"""

from __future__ import annotations

import functools
from typing import Any, ClassVar

import numpy as np

from pulsetrain.detectors._gainbits import GainBitsDetector, GainBitsLayout, GainWordCodec
from pulsetrain.detectors.base import RawKey

__all__ = ["DETECTOR", "FXE_QUAD_POSITIONS_MM", "LAYOUT", "LPD"]

#: Raw word layout: 12-bit ADC, stage in bits 12-13; dark statistics per 32 x 128 tile.
LAYOUT = GainBitsLayout(
    name="LPD",
    module_shape=(256, 256),
    adc_bits=12,
    stage_codes=(0, 1, 2),
    stage_names=("HG", "MG", "LG"),
    block_shape=(32, 128),
)

#: Quadrant positions (x, y of the first pixel of modules 0, 4, 8, 12) in mm at FXE, as in
#: EXtra-geom's example geometry.
FXE_QUAD_POSITIONS_MM: tuple[tuple[float, float], ...] = (
    (11.4, 299.0),
    (-11.5, 8.0),
    (254.5, -16.0),
    (278.5, 275.0),
)


class LPD(GainBitsDetector):
    """LPD-1M plug-in (see the module's description)."""

    name: ClassVar[str] = "LPD"
    default_detector_id: ClassVar[str] = "FXE_DET_LPD1M-1"
    n_modules: ClassVar[int] = 16
    module_shape: ClassVar[tuple[int, int]] = LAYOUT.module_shape
    pixel_size_m: ClassVar[float] = 500e-6
    gain_stages: ClassVar[tuple[str, ...]] = LAYOUT.stage_names
    raw_keys: ClassVar[tuple[RawKey, ...]] = (RawKey("image.data", (1, 256, 256), "uint16"),)
    cell_key: ClassVar[str | None] = "image.cellId"
    steps: ClassVar[tuple[str, ...]] = ("offset", "gainstage", "relgain", "flatfield", "badpixels")
    default_steps: ClassVar[tuple[str, ...]] = steps
    constant_types = GainBitsDetector._constant_types("keV/ADU", flat_field=True)
    carried_keys: ClassVar[tuple[str, ...]] = ("image.cellId", "image.pulseId", "image.trainId")
    extra_geom_class: ClassVar[str | None] = "LPD_1MGeometry"
    extra_data_component: ClassVar[str | None] = "LPD1M"
    layout = LAYOUT
    data_key = "image.data"
    has_flat_field = True

    def truth_gain(self, slope_adu_per_kev: np.ndarray, dead: np.ndarray) -> np.ndarray:
        """keV per ADU: ``1 / slope`` (0 for dead pixels, which have no slope)."""
        with np.errstate(divide="ignore"):
            gain = np.where(slope_adu_per_kev > 0, 1.0 / slope_adu_per_kev, 0.0)
        return gain.astype(np.float32)

    def geometry(
        self,
        quad_positions: Any = None,
        *,
        distance_m: float = 0.2,
        beam_centre_px: Any = (0.0, 0.0),
    ) -> Any:
        """A :class:`pulsetrain.geometry.DetectorGeometry` of EXtra-geom's ``LPD_1MGeometry``.

        Parameters
        ----------
        quad_positions : sequence of 4 (x, y), optional
            Quadrant positions in mm (EXtra-geom's unit for LPD); default FXE's
            (:data:`FXE_QUAD_POSITIONS_MM`, where the simulator puts the pixels).
        distance_m : float
            Sample-detector distance (default the simulator's, 0.2 m).
        beam_centre_px : (float, float)
            Beam position in pixels (500 um) from the geometry origin.
        """
        from extra_geom import LPD_1MGeometry

        from pulsetrain.geometry import DetectorGeometry

        quads = FXE_QUAD_POSITIONS_MM if quad_positions is None else quad_positions
        geom = LPD_1MGeometry.from_quad_positions([tuple(map(float, q)) for q in quads])
        return DetectorGeometry(geom, distance_m, tuple(beam_centre_px))

    def sim_spec(self) -> Any:
        """LPD-1M in the simulator: 12-bit ADC, stage in bits 12-13 (no digital noise)."""
        return _sim_spec()


#: Simulated raw words: the gain stage (0/1/2) in bits 12-13 of ``image.data`` ``(1, ss, fs)``.
SIM_CODEC = GainWordCodec("image.data", 12, plane=True)


def _sim_positions() -> np.ndarray:
    import extra_geom

    return extra_geom.LPD_1MGeometry.example().get_pixel_positions()


@functools.cache
def _sim_spec() -> Any:
    from pulsetrain.sim.detectors import DetectorSpec
    from pulsetrain.sim.parameters import GainModelParameters

    return DetectorSpec(
        name="LPD",
        key=2,
        n_modules=16,
        module_shape=(256, 256),
        pixel_size_m=500e-6,
        source_format="FXE_DET_LPD1M-1/DET/{module}CH0:xtdf",
        encoding="lpd",
        default_memory_cells=512,
        default_bank_size=4,
        gain_model=GainModelParameters(
            offset_adu=(700.0, 800.0, 900.0),
            offset_cell_pixel_adu=0.0,
            slope_adu_per_kev=(2.5, 0.25, 0.02),
            slope_cell_pixel_rel=0.0,
            noise_adu=(3.0, 2.0, 2.0),
            digital_level_adu=(0.0, 1.0, 2.0),
            digital_pixel_rel=0.0,
            digital_cell_adu=0.0,
            digital_noise_adu=0.0,
            switch_kev=(1000.0, 9000.0),
            adc_max=4095,
            hot_offset_adu=450.0,
        ),
        codec=SIM_CODEC,
        positions=_sim_positions,
    )


DETECTOR = LPD
