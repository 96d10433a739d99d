"""The :class:`Device` base class: typed properties, slots, a state, channels and data hooks.

A device is one service of the control system: a simulated detector, a correction step, a
matcher, a feedback controller.  It is hosted by a :mod:`device server <pulsetrain.server>`
and driven from outside through the control plane (get / set / call), and from upstream
through its input channels (``on_data``).

Everything a device's code does runs on the device's own worker thread, one thing at a time:
``on_data`` for each train, property sets, slot calls and timers.  Device code therefore needs no
locks.  An exception raised by device code puts the device into state ``ERROR`` with the message
in ``status``; the device, its server and the other devices keep running; the slot ``reset``
brings it back to ``ON``.

Declaring a device::

    class Scaler(Device):
        factor = Property(float, 1.0, minimum=0, unit="", description="multiplier")
        inputs = {"input": {}}
        outputs = ("output",)

        def on_data(self, data, meta, channel):
            out = {src: {"image.data": v["image.data"] * self.factor} for src, v in data.items()}
            self.write("output", out, meta)

        @slot
        def double(self):
            self.factor *= 2
"""

from __future__ import annotations

import concurrent.futures
import enum
import logging
import math
import queue
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import numpy as np

from pulsetrain.channels import EndOfStream, InputChannel, OutputChannel
from pulsetrain.errors import ConfigurationError, DeviceError, PropertyError, PulsetrainError

__all__ = ["State", "Access", "Property", "slot", "Device", "find_device_class", "device_classes"]


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
    bool: "bool", int: "int", float: "float", str: "str", list: "list", dict: "dict",
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
) -> Any:
    """Mark a device method as a slot (a command callable through the control plane).

    Parameters
    ----------
    allowed_states : tuple of State, optional
        States in which the slot may be called; calling it in another state is refused.
    """

    def mark(f: Callable) -> Callable:
        f._pt_slot = {  # type: ignore[attr-defined]
            "allowed_states": tuple(State(s).value for s in allowed_states)
            if allowed_states
            else None,
            "description": description or (f.__doc__ or "").strip().split("\n")[0],
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
    inputs : dict
        Input channel names with their default policies (``{'input': {}}``).
    outputs : tuple of str
        Output channel names.
    """

    inputs: ClassVar[Mapping[str, Mapping[str, Any]]] = {}
    outputs: ClassVar[tuple[str, ...]] = ()

    state = Property(str, State.INIT.value, access="readonly", description="device state")
    status = Property(str, "", access="readonly", description="last status message")
    trainsIn = Property(int, 0, access="readonly", description="trains received")
    trainsOut = Property(int, 0, access="readonly", description="trains written")
    errorCount = Property(int, 0, access="readonly", description="exceptions raised by device code")
    stall_timeout = Property(float, 30.0, minimum=0.0, unit="s",
                             description="device code busy longer than this puts the device in "
                             "ERROR (0: never)")

    def __init__(self, device_id: str, config: Mapping[str, Any] | None = None):
        self.device_id = device_id
        self.log = logging.LoggerAdapter(
            logging.getLogger(f"pulsetrain.device.{type(self).__name__}"),
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
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._worker: threading.Thread | None = None
        self._worker_ident: int | None = None
        self._busy_since: float | None = None
        self._input_threads: list[threading.Thread] = []
        self._timers: list[threading.Thread] = []
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
        """All slots of this class with their descriptions and allowed states."""
        found = {}
        for name in dir(cls):
            fn = getattr(cls, name, None)
            info = getattr(fn, "_pt_slot", None)
            if info is not None:
                found[name] = dict(info)
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

        return self.run_in_device(apply)

    def call(self, name: str, *args: Any) -> Any:
        """Call a slot on the device's thread; refused if the state does not allow it."""
        info = self.slots().get(name)
        if info is None:
            raise DeviceError(f"{self.device_id}: no slot {name!r}")
        allowed = info["allowed_states"]
        if allowed and self.state not in allowed:
            raise DeviceError(
                f"{self.device_id}: slot {name!r} not allowed in state {self.state} "
                f"(allowed: {', '.join(allowed)})"
            )
        try:
            return self.run_in_device(self._guarded(lambda: getattr(self, name)(*args)))
        except PulsetrainError:
            raise
        except Exception as exc:
            raise DeviceError(
                f"{self.device_id}: slot {name!r} failed: {type(exc).__name__}: {exc}"
            ) from exc

    def add_listener(self, callback: Callable[[str, str, Any], None]) -> None:
        """Call ``callback(device_id, key, value)`` after every property change."""
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
        """Set several properties from device code (read-only ones included), validated."""
        for key, value in values.items():
            prop = self._props.get(key)
            if prop is None:
                raise PropertyError(f"{self.device_id}: unknown property {key!r}")
            self._assign(key, prop.validate(value))

    def set_state(self, state: State | str, status: str | None = None) -> None:
        """Change the state (and optionally the status message)."""
        state = State(state).value
        if status is not None:  # status first: whoever sees the new state sees its reason
            self._assign("status", status)
        if state != self._values["state"]:
            self.log.info("state %s -> %s", self._values["state"], state)
            self._assign("state", state)

    _stalled = False

    def check_stall(self, now: float | None = None) -> bool:
        """Called by the server's watchdog: ERROR if device code has been busy too long."""
        since = self._busy_since
        if not self.stall_timeout or since is None or self._stalled:
            return False
        busy = (now or time.monotonic()) - since
        if busy > self.stall_timeout:
            self._stalled = True
            self._values["errorCount"] += 1
            self.set_error(f"device code stalled: busy for {busy:.0f} s "
                           f"(stall_timeout {self.stall_timeout:g} s); its inputs are not read")
            return True
        return False

    def set_error(self, message: str) -> None:
        """Go to state ERROR with ``message`` (logged)."""
        self.log.error("%s", message)
        self.set_state(State.ERROR, message)

    # ------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Start the worker thread, open the channels and run :meth:`initialize`."""
        self._worker = threading.Thread(
            target=self._work, name=f"dev:{self.device_id}", daemon=True
        )
        self._worker.start()
        for name in self.outputs:
            cfg = dict(self._output_cfg.get(name, {}))
            bind = cfg.get("bind", ["tcp://127.0.0.1:0"])
            self.output_channels[name] = OutputChannel(
                f"{self.device_id}:{name}", bind, no_input_shared=cfg.get("no_input_shared")
            )
        for name, defaults in self.inputs.items():
            cfg = {**defaults, **self._input_cfg.get(name, {})}
            channel = InputChannel(
                f"{self.device_id}:{name}",
                data_distribution=cfg.get("data_distribution", "copy"),
                on_slowness=cfg.get("on_slowness", "drop"),
                max_queue_length=int(cfg.get("max_queue_length", 2)),
                window=int(cfg.get("window", 2)),
            )
            self.input_channels[name] = channel
            for endpoint in cfg.get("connect", []):
                channel.connect(endpoint)
        try:
            self.run_in_device(self.initialize)
            if self.state == State.INIT.value:
                self.set_state(State.ON)
        except Exception as exc:
            self.set_error(f"initialisation failed: {exc}")
        for name, channel in self.input_channels.items():
            t = threading.Thread(
                target=self._read_input, args=(name, channel), name=f"read:{self.device_id}:{name}",
                daemon=True,
            )
            t.start()
            self._input_threads.append(t)

    def stop(self) -> None:
        """Run :meth:`shutdown`, close the channels and stop the threads."""
        if self._stopping.is_set():
            return
        try:
            self.run_in_device(self.shutdown, timeout=10)
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

    def run_in_device(self, fn: Callable[[], Any], timeout: float | None = None) -> Any:
        """Run ``fn`` on the device's thread and return its result (or raise its exception)."""
        timeout = self.request_timeout if timeout is None else timeout
        if self._worker is None or threading.get_ident() == self._worker_ident:
            return fn()
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._queue.put((fn, future))
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            raise DeviceError(
                f"{self.device_id}: busy, no answer within {timeout} s"
            ) from None

    def every(self, period: float, fn: Callable[[], Any]) -> None:
        """Run ``fn`` on the device's thread every ``period`` seconds until the device stops."""

        def tick() -> None:
            next_t = time.monotonic()
            while not self._stopping.is_set():
                next_t += period
                delay = next_t - time.monotonic()
                if delay < 0:  # fell behind: skip, do not burst
                    next_t = time.monotonic()
                    delay = 0
                if self._stopping.wait(delay):
                    return
                done = concurrent.futures.Future()
                self._queue.put((self._guarded(fn), done))
                try:
                    done.result()
                except Exception:
                    pass

        t = threading.Thread(target=tick, name=f"timer:{self.device_id}", daemon=True)
        t.start()
        self._timers.append(t)

    # ------------------------------------------------------------ hooks for subclasses
    def initialize(self) -> None:
        """Called once on the device's thread after the channels exist."""

    def on_data(self, data: dict, meta: dict, channel: str) -> None:
        """Called for each train arriving on an input channel."""

    def on_eos(self, channel: str) -> None:
        """Called when every output connected to ``channel`` sent end-of-stream."""

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
        server = getattr(self, "server", None)
        if server is None:
            raise DeviceError(f"{self.device_id}: not hosted by a server, cannot reach {device_id}")
        return RemoteDevice(server.client_for(device_id), device_id)

    # ------------------------------------------------------------ channels
    def write(self, output: str, data: dict, meta: dict, timeout: float | None = None) -> None:
        """Write one train to an output channel (see :meth:`OutputChannel.write`)."""
        self.output_channels[output].write(data, meta, timeout=timeout)
        self._values["trainsOut"] += 1

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
                self.log.debug("%s", traceback.format_exc())
                self.set_error(f"{type(exc).__name__}: {exc}")
                raise

        return run

    def _work(self) -> None:
        self._worker_ident = threading.get_ident()
        while True:
            job = self._queue.get()
            if job is None:
                return
            fn, future = job
            if not future.set_running_or_notify_cancel():
                continue
            self._busy_since = time.monotonic()
            try:
                future.set_result(fn())
            except BaseException as exc:  # delivered to the caller
                future.set_exception(exc)
            finally:
                self._busy_since = None
                if self._stalled:
                    self._stalled = False
                    self.log.warning("device code returned after a stall")

    def _read_input(self, name: str, channel: InputChannel) -> None:
        while not self._stopping.is_set():
            try:
                item = channel.get(timeout=0.5)
            except TimeoutError:
                continue
            except Exception:
                if self._stopping.is_set():
                    return
                raise
            if isinstance(item, EndOfStream):
                job = self._guarded(lambda: self.on_eos(name))
            else:
                self._values["trainsIn"] += 1
                job = self._guarded(
                    lambda item=item: self.on_data(item.data, item.meta, name)
                )
            future: concurrent.futures.Future = concurrent.futures.Future()
            self._queue.put((job, future))
            try:
                future.result()
            except Exception:
                pass  # already reported by _guarded (state ERROR)
        channel.release()


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
_BUILTIN: dict[str, str] = {}


def device_classes() -> dict[str, Any]:
    """Device classes found through the ``pulsetrain.devices`` entry-point group.

    Returns
    -------
    dict
        Class name → entry point (load it with ``.load()``).
    """
    from importlib.metadata import entry_points

    return {ep.name: ep for ep in entry_points(group="pulsetrain.devices")}


def find_device_class(name: str) -> type[Device]:
    """Load a device class by name (``'TrainMatcher'``) or dotted path (``'pkg.mod:Class'``)."""
    import importlib

    if ":" in name:
        module, _, attr = name.partition(":")
        cls = getattr(importlib.import_module(module), attr)
    else:
        found = device_classes()
        if name not in found:
            raise ConfigurationError(
                f"unknown device class {name!r}; known: {', '.join(sorted(found)) or 'none'}"
            )
        cls = found[name].load()
    if not (isinstance(cls, type) and issubclass(cls, Device)):
        raise ConfigurationError(f"{name!r} is not a Device class")
    return cls
