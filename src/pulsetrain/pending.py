"""Trains gathered by train ID until their time comes, oldest first.

Shared by the file recorder (:mod:`pulsetrain.files.recorder`) and the train matcher
(:mod:`pulsetrain.devices.matcher`): both take pieces of trains from several sources in any
order and hand out whole trains in train-ID order.
"""

from __future__ import annotations

import collections

__all__ = ["PendingTrains"]


class PendingTrains(collections.OrderedDict[int, tuple[dict, dict]]):
    """``{train ID: (data, meta)}`` kept in ascending train-ID order."""

    def add(self, tid: int, data: dict, meta: dict) -> tuple[dict, dict]:
        """Merge ``data`` and ``meta`` into the entry of train ``tid`` (made if new); return it.

        A train older than the newest held goes to its place in the order.
        """
        entry = self.get(tid)
        if entry is None:
            out_of_order = bool(self) and tid < next(reversed(self))
            entry = self[tid] = ({}, {})
            if out_of_order:
                ordered = sorted(self.items())
                self.clear()
                self.update(ordered)
        entry[0].update(data)
        entry[1].update(meta)
        return entry
