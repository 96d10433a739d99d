"""The detector plug-in contract: what every detector type tells the rest of pulsetrain.

A detector type (AGIPD, LPD, JUNGFRAU, ...) is one subclass of :class:`Detector` in its own
module, found through the ``pulsetrain.detectors`` entry-point group (see
:mod:`pulsetrain.detectors.registry`).  The catalogue, ``pulsetrain dark``, the correction
device, ``pulsetrain correct``, the preview and the simulator ask the plug-in and never test a
detector's name.  ``docs/detectors.md`` describes the contract and how to add a detector.

This module imports nothing heavy (numpy only): a plug-in imports its kernels, EXtra-geom and
the simulator inside the methods that need them.
"""

from __future__ import annotations

import abc
import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from pulsetrain.errors import ConfigurationError

__all__ = [
    "STEPS",
    "ConstantType",
    "DarkRun",
    "Detector",
    "RawCodec",
    "RawKey",
    "parse_steps",
]

#: The correction steps, by their stable names (the device's ``corrections`` property and
#: ``pulsetrain correct --corrections`` use the same names), in the order they are applied.
STEPS = ("offset", "gainstage", "relgain", "flatfield", "commonmode", "badpixels")

#: One dark run of one module: an iterable of ``(module data {key: array}, cell_ids (n,))``.
DarkRun = Iterable[tuple[Mapping[str, np.ndarray], np.ndarray]]


@dataclass(frozen=True)
class RawKey:
    """One per-frame key of a raw module source.

    Attributes
    ----------
    key
        Flat dotted key, e.g. ``"image.data"``.
    frame_shape
        Shape of one frame's value, e.g. ``(2, 512, 128)``.
    dtype
        numpy dtype name, e.g. ``"uint16"``.
    """

    key: str
    frame_shape: tuple[int, ...]
    dtype: str


@dataclass(frozen=True)
class ConstantType:
    """One calibration constant type of a detector, as stored in the catalogue.

    Attributes
    ----------
    name
        Catalogue type name, e.g. ``"Offset"``.
    shape
        Shape with ``"stages"`` (``"stages-1"``: boundaries between stages), ``"cells"`` and
        ``"ss"``/``"fs"`` (the module's slow and fast scan) as placeholders, e.g. ``("stages", "cells", "ss", "fs")``.
    dtype
        numpy dtype name of the stored array.
    steps
        Correction steps that need it (empty: used by none, e.g. ``Noise``).
    from_dark
        Made by the detector's dark procedure (``pulsetrain dark``).
    """

    name: str
    shape: tuple[str | int, ...]
    dtype: str
    steps: tuple[str, ...] = ()
    from_dark: bool = False


class RawCodec:
    """How the simulator writes a detector's raw words and reads them back (a plug-in's part).

    A plug-in's :meth:`Detector.sim_spec` gives one as ``DetectorSpec.codec``; the simulator
    calls only these methods.  ``analog`` and ``digital`` are the ADC value and the gain value
    (a digital level or a gain code) of each pixel, ``(frames, ss, fs)``.  The default
    :meth:`frame_info` writes the XTDF ``image.*`` per-frame keys.
    """

    def frame_keys(self, module_shape: tuple[int, int]) -> dict[str, tuple[tuple, type]]:
        """Per-frame keys of raw data: ``{key: (shape of one frame, dtype)}``."""
        raise NotImplementedError

    def encode(self, analog: np.ndarray, digital: np.ndarray) -> dict[str, np.ndarray]:
        """Pack analogue and digital values ``(frames, ss, fs)`` into raw keys."""
        raise NotImplementedError

    def encode_pixels(
        self, pixels: np.ndarray, analog: np.ndarray, digital: np.ndarray, npix: int
    ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Raw values of some pixels of one frame: ``{key: (flat index in the frame, values)}``."""
        raise NotImplementedError

    def decode(self, data: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Unpack raw keys into ``(analog, gain)``, both ``(frames, ss, fs)``."""
        raise NotImplementedError

    def frame_info(
        self,
        train_id: int,
        cell_ids: np.ndarray,
        pulse_ids: np.ndarray,
        timestamps: np.ndarray,
        module_shape: tuple[int, int],
    ) -> dict[str, np.ndarray]:
        """Per-frame bookkeeping keys of one module-train (``timestamps``: of each frame)."""
        n = len(cell_ids)
        shape, dtype = self.frame_keys(module_shape)["image.data"]
        frame_bytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        return {
            "image.cellId": cell_ids.copy(),
            "image.pulseId": pulse_ids.copy(),
            "image.trainId": np.full(n, train_id, dtype=np.uint64),
            "image.length": np.full(n, frame_bytes, dtype=np.uint32),
            "image.status": np.zeros(n, dtype=np.uint16),
        }


def parse_steps(text: str | Iterable[str] | None, supported: Sequence[str]) -> tuple[str, ...]:
    """Correction step names from ``"offset,badpixels"`` (or a sequence), in :data:`STEPS` order.

    Parameters
    ----------
    text
        Comma-separated names, a sequence of names, or ``None``/``""`` (no steps).
    supported
        The steps the detector supports.

    Returns
    -------
    tuple of str
        The steps, each once, in the order of :data:`STEPS`.

    Raises
    ------
    ConfigurationError
        An unknown step or one the detector does not support.
    """
    if text is None:
        names: list[str] = []
    elif isinstance(text, str):
        names = [t.strip().lower() for t in text.split(",") if t.strip()]
    else:
        names = [str(t).strip().lower() for t in text]
    unknown = [n for n in names if n not in STEPS]
    if unknown:
        raise ConfigurationError(
            f"unknown correction step(s) {', '.join(unknown)}; the steps are {', '.join(STEPS)}"
        )
    unsupported = [n for n in names if n not in supported]
    if unsupported:
        raise ConfigurationError(
            f"correction step(s) {', '.join(unsupported)} not available for this detector "
            f"(it has {', '.join(supported)})"
        )
    return tuple(s for s in STEPS if s in names)


class Detector(abc.ABC):
    """One detector type: layout, gain, constants, dark procedure, correction, geometry, sources.

    Subclasses set the class attributes and implement the abstract methods; instances hold no
    state (the registry hands out one instance per type).  Arrays of one module are indexed
    ``[..., ss, fs]`` with ``module_shape = (ss, fs)``; per-stage constants lead with the gain
    stage axis, in :attr:`gain_stages` order.

    Class attributes
    ----------------
    name
        Type name, upper case (``"AGIPD"``): the ``--detector`` value and the catalogue's
        ``detector_type``.
    default_detector_id
        The detector's name in the catalogue and the prefix of its sources when none is given
        (``"SPB_DET_AGIPD1M-1"``).
    n_modules, module_shape, pixel_size_m
        Modules, ``(ss, fs)`` pixels of one module, pixel pitch in metres.
    gain_stages
        Stage names in stage order (index 0, 1, 2): the names dark runs and
        ``pulsetrain simulate --dark`` use.
    raw_keys
        The per-frame keys of a raw module source.
    cell_key
        Key of the memory cell of each frame (``None``: the detector has one cell).
    steps
        Correction steps the detector supports (a subset of :data:`STEPS`).
    default_steps
        Steps applied when none are chosen.
    constant_types
        Every constant type the detector uses.
    corrected_keys
        ``{key: dtype}`` of the per-frame corrected output keys besides the carried keys; each
        frame's value has shape ``module_shape``.
    carried_keys
        Per-frame keys copied from the raw source to the corrected one (flattened to
        ``(frames,)``).
    frame_groups
        Index groups of the raw and corrected module sources whose arrays have one row per
        entry of the first axis (``INDEX/<source>/<group>/count`` counts them), as files store
        them.
    correction_options
        Names of the keyword options :meth:`correct` accepts besides the steps (AGIPD:
        ``bad_to_nan``, ``force_mg_threshold``, ...); callers drop the others.
    extra_geom_class, extra_data_component
        Names of the EXtra-geom geometry class and the EXtra-data component of the detector
        (``"AGIPD_1MGeometry"``, ``"AGIPD1M"``), for documentation and interoperability tests.
    """

    name: ClassVar[str]
    default_detector_id: ClassVar[str]
    n_modules: ClassVar[int]
    module_shape: ClassVar[tuple[int, int]]
    pixel_size_m: ClassVar[float]
    gain_stages: ClassVar[tuple[str, ...]]
    raw_keys: ClassVar[tuple[RawKey, ...]]
    cell_key: ClassVar[str | None]
    steps: ClassVar[tuple[str, ...]]
    default_steps: ClassVar[tuple[str, ...]]
    constant_types: ClassVar[tuple[ConstantType, ...]]
    corrected_keys: ClassVar[dict[str, str]] = {
        "image.data": "float32",
        "image.gain": "uint8",
        "image.mask": "uint32",
    }
    carried_keys: ClassVar[tuple[str, ...]] = ()
    frame_groups: ClassVar[tuple[str, ...]] = ("image",)
    correction_options: ClassVar[tuple[str, ...]] = ()
    extra_geom_class: ClassVar[str | None] = None
    extra_data_component: ClassVar[str | None] = None

    # ------------------------------------------------------------------ gain stages, steps
    def stage_index(self, stage: str | int) -> int:
        """Index of a gain stage given by name (case-insensitive) or index (``0``, ``"1"``).

        Raises
        ------
        ConfigurationError
            Neither a stage name of this detector nor a valid index.
        """
        text = str(stage).strip()
        if text.isdigit() and int(text) < len(self.gain_stages):
            return int(text)
        names = [s.upper() for s in self.gain_stages]
        if text.upper() in names:
            return names.index(text.upper())
        raise ConfigurationError(
            f"{self.name} has no gain stage {stage!r}; use one of "
            f"{', '.join(self.gain_stages)} or 0..{len(self.gain_stages) - 1}"
        )

    def parse_steps(self, text: str | Iterable[str] | None) -> tuple[str, ...]:
        """The steps chosen by ``text`` (see :func:`parse_steps`); empty or ``None``: defaults."""
        if text is None or (isinstance(text, str) and not text.strip()):
            return tuple(self.default_steps)
        return parse_steps(text, self.steps)

    def constant_type(self, name: str) -> ConstantType:
        """The :class:`ConstantType` called ``name``."""
        for ctype in self.constant_types:
            if ctype.name == name:
                return ctype
        raise ConfigurationError(f"{self.name} has no constant type {name!r}")

    def required_constants(self, steps: Collection[str]) -> tuple[str, ...]:
        """Constant types the ``steps`` need, in :attr:`constant_types` order."""
        return tuple(c.name for c in self.constant_types if set(c.steps) & set(steps))

    @property
    def dark_constants(self) -> tuple[str, ...]:
        """Constant types the dark procedure makes."""
        return tuple(c.name for c in self.constant_types if c.from_dark)

    def constant_shape(self, name: str, memory_cells: int) -> tuple[int, ...]:
        """Concrete shape of constant type ``name`` for ``memory_cells`` cells."""
        sizes = {
            "stages": len(self.gain_stages),
            "stages-1": len(self.gain_stages) - 1,
            "cells": int(memory_cells),
            "ss": self.module_shape[0],
            "fs": self.module_shape[1],
        }
        return tuple(
            sizes[d] if isinstance(d, str) else int(d) for d in self.constant_type(name).shape
        )

    # ------------------------------------------------------------------ sources
    def raw_source(self, module: int, detector_id: str | None = None) -> str:
        """Raw source name of ``module`` (0-based) of ``detector_id`` (default: the default)."""
        return f"{detector_id or self.default_detector_id}/DET/{int(module)}CH0:xtdf"

    def module_of(self, source: str) -> int | None:
        """Module number of a raw or corrected source of this detector type (``None``: not one)."""
        match = re.match(r"^[^/]+/(?:DET|CORR)/(\d+)CH0:(?:xtdf|output)$", source)
        return int(match.group(1)) if match else None

    def raw_module_of(self, source: str) -> int | None:
        """Module number of a raw module source of this detector type (``None``: not one)."""
        match = re.match(r"^[^/]+/DET/(\d+)CH0:xtdf$", source)
        return int(match.group(1)) if match else None

    def aggregator(self, source: str) -> str:
        """Aggregator (the file name part) of the files of a module source: the type name and
        the module number (``AGIPD03``, ``LPD03``), so each module has its own files."""
        from pulsetrain.files.naming import default_aggregator

        module = self.module_of(source)
        if module is None:
            return default_aggregator(source)
        return f"{re.sub('[^A-Za-z0-9]', '', self.name)[:8]}{module:02d}"

    def corrected_source(self, raw_source: str) -> str:
        """The CORR source name of a raw module source."""
        from pulsetrain.files.naming import corrected_source_name

        return corrected_source_name(raw_source)

    # ------------------------------------------------------------------ raw data, gain
    @abc.abstractmethod
    def split_raw(self, source_data: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        """``(adc, gain_raw)``, each ``(frames, ss, fs)``, of a raw module source.

        ``gain_raw`` is the gain information as the detector records it (AGIPD: the digital
        value; LPD: the stage bits; JUNGFRAU: the gain code); :meth:`gain_stage` turns it into
        stage indices.
        """

    @abc.abstractmethod
    def gain_stage(
        self, gain_raw: np.ndarray, cell_ids: np.ndarray, constants: Mapping[str, np.ndarray]
    ) -> np.ndarray:
        """Gain stage index (uint8, ``(frames, ss, fs)``) of raw gain values; ``constants`` are
        those the decoding needs (AGIPD: ``ThresholdsDark``; none for LPD and JUNGFRAU)."""

    def check_raw(self, source_data: Mapping[str, Any]) -> str | None:
        """Why ``source_data`` is not raw data of this detector (``None``: it is)."""
        for rk in self.raw_keys:
            value = source_data.get(rk.key)
            if value is None:
                return f"no key {rk.key!r}"
            arr = np.asarray(value)
            if arr.shape[1:] != rk.frame_shape or arr.dtype != np.dtype(rk.dtype):
                return (
                    f"{rk.key} is {arr.dtype} {arr.shape}, expected {rk.dtype} "
                    f"(frames, {', '.join(map(str, rk.frame_shape))})"
                )
        return None

    def cell_ids(self, source_data: Mapping[str, Any]) -> np.ndarray:
        """Memory cell of each frame, ``(frames,)`` int64."""
        if self.cell_key is None or self.cell_key not in source_data:
            first = np.asarray(source_data[self.raw_keys[0].key])
            return np.zeros(first.shape[0], np.int64)
        return np.asarray(source_data[self.cell_key]).reshape(-1).astype(np.int64)

    # ------------------------------------------------------------------ constants, correction
    @abc.abstractmethod
    def prepare_constants(
        self,
        arrays: Mapping[str, np.ndarray],
        steps: Collection[str],
        memory_cells: int | None = None,
    ) -> Any:
        """The object :meth:`correct` reads, from ``{constant type: array}`` of one module.

        ``arrays`` holds at least :meth:`required_constants` of ``steps`` (others may be
        present and are ignored unless useful).  ``memory_cells`` (keyword) is given only when
        ``arrays`` is empty (steps that need no constants): the number of cells the prepared
        constants must cover.  Called once per module and constant set, so it may precompute.
        """

    @abc.abstractmethod
    def correct(
        self,
        source_data: Mapping[str, Any],
        constants: Any,
        steps: Collection[str],
        *,
        out: Mapping[str, np.ndarray] | None = None,
        **options: Any,
    ) -> dict[str, Any]:
        """Correct one raw module-train ``data[source]`` into the corrected keys.

        Parameters
        ----------
        source_data
            The raw module source's keys.
        constants
            What :meth:`prepare_constants` returned for the same ``steps``.
        steps
            Correction steps to apply.
        out
            Optional output arrays ``{key: array}`` (see :meth:`allocate`), written in place.
        **options
            Detector-specific options (AGIPD: ``bad_to_nan``, force thresholds, common-mode
            parameters).

        Returns
        -------
        dict
            :attr:`corrected_keys` and :attr:`carried_keys` (those present).
        """

    def select_options(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """The entries of ``options`` that :meth:`correct` of this detector accepts."""
        return {k: v for k, v in options.items() if k in self.correction_options}

    def allocate(self, frames: int) -> dict[str, np.ndarray]:
        """Empty output arrays ``{key: array}`` of :attr:`corrected_keys` for ``frames``."""
        shape = (int(frames), *self.module_shape)
        return {k: np.empty(shape, np.dtype(d)) for k, d in self.corrected_keys.items()}

    # ------------------------------------------------------------------ dark procedure
    @property
    def dark_stages(self) -> tuple[str, ...]:
        """The dark runs the dark procedure needs, in the order they are given (stage names)."""
        return tuple(self.gain_stages)

    @abc.abstractmethod
    def characterize_dark(
        self, runs: Sequence[DarkRun], memory_cells: int
    ) -> dict[str, np.ndarray]:
        """The dark constants ``{type: array}`` of one module from its dark runs.

        Parameters
        ----------
        runs
            One :data:`DarkRun` per entry of :attr:`dark_stages`, in that order.
        memory_cells
            Memory cells of the constants (cellIds must be below it).
        """

    # ------------------------------------------------------------------ geometry
    @abc.abstractmethod
    def geometry(self, **kwargs: Any) -> Any:
        """The detector's default EXtra-geom geometry (keyword arguments: class-specific)."""

    # ------------------------------------------------------------------ simulator
    @property
    def sim_name(self) -> str:
        """Name of the detector in :mod:`pulsetrain.sim` (``DetectorSimulator(name)``)."""
        return self.name

    def sim_spec(self) -> Any:
        """The :class:`pulsetrain.sim.detectors.DetectorSpec` the simulator uses: module layout,
        source names, default response, the :class:`RawCodec` of the raw words and the pixel
        positions (cache it; import the simulator inside).  ``None`` (the default): the
        detector cannot be simulated."""
        return None

    @abc.abstractmethod
    def truth_constants(self, truth: Any) -> dict[str, np.ndarray]:
        """Every constant type the simulator's truth of one module defines, ``{type: array}``
        (``truth``: a :class:`pulsetrain.sim.ModuleTruth`)."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} detector {self.name}>"
