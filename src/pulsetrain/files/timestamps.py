"""Train timestamps: between the bridge ``meta`` dict and nanoseconds since the Unix epoch.

Run files store train timestamps as uint64 nanoseconds (``INDEX/timestamp``); the train
convention carries them as ``timestamp`` (float seconds) plus ``timestamp.sec`` (str) and
``timestamp.frac`` (str of 18 digits, attoseconds).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["TRAIN_PERIOD_NS", "make_meta", "meta_to_ns"]

#: Nominal time between two trains (10 Hz), used where a timestamp must be derived.
TRAIN_PERIOD_NS = 100_000_000


def meta_to_ns(meta: Mapping[str, Any]) -> int:
    """Timestamp of a source's ``meta`` dict in nanoseconds since the epoch (0 if absent).

    ``timestamp.sec`` / ``timestamp.frac`` are preferred (exact); else the float ``timestamp``.
    """
    sec = meta.get("timestamp.sec")
    frac = meta.get("timestamp.frac")
    if sec is not None and frac is not None:
        try:
            return int(sec) * 1_000_000_000 + int(frac) // 1_000_000_000
        except (TypeError, ValueError):
            pass
    ts = meta.get("timestamp")
    if ts is None:
        return 0
    try:
        value = round(float(ts) * 1e9)
    except (TypeError, ValueError):
        return 0
    return max(0, int(value))


def make_meta(source: str, train_id: int, ns: int) -> dict[str, Any]:
    """Build the bridge ``meta`` dict of one source for one train from a nanosecond timestamp."""
    sec, rest = divmod(int(ns), 1_000_000_000)
    return {
        "source": source,
        "timestamp": ns / 1e9,
        "timestamp.sec": str(sec),
        "timestamp.frac": f"{rest * 1_000_000_000:018d}",
        "timestamp.tid": int(train_id),
    }
