"""Reduction of a corrected run to per-pulse numbers: azimuthal profiles, hits, statistics.

The run is cut into *chunks* of consecutive trains (at most ``chunk_frames`` frames of the
first module, and never across its sequence files).  For each chunk and detector module one
Dask task reads that module's frames (block by block, from the sequence files holding the
chunk's trains) and computes, per frame, with the functions of :mod:`pulsetrain.analysis`:

* the sums and valid-pixel counts of every radial bin (:class:`AzimuthalIntegrator` on the
  module's part of the radial map, with the run-wide radial range);
* the Bragg peaks of the module (:func:`count_peaks`);
* count, sum, mean, standard deviation, min and max of the valid pixels
  (:func:`pulse_statistics`).

A second task per chunk adds the modules up — sums and counts add, peaks add (peaks are found
within a module, as on the online devices), the moments combine with Chan's formula — so the
results equal a computation on whole-detector frames.  Frames are matched across modules by
(train ID, pulse ID).

:func:`reduce_run` returns an :class:`xarray.Dataset` (numpy-backed; :func:`reduce_run_lazy`
gives it dask-backed); :func:`reduce_to_file` streams the chunks into a NeXus-style HDF5 file as
they complete (``pulsetrain reduce``).
"""

from __future__ import annotations

import logging
import operator
import os
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pulsetrain.errors import ConfigurationError
from pulsetrain.files.reader import BLOCK_BYTES
from pulsetrain.offline.cluster import (
    ClusterConfig,
    caller_objects_frozen,
    numba_threads,
    open_client,
    run_tasks,
    set_numba_threads,
    worker_task,
)
from pulsetrain.offline.combine import combine_parts, mean_profile
from pulsetrain.offline.nexus import ReducedFileWriter, read_reduced
from pulsetrain.offline.runfiles import ModuleFileReader, RunLayout, scan_run

__all__ = [
    "FRAME_VARIABLES",
    "ReductionParameters",
    "ReductionPlan",
    "plan_reduction",
    "read_reduced",
    "reduce_run",
    "reduce_run_lazy",
    "reduce_to_file",
    "write_reduced",
]

log = logging.getLogger(__name__)

#: Per-frame result variables and their dtypes (besides ``intensity`` (frame, radial)).
FRAME_VARIABLES: dict[str, np.dtype] = {
    "n_peaks": np.dtype(np.int64),
    "is_hit": np.dtype(np.bool_),
    "pixel_count": np.dtype(np.int64),
    "pixel_sum": np.dtype(np.float64),
    "pixel_mean": np.dtype(np.float64),
    "pixel_std": np.dtype(np.float64),
    "pixel_min": np.dtype(np.float64),
    "pixel_max": np.dtype(np.float64),
    "modules": np.dtype(np.int16),
}


@dataclass(frozen=True)
class ReductionParameters:
    """What the reduction computes (defaults: those of the online analysis devices).

    Parameters
    ----------
    npt : int
        Radial bins.
    unit : str
        Radial unit: ``q_A^-1``, ``q_nm^-1``, ``2th_deg``, ``2th_rad``, ``r_mm``, ``r_m``.
    radial_range : (float, float), optional
        Range of the bins in ``unit``; default the whole detector's.
    distance_m, photon_energy_kev : float
        Sample-detector distance and photon energy (the simulator's: 0.2 m, 9.3 keV).
    beam_centre_px : (float, float)
        Beam position (x, y) in pixels from the geometry origin.
    quad_positions : tuple, optional
        AGIPD-1M quadrant positions in pixels (default: EXtra-geom's example).
    hit_threshold : float
        Peak pixels must be above this (keV in corrected data).
    min_peaks : int
        Peaks a frame needs to be a hit.
    min_pixels : int
        Pixels above threshold a peak needs in its 3 x 3 neighbourhood.
    peak_method : {"maxima", "pixels"}
        Count local maxima or pixels above threshold.
    use_mask : bool
        Leave out pixels whose ``image.mask`` is non-zero (NaN pixels are always left out).
    """

    npt: int = 512
    unit: str = "q_A^-1"
    radial_range: tuple[float, float] | None = None
    distance_m: float = 0.2
    photon_energy_kev: float = 9.3
    beam_centre_px: tuple[float, float] = (0.0, 0.0)
    quad_positions: tuple[tuple[float, float], ...] | None = None
    hit_threshold: float = 200.0
    min_peaks: int = 10
    min_pixels: int = 1
    peak_method: str = "maxima"
    use_mask: bool = True

    def __post_init__(self) -> None:
        from pulsetrain.analysis.hits import METHODS
        from pulsetrain.geometry import RADIAL_UNITS

        if int(self.npt) != self.npt or self.npt < 1:
            raise ConfigurationError(f"npt must be a positive integer, got {self.npt!r}")
        if self.unit not in RADIAL_UNITS:
            raise ConfigurationError(f"unit must be one of {RADIAL_UNITS}, got {self.unit!r}")
        if self.peak_method not in METHODS:
            raise ConfigurationError(f"peak_method must be one of {METHODS}")
        if self.radial_range is not None:
            lo, hi = (float(v) for v in self.radial_range)
            if not hi > lo:
                raise ConfigurationError(f"radial range needs lo < hi, got {self.radial_range}")
        if self.distance_m <= 0 or self.photon_energy_kev <= 0:
            raise ConfigurationError("distance and photon energy must be positive")

    def geometry(self):
        """The AGIPD-1M :class:`~pulsetrain.geometry.DetectorGeometry` of these parameters."""
        from pulsetrain.geometry import agipd1m_geometry

        return agipd1m_geometry(
            self.quad_positions, distance_m=self.distance_m, beam_centre_px=self.beam_centre_px
        )

    def radial_map(self) -> np.ndarray:
        """Radial coordinate of every pixel, (16, 512, 128), in ``unit``."""
        return self.geometry().radial_map(self.unit, self.photon_energy_kev)


# ------------------------------------------------------------------------------ worker side
@dataclass(frozen=True)
class _PartTask:
    source: str
    module: int
    files: tuple[str, ...]
    train_range: tuple[int | None, int | None]
    radial_map: np.ndarray = field(repr=False)
    radial_range: tuple[float, float]
    params: ReductionParameters
    max_block_bytes: int
    numba_threads: int


def _part_keys(reader: ModuleFileReader, use_mask: bool) -> list[str]:
    keys = ["image.data"]
    for k in ("image.pulseId", "image.cellId"):
        if reader.has_key(k):
            keys.append(k)
    if use_mask and reader.has_key("image.mask"):
        keys.append("image.mask")
    return keys


def _pulse_ids(block, key: str = "image.pulseId") -> np.ndarray:
    """Pulse IDs of a block's frames (their position in the train where not recorded)."""
    if key in block.arrays:
        return np.asarray(block.arrays[key]).reshape(-1).astype(np.uint64)
    return np.concatenate(
        [np.arange(c, dtype=np.uint64) for c in block.counts.tolist()] or [np.zeros(0, np.uint64)]
    )


@worker_task
def reduce_module_part(task: _PartTask) -> dict[str, np.ndarray]:
    """Per-frame partial results of one module over one chunk of trains (a Dask task)."""
    from pulsetrain.analysis import AzimuthalIntegrator, count_peaks, pulse_statistics

    set_numba_threads(task.numba_threads)
    p = task.params
    integ = AzimuthalIntegrator(task.radial_map, p.npt, task.radial_range, unit=p.unit)
    out: dict[str, list[np.ndarray]] = {
        k: []
        for k in (
            "train_id",
            "pulse_id",
            "cell_id",
            "sums",
            "counts",
            "peaks",
            "count",
            "sum",
            "m2",
            "min",
            "max",
        )
    }
    for path in task.files:
        with ModuleFileReader(path, task.source) as reader:
            keys = _part_keys(reader, p.use_mask)
            for block in reader.blocks(
                keys,
                max_block_bytes=task.max_block_bytes,
                train_range=task.train_range,
                reuse=("image.data", "image.mask"),  # consumed before the next block
            ):
                n = block.frames
                if n == 0:
                    continue
                frames = np.asarray(block.arrays["image.data"])
                if frames.ndim != 3:
                    raise ConfigurationError(
                        f"{Path(path).name}: {task.source} image.data has shape {frames.shape}; "
                        "corrected frames (n, 512, 128) expected"
                    )
                mask = block.arrays.get("image.mask")
                res = integ.integrate_stack(frames, mask=mask)
                stack = frames[:, None]
                mstack = None if mask is None else mask[:, None]
                peaks = count_peaks(
                    stack,
                    p.hit_threshold,
                    mask=mstack,
                    method=p.peak_method,
                    min_pixels=p.min_pixels,
                )
                st = pulse_statistics(stack, mask=mstack)
                out["train_id"].append(np.repeat(block.train_ids, block.counts))
                out["pulse_id"].append(_pulse_ids(block))
                cells = block.arrays.get("image.cellId")
                out["cell_id"].append(
                    np.zeros(n, np.uint16) if cells is None else np.asarray(cells).reshape(-1)
                )
                out["sums"].append(res.sum)
                out["counts"].append(res.count.astype(np.int32))
                out["peaks"].append(np.asarray(peaks, dtype=np.int64))
                with np.errstate(invalid="ignore"):
                    m2 = np.where(st.count > 0, st.std**2 * st.count, 0.0)
                out["count"].append(st.count)
                out["sum"].append(st.sum)
                out["m2"].append(m2)
                out["min"].append(st.min)
                out["max"].append(st.max)
    result = {}
    for k, parts in out.items():
        if parts:
            result[k] = np.concatenate(parts)
        elif k in ("sums", "counts"):
            result[k] = np.zeros((0, p.npt), np.float64 if k == "sums" else np.int32)
        else:
            result[k] = np.zeros(0, np.uint64 if k in ("train_id", "pulse_id") else np.float64)
    result["module"] = np.array(task.module)
    return result


# ------------------------------------------------------------------------------ client side
@dataclass
class _Chunk:
    offset: int
    train_range: tuple[int | None, int | None]
    train_id: np.ndarray
    pulse_id: np.ndarray
    cell_id: np.ndarray
    parts: list[_PartTask]

    @property
    def n(self) -> int:
        return int(self.train_id.size)


@dataclass
class ReductionPlan:
    """The chunks and tasks of a reduction, and the frame index, before anything runs.

    Attributes
    ----------
    layout : RunLayout
        The corrected run.
    params : ReductionParameters
        What is computed.
    radial : ndarray
        Bin centres (npt,).
    radial_range : (float, float)
        The range used.
    pixels_per_bin : ndarray
        Detector pixels of each bin (before masks).
    chunks : list
        Chunks of trains, in train order, with their frame index.
    """

    layout: RunLayout
    params: ReductionParameters
    radial: np.ndarray
    radial_range: tuple[float, float]
    pixels_per_bin: np.ndarray
    chunks: list[_Chunk]

    @property
    def n_frames(self) -> int:
        return sum(c.n for c in self.chunks)

    def frame_index(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Train IDs, pulse IDs and cell IDs of every frame of the result, in order."""
        cat = [
            np.concatenate([getattr(c, k) for c in self.chunks])
            if self.chunks
            else np.zeros(0, np.uint64)
            for k in ("train_id", "pulse_id", "cell_id")
        ]
        return cat[0], cat[1], cat[2]

    def attributes(self) -> dict[str, Any]:
        """Attributes of the result: the run and the parameters."""
        p = asdict(self.params)
        p["radial_range"] = list(self.radial_range)
        p["beam_centre_px"] = list(self.params.beam_centre_px)
        if p["quad_positions"] is None:
            p["quad_positions"] = "EXtra-geom example"
        else:
            p["quad_positions"] = np.asarray(self.params.quad_positions, float).tolist()
        from pulsetrain import __version__

        return {
            "run_dir": str(self.layout.run_dir),
            "proposal": int(self.layout.proposal),
            "run_number": int(self.layout.run_number),
            "detector_modules": list(self.layout.modules),
            "program": "pulsetrain reduce",
            "pulsetrain_version": __version__,
            **p,
        }


def _module_frames(path: Path, source: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(train ID, pulse ID, cell ID) of every frame of a module in one file."""
    with ModuleFileReader(path, source) as reader:
        keys = [k for k in ("image.pulseId", "image.cellId") if reader.has_key(k)]
        tids, pids, cells = [], [], []
        if not keys:
            for i, c in enumerate(reader.count.tolist()):
                tids.append(np.full(c, reader.train_ids[i], np.uint64))
                pids.append(np.arange(c, dtype=np.uint64))
                cells.append(np.zeros(c, np.uint16))
        else:
            for block in reader.blocks(keys, max_block_bytes=BLOCK_BYTES):
                tids.append(np.repeat(block.train_ids, block.counts))
                pids.append(_pulse_ids(block))
                cells.append(
                    np.asarray(block.arrays["image.cellId"]).reshape(-1).astype(np.uint16)
                    if "image.cellId" in block.arrays
                    else np.zeros(block.frames, np.uint16)
                )
    if not tids:
        return np.zeros(0, np.uint64), np.zeros(0, np.uint64), np.zeros(0, np.uint16)
    return np.concatenate(tids), np.concatenate(pids), np.concatenate(cells)


def plan_reduction(
    run: str | os.PathLike[str],
    params: ReductionParameters | None = None,
    *,
    modules: Sequence[int] | None = None,
    chunk_frames: int = 8192,
    max_block_bytes: int = BLOCK_BYTES,
    numba_threads: int = 1,
) -> ReductionPlan:
    """Cut a corrected run into chunks and module tasks (reads only indices and pulse IDs)."""
    from pulsetrain.analysis import AzimuthalIntegrator

    params = params or ReductionParameters()
    layout = scan_run(run, kind="CORR", modules=modules)
    rmap = params.radial_map()
    if params.radial_range is None:
        finite = rmap[np.isfinite(rmap)]
        rrange = (float(finite.min()), float(finite.max()))
    else:
        rrange = (float(params.radial_range[0]), float(params.radial_range[1]))
    full = AzimuthalIntegrator(rmap, params.npt, rrange, unit=params.unit)
    frames = {
        src: [(p, *_module_frames(p, src)) for p in files]
        for src, files in layout.module_files.items()
    }
    # Chunk boundaries from the first module: at most chunk_frames frames, never across files.
    bounds = _chunk_bounds(frames[next(iter(layout.module_files))], chunk_frames)

    def part(src: str, files: list[str], lo: int | None, hi: int | None) -> _PartTask:
        m = layout.module_sources[src]
        return _PartTask(
            source=src,
            module=m,
            files=tuple(files),
            train_range=(lo, hi),
            radial_map=np.ascontiguousarray(rmap[m]),
            radial_range=rrange,
            params=params,
            max_block_bytes=int(max_block_bytes),
            numba_threads=int(numba_threads),
        )

    chunks: list[_Chunk] = []
    offset = 0
    for lo, hi in bounds:
        chunk = _chunk(frames, lo, hi, offset, part)
        if chunk is not None:
            chunks.append(chunk)
            offset += chunk.n
    return ReductionPlan(
        layout, params, full.radial.copy(), rrange, full.pixels_per_bin.copy(), chunks
    )


_FileFrames = tuple[Path, np.ndarray, np.ndarray, np.ndarray]


def _chunk_bounds(
    per_file: Sequence[_FileFrames], chunk_frames: int
) -> list[tuple[int | None, int | None]]:
    """``(first train ID, stop train ID)`` of each chunk (None: open end), from one module's
    frames: at most ``chunk_frames`` frames, and never across its sequence files."""
    starts: list[int] = []
    for _path, tid, _pid, _cell in per_file:
        if tid.size == 0:
            continue
        utids, counts = np.unique(tid, return_counts=True)
        acc = 0
        starts.append(int(utids[0]))
        for t, c in zip(utids.tolist(), counts.tolist()):
            if acc and acc + c > chunk_frames:
                starts.append(int(t))
                acc = 0
            acc += c
    starts = sorted(set(starts)) or [0]
    return [
        (None if i == 0 else s, starts[i + 1] if i + 1 < len(starts) else None)
        for i, s in enumerate(starts)
    ]


def _chunk(
    frames: dict[str, list[_FileFrames]],
    lo: int | None,
    hi: int | None,
    offset: int,
    part: Callable[[str, list[str], int | None, int | None], _PartTask],
) -> _Chunk | None:
    """The chunk of trains ``lo <= train ID < hi``: a task per module holding some, and the
    frame index (frames of all modules, by (train ID, pulse ID)); None if no module has any."""
    tids, pids, cells = [], [], []
    parts = []
    for src, per_file in frames.items():
        files = []
        for path, tid, pid, cell in per_file:
            sel = np.ones(tid.size, bool)
            if lo is not None:
                sel &= tid >= np.uint64(lo)
            if hi is not None:
                sel &= tid < np.uint64(hi)
            if sel.any():
                files.append(str(path))
                tids.append(tid[sel])
                pids.append(pid[sel])
                cells.append(cell[sel])
        if files:
            parts.append(part(src, files, lo, hi))
    if not parts:
        return None
    cell = np.concatenate(cells)
    keys = np.stack([np.concatenate(tids), np.concatenate(pids)])
    uniq, first = np.unique(keys, axis=1, return_index=True)  # sorted by (tid, pid)
    return _Chunk(
        offset,
        (lo, hi),
        uniq[0].astype(np.uint64),
        uniq[1].astype(np.uint64),
        cell[first].astype(np.uint16),
        parts,
    )


def _submit(client, plan: ReductionPlan, threads: int):
    """Submit the part and combine tasks; returns ``{combine future: chunk}``."""
    from dataclasses import replace

    token = uuid.uuid4().hex[:8]
    futures = {}
    for i, chunk in enumerate(plan.chunks):
        parts = [
            client.submit(
                reduce_module_part,
                replace(t, numba_threads=threads),
                pure=False,
                key=f"reduce-part-{i}-m{t.module}-{token}",
            )
            for t in chunk.parts
        ]
        fut = client.submit(
            combine_parts,
            (chunk.train_id, chunk.pulse_id, chunk.cell_id),
            parts,
            plan.params.npt,
            plan.params.min_peaks,
            pure=False,
            key=f"reduce-combine-{i}-{token}",
        )
        futures[fut] = chunk
    return futures


def _execute(
    plan: ReductionPlan,
    on_chunk: Callable[[_Chunk, dict[str, np.ndarray]], None],
    *,
    cluster: ClusterConfig | None,
    client: Any,
    progress: bool,
) -> None:
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=plan.n_frames, unit="frame", desc="reduce", smoothing=0.1)
    try:
        with caller_objects_frozen(), open_client(cluster, client) as c:
            futures = _submit(c, plan, numba_threads(c))

            def on_result(fut, result) -> None:
                chunk = futures[fut]
                on_chunk(chunk, result)
                if bar is not None:
                    bar.update(chunk.n)

            run_tasks(
                c,
                list(futures),
                lambda f: f"reduction of trains {futures[f].train_range}",
                on_result,
            )
    finally:
        if bar is not None:
            bar.close()


def _dataset(plan: ReductionPlan, variables: dict[str, Any], mean_profile, bin_counts):
    import xarray as xr

    tid, pid, cell = plan.frame_index()
    unit = plan.params.unit
    data_vars = {
        "intensity": (
            ("frame", "radial"),
            variables["intensity"],
            {"long_name": "mean pixel value in the radial bin"},
        )
    }
    for name in FRAME_VARIABLES:
        data_vars[name] = (("frame",), variables[name])
    data_vars["mean_profile"] = (
        ("radial",),
        mean_profile,
        {"long_name": "mean over all frames' pixels in the radial bin"},
    )
    data_vars["bin_pixel_count"] = (
        ("radial",),
        bin_counts,
        {"long_name": "valid pixel values in the radial bin"},
    )
    data_vars["pixels_per_bin"] = (
        ("radial",),
        plan.pixels_per_bin,
        {"long_name": "detector pixels in the radial bin"},
    )
    coords = {
        "train_id": (("frame",), tid),
        "pulse_id": (("frame",), pid),
        "cell_id": (("frame",), cell),
        "radial": (("radial",), plan.radial, {"units": unit, "long_name": _long_name(unit)}),
    }
    return xr.Dataset(data_vars, coords=coords, attrs=_netcdf_safe(plan.attributes()))


def _long_name(unit: str) -> str:
    return {
        "q_A^-1": "q (1/Å)",
        "q_nm^-1": "q (1/nm)",
        "2th_deg": "2θ (deg)",
        "2th_rad": "2θ (rad)",
        "r_mm": "radius (mm)",
        "r_m": "radius (m)",
    }.get(unit, unit)


def _netcdf_safe(attrs: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in attrs.items():
        if v is None:
            continue
        if isinstance(v, bool):
            v = int(v)
        if isinstance(v, (list, tuple)) and v and isinstance(v[0], (list, tuple)):
            v = str(v)
        out[k] = v
    return out


def reduce_run(
    run: str | os.PathLike[str],
    params: ReductionParameters | None = None,
    *,
    modules: Sequence[int] | None = None,
    cluster: ClusterConfig | None = None,
    client: Any = None,
    progress: bool = False,
    chunk_frames: int = 8192,
    max_block_bytes: int = BLOCK_BYTES,
    **kwargs: Any,
):
    """Per-frame azimuthal profiles, hit flags and statistics of a corrected run.

    Parameters
    ----------
    run : path-like
        A CORR run directory (from ``pulsetrain correct``).
    params : ReductionParameters, optional
        What to compute; keyword arguments (``npt=``, ``hit_threshold=``, ...) override fields.
    modules : sequence of int, optional
        Use only these modules (default all in the run).
    cluster, client
        Dask back end (see :func:`~pulsetrain.offline.open_client`).
    progress : bool
        Progress bar.
    chunk_frames : int
        Frames of the first module per chunk (memory per task: about ``chunk_frames * npt``
        × 12 bytes).
    max_block_bytes : int
        Bytes of frames a task reads at once.

    Returns
    -------
    xarray.Dataset
        Dimensions ``frame`` and ``radial``; coordinates ``train_id``, ``pulse_id``,
        ``cell_id`` (per frame) and ``radial`` (bin centres, attribute ``units``); variables
        ``intensity`` (frame, radial) float32, ``n_peaks``, ``is_hit``, ``pixel_count``,
        ``pixel_sum``, ``pixel_mean``, ``pixel_std``, ``pixel_min``, ``pixel_max``,
        ``modules`` (modules contributing to the frame), ``mean_profile`` (radial: all pixels
        of all frames pooled), ``bin_pixel_count`` and ``pixels_per_bin``; the run and the
        parameters as attributes.

    Examples
    --------
    >>> ds = reduce_run("proc/r0001", npt=300, hit_threshold=150)  # doctest: +SKIP
    >>> ds.intensity.isel(frame=slice(0, 150)).mean("frame").plot()  # doctest: +SKIP
    >>> ds.is_hit.mean().item()   # hit rate  # doctest: +SKIP
    """
    plan = plan_reduction(
        run,
        _with_overrides(params, kwargs),
        modules=modules,
        chunk_frames=chunk_frames,
        max_block_bytes=max_block_bytes,
    )
    n = plan.n_frames
    npt = plan.params.npt
    variables: dict[str, np.ndarray] = {"intensity": np.full((n, npt), np.nan, np.float32)}
    for name, dtype in FRAME_VARIABLES.items():
        variables[name] = np.zeros(n, dtype)
    totals: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def on_chunk(chunk: _Chunk, result: dict[str, np.ndarray]) -> None:
        sl = slice(chunk.offset, chunk.offset + chunk.n)
        for name, array in variables.items():
            array[sl] = result[name]
        totals[chunk.offset] = (result["bin_sums"], result["bin_counts"])

    _execute(plan, on_chunk, cluster=cluster, client=client, progress=progress)
    mean, counts = mean_profile([totals[k] for k in sorted(totals)], npt)
    return _dataset(plan, variables, mean, counts)


def reduce_run_lazy(
    run: str | os.PathLike[str],
    params: ReductionParameters | None = None,
    *,
    modules: Sequence[int] | None = None,
    chunk_frames: int = 8192,
    max_block_bytes: int = BLOCK_BYTES,
    **kwargs: Any,
):
    """:func:`reduce_run` as a dataset backed by dask arrays, computed when asked.

    Only the frame index (train and pulse IDs) is read now.  The variables are dask arrays, one
    chunk per chunk of trains, computed later by whatever scheduler is active
    (``ds.compute()``, or with a ``distributed.Client`` open); the result then equals
    :func:`reduce_run`'s.  Parameters as for :func:`reduce_run`.

    Examples
    --------
    >>> ds = reduce_run_lazy("proc/r0001", npt=300)  # doctest: +SKIP
    >>> ds.is_hit.mean().compute().item()  # doctest: +SKIP
    """
    plan = plan_reduction(
        run,
        _with_overrides(params, kwargs),
        modules=modules,
        chunk_frames=chunk_frames,
        max_block_bytes=max_block_bytes,
    )
    return _lazy_dataset(plan)


def _with_overrides(
    params: ReductionParameters | None, overrides: dict[str, Any]
) -> ReductionParameters | None:
    """``params`` (default: the defaults) with keyword overrides of its fields."""
    if not overrides:
        return params
    from dataclasses import replace

    return replace(params or ReductionParameters(), **overrides)


def _lazy_dataset(plan: ReductionPlan):
    import dask
    import dask.array as da

    token = uuid.uuid4().hex[:8]
    npt = plan.params.npt
    per_var: dict[str, list] = {"intensity": []}
    for name in FRAME_VARIABLES:
        per_var[name] = []
    totals = []
    for i, chunk in enumerate(plan.chunks):
        parts = [
            dask.delayed(reduce_module_part, pure=False)(
                t, dask_key_name=f"reduce-part-{i}-m{t.module}-{token}"
            )
            for t in chunk.parts
        ]
        comb = dask.delayed(combine_parts, pure=False)(
            (chunk.train_id, chunk.pulse_id, chunk.cell_id),
            parts,
            npt,
            plan.params.min_peaks,
            dask_key_name=f"reduce-combine-{i}-{token}",
        )
        get = dask.delayed(operator.getitem, pure=True)
        per_var["intensity"].append(
            da.from_delayed(get(comb, "intensity"), (chunk.n, npt), np.float32)
        )
        for name, dtype in FRAME_VARIABLES.items():
            per_var[name].append(da.from_delayed(get(comb, name), (chunk.n,), dtype))
        totals.append(dask.delayed(operator.itemgetter("bin_sums", "bin_counts"))(comb))
    if not plan.chunks:
        variables = {"intensity": np.zeros((0, npt), np.float32)}
        variables.update({k: np.zeros(0, d) for k, d in FRAME_VARIABLES.items()})
        return _dataset(plan, variables, np.full(npt, np.nan), np.zeros(npt, np.int64))
    variables = {k: da.concatenate(v) for k, v in per_var.items()}
    profile = dask.delayed(mean_profile)(totals, npt)
    mean = da.from_delayed(profile[0], (npt,), np.float64)
    counts = da.from_delayed(profile[1], (npt,), np.int64)
    return _dataset(plan, variables, mean, counts)


def reduce_to_file(
    run: str | os.PathLike[str],
    path: str | os.PathLike[str],
    params: ReductionParameters | None = None,
    *,
    modules: Sequence[int] | None = None,
    cluster: ClusterConfig | None = None,
    client: Any = None,
    progress: bool = True,
    chunk_frames: int = 8192,
    max_block_bytes: int = BLOCK_BYTES,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Reduce a corrected run straight into a NeXus-style HDF5 file, chunk by chunk.

    Memory stays bounded by a few chunks whatever the run's length: each chunk's results are
    written as soon as its task finishes.  The file is written as ``<path>.part`` and renamed
    when complete.  See :func:`reduce_run` for the parameters and
    :class:`~pulsetrain.offline.nexus.ReducedFileWriter` for the layout.

    Returns
    -------
    dict
        ``path``, ``frames``, ``hits``, ``seconds``.
    """
    t0 = time.perf_counter()
    path = Path(path)
    if path.exists() and not overwrite:
        raise ConfigurationError(f"{path} exists (use overwrite=True / --overwrite)")
    plan = plan_reduction(
        run, params, modules=modules, chunk_frames=chunk_frames, max_block_bytes=max_block_bytes
    )
    tid, pid, cell = plan.frame_index()
    hits = 0
    with ReducedFileWriter(
        path, plan.params.npt, tid, pid, cell, plan.radial, plan.pixels_per_bin, plan.attributes()
    ) as writer:

        def on_chunk(chunk: _Chunk, result: dict[str, np.ndarray]) -> None:
            nonlocal hits
            writer.write_frames(chunk.offset, result)
            hits += int(np.count_nonzero(result["is_hit"]))

        _execute(plan, on_chunk, cluster=cluster, client=client, progress=progress)
    return {
        "path": path,
        "frames": plan.n_frames,
        "hits": hits,
        "seconds": time.perf_counter() - t0,
    }


def write_reduced(ds, path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
    """Write a dataset from :func:`reduce_run` as a NeXus-style HDF5 file.

    A dask-backed dataset is computed first (with the active scheduler).
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise ConfigurationError(f"{path} exists (use overwrite=True)")
    ds = ds.load()
    attrs = dict(ds.attrs)
    with ReducedFileWriter(
        path,
        ds.sizes["radial"],
        ds.train_id.values,
        ds.pulse_id.values,
        ds.cell_id.values,
        ds.radial.values,
        ds.pixels_per_bin.values,
        attrs,
    ) as writer:
        writer.write_frames(0, {k: ds[k].values for k in ["intensity", *FRAME_VARIABLES]})
        writer.set_totals(ds.mean_profile.values, ds.bin_pixel_count.values)
    return path
