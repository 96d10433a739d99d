"""Descriptions of the simulated detector types: AGIPD-1M, LPD-1M and JUNGFRAU (4M, 8 modules).

A :class:`DetectorSpec` says how many modules a detector has, their shape, how its sources are
named, how raw words are encoded and which default response parameters it uses.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pulsetrain.errors import ConfigurationError
from pulsetrain.sim.parameters import GainModelParameters

__all__ = ["DETECTORS", "DetectorSpec", "detector_spec"]


@dataclass(frozen=True)
class DetectorSpec:
    """One detector type.

    Attributes
    ----------
    name : str
        ``"AGIPD"``, ``"LPD"`` or ``"JUNGFRAU"``.
    key : int
        Number of the type in random-stream keys.
    n_modules : int
        Number of modules.
    module_shape : tuple of int
        ``(slow_scan, fast_scan)`` pixels of one module.
    pixel_size_m : float
        Pixel pitch in metres.
    source_format : str
        Raw source name; formatted with ``module`` (0-based) and ``number`` (``module + 1``).
    encoding : str
        How raw data are laid out: ``"agipd"`` (analog and digital planes), ``"lpd"`` (gain in
        bits 12-13 of one 16-bit word) or ``"jungfrau"`` (gain in bits 14-15, plus a gain array).
    default_memory_cells : int
        Memory cells when none are given.
    default_bank_size : int
        Raw frames per memory cell in the fast-path bank when none is given.
    gain_model : GainModelParameters
        Default response parameters.
    """

    name: str
    key: int
    n_modules: int
    module_shape: tuple[int, int]
    pixel_size_m: float
    source_format: str
    encoding: str
    default_memory_cells: int
    default_bank_size: int
    gain_model: GainModelParameters = field(default_factory=GainModelParameters)

    def source(self, module: int) -> str:
        """Raw source name of ``module`` (0-based)."""
        if not 0 <= int(module) < self.n_modules:
            raise ConfigurationError(
                f"{self.name} has modules 0..{self.n_modules - 1}, not {module}"
            )
        return self.source_format.format(module=int(module), number=int(module) + 1)

    @property
    def pixels_per_module(self) -> int:
        """Number of pixels in one module."""
        return self.module_shape[0] * self.module_shape[1]


_AGIPD = DetectorSpec(
    name="AGIPD",
    key=1,
    n_modules=16,
    module_shape=(512, 128),
    pixel_size_m=200e-6,
    source_format="SPB_DET_AGIPD1M-1/DET/{module}CH0:xtdf",
    encoding="agipd",
    default_memory_cells=64,
    default_bank_size=4,
    gain_model=GainModelParameters(),
)

# LPD: 12-bit ADC, gain stage in bits 12-13 ("digital" = the gain code 0/1/2, no noise).
_LPD = DetectorSpec(
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
)

# JUNGFRAU: 14-bit ADC, gain code 0 (G0), 1 (G1), 3 (G2) in bits 14-15 and in data.gain.
_JUNGFRAU = DetectorSpec(
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
)

#: The detector types by name.
DETECTORS: dict[str, DetectorSpec] = {d.name: d for d in (_AGIPD, _LPD, _JUNGFRAU)}


def detector_spec(name: str) -> DetectorSpec:
    """Return the :class:`DetectorSpec` called ``name`` (case-insensitive).

    Detector types described here come first; another detector plug-in
    (:mod:`pulsetrain.detectors`) may bring its own spec (``Detector.sim_spec``).
    """
    spec = DETECTORS.get(str(name).upper())
    if spec is not None:
        return spec
    from pulsetrain.detectors import get_detector

    try:
        spec = get_detector(name).sim_spec()
    except ConfigurationError:
        spec = None
    if not isinstance(spec, DetectorSpec):
        raise ConfigurationError(f"unknown detector {name!r}; choose one of {', '.join(DETECTORS)}")
    return spec
