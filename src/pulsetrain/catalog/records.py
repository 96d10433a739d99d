"""Plain, immutable records the catalogue returns (no database session attached).

They can be kept, compared, pickled and sent to other processes freely.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from pulsetrain.catalog.conditions import Conditions

__all__ = ["ConstantRecord", "DetectorRecord", "ModuleRecord", "RunFile", "RunRecord"]


@dataclass(frozen=True)
class ModuleRecord:
    """One module of a detector."""

    index: int
    physical_name: str | None = None


@dataclass(frozen=True)
class DetectorRecord:
    """A detector and its modules."""

    id: int
    name: str
    detector_type: str
    n_modules: int
    modules: tuple[ModuleRecord, ...]
    created: datetime


@dataclass(frozen=True)
class ConstantRecord:
    """A calibration constant: what it is, when and under which conditions it is valid, where
    its array is.

    Attributes
    ----------
    id : int
        Catalogue ID.
    detector, module, module_name : str, int, str or None
        Detector name, module index and physical module name.
    constant_type : str
        ``Offset``, ``Noise``, ``ThresholdsDark``, ``BadPixelsDark``, ``RelativeGain``, ...
    conditions : Conditions
        Operating conditions (``None`` fields: the constant does not depend on them).
    valid_from, valid_to : datetime
        Validity interval ``[valid_from, valid_to)`` in UTC; ``valid_to`` ``None`` means open.
    created : datetime
        When the constant was added.
    storage : str
        ``"file"`` (HDF5 file, ``file_path`` + ``dataset``) or ``"db"`` (bytes in the database).
    checksum : str
        SHA-256 of the array bytes in C order.
    shape, dtype : tuple of int, str
        Shape and dtype (numpy ``dtype.str``) of the array.
    source_runs : tuple of int
        Catalogue IDs of the runs the constant was computed from.
    """

    id: int
    detector: str
    module: int
    module_name: str | None
    constant_type: str
    conditions: Conditions
    valid_from: datetime
    valid_to: datetime | None
    created: datetime
    storage: str
    file_path: str | None
    dataset: str | None
    checksum: str
    shape: tuple[int, ...]
    dtype: str
    nbytes: int
    source_runs: tuple[int, ...] = ()
    comment: str | None = None

    def is_valid_at(self, when: datetime) -> bool:
        """Whether ``when`` lies in the validity interval."""
        return self.valid_from <= when and (self.valid_to is None or when < self.valid_to)

    def describe(self) -> str:
        """One line naming the constant, for messages."""
        end = self.valid_to.isoformat() if self.valid_to else "open"
        return (
            f"#{self.id} {self.constant_type} {self.detector} module {self.module} "
            f"valid {self.valid_from.isoformat()} -> {end} [{self.conditions}]"
        )


@dataclass(frozen=True)
class RunFile:
    """One file of a run: name relative to the run's path, size in bytes."""

    name: str
    size: int


@dataclass(frozen=True)
class RunRecord:
    """A run recorded in the catalogue.

    Attributes
    ----------
    id : int
        Catalogue ID.
    proposal, run_number : int
        Proposal and run number.
    data_category : str
        File class of the run's files: ``RAW``, ``CORR``, ...
    run_type : str
        What the run is: ``raw``, ``dark``, ``dark-HG``, ``corr``, ``flatfield``, ...
    sample : str or None
        Sample name.
    path : str
        Run directory.
    files : tuple of RunFile
        Files with their sizes.
    n_trains : int or None
        Number of trains.
    start_time, end_time, created : datetime
        UTC times (start/end may be unknown).
    corrections : tuple of str
        Correction steps a CORR run was made with (empty for other runs).
    """

    id: int
    proposal: int
    run_number: int
    data_category: str
    run_type: str
    sample: str | None
    path: str
    n_trains: int | None
    start_time: datetime | None
    end_time: datetime | None
    created: datetime
    files: tuple[RunFile, ...] = field(default=())
    corrections: tuple[str, ...] = field(default=())

    @property
    def total_size(self) -> int:
        """Sum of the file sizes in bytes."""
        return sum(f.size for f in self.files)

    def describe(self) -> str:
        """One line naming the run, for messages."""
        return f"#{self.id} p{self.proposal:06d} r{self.run_number:04d} {self.data_category}"
