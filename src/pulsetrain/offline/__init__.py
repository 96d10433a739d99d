"""Offline batch jobs over whole runs, in parallel on Dask.

* :func:`correct_run` - a raw run into a CORR run (``pulsetrain correct``), one task per module
  sequence file, with the online correction's function and options.
* :func:`reduce_run` - per-pulse azimuthal profiles, hit flags and statistics of a corrected
  run as an :class:`xarray.Dataset` (``pulsetrain reduce``; :func:`reduce_run_lazy` for a
  dask-backed one); :func:`write_reduced` stores it as NeXus-style HDF5.
* :class:`ClusterConfig` / :func:`open_client` - a local cluster, an existing scheduler or SLURM.

See ``docs/offline.md``.
"""

from pulsetrain.offline.cluster import (
    ClusterConfig,
    SlurmOptions,
    open_client,
    slurm_cluster,
)
from pulsetrain.offline.correct import (
    DEFAULT_CONDITIONS,
    CorrectionOptions,
    CorrectionReport,
    correct_run,
    plan_correction,
)
from pulsetrain.offline.reduce import (
    ReductionParameters,
    read_reduced,
    reduce_run,
    reduce_run_lazy,
    write_reduced,
)
from pulsetrain.offline.runfiles import RunLayout, scan_run

__all__ = [
    "DEFAULT_CONDITIONS",
    "ClusterConfig",
    "CorrectionOptions",
    "CorrectionReport",
    "ReductionParameters",
    "RunLayout",
    "SlurmOptions",
    "correct_run",
    "open_client",
    "plan_correction",
    "read_reduced",
    "reduce_run",
    "reduce_run_lazy",
    "scan_run",
    "slurm_cluster",
    "write_reduced",
]
