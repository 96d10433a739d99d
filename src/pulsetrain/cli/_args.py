"""``argparse`` types shared by the sub-commands: counts, rates, endpoints and paths.

Each converts one command-line string or raises :class:`argparse.ArgumentTypeError` with a
message naming the bad value, so a mistake ends as one line before anything starts.  Port
numbers are checked by :func:`pulsetrain.runtime.ports.port_arg` and
:func:`pulsetrain.runtime.ports.port_or_zero_arg`.  Options that several sub-commands must spell and
default alike (the catalogue, the detector, the operating conditions of the constants) are
added by one function each.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from pulsetrain.errors import ConfigurationError
from pulsetrain.runtime.ports import split_tcp_endpoint

__all__ = [
    "add_catalogue_arguments",
    "add_condition_arguments",
    "bind_endpoint",
    "connect_endpoint",
    "existing_file",
    "finite_float",
    "frame_count",
    "non_negative_float",
    "non_negative_int",
    "output_directory",
    "positive_float",
    "positive_int",
    "require_run_directory",
    "run_directory",
]


def _int(text: str) -> int:
    try:
        return int(text, 10)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None


def _float(text: str) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def positive_int(text: str) -> int:
    """A whole number >= 1 (a count of trains, frames, workers ...)."""
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


#: Most pulses a train can have (European XFEL: 2700 per 600 µs train).
MAX_FRAMES = 2700


def frame_count(text: str) -> int:
    """Frames (pulses) per train: 1 to :data:`MAX_FRAMES`."""
    value = positive_int(text)
    if value > MAX_FRAMES:
        raise argparse.ArgumentTypeError(
            f"{value} frames per train is more than a train has (at most {MAX_FRAMES})"
        )
    return value


def non_negative_int(text: str) -> int:
    """A whole number >= 0 (an index, or a count where 0 means "none" or "no limit")."""
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {value}")
    return value


def positive_float(text: str) -> float:
    """A finite number > 0 (a duration, a distance, an energy ...)."""
    value = _float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0, not {text}")
    return value


def non_negative_float(text: str) -> float:
    """A finite number >= 0 (a rate where 0 means "as fast as possible" ...)."""
    value = _float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {text}")
    return value


def finite_float(text: str) -> float:
    """Any finite number."""
    return _float(text)


def _endpoint(text: str, allow_zero: bool) -> str:
    if text.startswith("ipc://") and len(text) > len("ipc://"):
        return text
    try:
        split_tcp_endpoint(text, allow_zero=allow_zero)
    except ConfigurationError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def connect_endpoint(text: str) -> str:
    """An address to connect to: ``tcp://HOST:PORT`` (port 1-65535) or ``ipc://PATH``."""
    return _endpoint(text, allow_zero=False)


def bind_endpoint(text: str) -> str:
    """An address to bind: ``tcp://HOST:PORT`` (port 0: any free one) or ``ipc://PATH``."""
    return _endpoint(text, allow_zero=True)


def require_run_directory(path: str | Path) -> None:
    """Raise :class:`ConfigurationError` unless ``path`` is a directory holding run files."""
    text = str(path)
    path = Path(path)
    if not path.exists():
        raise ConfigurationError(f"run directory {text!r} does not exist")
    if not path.is_dir():
        raise ConfigurationError(f"{text!r} is not a directory (expected a run directory)")
    if not any(path.glob("*.h5")):
        raise ConfigurationError(f"{text!r} holds no run files (*.h5)")


def run_directory(text: str) -> str:
    """A run directory: it exists and holds run files (``*.h5``)."""
    try:
        require_run_directory(text)
    except ConfigurationError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def output_directory(text: str) -> str:
    """A directory to write into: it exists as a directory, or does not exist yet."""
    path = Path(text).expanduser()
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is a file, not a directory")
    return str(path)


def existing_file(text: str) -> str:
    """A file that exists."""
    path = Path(text).expanduser()
    if not path.exists():
        raise argparse.ArgumentTypeError(f"file {text!r} does not exist")
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is a directory, not a file")
    return str(path)


def add_catalogue_arguments(parser: argparse.ArgumentParser) -> None:
    """``--catalog`` and ``--detector``: where constants are stored and of which detector."""
    parser.add_argument("--catalog", default="", help="catalogue URL (default: the user's SQLite)")
    parser.add_argument(
        "--detector",
        default="SPB_DET_AGIPD1M-1",
        help="detector type (AGIPD, LPD, JUNGFRAU, ...: its default name) or the detector's "
        "name in the catalogue (default: SPB_DET_AGIPD1M-1)",
    )


def add_condition_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """The operating conditions dark constants are stored under and looked up by.

    ``--bias-voltage``, ``--acquisition-rate``, ``--gain-setting`` and ``--integration-time``,
    with the online correction device's defaults, so that ``pulsetrain correct`` finds what
    ``pulsetrain dark`` stored when both are left at their defaults.
    """
    parser.add_argument("--bias-voltage", type=non_negative_float, default=300.0)
    parser.add_argument("--acquisition-rate", type=positive_float, default=1.1)
    parser.add_argument("--gain-setting", type=non_negative_int, default=0)
    parser.add_argument("--integration-time", type=positive_int, default=12)
