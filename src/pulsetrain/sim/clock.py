"""The 10 Hz train clock: train IDs, their timestamps and the bridge ``meta`` dictionaries."""

from __future__ import annotations

import time
from collections.abc import Iterable

from pulsetrain.errors import ConfigurationError

__all__ = ["DEFAULT_FIRST_TRAIN_ID", "TRAIN_PERIOD_NS", "TrainClock", "source_meta"]

#: Train ID given to the first train when nothing else is asked for.
DEFAULT_FIRST_TRAIN_ID = 1_000_000_000
#: Time between two trains (10 Hz), in nanoseconds.
TRAIN_PERIOD_NS = 100_000_000


def source_meta(source: str, train_id: int, timestamp_ns: int) -> dict:
    """Build the ``meta[source]`` dictionary of the Karabo bridge convention.

    Parameters
    ----------
    source : str
        Source name.
    train_id : int
        Train ID.
    timestamp_ns : int
        Time of the train in integer nanoseconds since the Unix epoch.

    Returns
    -------
    dict
        ``{"source", "timestamp" (float s), "timestamp.sec" (str), "timestamp.frac"
        (str, 18 digits of attoseconds), "timestamp.tid" (int)}``.
    """
    sec, ns = divmod(int(timestamp_ns), 1_000_000_000)
    return {
        "source": source,
        "timestamp": timestamp_ns / 1e9,
        "timestamp.sec": str(sec),
        "timestamp.frac": f"{ns * 1_000_000_000:018d}",
        "timestamp.tid": int(train_id),
    }


class TrainClock:
    """Map train IDs to timestamps at 10 Hz: train ``n`` is at ``t0 + (n - n0) * 0.1 s``.

    Parameters
    ----------
    first_train_id : int
        ``n0``, the train ID at time ``t0``.
    start_time : float or None
        ``t0`` in seconds since the Unix epoch; ``None`` takes the wall clock now, rounded
        down to a multiple of 0.1 s (then timestamps are live, but not reproducible).
    """

    def __init__(
        self, first_train_id: int = DEFAULT_FIRST_TRAIN_ID, start_time: float | None = None
    ):
        if int(first_train_id) < 0:
            raise ConfigurationError(f"first_train_id must be >= 0, got {first_train_id}")
        self.first_train_id = int(first_train_id)
        if start_time is None:
            now = time.time_ns()
            self.start_ns = now - now % TRAIN_PERIOD_NS
        else:
            self.start_ns = round(float(start_time) * 1e9)

    @property
    def start_time(self) -> float:
        """``t0`` in seconds since the Unix epoch."""
        return self.start_ns / 1e9

    def timestamp_ns(self, train_id: int) -> int:
        """Time of ``train_id`` in integer nanoseconds since the Unix epoch."""
        return self.start_ns + (int(train_id) - self.first_train_id) * TRAIN_PERIOD_NS

    def timestamp(self, train_id: int) -> float:
        """Time of ``train_id`` in seconds since the Unix epoch."""
        return self.timestamp_ns(train_id) / 1e9

    def elapsed_s(self, train_id: int) -> float:
        """Seconds from the first train to ``train_id``."""
        return (int(train_id) - self.first_train_id) * TRAIN_PERIOD_NS / 1e9

    def train_id_at(self, timestamp: float) -> int:
        """The train ID of the last train at or before ``timestamp`` (seconds)."""
        return self.first_train_id + int(
            (round(timestamp * 1e9) - self.start_ns) // TRAIN_PERIOD_NS
        )

    def meta(self, sources: Iterable[str], train_id: int) -> dict[str, dict]:
        """``meta`` dictionary for several sources of one train (same timestamp)."""
        ts = self.timestamp_ns(train_id)
        return {src: source_meta(src, train_id, ts) for src in sources}
