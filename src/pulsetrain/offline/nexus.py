"""NeXus-style HDF5 files of reduced runs: write chunk by chunk, read back as xarray.

Layout (NeXus base classes in ``NX_class`` attributes; every NXdata names its ``signal`` and
``axes`` so NeXus viewers such as silx or h5web plot it directly)::

    /                               default="entry", creator, file_name, file_time
    /entry                NXentry   default="profiles"; title, program_name, run_dir,
                                    proposal, run_number, start_time
    /entry/profiles       NXdata    signal="intensity", axes=["frame", "radial"]
        intensity (frames, npt) float32; frame (frames,) int64; radial (npt,) with units;
        train_id, pulse_id, cell_id (frames,)
    /entry/mean_profile   NXdata    signal="intensity" (npt,), axes="radial";
                                    bin_pixel_count, pixels_per_bin
    /entry/hits           NXdata    signal="n_peaks", axes="frame"; is_hit
    /entry/statistics     NXdata    signal="pixel_mean", axes="frame"; pixel_count, pixel_sum,
                                    pixel_std, pixel_min, pixel_max, modules
    /entry/reduction      NXprocess program, version, date; parameters (NXparameters) with one
                                    dataset per reduction parameter

``frame``, ``train_id``, ``pulse_id`` and ``cell_id`` are stored once (in ``profiles``) and
hard-linked into the other groups.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from pulsetrain.errors import FileFormatError
from pulsetrain.offline.combine import mean_profile

__all__ = ["ReducedFileWriter", "read_reduced"]

_UNITS = {
    "q_A^-1": "1/angstrom",
    "q_nm^-1": "1/nm",
    "2th_deg": "degree",
    "2th_rad": "rad",
    "r_mm": "mm",
    "r_m": "m",
}
_STATISTICS = (
    "pixel_count",
    "pixel_sum",
    "pixel_mean",
    "pixel_std",
    "pixel_min",
    "pixel_max",
    "modules",
)


def _names(*names: str) -> np.ndarray:
    """A list of names as an HDF5 string-array attribute (NeXus ``axes``)."""
    return np.array(names, dtype=h5py.string_dtype())


def _str_attr(value: Any) -> Any:
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value)
    if value is None:
        return "None"
    return value


class ReducedFileWriter:
    """Write the results of a reduction into a NeXus-style HDF5 file.

    The frame index and axes are written at once; per-frame results arrive in any order with
    :meth:`write_frames`.  The file is written as ``<path>.part`` and renamed by :meth:`close`;
    :meth:`discard` (or leaving a ``with`` block by an exception) deletes it instead.

    Parameters
    ----------
    path : path-like
        Output file.
    npt : int
        Radial bins.
    train_id, pulse_id, cell_id : ndarray
        Frame index (frames,).
    radial : ndarray
        Bin centres (npt,).
    pixels_per_bin : ndarray
        Detector pixels of each bin.
    attributes : dict
        Run and parameters (``unit``, ``run_dir``, ...), see ``ReductionPlan.attributes``.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        npt: int,
        train_id: np.ndarray,
        pulse_id: np.ndarray,
        cell_id: np.ndarray,
        radial: np.ndarray,
        pixels_per_bin: np.ndarray,
        attributes: dict[str, Any],
    ) -> None:
        self.path = Path(path)
        self.part = self.path.with_name(self.path.name + ".part")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.n = int(np.asarray(train_id).size)
        self.npt = int(npt)
        self._chunk_totals: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._totals: tuple[np.ndarray, np.ndarray] | None = None
        self.frame_sets: dict[str, h5py.Dataset] = {}
        self.f = h5py.File(self.part, "w")
        now = datetime.now(timezone.utc).isoformat()
        entry = self._entry(attributes, now)
        prof = self._profiles(entry, radial, str(attributes.get("unit", "")))
        for name, arr in (("train_id", train_id), ("pulse_id", pulse_id), ("cell_id", cell_id)):
            prof[name] = np.asarray(arr)
            prof.attrs[f"{name}_indices"] = 0
        self._mean_profile(entry, prof, pixels_per_bin)
        hits = self._hits(entry, attributes)
        stats = self._statistics(entry)
        for group in (hits, stats):  # the frame axis and index stored once, hard-linked
            for name in ("frame", "train_id", "pulse_id", "cell_id"):
                group[name] = prof[name]
        self._reduction(entry, attributes, now)

    # ------------------------------------------------------------ the groups of the layout
    def _entry(self, attributes: dict[str, Any], now: str) -> h5py.Group:
        """The root's attributes and ``/entry`` (NXentry) with the run's description."""
        self.f.attrs.update(
            {
                "NX_class": "NXroot",
                "default": "entry",
                "creator": "pulsetrain",
                "file_name": self.path.name,
                "file_time": now,
                "HDF5_Version": h5py.version.hdf5_version,
            }
        )
        entry = self.f.create_group("entry")
        entry.attrs.update({"NX_class": "NXentry", "default": "profiles"})
        run = attributes.get("run_number", 0)
        entry["title"] = f"azimuthal profiles, hits and statistics of run {run}"
        entry["program_name"] = "pulsetrain reduce"
        entry["program_name"].attrs["version"] = str(attributes.get("pulsetrain_version", ""))
        entry["run_dir"] = str(attributes.get("run_dir", ""))
        entry["proposal"] = int(attributes.get("proposal", 0))
        entry["run_number"] = int(run)
        entry["start_time"] = now
        return entry

    def _profiles(self, entry: h5py.Group, radial: np.ndarray, unit: str) -> h5py.Group:
        """``/entry/profiles`` (NXdata): the per-frame ``intensity`` and the axes."""
        n = self.n
        prof = entry.create_group("profiles")
        prof.attrs.update(
            {
                "NX_class": "NXdata",
                "signal": "intensity",
                "axes": _names("frame", "radial"),
                "frame_indices": 0,
                "radial_indices": 1,
            }
        )
        chunk_rows = max(1, min(max(n, 1), (1 << 20) // max(4 * self.npt, 1)))
        self.intensity = prof.create_dataset(
            "intensity",
            shape=(n, self.npt),
            dtype=np.float32,
            fillvalue=np.nan,
            chunks=(chunk_rows, self.npt) if n else None,
        )
        self.intensity.attrs.update(
            {"long_name": "mean pixel value in the radial bin", "units": "keV"}
        )
        prof["frame"] = np.arange(n, dtype=np.int64)
        prof["frame"].attrs["long_name"] = "frame number in the run"
        prof["radial"] = np.asarray(radial, np.float64)
        prof["radial"].attrs.update(
            {"units": _UNITS.get(unit, unit), "pulsetrain_unit": unit, "long_name": unit}
        )
        return prof

    def _mean_profile(
        self, entry: h5py.Group, prof: h5py.Group, pixels_per_bin: np.ndarray
    ) -> None:
        """``/entry/mean_profile`` (NXdata): filled when the file is closed."""
        mean = entry.create_group("mean_profile")
        mean.attrs.update(
            {
                "NX_class": "NXdata",
                "signal": "intensity",
                "axes": _names("radial"),
                "radial_indices": 0,
            }
        )
        mean["radial"] = prof["radial"]
        self.mean_intensity = mean.create_dataset(
            "intensity", shape=(self.npt,), dtype=np.float64, fillvalue=np.nan
        )
        self.mean_intensity.attrs["long_name"] = "mean over all frames' pixels in the radial bin"
        self.bin_count = mean.create_dataset("bin_pixel_count", shape=(self.npt,), dtype=np.int64)
        mean["pixels_per_bin"] = np.asarray(pixels_per_bin, np.int64)

    def _hits(self, entry: h5py.Group, attributes: dict[str, Any]) -> h5py.Group:
        """``/entry/hits`` (NXdata): peaks per frame and the hit flag."""
        n = self.n
        hits = entry.create_group("hits")
        hits.attrs.update(
            {"NX_class": "NXdata", "signal": "n_peaks", "axes": _names("frame"), "frame_indices": 0}
        )
        self.frame_sets["n_peaks"] = hits.create_dataset("n_peaks", shape=(n,), dtype=np.int64)
        self.frame_sets["is_hit"] = hits.create_dataset("is_hit", shape=(n,), dtype=np.bool_)
        hits["is_hit"].attrs["min_peaks"] = int(attributes.get("min_peaks", 0))
        hits["n_peaks"].attrs["threshold"] = float(attributes.get("hit_threshold", 0.0))
        return hits

    def _statistics(self, entry: h5py.Group) -> h5py.Group:
        """``/entry/statistics`` (NXdata): pixel statistics per frame."""
        stats = entry.create_group("statistics")
        stats.attrs.update(
            {
                "NX_class": "NXdata",
                "signal": "pixel_mean",
                "axes": _names("frame"),
                "frame_indices": 0,
            }
        )
        for name in _STATISTICS:
            dtype = (
                np.int64 if name == "pixel_count" else np.int16 if name == "modules" else np.float64
            )
            fill = np.nan if dtype == np.float64 else 0
            self.frame_sets[name] = stats.create_dataset(
                name, shape=(self.n,), dtype=dtype, fillvalue=fill
            )
        return stats

    def _reduction(self, entry: h5py.Group, attributes: dict[str, Any], now: str) -> None:
        """``/entry/reduction`` (NXprocess) with one dataset per reduction parameter."""
        proc = entry.create_group("reduction")
        proc.attrs["NX_class"] = "NXprocess"
        proc["program"] = "pulsetrain reduce"
        proc["version"] = str(attributes.get("pulsetrain_version", ""))
        proc["date"] = now
        params = proc.create_group("parameters")
        params.attrs["NX_class"] = "NXparameters"
        for key, value in attributes.items():
            params[key] = _str_attr(value)

    # ------------------------------------------------------------ writing
    def write_frames(self, offset: int, result: dict[str, np.ndarray]) -> None:
        """Write per-frame results (``intensity`` and the per-frame variables) at ``offset``.

        ``bin_sums`` / ``bin_counts`` in ``result``, if present, are added to the run's mean
        profile.
        """
        n = int(np.asarray(result["intensity"]).shape[0])
        sl = slice(int(offset), int(offset) + n)
        if n:
            self.intensity[sl] = np.asarray(result["intensity"], np.float32)
            for name, ds in self.frame_sets.items():
                if name in result:
                    ds[sl] = np.asarray(result[name])
        if "bin_sums" in result:
            self._chunk_totals[int(offset)] = (result["bin_sums"], result["bin_counts"])

    def set_totals(self, mean_profile: np.ndarray, bin_pixel_count: np.ndarray) -> None:
        """Set the run's mean profile directly (instead of adding chunks' sums)."""
        self._totals = (np.asarray(mean_profile, np.float64), np.asarray(bin_pixel_count))

    def close(self) -> None:
        """Write the mean profile, close the file and rename it to its final name."""
        if not self.f.id.valid:
            return
        if self._totals is None:
            mean, counts = mean_profile(
                [self._chunk_totals[k] for k in sorted(self._chunk_totals)], self.npt
            )
        else:
            mean, counts = self._totals
        self.mean_intensity[:] = mean
        self.bin_count[:] = counts
        self.f.close()
        os.replace(self.part, self.path)

    def discard(self) -> None:
        """Close the unfinished file and delete it (after an error); the final name stays free."""
        if not self.f.id.valid:
            return
        self.f.close()
        self.part.unlink(missing_ok=True)

    def __enter__(self) -> ReducedFileWriter:  # noqa: PYI034
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.discard()


def read_reduced(path: str | os.PathLike[str]):
    """Read a file written by ``pulsetrain reduce`` back as the :class:`xarray.Dataset` that
    :func:`~pulsetrain.offline.reduce_run` returns."""
    import xarray as xr

    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise FileFormatError(f"cannot open {path}: {exc}") from exc
    with f:
        if "entry/profiles/intensity" not in f:
            raise FileFormatError(f"{path}: not a reduced-run file (no entry/profiles)")
        e = f["entry"]
        prof = e["profiles"]
        unit = prof["radial"].attrs.get("pulsetrain_unit", "")
        if isinstance(unit, bytes):
            unit = unit.decode()
        attrs = {}
        for key, ds in e["reduction/parameters"].items():
            value = ds[()]
            if isinstance(value, bytes):
                value = value.decode()
                try:
                    value = json.loads(value)
                except ValueError:
                    pass
            elif isinstance(value, np.generic):
                value = value.item()
            if isinstance(value, list) and value and isinstance(value[0], list):
                value = str(value)
            attrs[key] = value
        data_vars = {
            "intensity": (("frame", "radial"), prof["intensity"][:]),
            "n_peaks": (("frame",), e["hits/n_peaks"][:]),
            "is_hit": (("frame",), e["hits/is_hit"][:]),
            "mean_profile": (("radial",), e["mean_profile/intensity"][:]),
            "bin_pixel_count": (("radial",), e["mean_profile/bin_pixel_count"][:]),
            "pixels_per_bin": (("radial",), e["mean_profile/pixels_per_bin"][:]),
        }
        for name in _STATISTICS:
            data_vars[name] = (("frame",), e["statistics"][name][:])
        coords = {
            "train_id": (("frame",), prof["train_id"][:]),
            "pulse_id": (("frame",), prof["pulse_id"][:]),
            "cell_id": (("frame",), prof["cell_id"][:]),
            "radial": (("radial",), prof["radial"][:], {"units": unit}),
        }
    return xr.Dataset(data_vars, coords=coords, attrs=attrs)
