"""Names in European XFEL run directories: files, aggregators, sources and index groups.

A run directory holds one series of *sequence files* per *aggregator*; a file name reads
``RAW-R0001-AGIPD07-S00000.h5`` (data category, run, aggregator, sequence).  Sources whose name
contains ``:`` are instrument (fast, pipeline) sources; all others are control (slow) sources.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

from pulsetrain.errors import ConfigurationError, FileFormatError

__all__ = [
    "DATA_CATEGORIES",
    "FILE_NAME_PATTERN",
    "FORMAT_VERSIONS",
    "PART_SUFFIX",
    "XTDF_SOURCE_PATTERN",
    "check_aggregator",
    "corrected_source_name",
    "default_aggregator",
    "default_frame_group",
    "detector_name",
    "is_control_source",
    "module_number",
    "parse_file_name",
    "run_file_name",
    "split_key",
]

#: Data categories (the first part of a file name): raw DAQ data and corrected data.
DATA_CATEGORIES = ("RAW", "CORR")

#: File format versions this package writes (1.1 is never written: its INDEX/flag is inverted).
FORMAT_VERSIONS = ("1.2", "1.3")

#: Suffix of a sequence file that is still open (or was left open by a crash).
PART_SUFFIX = ".part"

#: Multi-module detector sources: raw ``<DET>/DET/<m>CH0:xtdf`` and corrected
#: ``<DET>/CORR/<m>CH0:output`` (AGIPD, LPD, DSSC, ...).
XTDF_SOURCE_PATTERN = re.compile(
    r"^(?P<detector>[^/]+)/(?P<kind>DET|CORR)/(?P<module>\d+)CH\d+:(?P<channel>xtdf|output)$"
)

#: The module part of a detector module source name, found anywhere in it: ``/DET/7CH0:`` of a
#: raw source, ``/CORR/7CH0:`` of a corrected one.
MODULE_PATTERN = re.compile(r"/(?P<kind>DET|CORR)/(?P<module>\d+)CH0:")

#: Detector module sources named by a letter prefix and a module number, one entry per train
#: (JUNGFRAU: raw ``<DET>/DET/JNGFR01:daqOutput``, corrected ``<DET>/CORR/JNGFR01:output``).
NAMED_MODULE_PATTERN = re.compile(
    r"^(?P<detector>[^/]+)/(?P<kind>DET|CORR)/(?P<name>JNGFR)(?P<module>\d+):"
    r"(?P<channel>daqOutput|output)$"
)

_AGGREGATOR_PATTERN = re.compile(r"^[A-Za-z0-9]+$")


def is_control_source(source: str) -> bool:
    """Whether *source* is a control (slow) source: its name contains no ``:``."""
    return ":" not in source


def module_number(source: str, kind: str | None = None) -> int | None:
    """Module number of a detector module source, or None if *source* is not one.

    ``SPB_DET_AGIPD1M-1/DET/7CH0:xtdf`` gives 7; with ``kind="DET"`` (or ``"CORR"``) only raw
    (or only corrected) module sources count.
    """
    match = MODULE_PATTERN.search(source)
    if match is None or (kind is not None and match["kind"] != kind):
        return None
    return int(match["module"])


def corrected_source_name(raw_source: str) -> str:
    """Name of the corrected source made from a raw one, online and offline alike.

    A detector source (``/DET/`` in its device name) becomes ``/CORR/`` with the output
    channel ``output``: ``SPB_DET_AGIPD1M-1/DET/7CH0:xtdf`` →
    ``SPB_DET_AGIPD1M-1/CORR/7CH0:output``, ``SPB_IRDA_JF4M/DET/JNGFR01:daqOutput`` →
    ``SPB_IRDA_JF4M/CORR/JNGFR01:output``.  Any other source keeps its name.
    """
    device, sep, _channel = raw_source.partition(":")
    if "/DET/" not in device:
        return raw_source
    return device.replace("/DET/", "/CORR/", 1) + (":output" if sep else "")


def detector_name(detector_id: str) -> str:
    """Short detector name for aggregators, e.g. ``SPB_DET_AGIPD1M-1`` -> ``AGIPD``.

    The name is the leading letters of the last ``_``-separated part of the detector's device
    domain, upper-cased; ``DET`` if there are none.
    """
    last = detector_id.rsplit("_", 1)[-1]
    match = re.match(r"[A-Za-z]+", last)
    return match.group(0).upper() if match else "DET"


def default_aggregator(source: str) -> str:
    """Aggregator of *source* by the default rule.

    Detector module sources (``…/DET/{m}CH0:xtdf``, ``…/CORR/{m}CH0:output``) go to one
    aggregator per module, ``<NAME>{m:02}`` (``AGIPD07``), and so do JUNGFRAU's
    (``…/DET/JNGFR01:daqOutput`` → ``JNGFR01``, as in European XFEL's files); every other
    source goes to ``DA01``.
    """
    match = XTDF_SOURCE_PATTERN.match(source)
    if match:
        return f"{detector_name(match['detector'])}{int(match['module']):02d}"
    match = NAMED_MODULE_PATTERN.match(source)
    if match:
        return f"{match['name']}{int(match['module']):02d}"
    return "DA01"


def default_frame_group(source: str, group: str) -> bool:
    """Whether index group *group* of *source* holds one row per frame (else one row per train).

    By default only the ``image`` group of detector module sources is per frame: its arrays
    carry the frame axis first (``image.data`` of shape ``(frames, ...)``).
    """
    return group == "image" and XTDF_SOURCE_PATTERN.match(source) is not None


def check_aggregator(name: str, source: str | None = None) -> str:
    """Return *name* if it is a valid aggregator name (letters and digits only), else raise."""
    if not isinstance(name, str) or not _AGGREGATOR_PATTERN.match(name):
        where = f" for source {source!r}" if source else ""
        raise ConfigurationError(
            f"invalid aggregator name {name!r}{where}: use letters and digits only "
            "(e.g. 'DA01', 'AGIPD07'), since file names must split into 4 parts at '-'"
        )
    return name


#: A sequence file name, ``RAW-R0001-AGIPD07-S00002.h5`` → data category, run, aggregator, sequence.
FILE_NAME_PATTERN = re.compile(
    r"^(?P<category>[A-Za-z]+)-R(?P<run>\d+)-(?P<aggregator>[A-Za-z0-9]+)-S(?P<sequence>\d+)\.h5$"
)


def parse_file_name(path: str | os.PathLike[str]) -> tuple[str, int, str, int]:
    """``(category, run, aggregator, sequence)`` of a sequence file name.

    Raises
    ------
    FileFormatError
        The name does not follow ``CAT-R0001-AGG-S00000.h5``.
    """
    name = Path(path).name
    m = FILE_NAME_PATTERN.match(name)
    if m is None:
        raise FileFormatError(
            f"{name}: not a run file name of the form RAW-R0001-AGIPD00-S00000.h5"
        )
    return m["category"].upper(), int(m["run"]), m["aggregator"], int(m["sequence"])


def run_file_name(data_category: str, run_number: int, aggregator: str, sequence: int) -> str:
    """File name of one sequence file, e.g. ``RAW-R0001-AGIPD07-S00000.h5``."""
    return f"{data_category}-R{run_number:04d}-{aggregator}-S{sequence:05d}.h5"


def split_key(key: str) -> list[str]:
    """Split a flat dotted key into HDF5 path components, rejecting empty components."""
    parts = key.split(".")
    if not key or any(not p or "/" in p for p in parts):
        raise ValueError(f"invalid key {key!r}: empty component or '/' in a dotted key")
    return parts


FrameGroupRule = Callable[[str, str], bool]
AggregatorRule = Callable[[str], "str | None"]
