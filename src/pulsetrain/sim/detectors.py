"""Descriptions of the simulated detector types, as the detector plug-ins give them.

A :class:`DetectorSpec` says how many modules a detector has, their shape, how its sources are
named, how raw words are encoded (its codec), where its pixels are and which default response
parameters it uses.  Each plug-in of :mod:`pulsetrain.detectors` brings its own spec
(``Detector.sim_spec``); nothing here names a detector.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pulsetrain.errors import ConfigurationError
from pulsetrain.sim.parameters import GainModelParameters

__all__ = ["DETECTORS", "DetectorSpec", "detector_spec"]


@dataclass(frozen=True)
class DetectorSpec:
    """One detector type.

    Attributes
    ----------
    name : str
        Type name (``"AGIPD"``), as the plug-in's.
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
        Name of the raw layout (by convention the type name in lower case); ``codec`` does the
        work.
    default_memory_cells : int
        Memory cells when none are given.
    default_bank_size : int
        Raw frames per memory cell in the fast-path bank when none is given.
    gain_model : GainModelParameters
        Default response parameters.
    codec : pulsetrain.detectors.RawCodec
        Encodes and decodes the raw words and writes the per-frame keys.
    positions : callable
        ``positions()`` returns the pixel centres ``(modules, ss, fs, 3)`` in metres with the
        beam at x = y = 0 (called once; the result is cached).
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
    codec: Any = field(default=None, compare=False)
    positions: Callable[[], np.ndarray] | None = field(default=None, compare=False)

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


class _Specs(Mapping):
    """The simulator specs of every known detector plug-in, by type name (read lazily)."""

    def __getitem__(self, name: str) -> DetectorSpec:
        return detector_spec(name)

    def __iter__(self) -> Iterator[str]:
        from pulsetrain.detectors import detector_names, get_detector

        return iter([n for n in detector_names() if get_detector(n).sim_spec() is not None])

    def __len__(self) -> int:
        return sum(1 for _ in self)


#: The detector types by name (every plug-in's :meth:`~pulsetrain.detectors.Detector.sim_spec`).
DETECTORS: Mapping[str, DetectorSpec] = _Specs()


def detector_spec(name: str) -> DetectorSpec:
    """Return the :class:`DetectorSpec` of detector type ``name`` (case-insensitive).

    The spec comes from the detector plug-in (:mod:`pulsetrain.detectors`,
    ``Detector.sim_spec``).

    Raises
    ------
    ConfigurationError
        No such detector type, or its plug-in gives no spec.
    """
    from pulsetrain.detectors import detector_names, get_detector

    try:
        plugin = get_detector(name)
    except ConfigurationError:
        raise ConfigurationError(
            f"unknown detector {name!r}; choose one of {', '.join(detector_names())}"
        ) from None
    spec = plugin.sim_spec()
    if not isinstance(spec, DetectorSpec):
        raise ConfigurationError(f"detector {plugin.name} cannot be simulated (no sim_spec)")
    return spec
