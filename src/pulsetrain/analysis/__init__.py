"""Pure analysis functions on detector frames: azimuthal integration, hit finding, statistics.

Everything here takes and returns numpy arrays and knows nothing about devices or sockets, so
devices, notebooks and offline jobs call the same code.
"""

from pulsetrain.analysis.azimuthal import AzimuthalIntegrator, IntegrationResult
from pulsetrain.analysis.hits import HitFinder, HitRateMeter, HitResult, count_peaks
from pulsetrain.analysis.statistics import (
    ModuleRegion,
    PulseStatistics,
    pulse_statistics,
    roi_sums,
)

__all__ = [
    "AzimuthalIntegrator",
    "HitFinder",
    "HitRateMeter",
    "HitResult",
    "IntegrationResult",
    "ModuleRegion",
    "PulseStatistics",
    "count_peaks",
    "pulse_statistics",
    "roi_sums",
]
