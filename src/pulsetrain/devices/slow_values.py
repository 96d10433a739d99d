"""Values named ``NAME.key`` read from a train, a slow-data input or the control plane.

Analysis devices let the user name any value: a key of a source in the trains
(``SPB_XTD9_XGM/DOOCS/MAIN.pulseEnergy.photonFlux.value``) or a property of a device
(``SPB_IRU_SAMPLE/MOTOR/X.actualPosition``).  :class:`SlowValues` looks a name up for a train in
this order: the train itself, the trains of the optional ``slow`` input (same train ID, else the
newest earlier one within ``max_age`` train IDs), then - when allowed - the control plane, where
a helper thread of the device polls the property.  See ``docs/analysis-devices.md``.
"""

from __future__ import annotations

import collections
import threading
import warnings
from typing import Any

import numpy as np

from pulsetrain.errors import PropertyError
from pulsetrain.protocol import train_id_of
from pulsetrain.runtime.device import Device

__all__ = ["SlowValues", "ValueNotFound", "ValuePending", "parse_name", "train_value"]

#: Trains of the slow input kept for look-ups.
SLOW_BUFFER_TRAINS = 256


class ValueNotFound(LookupError):
    """A named value is in none of the places it is looked for (the message says where)."""


class ValuePending(ValueNotFound):
    """A control-plane value has not been read yet (polling just started)."""


def parse_name(text: str, what: str) -> tuple[str, str]:
    """Split ``NAME.key`` at the first dot.

    Raises
    ------
    PropertyError
        No dot, or an empty name or key.
    """
    name, dot, key = str(text).partition(".")
    if not dot or not name or not key:
        raise PropertyError(
            f"{what}: {text!r} is not 'SOURCE.key' or 'DEVICE.property' (e.g. "
            "'SPB_IRU_SAMPLE/MOTOR/X.actualPosition')"
        )
    return name, key


def train_value(value: Any) -> float:
    """One value per train: a scalar as it is, an array's nan-mean (NaN if empty)."""
    arr = np.asarray(value, dtype=np.float64)
    if arr.ndim == 0:
        return float(arr)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(np.nanmean(arr)) if arr.size else float("nan")


class SlowValues:
    """Look up named values for trains (see the module documentation).

    Parameters
    ----------
    device : Device
        The device using it (its ``remote`` and ``log``; polling runs in a helper thread of it).
    max_age : int
        Train IDs a slow-input value may be older than the train it is used for.
    poll_interval : float
        Seconds between two control-plane reads of each polled property.
    """

    def __init__(self, device: Device, max_age: int = 10, poll_interval: float = 0.1) -> None:
        self.device = device
        self.max_age = int(max_age)
        self.poll_interval = float(poll_interval)
        self._slow: collections.OrderedDict[int, dict] = collections.OrderedDict()
        self._polled: dict[tuple[str, str], Any] = {}
        self._poll_errors: dict[tuple[str, str], str] = {}
        self._lock = threading.Lock()
        self._threads: dict[tuple[str, str], threading.Thread] = {}

    # ------------------------------------------------------------ slow input
    def add_slow(self, data: dict, meta: dict) -> None:
        """Keep a train of the slow input."""
        tid = train_id_of(meta)
        if tid is None:
            return
        merged = self._slow.setdefault(int(tid), {})
        for src, props in data.items():
            merged.setdefault(src, {}).update(props)
        while len(self._slow) > SLOW_BUFFER_TRAINS:
            self._slow.popitem(last=False)

    def _from_slow(self, name: str, key: str, tid: int | None) -> Any:
        if tid is None:
            return None
        best = None
        for t in reversed(self._slow):  # newest first
            if t > tid:
                continue
            if t < tid - self.max_age:
                break
            props = self._slow[t].get(name)
            if props is not None and key in props:
                if best is None or t > best[0]:
                    best = (t, props[key])
                if t == tid:
                    break
        return None if best is None else best[1]

    # ------------------------------------------------------------ control plane
    def _poll(self, name: str, key: str) -> None:
        dev = self.device
        try:
            remote = dev.remote(name)
        except Exception as exc:  # noqa: BLE001 - reported through the look-up
            with self._lock:
                self._poll_errors[(name, key)] = str(exc)
            return
        while not dev.stopping:
            try:
                value = remote.get(key)
                with self._lock:
                    self._polled[(name, key)] = value
                    self._poll_errors.pop((name, key), None)
            except Exception as exc:  # noqa: BLE001 - keep the last value, report the reason
                with self._lock:
                    self._poll_errors[(name, key)] = str(exc)
            dev.wait_stop(self.poll_interval)

    def _from_control(self, name: str, key: str) -> Any:
        ident = (name, key)
        if ident not in self._threads:
            thread = threading.Thread(
                target=self._poll, args=ident, daemon=True, name=f"poll:{name}.{key}"
            )
            self._threads[ident] = thread
            thread.start()
        with self._lock:
            return self._polled.get(ident)

    def control_error(self, name: str, key: str) -> str:
        """Why polling ``NAME.key`` failed last ('' if it did not)."""
        with self._lock:
            return self._poll_errors.get((name, key), "")

    # ------------------------------------------------------------ look-up
    def lookup(
        self, text: str, data: dict, tid: int | None, *, control: bool = False
    ) -> tuple[Any, str]:
        """The value named ``text`` for train ``tid`` and where it was found.

        Returns
        -------
        (value, origin)
            ``origin`` is ``'train'``, ``'slow'`` or ``'control'``.

        Raises
        ------
        ValueNotFound
            With a message naming what was looked for and where.
        """
        name, key = parse_name(text, "name")
        props = data.get(name)
        if props is not None and key in props:
            return props[key], "train"
        value = self._from_slow(name, key, tid)
        if value is not None:
            return value, "slow"
        if control:
            value = self._from_control(name, key)
            if value is not None:
                return value, "control"
            if not self.control_error(name, key):
                raise ValuePending(f"{text!r}: waiting for the first control-plane read")
        where = "in the train"
        if self._slow:
            where += f", on the slow input (up to {self.max_age} trains older)"
        if control:
            reason = self.control_error(name, key)
            where += " or through the control plane" + (f" ({reason})" if reason else "")
        if props is not None:
            raise ValueNotFound(f"{text!r}: source {name!r} has no key {key!r}")
        raise ValueNotFound(f"{text!r}: no source or device {name!r} {where}")
