"""Read ahead: run an iterator in a thread, a bounded number of items ahead of its consumer.

Replay uses it so that reading the next trains (HDF5 reads, building the per-train dicts)
overlaps with serialising and sending the current one.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from typing import TypeVar

__all__ = ["read_ahead"]

T = TypeVar("T")

_END = object()
_POLL_S = 0.1


class _Failure:
    __slots__ = ("exc",)

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


def read_ahead(items: Iterable[T], depth: int = 4, name: str = "read-ahead") -> Iterator[T]:
    """Yield the items of *items*, produced by a background thread up to *depth* ahead.

    Parameters
    ----------
    items : iterable
        Produced entirely in the background thread (a generator is also closed there).
    depth : int
        Most items produced but not yet taken.  ``depth < 1`` iterates without a thread.
    name : str
        Name of the thread.

    Yields
    ------
    The items, in order.  An exception raised by *items* is raised here, after the items
    produced before it.  Closing this generator (or leaving a ``for`` loop over it early) stops
    the thread and closes *items*.
    """
    if depth < 1:
        yield from items
        return
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        it = iter(items)
        try:
            for item in it:
                if not put(item):
                    return
            put(_END)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            put(_Failure(exc))
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=produce, name=name, daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is _END:
                return
            if isinstance(item, _Failure):
                raise item.exc
            yield item
    finally:
        stop.set()
        thread.join()
