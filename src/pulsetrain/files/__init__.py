"""European XFEL run files: writing (our own, h5py) and reading (through EXtra-data).

- :class:`RunWriter` writes trains into a run directory of EXDF 1.2/1.3 sequence files.
- :func:`iter_run_trains` / :func:`run_info` read a run back in the train convention.
- :func:`recover_run` salvages files left open by a crashed writer.

The format and the failure behaviour are described in ``docs/file-format.md``.
"""

from pulsetrain.files.naming import default_aggregator, default_frame_group, run_file_name
from pulsetrain.files.reader import RunInfo, iter_run_trains, open_run_dir, run_info
from pulsetrain.files.recovery import RecoveredFile, recover_file, recover_run
from pulsetrain.files.timestamps import make_meta, meta_to_ns
from pulsetrain.files.writer import RunWriter, aggregator_by_patterns

__all__ = [
    "RecoveredFile",
    "RunInfo",
    "RunWriter",
    "aggregator_by_patterns",
    "default_aggregator",
    "default_frame_group",
    "iter_run_trains",
    "make_meta",
    "meta_to_ns",
    "open_run_dir",
    "recover_file",
    "recover_run",
    "run_file_name",
    "run_info",
]
