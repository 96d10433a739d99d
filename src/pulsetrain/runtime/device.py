"""The :class:`Device` base class: typed properties, slots, a state, channels and data hooks.

A device is one service of the control system: a simulated detector, a correction step, a
matcher, a feedback controller.  It is hosted by a :mod:`device server <pulsetrain.runtime.server>`
and driven from outside through the control plane (get / set / call), and from upstream
through its input channels (``on_data``).

Everything a device's code does runs on the device's own worker thread, one thing at a time:
``initialize``, ``on_data`` for each train, ``on_eos``, property sets with ``on_set``, slot
calls, timers (:meth:`Device.every`) and, for a :class:`ProducerDevice`, ``produce``.  Device code
therefore needs no locks.  An exception raised by device code puts the device into state
``ERROR`` with the message in ``status``; the device, its server and the other devices keep
running; the slot ``reset`` brings it back to ``ON``.

Declaring a device::

    class Scaler(Device):
        factor = Property(float, 1.0, minimum=0, unit="", description="multiplier")
        scaled = Property(int, 0, access="readonly", description="trains scaled")
        inputs = ("input",)
        outputs = ("output",)

        def on_data(self, data, meta, channel):
            out = {src: {"image.data": v["image.data"] * self.factor} for src, v in data.items()}
            self.write("output", out, meta)
            self.count("scaled")

        @slot
        def double(self):
            self.factor *= 2

The public API of a device (everything else, in particular any ``self._name`` of this module's
classes, is private and may change):

Declaring
    :class:`Property` class attributes and :func:`slot` methods (neither may reuse the name of
    a method or attribute below; ``@slot(name='stop')`` exposes a method under another name),
    the ``inputs`` (a tuple of names, or a mapping name → default policy) and the ``outputs``
    tuple.
Hooks (all on the device's thread)
    :meth:`~Device.initialize`, :meth:`~Device.on_data`, :meth:`~Device.on_eos` (by default:
    end-of-stream is forwarded to every output once every input has ended),
    :meth:`~Device.on_set`, :meth:`~Device.shutdown`; :meth:`ProducerDevice.produce`.
Values
    Reading a property is an attribute read (``self.factor``).  Assigning one
    (``self.factor = 2``) or :meth:`~Device.update` validates it and tells the listeners (the
    server's event stream) at once: use them for settings and rare changes.
    :meth:`~Device.count` (add to a read-only counter) and :meth:`~Device.record` (set read-only
    values) are the cheap per-train forms: the new value is visible to ``get`` at once, and
    listeners hear of it at most once per ``publish_interval`` (0.5 s) per key, with the latest
    value, after the call that changed it returns (or when the device is idle), never once per
    call.  Called from a helper thread of the device, both hand the change to the device's
    thread.  :meth:`~Device.set_state` changes ``state`` and ``status``; :meth:`~Device.set_error`
    goes to ``ERROR``.  :meth:`~Device.set_limits` narrows a numeric property's limits for this
    instance (a motor's software limits).
Channels
    :meth:`~Device.write`, :meth:`~Device.allocate` (arrays in shared memory to fill and write),
    :meth:`~Device.signal_eos`.
Threads and time
    :meth:`~Device.every` (a timer on the device's thread), :meth:`~Device.run_in_device`
    (run a function on the device's thread and wait), :meth:`~Device.post` (queue one without
    waiting: the way a helper thread of the device hands results over),
    :attr:`~Device.stopping` (a stop was requested) and :meth:`~Device.wait_stop` (sleep, but
    wake up for a stop request), ``self.log`` (a logger naming the device).
Other devices and the host
    :attr:`~Device.server` (the hosting :class:`~pulsetrain.runtime.server.DeviceServer`, ``None``
    outside a server) and :meth:`~Device.remote` (another device of the topology).
Producers
    :class:`ProducerDevice`: write :meth:`~ProducerDevice.produce` (one train per call, paced at
    ``rate``), call :meth:`~ProducerDevice.end_of_stream` at the end of the data; the slots
    ``start_acquisition`` / ``stop_acquisition`` and :attr:`~ProducerDevice.producing`.

Watchdog: a device busy with one call (one train in ``on_data``, a slot, a timer) for longer
than ``stall_warning`` seconds is marked ``stalled``: ``busyFor`` and ``status`` say what it is
doing and for how long (``stalled: on_data(train 1234) from input 'input' busy for 5.2 s``), one
WARNING is logged, and both are cleared when the call returns.  Busy for longer than
``stall_timeout`` puts it in ``ERROR``.  The server's watchdog thread sets these values, because
the device's own thread is the one that is stuck.

Registration: a server finds classes by name through the ``pulsetrain.devices`` entry points of
installed packages, as ``module:Class`` (importable, or a module file next to the topology file),
and among classes registered in the process with :func:`register_device_class` (tests).  See
``docs/writing-a-device.md``.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import enum
import functools
import importlib
import logging
import math
import queue
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np

from pulsetrain.errors import ConfigurationError, DeviceError, PropertyError, PulsetrainError
from pulsetrain.protocol import train_id_of
from pulsetrain.runtime.channels import EndOfStream, InputChannel, OutputChannel


class HostingServer(Protocol):
    """What a device uses of the server hosting it (a :class:`~pulsetrain.runtime.server.DeviceServer`;
    a protocol, so this module does not import the server module above it)."""

    request_timeout: float

    def client_for(self, device_id: str) -> Any:
        """The control client (:class:`pulsetrain.runtime.control.Client`) of the server hosting
        ``device_id``."""
        ...


__all__ = [
    "Access",
    "Device",
    "ProducerDevice",
    "Property",
    "RemoteDevice",
    "State",
    "device_classes",
    "find_device_class",
    "register_device_class",
    "registered_device_classes",
    "slot",
]


class State(str, enum.Enum):
    """Device states (a subset of Karabo's, with the same names)."""

    UNKNOWN = "UNKNOWN"
    INIT = "INIT"
    ON = "ON"
    OFF = "OFF"
    STOPPED = "STOPPED"
    ACQUIRING = "ACQUIRING"
    PROCESSING = "PROCESSING"
    MONITORING = "MONITORING"
    MOVING = "MOVING"
    CHANGING = "CHANGING"
    ERROR = "ERROR"

    def __str__(self) -> str:
        return self.value


class Access(str, enum.Enum):
    """Who may change a property, and when."""

    INIT = "init"  #: set only in the configuration a device is created with
    RECONFIGURABLE = "reconfigurable"  #: settable at any time through the control plane
    READONLY = "readonly"  #: set only by the device itself


_TYPES: dict[type, str] = {
    bool: "bool",
    int: "int",
    float: "float",
    str: "str",
    list: "list",
    dict: "dict",
    np.ndarray: "array",
}


class Property:
    """A typed, validated device property (a descriptor).

    Parameters
    ----------
    type_ : type
        ``bool``, ``int``, ``float``, ``str``, ``list``, ``dict`` or ``numpy.ndarray``.
    default : object
        Initial value.
    unit : str
        Unit symbol shown to users (``'mm'``, ``'Hz'``, ``'s'``).
    description : str
        One line for users.
    minimum, maximum : float, optional
        Inclusive limits for numbers.
    options : sequence, optional
        The allowed values.
    access : Access or str
        ``'init'``, ``'reconfigurable'`` (default) or ``'readonly'``.
    """

    def __init__(
        self,
        type_: type,
        default: Any = None,
        *,
        unit: str = "",
        description: str = "",
        minimum: float | None = None,
        maximum: float | None = None,
        options: tuple | list | None = None,
        access: Access | str = Access.RECONFIGURABLE,
    ):
        if type_ not in _TYPES:
            raise TypeError(f"unsupported property type {type_!r}")
        self.type = type_
        self.unit = unit
        self.description = description
        self.minimum = minimum
        self.maximum = maximum
        self.options = tuple(options) if options is not None else None
        self.access = Access(access)
        self.key = ""
        self.default = default

    def __set_name__(self, owner: type, name: str) -> None:
        self.key = name
        if self.default is not None:
            self.default = self.validate(self.default)

    def __get__(self, instance: Any, owner: type | None = None) -> Any:
        if instance is None:
            return self
        return instance._values[self.key]

    def __set__(self, instance: Any, value: Any) -> None:
        instance._assign(self.key, self.validate(value))

    def validate(self, value: Any) -> Any:
        """Return ``value`` converted to this property's type, or raise :class:`PropertyError`."""
        key = self.key or "property"
        t = self.type
        if value is None:
            if self.default is None:
                return None
            raise PropertyError(f"{key}: a {_TYPES[t]} value is required, not None")
        try:
            if t is bool:
                if isinstance(value, (bool, np.bool_)):
                    value = bool(value)
                else:
                    raise TypeError
            elif t is int:
                if isinstance(value, (bool, np.bool_)) or not isinstance(
                    value, (int, np.integer, float, np.floating)
                ):
                    raise TypeError
                if float(value) != int(value):
                    raise TypeError
                value = int(value)
            elif t is float:
                if isinstance(value, (bool, np.bool_)) or not isinstance(
                    value, (int, float, np.integer, np.floating)
                ):
                    raise TypeError
                value = float(value)
                if math.isnan(value):
                    raise PropertyError(f"{key}: NaN is not a valid value")
            elif t is str:
                if not isinstance(value, str):
                    raise TypeError
            elif t is list:
                if not isinstance(value, (list, tuple)):
                    raise TypeError
                value = list(value)
            elif t is dict:
                if not isinstance(value, Mapping):
                    raise TypeError
                value = dict(value)
            elif t is np.ndarray:
                value = np.asarray(value)
        except TypeError:
            raise PropertyError(
                f"{key}: expected a value of type {_TYPES[t]}, got {type(value).__name__} "
                f"{value!r:.60}"
            ) from None
        if self.minimum is not None and value < self.minimum:
            raise PropertyError(f"{key}: {value} is below the minimum {self.minimum} {self.unit}")
        if self.maximum is not None and value > self.maximum:
            raise PropertyError(f"{key}: {value} is above the maximum {self.maximum} {self.unit}")
        if self.options is not None and value not in self.options:
            raise PropertyError(f"{key}: {value!r} is not one of {list(self.options)}")
        return value

    def describe(self) -> dict[str, Any]:
        """The schema entry of this property."""
        return {
            "type": _TYPES[self.type],
            "default": self.default if not isinstance(self.default, np.ndarray) else None,
            "unit": self.unit,
            "description": self.description,
            "minimum": self.minimum,
            "maximum": self.maximum,
            "options": list(self.options) if self.options is not None else None,
            "access": self.access.value,
        }


def slot(
    fn: Callable | None = None,
    *,
    allowed_states: tuple[State | str, ...] | None = None,
    description: str = "",
    name: str = "",
) -> Any:
    """Mark a device method as a slot (a command callable through the control plane).

    Parameters
    ----------
    allowed_states : tuple of State, optional
        States in which the slot may be called; calling it in another state is refused.
    description : str
        One line for users (default: the first line of the docstring).
    name : str
        The name clients call it by, when it differs from the method's (a slot called
        ``stop`` must not be a method ``stop``: that is the device's own lifecycle method).
    """

    def mark(f: Callable) -> Callable:
        f._pt_slot = {  # type: ignore[attr-defined]
            "allowed_states": tuple(State(s).value for s in allowed_states)
            if allowed_states
            else None,
            "description": description or (f.__doc__ or "").strip().split("\n")[0],
            "name": name or f.__name__,
        }
        return f

    return mark(fn) if fn is not None else mark


class Device:
    """Base class of every pulsetrain device.

    Parameters
    ----------
    device_id : str
        Unique ID, e.g. ``'SPB_DET_AGIPD1M-1/CAL/CORR_00'``.
    config : mapping, optional
        Initial property values (``init`` and ``reconfigurable`` ones), plus channel settings
        under ``'inputs'`` (``{name: {'connect': [endpoints], 'data_distribution': ...,
        'on_slowness': ..., 'max_queue_length': ...}}``) and ``'outputs'``
        (``{name: {'bind': [endpoints]}}``).

    Class attributes
    ----------------
    inputs : tuple of str, or dict
        Input channel names (``('input',)``), or names with their default policies
        (``{'input': {'on_slowness': 'wait'}}``; a topology's connection overrides them).
    outputs : tuple of str
        Output channel names.
    """

    inputs: ClassVar[tuple[str, ...] | Mapping[str, Mapping[str, Any]]] = ()
    outputs: ClassVar[tuple[str, ...]] = ()

    #: Seconds between two notifications of listeners about values set by :meth:`count` and
    #: :meth:`record` (per key; the latest value is sent).
    publish_interval: ClassVar[float] = 0.5

    state = Property(str, State.INIT.value, access="readonly", description="device state")
    status = Property(str, "", access="readonly", description="last status message")
    trainsIn = Property(int, 0, access="readonly", description="trains received")
    trainsOut = Property(int, 0, access="readonly", description="trains written")
    errorCount = Property(int, 0, access="readonly", description="exceptions raised by device code")
    stall_warning = Property(
        float,
        3.0,
        minimum=0.0,
        unit="s",
        description="device code busy with one call longer than this marks "
        "the device stalled, with a WARNING (0: never)",
    )
    stall_timeout = Property(
        float,
        30.0,
        minimum=0.0,
        unit="s",
        description="device code busy longer than this puts the device in ERROR (0: never)",
    )
    stalled = Property(
        bool,
        False,
        access="readonly",
        description="busy with one call for longer than stall_warning",
    )
    busyFor = Property(
        float,
        0.0,
        access="readonly",
        unit="s",
        description="while stalled: how long the current call has been running",
    )

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for key, value in vars(cls).items():
            if isinstance(value, Property) and not isinstance(
                getattr(Device, key, value), Property
            ):
                raise TypeError(
                    f"{cls.__name__}.{key}: a property may not reuse the name of Device.{key}"
                )
            if (
                hasattr(value, "_pt_slot")
                and hasattr(Device, key)
                and not hasattr(getattr(Device, key), "_pt_slot")
            ):
                raise TypeError(
                    f"{cls.__name__}.{key}: a slot method may not replace Device.{key} (the "
                    f"device's own method); name it otherwise and use @slot(name={key!r})"
                )

    def __init__(self, device_id: str, config: Mapping[str, Any] | None = None):
        self.device_id = device_id
        self.log = logging.LoggerAdapter(
            logging.getLogger(f"pulsetrain.runtime.device.{type(self).__name__}"),
            {"device_id": device_id},
        )
        self._values: dict[str, Any] = {}
        self._timestamps: dict[str, float] = {}
        self._listeners: list[Callable[[str, str, Any], None]] = []
        self._props = self.properties()
        for key, prop in self._props.items():
            self._values[key] = prop.default
        config = dict(config or {})
        self._input_cfg = config.pop("inputs", {}) or {}
        self._output_cfg = config.pop("outputs", {}) or {}
        for key, value in config.items():
            prop = self._props.get(key)
            if prop is None:
                raise ConfigurationError(f"{device_id}: unknown property {key!r}")
            if prop.access is Access.READONLY:
                raise ConfigurationError(f"{device_id}: property {key!r} is read-only")
            self._values[key] = prop.validate(value)
        self._hosting_server: HostingServer | None = None
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._worker: threading.Thread | None = None
        self._worker_ident: int | None = None
        self._busy_since: float | None = None
        self._busy_what: str | Callable[[], str] = ""
        self._stall_lock = threading.Lock()
        self._stall_error = False
        self._stall_status = ""
        self._status_before_stall = ""
        self._dirty: set[str] = set()
        self._handover_lock = threading.Lock()
        self._handover_counts: dict[str, float] = {}
        self._handover_values: dict[str, Any] = {}
        self._flush_at = 0.0
        self._ended_inputs: set[str] = set()
        self._timer_list: list[_Timer] = []
        self._stopping = threading.Event()
        self.input_channels: dict[str, InputChannel] = {}
        self.output_channels: dict[str, OutputChannel] = {}

    # ------------------------------------------------------------ schema and values
    @classmethod
    def properties(cls) -> dict[str, Property]:
        """All properties of this class, by key."""
        props: dict[str, Property] = {}
        for klass in reversed(cls.__mro__):
            for key, value in vars(klass).items():
                if isinstance(value, Property):
                    props[key] = value
        return props

    @classmethod
    def slots(cls) -> dict[str, dict[str, Any]]:
        """All slots of this class, by the name clients call, with their descriptions and
        allowed states."""
        return {
            name: {k: v for k, v in info.items() if k != "name"}
            for name, (_, info) in cls._slot_methods().items()
        }

    @classmethod
    def _slot_methods(cls) -> dict[str, tuple[str, dict[str, Any]]]:
        """Slot name → (method name, slot info)."""
        found = {}
        for attr in dir(cls):
            info = getattr(getattr(cls, attr, None), "_pt_slot", None)
            if info is not None:
                found[info.get("name", attr)] = (attr, info)
        return found

    @classmethod
    def schema(cls) -> dict[str, Any]:
        """Properties, slots and channels of this class, as plain data."""
        return {
            "class": cls.__name__,
            "description": (cls.__doc__ or "").strip().split("\n")[0],
            "properties": {k: p.describe() for k, p in cls.properties().items()},
            "slots": cls.slots(),
            "inputs": list(cls.inputs),
            "outputs": list(cls.outputs),
        }

    def get(self, key: str) -> Any:
        """Current value of a property (also ``channels.<name>.*`` channel statistics)."""
        if key == "channels" or key.startswith("channels."):
            return self._channel_info(key)
        if key not in self._props:
            raise PropertyError(f"{self.device_id}: unknown property {key!r}")
        return self._values[key]

    def configuration(self) -> dict[str, Any]:
        """All property values, plus channel statistics under ``channels``."""
        values = dict(self._values)
        values["channels"] = self._channel_info("channels")
        return values

    def set(self, key: str, value: Any) -> Any:
        """Set a property as a client would: read-only and init-only keys are refused.

        The value is validated first; on any error the old value is kept.  Runs the
        ``on_set(key, value)`` hook on the device's thread (which may refuse by raising
        :class:`PropertyError`).
        """
        prop = self._props.get(key)
        if prop is None:
            raise PropertyError(f"{self.device_id}: unknown property {key!r}")
        if prop.access is not Access.RECONFIGURABLE:
            raise PropertyError(
                f"{self.device_id}: property {key!r} is {prop.access.value} and cannot be set"
            )
        value = prop.validate(value)

        def apply() -> Any:
            old = self._values[key]
            self._assign(key, value)
            try:
                self.on_set(key, value)
            except Exception:
                self._assign(key, old)
                raise
            return value

        return self.run_in_device(apply, what=f"set {key}")

    def call(self, name: str, *args: Any) -> Any:
        """Call a slot on the device's thread; refused if the state does not allow it."""
        method, info = self._slot_methods().get(name, (None, None))
        if method is None or info is None:
            raise DeviceError(f"{self.device_id}: no slot {name!r}")
        allowed = info["allowed_states"]
        if allowed and self.state not in allowed:
            raise DeviceError(
                f"{self.device_id}: slot {name!r} not allowed in state {self.state} "
                f"(allowed: {', '.join(allowed)})"
            )
        try:
            return self.run_in_device(
                self._guarded(lambda: getattr(self, method)(*args)), what=f"slot {name}()"
            )
        except PulsetrainError:
            raise
        except Exception as exc:
            raise DeviceError(
                f"{self.device_id}: slot {name!r} failed: {type(exc).__name__}: {exc}"
            ) from exc

    def add_listener(self, callback: Callable[[str, str, Any], None]) -> None:
        """Call ``callback(device_id, key, value)`` after property changes (see :meth:`count`)."""
        self._listeners.append(callback)

    def _assign(self, key: str, value: Any) -> None:
        self._values[key] = value
        self._timestamps[key] = time.time()
        for cb in list(self._listeners):
            try:
                cb(self.device_id, key, value)
            except Exception:  # a broken listener must not break the device
                self.log.exception("property listener failed")

    def update(self, **values: Any) -> None:
        """Set several properties from device code (read-only ones included), validated.

        Listeners are told of each value at once; for values that change with every train use
        :meth:`record` or :meth:`count`.
        """
        for key, value in values.items():
            prop = self._props.get(key)
            if prop is None:
                raise PropertyError(f"{self.device_id}: unknown property {key!r}")
            self._assign(key, prop.validate(value))

    def count(self, key: str, n: float = 1) -> None:
        """Add ``n`` to the read-only counter ``key``: the cheap per-train form.

        The new value is visible to ``get`` at once; listeners are told at most once per
        :attr:`publish_interval` (see the module docstring).  Called from another thread
        (a helper thread of the device), the addition is handed to the device's thread, where
        additions made meanwhile are applied together.
        """
        if self._worker is not None and threading.get_ident() != self._worker_ident:
            self._readonly(key)
            with self._handover_lock:
                first = not self._handover_counts and not self._handover_values
                self._handover_counts[key] = self._handover_counts.get(key, 0) + n
            if first:
                self.post(self._take_handover)
            return
        self._readonly(key)
        self._values[key] += n
        self._changed(key)

    def record(self, **values: Any) -> None:
        """Set read-only values (validated): the cheap per-train form of :meth:`update`.

        The values are visible to ``get`` at once; listeners are told at most once per
        :attr:`publish_interval` per key, with the latest value.  Called from another thread,
        the values are handed to the device's thread (the latest of each key is applied).
        """
        if self._worker is not None and threading.get_ident() != self._worker_ident:
            checked = {key: self._readonly(key).validate(v) for key, v in values.items()}
            with self._handover_lock:
                first = not self._handover_counts and not self._handover_values
                self._handover_values.update(checked)
            if first:
                self.post(self._take_handover)
            return
        for key, value in values.items():
            self._values[key] = self._readonly(key).validate(value)
            self._changed(key)

    def _take_handover(self) -> None:
        """Apply the counts and values other threads handed over (on the device's thread)."""
        with self._handover_lock:
            counts, self._handover_counts = self._handover_counts, {}
            values, self._handover_values = self._handover_values, {}
        for key, value in values.items():
            self._values[key] = value
            self._changed(key)
        for key, n in counts.items():
            self._values[key] += n
            self._changed(key)

    def _readonly(self, key: str) -> Property:
        prop = self._props.get(key)
        if prop is None:
            raise PropertyError(f"{self.device_id}: unknown property {key!r}")
        if prop.access is not Access.READONLY:
            raise PropertyError(
                f"{self.device_id}: {key!r} is {prop.access.value}: count and record set "
                "read-only values only (use update)"
            )
        return prop

    def _changed(self, key: str) -> None:
        self._dirty.add(key)
        if self._worker is None:  # not started (a unit test calling hooks directly)
            self._flush_changes()

    def _flush_changes(self) -> None:
        self._flush_at = time.monotonic() + self.publish_interval
        dirty, self._dirty = self._dirty, set()
        now = time.time()
        for key in dirty:
            value = self._values[key]
            self._timestamps[key] = now
            for cb in list(self._listeners):
                try:
                    cb(self.device_id, key, value)
                except Exception:
                    self.log.exception("property listener failed")

    def set_limits(
        self, key: str, minimum: float | None = None, maximum: float | None = None
    ) -> None:
        """Give numeric property ``key`` other limits on this instance (e.g. software limits
        read from the configuration in :meth:`initialize`); the current value must fit."""
        prop = self._props[key]
        clone = Property(
            prop.type,
            prop.default,
            unit=prop.unit,
            description=prop.description,
            minimum=minimum,
            maximum=maximum,
            options=prop.options,
            access=prop.access,
        )
        clone.key = prop.key
        clone.validate(self._values[key])
        self._props[key] = clone

    def set_state(self, state: State | str, status: str | None = None) -> None:
        """Change the state (and optionally the status message)."""
        state = State(state).value
        if status is not None:  # status first: whoever sees the new state sees its reason
            self._assign("status", status)
        if state != self._values["state"]:
            self.log.info("state %s -> %s", self._values["state"], state)
            self._assign("state", state)

    def set_error(self, message: str) -> None:
        """Go to state ERROR with ``message`` (logged)."""
        self.log.error("%s", message)
        self.set_state(State.ERROR, message)

    # ------------------------------------------------------------ watchdog
    def check_stall(self, now: float | None = None) -> bool:
        """Called about once a second by the server's watchdog (on the server's thread).

        Marks the device ``stalled`` when one call has run longer than ``stall_warning``, and
        puts it in ERROR past ``stall_timeout``.  Returns whether the device is stalled.
        """
        since = self._busy_since
        if since is None:
            return False
        now = time.monotonic() if now is None else now
        busy = now - since
        with self._stall_lock:
            if self._busy_since != since:  # the call returned meanwhile
                return False
            warn, timeout = self.stall_warning, self.stall_timeout
            if warn and busy > warn:
                what = self._busy_what() if callable(self._busy_what) else self._busy_what
                message = f"stalled: {what} busy for {busy:.1f} s"
                if not self._values["stalled"]:
                    self.log.warning("%s", message)
                    self._assign("stalled", True)
                if self._values["status"] != self._stall_status:
                    self._status_before_stall = self._values["status"]
                self._stall_status = message
                self._assign("busyFor", round(busy, 1))
                if self._values["state"] != State.ERROR.value:
                    self._assign("status", message)
            if timeout and busy > timeout and not self._stall_error:
                self._stall_error = True
                self._values["errorCount"] += 1  # the device's thread is the one stuck
                self.set_error(
                    f"device code stalled: busy for {busy:.0f} s "
                    f"(stall_timeout {timeout:g} s); its inputs are not read"
                )
            return bool(self._values["stalled"]) or self._stall_error

    def _end_stall(self) -> None:
        """The call that stalled returned (on the device's thread, under the stall lock)."""
        if self._values["stalled"]:
            self._assign("stalled", False)
            self._assign("busyFor", 0.0)
            if self._values["status"] == self._stall_status:
                self._assign("status", self._status_before_stall)
            self.log.info("no longer stalled")
        if self._stall_error:
            self._stall_error = False
            self.log.warning("device code returned after a stall")
        self._stall_status = ""

    # ------------------------------------------------------------ the hosting server
    @property
    def server(self) -> HostingServer | None:
        """The :class:`~pulsetrain.runtime.server.DeviceServer` hosting this device (``None`` if none)."""
        return self._hosting_server

    def attach_server(self, server: HostingServer) -> None:
        """Called by the hosting server once, before :meth:`start`."""
        if self._hosting_server is not None and self._hosting_server is not server:
            raise DeviceError(f"{self.device_id}: already hosted by another server")
        self._hosting_server = server
        self.request_timeout = server.request_timeout

    @property
    def stopping(self) -> bool:
        """Whether the device was asked to stop (helper threads of the device end on it)."""
        return self._stopping.is_set()

    def wait_stop(self, timeout: float) -> bool:
        """Sleep up to ``timeout`` seconds, waking up early for a stop request.

        Returns
        -------
        bool
            Whether the device is stopping.
        """
        return self._stopping.wait(timeout)

    # ------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Start the worker thread, open the channels and run :meth:`initialize`.

        An output configured with ``expect_inputs = n`` (a topology gives it to the outputs of
        replicas) holds the device's inputs back until ``n`` inputs are connected to it, for
        at most :attr:`consumer_wait` seconds: a restarted replica would otherwise take trains
        from its peers' shared output and write them to nobody.
        """
        connects: list[tuple[InputChannel, list[str]]] = []
        self._worker = threading.Thread(
            target=self._work, name=f"dev:{self.device_id}", daemon=True
        )
        self._worker.start()
        try:
            for name in self.outputs:
                cfg = dict(self._output_cfg.get(name, {}))
                bind = cfg.get("bind", ["tcp://127.0.0.1:0"])
                self.output_channels[name] = OutputChannel(
                    f"{self.device_id}:{name}", bind, no_input_shared=cfg.get("no_input_shared")
                )
            for name in self.inputs:
                defaults = self.inputs[name] if isinstance(self.inputs, Mapping) else {}
                cfg = {**defaults, **self._input_cfg.get(name, {})}
                channel = InputChannel(
                    f"{self.device_id}:{name}",
                    data_distribution=cfg.get("data_distribution", "copy"),
                    on_slowness=cfg.get("on_slowness", "drop"),
                    max_queue_length=int(cfg.get("max_queue_length", 2)),
                    window=int(cfg.get("window", 2)),
                )
                self.input_channels[name] = channel
                connects.append((channel, list(cfg.get("connect", []))))
        except BaseException:  # a channel that cannot bind: nothing of this start stays
            self._close_partial_start()
            raise
        expected = {
            name: int(self._output_cfg.get(name, {}).get("expect_inputs", 0))
            for name in self.outputs
        }
        if any(expected.values()):  # take no train before the consumers are there
            threading.Thread(
                target=self._connect_inputs_when_consumed,
                args=(connects, expected),
                name=f"connect:{self.device_id}",
                daemon=True,
            ).start()
        else:
            for channel, endpoints in connects:
                for endpoint in endpoints:
                    channel.connect(endpoint)
        try:
            self.run_in_device(
                self._initialize, timeout=self.initialize_timeout, what="initialize()"
            )
        except Exception as exc:  # noqa: BLE001 - any failure of device code: state ERROR
            self.set_error(f"initialisation failed: {exc}")
        for name, channel in self.input_channels.items():
            channel.on_arrival(functools.partial(self._queue_take, name, channel))

    #: Seconds a device waits for the inputs its outputs expect before reading its own inputs.
    consumer_wait: float = 5.0

    def _connect_inputs_when_consumed(
        self, connects: list[tuple[InputChannel, list[str]]], expected: Mapping[str, int]
    ) -> None:
        deadline = time.monotonic() + self.consumer_wait
        while time.monotonic() < deadline and not self._stopping.is_set():
            if all(
                len(self.output_channels[name].connections()) >= n
                for name, n in expected.items()
                if name in self.output_channels
            ):
                break
            time.sleep(0.02)
        if self._stopping.is_set():
            return
        for channel, endpoints in connects:
            for endpoint in endpoints:
                channel.connect(endpoint)

    def _close_partial_start(self) -> None:
        """Close the channels a failed :meth:`start` opened and end the worker thread."""
        self._stopping.set()
        for channel in [*self.output_channels.values(), *self.input_channels.values()]:
            try:  # closing what is half made: a failure must not stop closing the rest
                if isinstance(channel, OutputChannel):
                    channel.close(linger=0)
                else:
                    channel.close()
            except Exception:
                self.log.debug("closing a channel of a failed start", exc_info=True)
        self._queue.put(None)
        if self._worker is not None:
            self._worker.join(timeout=5)

    def _initialize(self) -> None:
        self.initialize()
        if self.state == State.INIT.value:
            self.set_state(State.ON)

    def stop(self) -> None:
        """Run :meth:`shutdown`, close the channels and stop the threads."""
        if self._stopping.is_set():
            return
        try:
            self.run_in_device(self.shutdown, timeout=10, what="shutdown()")
        except Exception:
            self.log.exception("shutdown failed")
        self._stopping.set()
        deadline = time.monotonic() + 2.0
        for channel in self.output_channels.values():  # let the last trains reach the inputs
            channel.flush(max(0.0, deadline - time.monotonic()))
        for channel in self.output_channels.values():
            channel.close(linger=0.1)
        for channel in self.input_channels.values():
            channel.close()
        self._queue.put(None)
        if self._worker is not None and threading.get_ident() != self._worker_ident:
            self._worker.join(timeout=5)

    #: Seconds a set or slot call may wait for the device's thread before failing.
    request_timeout: float = 10.0
    #: Seconds :meth:`initialize` may take (loading constants from a catalogue on a busy host
    #: can take longer than a property set) before the device goes to ERROR.
    initialize_timeout: float = 45.0

    def run_in_device(
        self,
        fn: Callable[[], Any],
        timeout: float | None = None,
        what: str | Callable[[], str] = "",
    ) -> Any:
        """Run ``fn`` on the device's thread and return its result (or raise its exception).

        ``what`` names the call in the stall message (default: the function's name).
        """
        timeout = self.request_timeout if timeout is None else timeout
        if self._worker is None or threading.get_ident() == self._worker_ident:
            return fn()
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._queue.put((fn, future, what or _name_of(fn)))
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            raise DeviceError(f"{self.device_id}: busy, no answer within {timeout} s") from None

    def post(self, fn: Callable[[], Any]) -> None:
        """Queue ``fn`` to run on the device's thread, without waiting for it.

        An exception it raises puts the device in ERROR.  Before :meth:`start` it runs at once.
        """
        if self._worker is None:
            fn()
            return
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._queue.put((self._guarded(fn), future, _name_of(fn)))

    def every(self, period: float, fn: Callable[[], Any]) -> None:
        """Run ``fn`` on the device's thread every ``period`` seconds until the device stops.

        The device's thread runs it when it is due (no thread of its own: a timer costs no
        thread switch).  A call that fell behind is not repeated to catch up.
        """
        timer = _Timer(
            time.monotonic() + period, period, self._guarded(fn), f"timer {_name_of(fn)}"
        )
        if self._worker is None or threading.get_ident() == self._worker_ident:
            self._timer_list.append(timer)
        else:  # the list belongs to the device's thread (which then also sees the new deadline)
            self.post(lambda: self._timer_list.append(timer))

    # ------------------------------------------------------------ hooks for subclasses
    def initialize(self) -> None:
        """Called once on the device's thread after the channels exist.

        The state goes from ``INIT`` to ``ON`` afterwards unless the hook set another one.
        """

    def on_data(self, data: dict, meta: dict, channel: str) -> None:
        """Called for each train arriving on an input channel."""

    def on_eos(self, channel: str) -> None:
        """Called when every output connected to ``channel`` sent end-of-stream.

        By default, once every input has ended, end-of-stream is sent on every output.  A
        device that holds trains back writes them first, then calls ``super().on_eos(channel)``.
        """
        if self._ended_inputs.issuperset(self.input_channels):
            for name in self.outputs:
                self.signal_eos(name)

    def on_set(self, key: str, value: Any) -> None:
        """Called after a client set ``key``; raise :class:`PropertyError` to refuse it."""

    def shutdown(self) -> None:
        """Called once when the device is stopped."""

    @slot(description="Leave state ERROR: back to ON")
    def reset(self) -> None:
        """Leave state ERROR and go back to ON."""
        if self.state == State.ERROR.value:
            self.set_state(State.ON, "reset")

    # ------------------------------------------------------------ other devices
    def remote(self, device_id: str) -> RemoteDevice:
        """A handle on another device of the topology, reached through the control plane."""
        if self._hosting_server is None:
            raise DeviceError(f"{self.device_id}: not hosted by a server, cannot reach {device_id}")
        return RemoteDevice(self._hosting_server.client_for(device_id), device_id)

    # ------------------------------------------------------------ channels
    def write(self, output: str, data: dict, meta: dict, timeout: float | None = None) -> None:
        """Write one train to an output channel (see :meth:`OutputChannel.write`)."""
        self.output_channels[output].write(data, meta, timeout=timeout)
        self.count("trainsOut")

    def allocate(self, output: str, *specs: tuple[tuple[int, ...], Any]) -> list[np.ndarray]:
        """Arrays ``(shape, dtype), ...`` to fill and write to ``output``, zero-copy to other
        processes on this host (see :meth:`OutputChannel.allocate`)."""
        return self.output_channels[output].allocate(*specs)

    def signal_eos(self, output: str) -> None:
        """Send end-of-stream on an output channel."""
        self.output_channels[output].signal_eos()

    def connect_input(self, name: str, endpoint: str) -> None:
        """Connect input channel ``name`` to the output bound at ``endpoint``."""
        self.input_channels[name].connect(endpoint)

    def _channel_info(self, key: str) -> Any:
        info = {
            "outputs": {
                name: {
                    "endpoints": ch.endpoints,
                    "connections": ch.connections(),
                    "written": ch.written,
                    "dropped": ch.dropped,
                }
                for name, ch in self.output_channels.items()
            },
            "inputs": {
                name: {
                    "connected": ch.endpoints,
                    "received": ch.received,
                    "missed": ch.missed,
                    "errors": ch.errors,
                    "last_error": ch.last_error,
                    "data_distribution": ch.data_distribution,
                    "on_slowness": ch.on_slowness,
                }
                for name, ch in self.input_channels.items()
            },
        }
        value: Any = {"channels": info}
        for part in key.split("."):
            try:
                value = value[part]
            except (KeyError, TypeError):
                raise PropertyError(f"{self.device_id}: unknown property {key!r}") from None
        return value

    # ------------------------------------------------------------ threads
    def _guarded(self, fn: Callable[[], Any]) -> Callable[[], Any]:
        def run() -> Any:
            try:
                return fn()
            except Exception as exc:
                self._values["errorCount"] += 1
                self._changed("errorCount")
                self.log.debug("%s", traceback.format_exc())
                self.set_error(f"{type(exc).__name__}: {exc}")
                raise

        return run

    def _idle_deadline(self) -> float | None:
        """Monotonic time at which the worker has work of its own (None: only queued jobs)."""
        due = self._flush_at if self._dirty else None
        for timer in self._timer_list:
            if due is None or timer.due < due:
                due = timer.due
        return due

    def _idle_work(self, now: float) -> None:
        """The worker's own work, run when :meth:`_idle_deadline` has passed."""
        self._run_due_timers(now)
        if self._dirty and now >= self._flush_at:
            self._flush_changes()

    def _run_due_timers(self, now: float) -> None:
        for timer in self._timer_list:
            if timer.due <= now and not self._stopping.is_set():
                self._run_job(timer.fn, None, timer.what)  # errors: state ERROR (_guarded)
                # fell behind: skip, do not burst
                timer.due = max(timer.due + timer.period, time.monotonic())

    def _work(self) -> None:
        self._worker_ident = threading.get_ident()
        get = self._queue.get
        while True:
            due = self._idle_deadline()
            try:
                if due is None:
                    job = get()
                else:
                    now = time.monotonic()
                    if due > now:
                        job = get(timeout=due - now)
                    else:
                        job = self._queue.get_nowait()
                        # Jobs keep coming: due timers still run, before the next job.
                        self._run_due_timers(now)
            except queue.Empty:
                self._idle_work(time.monotonic())
                continue
            if job is None:
                if self._dirty:
                    self._flush_changes()
                return
            fn, future, what = job
            if not future.set_running_or_notify_cancel():
                continue
            self._run_job(fn, future, what)

    def _run_job(
        self,
        fn: Callable[[], Any],
        future: concurrent.futures.Future | None,
        what: str | Callable[[], str],
    ) -> None:
        self._busy_what = what
        self._busy_since = time.monotonic()
        try:
            result = fn()
        except BaseException as exc:  # noqa: BLE001 - delivered to the caller
            if future is not None:
                future.set_exception(exc)
        else:
            if future is not None:
                future.set_result(result)
        finally:
            with self._stall_lock:
                self._busy_since = None
                if self._values["stalled"] or self._stall_error:
                    self._end_stall()
            if self._dirty and time.monotonic() >= self._flush_at:
                self._flush_changes()

    def _queue_take(self, name: str, channel: InputChannel) -> None:
        """Queue a turn of input ``name`` on the device's thread (see :meth:`_take_input`)."""
        if not self._stopping.is_set():
            job = functools.partial(self._take_input, name, channel)
            self._queue.put((job, concurrent.futures.Future(), f"input {name!r}"))

    def _take_input(self, name: str, channel: InputChannel) -> None:
        """One train (or end-of-stream) of input ``name``, on the device's thread.

        The channel calls :meth:`_queue_take` when a train arrives and no turn is queued; a
        turn that processed a train frees its credit and queues the next turn, behind what
        was queued meanwhile (property sets, timers, other inputs), until the channel is empty.
        An error of the hook puts the device in ERROR (``_guarded``); the input goes on.
        """
        if self._stopping.is_set():
            return
        item = channel.take()
        if item is None:
            return
        try:
            if isinstance(item, EndOfStream):
                self._busy_what = f"on_eos({name!r})"
                self._guarded(lambda: self._end_of_input(name))()
            else:
                self._busy_what = functools.partial(_describe_data, item.meta, name)
                self._guarded(lambda: self._data(item.data, item.meta, name))()
        except Exception:  # noqa: BLE001, S110 - reported by _guarded (state ERROR)
            pass
        finally:
            channel.release()
            self._queue_take(name, channel)

    def _data(self, data: dict, meta: dict, name: str) -> None:
        self.count("trainsIn")
        self._ended_inputs.discard(name)
        self.on_data(data, meta, name)

    def _end_of_input(self, name: str) -> None:
        self._ended_inputs.add(name)
        self.on_eos(name)


@dataclasses.dataclass
class _Timer:
    """A call of :meth:`Device.every`: when it is due next, its period, the call, its name."""

    due: float
    period: float
    fn: Callable[[], Any]
    what: str


def _describe_data(meta: dict, name: str) -> str:
    return f"on_data(train {train_id_of(meta)}) from input {name!r}"


def _name_of(fn: Callable) -> str:
    name = getattr(fn, "__name__", "") or type(fn).__name__
    return "a queued call" if name == "<lambda>" else f"{name}()"


class ProducerDevice(Device):
    """Base of devices that produce trains by themselves (simulators, sources, replays).

    A subclass writes :meth:`produce`, which writes one train (or reports that none is ready)
    and runs on the device's thread like all device code, so slots and property sets happen
    between two trains.  This class paces the calls at ``rate`` trains per second (``0``: as fast
    as the outputs accept), starts and stops production with the slots ``start_acquisition``
    and ``stop_acquisition`` (state ``ACQUIRING`` / ``STOPPED``; with ``autostart`` production
    starts after :meth:`initialize`), counts ``sentTrains`` and ``actualRate``, and after
    ``n_trains`` trains (or when ``produce`` calls :meth:`end_of_stream`) sends end-of-stream on
    every output and goes to ``STOPPED``.  An exception in ``produce`` puts the device in ERROR
    and pauses production until ``start_acquisition``.
    """

    #: Seconds to wait before calling :meth:`produce` again after it returned ``False``.
    retry_interval: ClassVar[float] = 0.05

    rate = Property(
        float,
        10.0,
        minimum=0.0,
        unit="Hz",
        description="trains per second (0: as fast as the outputs accept)",
    )
    n_trains = Property(
        int,
        0,
        minimum=0,
        description="stop after this many trains and send end-of-stream (0: never)",
    )
    autostart = Property(bool, True, access="init", description="produce from the start")
    sentTrains = Property(int, 0, access="readonly", description="trains produced")
    actualRate = Property(
        float, 0.0, access="readonly", unit="Hz", description="trains per second over the last 50"
    )

    def __init__(self, device_id: str, config: Mapping[str, Any] | None = None):
        super().__init__(device_id, config)
        self._producing = False
        self._next_train = 0.0
        self._sent_times: collections.deque = collections.deque(maxlen=50)

    # ------------------------------------------------------------ for subclasses
    def produce(self) -> bool:
        """Write one train; called on the device's thread while acquiring.

        Returns
        -------
        bool
            ``True`` if a train was written; ``False`` if none was ready (called again after
            :attr:`retry_interval`).  At the end of the data call :meth:`end_of_stream`.
        """
        raise NotImplementedError

    def end_of_stream(self, status: str = "all trains sent") -> None:
        """Stop producing, send end-of-stream on every output and go to ``STOPPED``."""
        self._producing = False
        for name in self.outputs:
            self.signal_eos(name)
        self.set_state(State.STOPPED, status)

    @property
    def producing(self) -> bool:
        """Whether :meth:`produce` is being called (between start and stop)."""
        return self._producing

    @slot(allowed_states=("ON", "STOPPED"), description="Start producing trains")
    def start_acquisition(self) -> None:
        """Start producing trains."""
        self._producing = True
        self._next_train = time.monotonic()
        self.set_state(State.ACQUIRING)

    @slot(allowed_states=("ACQUIRING",), description="Stop producing trains")
    def stop_acquisition(self) -> None:
        """Stop producing trains."""
        self._producing = False
        self.set_state(State.STOPPED)

    # ------------------------------------------------------------ machinery
    def _initialize(self) -> None:
        super()._initialize()
        if self.autostart and self.state in (State.ON.value, State.STOPPED.value):
            self.start_acquisition()

    def stop(self) -> None:
        self._producing = False
        super().stop()

    def _idle_deadline(self) -> float | None:
        due = super()._idle_deadline()
        if self._producing and not self._stopping.is_set():
            return self._next_train if due is None else min(due, self._next_train)
        return due

    def _idle_work(self, now: float) -> None:
        super()._idle_work(now)
        if self._producing and now >= self._next_train and not self._stopping.is_set():
            self._run_job(self._guarded(self._produce_one), None, self._describe_produce)

    def _describe_produce(self) -> str:
        return f"produce() of train #{self.sentTrains + 1}"

    def _produce_one(self) -> None:
        try:
            written = self.produce()
        except Exception:
            self._producing = False
            if self._stopping.is_set():
                return
            raise
        now = time.monotonic()
        if not written:
            self._next_train = now + self.retry_interval
            return
        self.count("sentTrains")
        times = self._sent_times
        times.append(now)
        if len(times) > 1 and times[-1] > times[0]:
            self.record(actualRate=(len(times) - 1) / (times[-1] - times[0]))
        if self.n_trains and self.sentTrains >= self.n_trains and self._producing:
            self.end_of_stream("all trains sent")
        if self.rate > 0:
            self._next_train += 1.0 / self.rate
            if self._next_train < now - 1.0:  # far behind: do not burst to catch up
                self._next_train = now
        else:
            self._next_train = now


class RemoteDevice:
    """Another device, seen through the control plane (get / set / call / wait_for)."""

    def __init__(self, client: Any, device_id: str):
        self.client = client
        self.device_id = device_id

    def get(self, key: str) -> Any:
        """A property value."""
        return self.client.get(self.device_id, key)

    def set(self, key: str, value: Any) -> Any:
        """Set a property."""
        return self.client.set(self.device_id, key, value)

    def call(self, slot_name: str, *args: Any) -> Any:
        """Call a slot."""
        return self.client.call(self.device_id, slot_name, *args)

    def wait_for(self, key: str, expected: Any, timeout: float = 10.0) -> Any:
        """Wait until ``key`` equals ``expected`` (or ``expected(value)`` is true)."""
        return self.client.wait_for(self.device_id, key, expected, timeout=timeout)


# ---------------------------------------------------------------- plugin discovery
_REGISTERED: dict[str, type[Device]] = {}


def register_device_class(cls: type[Device], name: str | None = None) -> str:
    """Make ``cls`` known by ``name`` (default: its class name) to servers in this process.

    For tests and embedding; installed packages declare their devices as entry points in the
    ``pulsetrain.devices`` group instead.  A registered name takes precedence over an entry
    point of the same name.

    Returns
    -------
    str
        The name it was registered under.
    """
    if not (isinstance(cls, type) and issubclass(cls, Device)):
        raise ConfigurationError(f"{cls!r} is not a Device class")
    name = name or cls.__name__
    _REGISTERED[name] = cls
    return name


def registered_device_classes() -> dict[str, type[Device]]:
    """Classes registered in this process with :func:`register_device_class`, by name."""
    return dict(_REGISTERED)


def device_classes() -> dict[str, Any]:
    """Device classes found through the ``pulsetrain.devices`` entry-point group.

    Returns
    -------
    dict
        Class name → entry point (load it with ``.load()``).
    """
    from importlib.metadata import entry_points

    return {ep.name: ep for ep in entry_points(group="pulsetrain.devices")}


def find_device_class(name: str, search_path: Iterable[str | Path] = ()) -> type[Device]:
    """Load a device class by name.

    Parameters
    ----------
    name : str
        A registered name or an entry point's name (``'TrainMatcher'``), or
        ``'module:Class'`` / ``'pkg.module:Class'``.
    search_path : iterable of path
        Directories searched first for the top-level module of a ``module:Class`` name (the
        topology file's directory: a ``mydevs.py`` next to the topology works without
        ``PYTHONPATH``).  A directory where the module is found is added to ``sys.path``, so the
        module's own imports of its neighbours work too.
    """
    if ":" in name:
        module, _, attr = name.partition(":")
        _add_module_dir(module, search_path)
        try:
            cls = getattr(importlib.import_module(module), attr)
        except ImportError as exc:
            where = ", ".join(str(p) for p in search_path)
            raise ConfigurationError(
                f"device class {name!r}: cannot import {module!r}: {exc}"
                + (f" (also looked in {where})" if where else "")
            ) from exc
        except AttributeError:
            raise ConfigurationError(
                f"device class {name!r}: module {module!r} has no {attr!r}"
            ) from None
    elif name in _REGISTERED:
        cls = _REGISTERED[name]
    else:
        found = device_classes()
        if name not in found:
            known = sorted({*found, *_REGISTERED})
            raise ConfigurationError(
                f"unknown device class {name!r}; known: {', '.join(known) or 'none'}"
            )
        cls = found[name].load()
    if not (isinstance(cls, type) and issubclass(cls, Device)):
        raise ConfigurationError(f"{name!r} is not a Device class")
    return cls


def _add_module_dir(module: str, search_path: Iterable[str | Path]) -> None:
    """Put the first directory of ``search_path`` that holds ``module`` on ``sys.path``."""
    top = module.partition(".")[0]
    for directory in search_path:
        directory = Path(directory).resolve()
        if (directory / f"{top}.py").is_file() or (directory / top / "__init__.py").is_file():
            if str(directory) not in sys.path:
                sys.path.insert(0, str(directory))
                importlib.invalidate_caches()
            return
