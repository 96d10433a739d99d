"""Salvage sequence files left open (``*.h5.part``) by a crashed writer.

A :class:`~pulsetrain.files.RunWriter` writes each sequence file under ``<name>.h5.part`` and
renames it only after closing it, so after ``kill -9`` the run directory's ``*.h5`` files are all
complete.  The ``.part`` files were consistent on disk at their last flush (INDEX, METADATA and
rows of every train up to it).  :func:`recover_run` cuts each one back to a consistent state,
checks it with EXtra-data's validator, and renames it to its final name.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from pulsetrain.files.naming import PART_SUFFIX

__all__ = ["RecoveredFile", "recover_file", "recover_run"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RecoveredFile:
    """Outcome for one ``.part`` file: the final path (None if unrecoverable) and its trains."""

    part_path: Path
    path: Path | None
    trains: int
    problem: str | None = None


def recover_run(run_dir: str | os.PathLike[str]) -> list[RecoveredFile]:
    """Recover every ``*.h5.part`` file of a run directory (see :func:`recover_file`)."""
    return [recover_file(p) for p in sorted(Path(run_dir).glob("*.h5" + PART_SUFFIX))]


def recover_file(part_path: str | os.PathLike[str]) -> RecoveredFile:
    """Make a ``.part`` file consistent and give it its final name if it validates.

    The file keeps the trains of its last flush whose rows are all inside their datasets;
    the INDEX is cut to those trains.  A file that HDF5 cannot open, or that then fails
    ``extra-data-validate``'s checks, is left untouched and reported.
    """
    part_path = Path(part_path)
    final = part_path.with_name(part_path.name[: -len(PART_SUFFIX)])
    try:
        with h5py.File(part_path, "r+") as f:
            trains = _cut_to_consistent(f)
    except Exception as exc:  # noqa: BLE001 - anything HDF5 says means "not recoverable"
        log.warning("cannot recover %s: %s", part_path, exc)
        return RecoveredFile(part_path, None, 0, f"cannot open or repair: {exc}")
    problems = _validate(part_path)
    if problems:
        log.warning("recovered %s does not validate: %s", part_path, problems)
        return RecoveredFile(part_path, None, trains, problems)
    os.replace(part_path, final)
    log.info("recovered %s with %d trains", final.name, trains)
    return RecoveredFile(part_path, final, trains)


def _cut_to_consistent(f: h5py.File) -> int:
    index = f["INDEX"]
    tids = index["trainId"][:]
    nonzero = tids != 0
    n = int(np.argmin(nonzero)) if not nonzero.all() else tids.size
    groups: list[h5py.Group] = []

    def visit(name: str, obj: object) -> None:
        if isinstance(obj, h5py.Group) and "first" in obj and "count" in obj:
            groups.append(obj)

    index.visititems(visit)
    for grp in groups:
        n = min(n, grp["first"].shape[0], grp["count"].shape[0])
    # Rows referenced by the INDEX must exist in every dataset of the source/group.
    for grp in groups:
        rel = grp.name[len("/INDEX/") :]
        data_path = _data_group(f, rel)
        if data_path is None:
            continue
        ends = grp["first"][:n].astype(np.int64) + grp["count"][:n].astype(np.int64)
        lengths = _dataset_lengths(f[data_path])
        if lengths and ends.size:
            limit = min(lengths)
            bad = np.nonzero(ends > limit)[0]
            if bad.size:
                n = min(n, int(bad[0]))
    for name in ("trainId", "timestamp", "flag", "origin"):
        if name in index and index[name].shape[0] != n:
            index[name].resize((n,))
    for grp in groups:
        for name in ("first", "count"):
            if grp[name].shape[0] != n:
                grp[name].resize((n,))
    return n


def _dataset_lengths(group: h5py.Group) -> list[int]:
    lengths: list[int] = []

    def visit(_name: str, obj: object) -> None:
        if isinstance(obj, h5py.Dataset):
            lengths.append(obj.shape[0])

    group.visititems(visit)
    return lengths


def _data_group(f: h5py.File, rel: str) -> str | None:
    for section in ("CONTROL", "INSTRUMENT"):
        path = f"{section}/{rel}"
        if path in f:
            return path
    return None


def _validate(path: Path) -> str | None:
    from extra_data.reader import FileAccess
    from extra_data.validation import FileValidator

    try:
        fa = FileAccess(str(path))
        problems = FileValidator(fa).run_checks()
        fa.close()
    except Exception as exc:  # noqa: BLE001
        return f"cannot be opened by EXtra-data: {exc}"
    if problems:
        return "; ".join(p["msg"] for p in problems)
    return None
