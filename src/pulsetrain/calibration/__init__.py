"""AGIPD calibration as pure functions on arrays: no devices, files, databases or sockets.

* :class:`BadPixels` - the uint32 bad-pixel bit field (EuXFEL bit positions).
* :class:`AGIPDConstants` - offset, relative gain, gain thresholds, bad pixels (and noise) of
  one module, indexed ``[gain stage, memory cell, 512, 128]``.
* :func:`correct_agipd` - the numba fast path; :func:`correct_agipd_numpy` - its reference.
* :func:`characterize_dark` / :class:`DarkAccumulator` - constants from forced-gain dark runs;
  :func:`combine_constants` adds relative gains.

The algorithm, layouts and statistics are described in ``docs/calibration.md``.
"""

from pulsetrain.calibration.badpixels import BadPixels, describe_mask
from pulsetrain.calibration.constants import MODULE_SHAPE, N_GAIN_STAGES, AGIPDConstants
from pulsetrain.calibration.correction import (
    DEFAULT_COMMON_MODE_MIN_PIXELS,
    DEFAULT_COMMON_MODE_THRESHOLD,
    CorrectedFrames,
    allocate_output,
    correct_agipd,
    correct_agipd_numpy,
    correct_module_data,
)
from pulsetrain.calibration.dark import (
    GAIN_NAMES,
    DarkAccumulator,
    DarkResult,
    StageStatistics,
    characterize_dark,
    combine_constants,
    evaluate_dark,
)

__all__ = [
    "DEFAULT_COMMON_MODE_MIN_PIXELS",
    "DEFAULT_COMMON_MODE_THRESHOLD",
    "GAIN_NAMES",
    "MODULE_SHAPE",
    "N_GAIN_STAGES",
    "AGIPDConstants",
    "BadPixels",
    "CorrectedFrames",
    "DarkAccumulator",
    "DarkResult",
    "StageStatistics",
    "allocate_output",
    "characterize_dark",
    "combine_constants",
    "correct_agipd",
    "correct_agipd_numpy",
    "correct_module_data",
    "describe_mask",
    "evaluate_dark",
]
