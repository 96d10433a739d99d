"""JUNGFRAU (4M at SPB, 8 modules of 512 x 1024 pixels): adaptive gain, 16 memory cells.

Facts (EXtra-data's ``JUNGFRAU`` component, EuXFEL calibration):

* raw source ``SPB_IRDA_JF4M/DET/JNGFR{m+1:02d}:daqOutput`` (module numbers start at 1),
  one entry per train: ``data.adc`` uint16 ``(frames, 512, 1024)`` with the 14-bit ADC value
  in bits 0-13 and the gain code in bits 14-15 (0 = G0, 1 = G1, 3 = G2; 2 is no stage),
  ``data.gain`` uint8 the same code, ``data.memoryCell`` the memory cell of each frame;
  burst mode stores 16 frames per train (cells 0-15), single-cell mode one;
* corrected source ``SPB_IRDA_JF4M/CORR/JNGFR{m+1:02d}:output`` with ``data.adc`` float32,
  ``data.gain`` uint8 and ``data.mask`` uint32;
* dark procedure: three dark runs, G0 (adaptive gain, no light: stays in G0), then G1 and G2
  forced, give offset and noise per cell, stage and pixel; bad pixels are noisy, dead (no
  noise) or stuck in another gain stage than the forced one;
* correction: ``(adc - Offset[g, cell]) / RelativeGain[g, cell]`` with ``RelativeGain`` in
  ADU per keV per stage, masked with ``BadPixelsDark[g, cell]``;
* geometry: EXtra-geom's ``JUNGFRAUGeometry`` (8 modules, EXtra-geom's example layout
  centred on the beam by default).
"""

from __future__ import annotations

import functools
import re
from typing import Any, ClassVar

import numpy as np

from pulsetrain.detectors._gainbits import GainBitsDetector, GainBitsLayout, GainWordCodec
from pulsetrain.detectors.base import RawKey

__all__ = ["DETECTOR", "JUNGFRAU", "LAYOUT"]

#: Raw word layout: 14-bit ADC, gain code in bits 14-15; dark statistics per 256 x 256 ASIC.
LAYOUT = GainBitsLayout(
    name="JUNGFRAU",
    module_shape=(512, 1024),
    adc_bits=14,
    stage_codes=(0, 1, 3),
    stage_names=("G0", "G1", "G2"),
    block_shape=(256, 256),
)

_MODULE = re.compile(r"^[^/]+/(?:DET|CORR)/JNGFR(\d+):(?:daqOutput|output)$")
_RAW_MODULE = re.compile(r"^[^/]+/DET/JNGFR(\d+):daqOutput$")


class JUNGFRAU(GainBitsDetector):
    """JUNGFRAU plug-in (see the module's description)."""

    name: ClassVar[str] = "JUNGFRAU"
    default_detector_id: ClassVar[str] = "SPB_IRDA_JF4M"
    n_modules: ClassVar[int] = 8
    module_shape: ClassVar[tuple[int, int]] = LAYOUT.module_shape
    pixel_size_m: ClassVar[float] = 75e-6
    gain_stages: ClassVar[tuple[str, ...]] = LAYOUT.stage_names
    raw_keys: ClassVar[tuple[RawKey, ...]] = (
        RawKey("data.adc", (512, 1024), "uint16"),
        RawKey("data.gain", (512, 1024), "uint8"),
    )
    cell_key: ClassVar[str | None] = "data.memoryCell"
    steps: ClassVar[tuple[str, ...]] = ("offset", "gainstage", "relgain", "badpixels")
    default_steps: ClassVar[tuple[str, ...]] = steps
    constant_types = GainBitsDetector._constant_types("ADU/keV", flat_field=False)
    corrected_keys: ClassVar[dict[str, str]] = {
        "data.adc": "float32",
        "data.gain": "uint8",
        "data.mask": "uint32",
    }
    carried_keys: ClassVar[tuple[str, ...]] = (
        "data.memoryCell",
        "data.frameNumber",
        "data.timestamp",
    )
    extra_geom_class: ClassVar[str | None] = "JUNGFRAUGeometry"
    extra_data_component: ClassVar[str | None] = "JUNGFRAU"
    layout = LAYOUT
    data_key = "data.adc"

    # -- sources: module m (0-based) is JNGFR{m+1:02d} ---------------------------------------
    def raw_source(self, module: int, detector_id: str | None = None) -> str:
        """``{detector_id}/DET/JNGFR{module + 1:02d}:daqOutput``."""
        return f"{detector_id or self.default_detector_id}/DET/JNGFR{int(module) + 1:02d}:daqOutput"

    def module_of(self, source: str) -> int | None:
        """0-based module of a raw or corrected JUNGFRAU source (``None``: not one)."""
        match = _MODULE.match(source)
        return int(match.group(1)) - 1 if match else None

    def aggregator(self, source: str) -> str:
        """``JNGFR{m+1:02d}``: one file per module, named as European XFEL names them."""
        module = self.module_of(source)
        return super().aggregator(source) if module is None else f"JNGFR{module + 1:02d}"

    def raw_module_of(self, source: str) -> int | None:
        """0-based module of a raw JUNGFRAU source (``None``: not one)."""
        match = _RAW_MODULE.match(source)
        return int(match.group(1)) - 1 if match else None

    # -- constants ------------------------------------------------------------------------------
    def gain_factor(self, relative_gain: np.ndarray) -> np.ndarray:
        """keV per ADU: ``1 / RelativeGain`` (ADU/keV; 0 where it is not positive)."""
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(relative_gain > 0, np.float32(1) / relative_gain, 0).astype(np.float32)

    def truth_gain(self, slope_adu_per_kev: np.ndarray, dead: np.ndarray) -> np.ndarray:
        """The truth's slope itself: ADU per keV per stage (0 for dead pixels)."""
        return np.asarray(slope_adu_per_kev, np.float32)

    def geometry(
        self,
        n_modules: int = 8,
        *,
        distance_m: float = 0.2,
        beam_centre_px: Any = (0.0, 0.0),
    ) -> Any:
        """A :class:`pulsetrain.geometry.DetectorGeometry` of ``JUNGFRAUGeometry.example``.

        EXtra-geom's example layout of ``n_modules`` modules, shifted so that its bounding
        box is centred on the geometry origin (where the simulator puts the beam).

        Parameters
        ----------
        n_modules : int
            Modules in the layout (8 for the 4M).
        distance_m : float
            Sample-detector distance (default the simulator's, 0.2 m).
        beam_centre_px : (float, float)
            Beam position in pixels (75 um) from the geometry origin.
        """
        from extra_geom import JUNGFRAUGeometry

        from pulsetrain.geometry import DetectorGeometry

        geom = JUNGFRAUGeometry.example(n_modules=int(n_modules))
        pos = geom.get_pixel_positions()
        shift = tuple(-0.5 * (pos[..., a].min() + pos[..., a].max()) for a in (0, 1))
        return DetectorGeometry(geom.offset(shift), distance_m, tuple(beam_centre_px))

    def sim_spec(self) -> Any:
        """JUNGFRAU 4M (8 modules) in the simulator: 14-bit ADC, gain code in bits 14-15."""
        return _sim_spec()


class JungfrauSimCodec(GainWordCodec):
    """Simulated JUNGFRAU words (gain code 0, 1, 3 in bits 14-15 of ``data.adc`` and in
    ``data.gain``) and the ``data.*`` per-frame keys of the receiver."""

    def __init__(self) -> None:
        super().__init__("data.adc", 14, gain_key="data.gain")

    def frame_info(self, train_id, cell_ids, pulse_ids, timestamps, module_shape):
        n = len(cell_ids)
        return {
            "data.memoryCell": cell_ids.astype(np.uint8),
            "data.frameNumber": (train_id * n + np.arange(n)).astype(np.uint64),
            "data.timestamp": timestamps,
            "data.trainId": np.array(train_id, dtype=np.uint64),
        }


def _sim_positions() -> np.ndarray:
    """``JUNGFRAUGeometry.example(n_modules=8)`` with the modules' bounding box centred."""
    import extra_geom

    pos = extra_geom.JUNGFRAUGeometry.example(n_modules=8).get_pixel_positions()
    for axis in (0, 1):
        lo, hi = pos[..., axis].min(), pos[..., axis].max()
        pos[..., axis] -= 0.5 * (lo + hi)
    return pos


@functools.cache
def _sim_spec() -> Any:
    from pulsetrain.sim.detectors import DetectorSpec
    from pulsetrain.sim.parameters import GainModelParameters

    return DetectorSpec(
        name="JUNGFRAU",
        key=3,
        n_modules=8,
        module_shape=(512, 1024),
        pixel_size_m=75e-6,
        source_format="SPB_IRDA_JF4M/DET/JNGFR{number:02d}:daqOutput",
        encoding="jungfrau",
        default_memory_cells=16,
        default_bank_size=2,
        gain_model=GainModelParameters(
            offset_adu=(3000.0, 3500.0, 4000.0),
            offset_cell_pixel_adu=0.0,
            slope_adu_per_kev=(40.0, 1.5, 0.07),
            slope_cell_pixel_rel=0.0,
            noise_adu=(10.0, 4.0, 4.0),
            digital_level_adu=(0.0, 1.0, 3.0),
            digital_pixel_rel=0.0,
            digital_cell_adu=0.0,
            digital_noise_adu=0.0,
            switch_kev=(250.0, 6000.0),
            adc_max=16383,
            hot_offset_adu=2000.0,
        ),
        codec=JungfrauSimCodec(),
        positions=_sim_positions,
    )


DETECTOR = JUNGFRAU
