"""The dark-characterisation workflow: read a detector's dark runs, check them, store the constants.

This is the one module of :mod:`pulsetrain.calibration` that does I/O: it reads run
directories (:mod:`pulsetrain.files`) and writes the catalogue (:mod:`pulsetrain.catalog`).
The statistics themselves are the pure :func:`~pulsetrain.calibration.dark.characterize_dark`;
this module only feeds it and stores its result.  It is not imported by
``pulsetrain.calibration``'s ``__init__`` (the catalogue imports the pure calibration modules,
so the package must not import the catalogue back); import it as
``pulsetrain.calibration.darkruns``.

:func:`characterize_dark_runs` works for any detector plug-in
(:class:`pulsetrain.detectors.base.Detector`): it takes the runs of the plug-in's
``dark_stages`` (AGIPD: HG, MG, LG) in that order, reads them with its ``split_raw`` and hands
each module's frames to its ``characterize_dark``.  It first checks all runs and refuses them,
before anything is stored, when they are not dark runs of the stated gain stages: a run that
cannot be read or has no detector modules, the same run given twice, a run recorded as a dark
run of another stage, recorded gain values (AGIPD: the digital value; LPD, JUNGFRAU: the gain
bits) that do not rise from stage to stage, pixels in another gain stage than the stated one,
or illuminated frames.  The rules are those of ``docs/calibration.md``
("Which runs are dark runs"); :class:`DarkRunRules` holds their parameters.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np

from pulsetrain.catalog import Catalog, Conditions, ConstantRecord, RunRecord
from pulsetrain.catalog.detector_constants import store_constants
from pulsetrain.detectors import Detector, get_detector, resolve_detector
from pulsetrain.errors import DarkRunError, PulsetrainError
from pulsetrain.files import iter_run_trains, run_info

__all__ = [
    "DarkRunRules",
    "DarkRunSample",
    "DarkRunsResult",
    "ModuleDarkResult",
    "RelativeGainSource",
    "characterize_dark_runs",
    "check_dark_runs",
    "sample_dark_run",
]

log = logging.getLogger(__name__)

#: Number of distinct uint16 values (histogram length).
_VALUES = 1 << 16
#: Scale from the median absolute deviation to the standard deviation of a normal distribution.
_MAD_TO_SIGMA = 1.4826
#: ``run_type`` of a dark run as the DAQ writer records it (``dark-HG``, ``dark-G0``, ...).
_DARK_RUN_TYPE = re.compile(r"^dark-(\w+)$", re.IGNORECASE)


@dataclass(frozen=True)
class DarkRunRules:
    """Parameters of the checks that decide whether three runs are dark runs of HG, MG, LG.

    Attributes
    ----------
    sample_trains
        At most this many trains are read from the start of each run (every module) for the
        checks; reading stops earlier when each sampled memory cell has two frames.
    sample_cells
        Only frames of the first this many memory cells (in order of appearance) are sampled.
    min_level_gap
        The median digital gain value must rise from HG to MG and MG to LG by more than this
        many digital spreads (1.4826 MAD of the digital values) of either run.
    max_other_stage_fraction
        Largest fraction of pixel values of a run whose digital value lies in another gain
        stage's band (beyond the midpoints between the runs' digital levels).
    bright_sigma
        A pixel value is "far from its dark level" when it differs by more than this many
        times the dark noise from the previous frame of the same pixel and memory cell.  The
        dark noise of a run and module is 1.4826 times the median of these differences, but
        at most ``max_noise_ratio`` times the smallest of the three runs' (the differences of
        an evenly illuminated run are all large).
    max_noise_ratio
        See ``bright_sigma``.
    max_bright_fraction
        Largest fraction of such pixel values in a run (noisy pixels stay far below it;
        illuminated frames far above).
    """

    sample_trains: int = 4
    sample_cells: int = 16
    min_level_gap: float = 6.0
    max_other_stage_fraction: float = 0.01
    bright_sigma: float = 10.0
    max_noise_ratio: float = 4.0
    max_bright_fraction: float = 0.01


def _median_of_histogram(hist: np.ndarray) -> float:
    total = int(hist.sum())
    if total == 0:
        return float("nan")
    cumulative = np.cumsum(hist)
    low = int(np.searchsorted(cumulative, (total - 1) // 2 + 1))
    high = int(np.searchsorted(cumulative, total // 2 + 1))
    return 0.5 * (low + high)


def _spread_of_histogram(hist: np.ndarray) -> float:
    """1.4826 times the median absolute deviation of the values a histogram counts."""
    centre = _median_of_histogram(hist)
    if not np.isfinite(centre):
        return float("nan")
    deviations = np.abs(np.arange(hist.size) - centre)
    order = np.argsort(deviations, kind="stable")
    cumulative = np.cumsum(hist[order])
    position = int(np.searchsorted(cumulative, (int(hist.sum()) + 1) // 2))
    return _MAD_TO_SIGMA * float(deviations[order[min(position, order.size - 1)]])


@dataclass
class DarkRunSample:
    """What the first trains of one run say about it (see :func:`sample_dark_run`).

    Attributes
    ----------
    path
        The run directory, resolved.
    stage
        The gain stage it is given as: ``"HG"``, ``"MG"`` or ``"LG"``.
    proposal, run_number, run_type
        From the run's metadata (``None`` where absent).
    modules
        Module numbers of its raw detector sources.
    n_trains
        Trains in the run.
    digital
        Histogram (65536 bins) of the digital gain values of every sampled pixel and frame.
    changes
        Per module, histogram of ``|a1 - a0|``: the change of the analog value of a pixel
        between two frames of the same memory cell.
    first_train_cells
        Highest cellId in the first train, plus one (0 if no frame was read).
    sampled_cells
        Highest cellId in the sampled trains, plus one.
    problems
        Reasons the run cannot be a dark run found while reading it.
    """

    path: Path
    stage: str
    detector: Detector = field(default_factory=lambda: get_detector("AGIPD"))
    proposal: int | None = None
    run_number: int | None = None
    run_type: str | None = None
    modules: tuple[int, ...] = ()
    sources: dict[int, str] = field(default_factory=dict)
    n_trains: int = 0
    digital: np.ndarray = field(default_factory=lambda: np.zeros(_VALUES, np.int64))
    changes: dict[int, np.ndarray] = field(default_factory=dict)
    first_train_cells: int = 0
    sampled_cells: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        """``run <path> (given as <stage>)``, the prefix of every message about the run."""
        return f"run {self.path} (given as {self.stage})"

    @property
    def digital_level(self) -> float:
        """Median digital gain value, ADU."""
        return _median_of_histogram(self.digital)

    @property
    def digital_spread(self) -> float:
        """1.4826 MAD of the digital gain values, ADU."""
        return _spread_of_histogram(self.digital)


def _raw_modules(detector: Detector, sources: Sequence[str]) -> dict[int, str]:
    """``{module: raw source}`` of the detector's raw module sources among ``sources``."""
    found = {}
    for source in sorted(sources):
        module = detector.raw_module_of(source)
        if module is not None:
            found.setdefault(module, source)
    return found


def _module_frames(
    detector: Detector, run_dir: Path, source: str, trains: slice | None = None
) -> Iterator[tuple[dict[str, Any], np.ndarray]]:
    """``(module data {key: array}, cellIds (n,))`` of one module source, train by train."""
    for _tid, data, _meta in iter_run_trains(run_dir, sources=[source], trains=trains):
        for props in data.values():
            yield props, detector.cell_ids(props)


def _first_cells(cells: np.ndarray, n: int) -> np.ndarray:
    """The first ``n`` distinct cellIds in order of appearance."""
    _values, first = np.unique(cells, return_index=True)
    return cells[np.sort(first)][:n]


def _sample_module(sample: DarkRunSample, module: int, rules: DarkRunRules) -> None:
    """Add the first trains of one module to the sample's histograms.

    Only frames of the first ``rules.sample_cells`` memory cells count, and reading stops when
    each of them has two frames (or after ``rules.sample_trains`` trains): the checks cost a
    few dozen frames per module, whatever the number of memory cells.
    """
    previous: dict[int, np.ndarray] = {}
    seen: dict[int, int] = {}
    chosen: np.ndarray | None = None
    changes = np.zeros(_VALUES, np.int64)
    trains = slice(0, rules.sample_trains)
    detector = sample.detector
    frames = _module_frames(detector, sample.path, sample.sources[module], trains)
    for index, (props, cells) in enumerate(frames):
        why = detector.check_raw(props)
        if why is not None:
            sample.problems.append(
                f"{sample.label}: module {module} is not {detector.name} raw data ({why})"
            )
            return
        adc, gain_raw = detector.split_raw(props)
        if not cells.size:
            continue
        if index == 0:
            sample.first_train_cells = max(sample.first_train_cells, int(cells.max()) + 1)
        sample.sampled_cells = max(sample.sampled_cells, int(cells.max()) + 1)
        if chosen is None:
            chosen = _first_cells(cells, rules.sample_cells)
        keep = np.isin(cells, chosen)
        sample.digital += np.bincount(gain_raw[keep].ravel(), minlength=_VALUES)
        for frame, cell in zip(adc[keep], cells[keep].tolist()):
            analog = frame.astype(np.int32)
            if cell in previous:
                changes += np.bincount(np.abs(analog - previous[cell]).ravel(), minlength=_VALUES)
            previous[cell] = analog
            seen[cell] = seen.get(cell, 0) + 1
        if all(seen.get(int(c), 0) >= 2 for c in chosen):
            break
    sample.changes[module] = changes


def sample_dark_run(
    path: str | os.PathLike,
    stage: str,
    *,
    modules: Sequence[int] | None = None,
    rules: DarkRunRules = DarkRunRules(),
    detector: Detector | str = "AGIPD",
) -> DarkRunSample:
    """Read the first trains of a run given as a dark run of ``stage``.

    Problems that make it unusable (unreadable, no raw detector module sources, a requested
    module missing, not raw data of the detector, no frames) are listed in ``problems``; the checks
    between runs are :func:`check_dark_runs`'.
    """
    plugin = get_detector(detector)
    sample = DarkRunSample(path=Path(path).expanduser().resolve(), stage=stage, detector=plugin)
    try:
        info = run_info(path)
    except (PulsetrainError, OSError) as exc:
        sample.problems.append(f"{sample.label}: not a readable run directory ({exc})")
        return sample
    metadata: dict[str, Any] = info.metadata or {}
    sample.proposal = _int_or_none(metadata.get("proposalNumber"))
    sample.run_number = _int_or_none(metadata.get("runNumber"))
    sample.run_type = metadata.get("runType") or None
    sample.n_trains = len(info.train_ids)
    sample.sources = _raw_modules(plugin, info.instrument_sources)
    sample.modules = tuple(sorted(sample.sources))
    if not sample.modules:
        sample.problems.append(
            f"{sample.label}: no raw {plugin.name} module sources (such as {plugin.raw_source(0)})"
        )
        return sample
    wanted = sample.modules if modules is None else tuple(modules)
    absent = sorted(set(wanted) - set(sample.modules))
    if absent:
        sample.problems.append(
            f"{sample.label}: no data of module(s) {', '.join(map(str, absent))} "
            f"(it has {', '.join(map(str, sample.modules))})"
        )
        return sample
    for module in wanted:
        _sample_module(sample, module, rules)
        if sample.problems:
            return sample
    if not sample.digital.any():
        sample.problems.append(f"{sample.label}: no detector frames")
    elif not any(h.any() for h in sample.changes.values()):
        sample.problems.append(
            f"{sample.label}: no memory cell has two frames in its first {rules.sample_trains} "
            "trains (a dark run needs at least two frames per cell)"
        )
    return sample


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _same_run(a: DarkRunSample, b: DarkRunSample) -> str | None:
    """How ``a`` is the same run as ``b`` (``None`` if it is not)."""
    if a.path == b.path:
        return "the same run directory as"
    known = a.proposal is not None and a.run_number is not None
    if known and (a.proposal, a.run_number) == (b.proposal, b.run_number):
        return f"the same run (proposal {a.proposal}, run {a.run_number}) as"
    return None


def _duplicates(samples: Sequence[DarkRunSample]) -> list[str]:
    """One line for each run that repeats an earlier one (named once, for the first)."""
    problems = []
    for i, later in enumerate(samples):
        for earlier in samples[:i]:
            how = _same_run(later, earlier)
            if how is not None:
                problems.append(f"{later.label}: {how} the {earlier.stage} run {earlier.path}")
                break
    return problems


def _recorded_type(sample: DarkRunSample) -> list[str]:
    match = _DARK_RUN_TYPE.match(sample.run_type or "")
    if match and match.group(1).upper() != sample.stage.upper():
        return [
            f"{sample.label}: recorded as a dark run of gain stage "
            + f"{match.group(1).upper()} (run type {sample.run_type!r})"
        ]
    return []


def _levels(samples: Sequence[DarkRunSample], rules: DarkRunRules) -> list[str]:
    problems = []
    for low, high in pairwise(samples):
        gap = high.digital_level - low.digital_level
        needed = rules.min_level_gap * max(low.digital_spread, high.digital_spread)
        if not gap > needed:
            problems.append(
                f"{high.label}: its digital gain level ({high.digital_level:.0f} ADU) is not "
                f"clearly above that of the {low.stage} run ({low.digital_level:.0f} ADU; needs "
                f"a step of more than {needed:.0f} ADU): not a dark run with the gain forced to "
                f"{high.stage} (the same data twice, or runs in the wrong order?)"
            )
    return problems


def _other_stages(samples: Sequence[DarkRunSample], rules: DarkRunRules) -> list[str]:
    levels = [s.digital_level for s in samples]
    bounds = [0.0, *(0.5 * (a + b) for a, b in pairwise(levels)), float(_VALUES)]
    values = np.arange(_VALUES)
    problems = []
    for index, sample in enumerate(samples):
        inside = (values >= bounds[index]) & (values < bounds[index + 1])
        fraction = 1.0 - sample.digital[inside].sum() / sample.digital.sum()
        if fraction > rules.max_other_stage_fraction:
            problems.append(
                f"{sample.label}: {100 * fraction:.1f} % of its pixel values have a digital gain "
                f"value outside {bounds[index]:.0f}..{bounds[index + 1]:.0f} ADU, the band of "
                f"{sample.stage} between the runs' levels: not a dark run with the gain forced "
                f"to {sample.stage}"
            )
    return problems


def _noise(changes: np.ndarray) -> float:
    """Spread of the changes between two frames of a cell: 1.4826 times their median."""
    return _MAD_TO_SIGMA * _median_of_histogram(changes)


def _illuminated(samples: Sequence[DarkRunSample], rules: DarkRunRules) -> list[str]:
    modules = sorted(set.intersection(*(set(s.changes) for s in samples)))
    quietest = {}
    for m in modules:
        spreads = [_noise(s.changes[m]) for s in samples if s.changes[m].any()]
        if spreads:
            quietest[m] = min(spreads)
    problems = []
    for sample in samples:
        bright = total = 0
        worst = (0.0, -1, 0.0)
        for m, reference in quietest.items():
            hist = sample.changes[m]
            if not hist.any():
                continue
            noise = min(_noise(hist), rules.max_noise_ratio * reference)
            limit = int(np.floor(rules.bright_sigma * max(noise, 1.0)))
            count, n = int(hist[limit + 1 :].sum()), int(hist.sum())
            bright, total = bright + count, total + n
            if count / n > worst[0]:
                worst = (count / n, m, noise)
        fraction = bright / total if total else 0.0
        if fraction > rules.max_bright_fraction:
            share, m, noise = worst
            problems.append(
                f"{sample.label}: {100 * fraction:.1f} % of its pixel values change by more "
                f"than {rules.bright_sigma:g} times the dark noise between frames of the same "
                f"memory cell (module {m}: {100 * share:.1f} % beyond {rules.bright_sigma * noise:.0f}"
                " ADU): illuminated frames, not a dark run"
            )
    return problems


def check_dark_runs(
    samples: Sequence[DarkRunSample], rules: DarkRunRules = DarkRunRules()
) -> list[str]:
    """Every reason, one line each, why the sampled runs are not dark runs of their stages.

    ``samples`` are those of the detector's dark stages (AGIPD: HG, MG, LG), in that order.  An empty list means they
    are.  The checks between runs run only when each run could be read.
    """
    problems = [p for s in samples for p in s.problems]
    problems += _duplicates(samples)
    problems += [p for s in samples for p in _recorded_type(s)]
    if problems:
        return problems
    problems = _levels(samples, rules)
    if not problems:
        problems = _other_stages(samples, rules)
    return problems + _illuminated(samples, rules)


@dataclass(frozen=True)
class RelativeGainSource:
    """Where relative gains come from when the dark workflow stores them too.

    Attributes
    ----------
    rel_gain
        ``rel_gain(module, memory_cells)`` -> float32 ``(3, cells, 512, 128)`` or
        ``(3, 512, 128)``, keV per ADU, stored as ``RelativeGain``; or a dict
        ``{constant type: array}`` of the gain constants to store (other detectors).
    comment
        Stored with each ``RelativeGain`` constant (how it was made).
    """

    rel_gain: Callable[[int, int], np.ndarray | dict[str, np.ndarray]]
    comment: str


@dataclass(frozen=True)
class ModuleDarkResult:
    """What :func:`characterize_dark_runs` stored for one module."""

    module: int
    constants: dict[str, ConstantRecord]
    bad_pixels: int


@dataclass(frozen=True)
class DarkRunsResult:
    """What :func:`characterize_dark_runs` did.

    Attributes
    ----------
    modules
        Per module, the stored constants and the number of pixels flagged bad in some cell.
    conditions
        The conditions the constants were stored under.
    n_trains
        Trains in the dark runs together.
    source_runs
        The catalogue records of the runs (those that are catalogued), linked to the constants.
    """

    modules: tuple[ModuleDarkResult, ...]
    conditions: Conditions
    n_trains: int
    source_runs: tuple[RunRecord, ...]


def characterize_dark_runs(
    runs: Sequence[str | os.PathLike],
    catalog: Catalog,
    conditions: Conditions,
    *,
    detector: str = "SPB_DET_AGIPD1M-1",
    detector_type: str | None = None,
    modules: Sequence[int] | None = None,
    valid_from: datetime | None = None,
    rel_gain: RelativeGainSource | None = None,
    rules: DarkRunRules = DarkRunRules(),
    progress: Callable[[int, str, int], None] | None = None,
    on_module: Callable[[ModuleDarkResult], None] | None = None,
) -> DarkRunsResult:
    """Characterise a detector's dark runs and store its dark constants (AGIPD: Offset, Noise,
    ThresholdsDark and BadPixelsDark).

    Parameters
    ----------
    runs
        The run directories of the detector's ``dark_stages``, in that order (AGIPD: the gain
        forced to HG, MG and LG).
    catalog
        Where the constants go (the detector is added with its type's module count if absent).
    conditions
        Operating conditions of the constants; ``memory_cells=None`` takes the highest cellId
        of the first run's first train, plus one.
    detector
        Detector type (``"LPD"``: its default catalogue name) or name in the catalogue.
    detector_type
        The type of a catalogue name whose type cannot be told from the name.
    modules
        Modules to characterise (default: every raw module source of the first run).
    valid_from
        Start of the constants' validity (default: now).
    rel_gain
        Also store the gain constants (AGIPD: ``RelativeGain``) per module from this source.
    rules
        Parameters of the dark-run checks.
    progress
        Called after each chunk with ``(module, stage name, frames)``.
    on_module
        Called after each module's constants are stored.

    Returns
    -------
    DarkRunsResult

    Raises
    ------
    DarkRunError
        The runs are not dark runs of the detector's stages; its ``problems`` list every reason,
        one line each, naming the run.  Nothing has been stored.
    CalibrationError, CatalogError
        On malformed data found during the characterisation, or a catalogue error.
    """
    try:
        plugin, name = resolve_detector(detector, detector_type)
    except PulsetrainError as exc:
        raise DarkRunError([str(exc)]) from None
    samples = _checked_samples(plugin, runs, conditions.memory_cells, modules, rules)
    chosen = list(samples[0].modules if modules is None else modules)
    if conditions.memory_cells is None:
        conditions = dataclasses.replace(conditions, memory_cells=samples[0].first_train_cells)
    catalog.add_detector(name, plugin.name, plugin.n_modules)
    target = _Target(
        catalog=catalog,
        detector=name,
        plugin=plugin,
        conditions=conditions,
        valid_from=valid_from if valid_from is not None else datetime.now(timezone.utc),
        source_runs=tuple(rec for s in samples for rec in catalog.find_runs(path=s.path)),
        rel_gain=rel_gain,
    )
    results = []
    for module in chosen:
        result = _characterize_module(samples, module, target, progress)
        results.append(result)
        if on_module is not None:
            on_module(result)
    return DarkRunsResult(
        modules=tuple(results),
        conditions=conditions,
        n_trains=sum(s.n_trains for s in samples),
        source_runs=target.source_runs,
    )


def _checked_samples(
    plugin: Detector,
    runs: Sequence[str | os.PathLike],
    memory_cells: int | None,
    modules: Sequence[int] | None,
    rules: DarkRunRules,
) -> list[DarkRunSample]:
    """The samples of the dark runs of each stage; ``DarkRunError`` listing every problem."""
    stages = plugin.dark_stages
    if len(runs) != len(stages):
        order = ", ".join(stages)
        raise DarkRunError(
            [
                f"{plugin.name} needs {len(stages)} dark runs ({order}, in this order), got {len(runs)}"
            ]
        )
    if modules is not None and not len(modules):
        raise DarkRunError(["no modules given to characterise"])
    bad = sorted(m for m in modules or () if not 0 <= m < plugin.n_modules)
    if bad:
        raise DarkRunError(
            [f"{plugin.name} has modules 0..{plugin.n_modules - 1}, not {', '.join(map(str, bad))}"]
        )
    samples = [
        sample_dark_run(path, stage, modules=modules, rules=rules, detector=plugin)
        for path, stage in zip(runs, stages)
    ]
    problems = check_dark_runs(samples, rules)
    if memory_cells is not None:
        problems += [
            f"{s.label}: has cellId {s.sampled_cells - 1}, but the constants are for "
            f"memory_cells={memory_cells} (cellIds 0..{memory_cells - 1})"
            for s in samples
            if s.sampled_cells > memory_cells
        ]
    if problems:
        raise DarkRunError(problems)
    return samples


@dataclass(frozen=True)
class _Target:
    """Where and how the constants of every module are stored."""

    catalog: Catalog
    detector: str
    plugin: Detector
    conditions: Conditions
    valid_from: datetime
    source_runs: tuple[RunRecord, ...]
    rel_gain: RelativeGainSource | None


def _counted(
    frames: Iterator[tuple[dict[str, Any], np.ndarray]],
    module: int,
    stage: str,
    progress: Callable[[int, str, int], None] | None,
) -> Iterator[tuple[dict[str, Any], np.ndarray]]:
    for props, cells in frames:
        if progress is not None:
            progress(module, stage, int(cells.shape[0]))
        yield props, cells


def _characterize_module(
    samples: Sequence[DarkRunSample],
    module: int,
    target: _Target,
    progress: Callable[[int, str, int], None] | None,
) -> ModuleDarkResult:
    """Characterise one module from the dark runs and store its constants."""
    cells = int(target.conditions.memory_cells)
    plugin = target.plugin
    runs = [
        _counted(_module_frames(plugin, s.path, s.sources[module]), module, s.stage, progress)
        for s in samples
    ]
    dark = plugin.characterize_dark(runs, memory_cells=cells)
    where = (target.catalog, target.detector, module)
    records = store_constants(
        *where, dark, target.conditions, target.valid_from, source_runs=target.source_runs
    )
    if target.rel_gain is not None:
        gain = target.rel_gain.rel_gain(module, cells)
        if not isinstance(gain, dict):
            gain = {"RelativeGain": np.asarray(gain, dtype=np.float32)}
        records.update(
            store_constants(
                *where,
                gain,
                target.conditions,
                target.valid_from,
                comment=target.rel_gain.comment,
            )
        )
    bad_types = [c.name for c in plugin.constant_types if c.from_dark and c.dtype == "uint32"]
    bad = 0
    for name in bad_types[:1]:
        flags = np.asarray(dark[name])
        bad = int(np.count_nonzero(flags.reshape(-1, *plugin.module_shape).any(axis=0)))
    log.info("module %d: stored %s; %d bad pixels", module, ", ".join(records), bad)
    return ModuleDarkResult(module=module, constants=records, bad_pixels=bad)
