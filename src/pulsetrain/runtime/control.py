"""The control plane: requests to device servers (get / set / call / list) and their events.

A device server answers requests on a ZeroMQ ROUTER socket and publishes property changes and
heartbeats on a PUB socket.  Every request carries a token; a server refuses requests without
the right one.  A server may also accept a *read-only* token that allows ``get``, ``list``,
``schema`` and ``ping`` only (for displays).

Messages are msgpack maps; numpy arrays travel as ``{'__nd__': True, 'dtype', 'shape', 'data'}``.

Request ``{id, token, op, device?, key?, value?, args?, ...}``, reply ``{id, ok, value}`` or
``{id, ok: False, error, kind}`` where ``kind`` is the exception class name.

:class:`Client` is what notebooks, the GUI, feedback devices and ``pulsetrain ctl`` use.
"""

from __future__ import annotations

import itertools
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import msgpack
import numpy as np
import zmq

from pulsetrain import errors
from pulsetrain.errors import DeviceError, ProtocolError, PulsetrainError

__all__ = ["READ_OPS", "WRITE_OPS", "Client", "new_token", "pack", "token_from_env", "unpack"]

READ_OPS = frozenset({"ping", "list", "get", "schema", "configuration", "classes"})
WRITE_OPS = frozenset(
    {"set", "call", "instantiate", "kill", "connect", "shutdown", "directory", "lease", "release"}
)


def _default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        arr = np.ascontiguousarray(obj)
        return {
            "__nd__": True,
            "dtype": arr.dtype.str,
            "shape": list(arr.shape),
            "data": arr.tobytes(),
        }
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    if hasattr(obj, "value") and hasattr(obj, "name"):  # enums
        return obj.value
    raise TypeError(f"cannot send {type(obj).__name__} over the control plane")


def _hook(obj: dict) -> Any:
    if obj.get("__nd__") is True:
        try:
            return np.frombuffer(obj["data"], dtype=np.dtype(obj["dtype"])).reshape(obj["shape"])
        except Exception as exc:
            raise ProtocolError(f"bad array in control message: {exc}") from exc
    return obj


def pack(obj: Any) -> bytes:
    """Encode a control message."""
    return msgpack.packb(obj, use_bin_type=True, default=_default)


def unpack(buf: Any) -> Any:
    """Decode a control message; raises :class:`ProtocolError` if it is not msgpack."""
    try:
        return msgpack.unpackb(buf, raw=False, object_hook=_hook, strict_map_key=False)
    except ProtocolError:
        raise
    except Exception as exc:
        raise ProtocolError(f"control message is not valid msgpack: {exc}") from exc


def new_token() -> str:
    """A fresh random control token.

    Never one starting with ``-``: the command line (``ctl ... --token TOKEN``) would read that
    as an option, and one in 64 tokens would fail as a user types it.
    """
    while True:
        token = secrets.token_urlsafe(24)
        if not token.startswith("-"):
            return token


def token_from_env(default: str | None = None) -> str | None:
    """The control token from ``$PULSETRAIN_TOKEN`` or ``$PULSETRAIN_TOKEN_FILE``."""
    token = os.environ.get("PULSETRAIN_TOKEN")
    if token:
        return token
    path = os.environ.get("PULSETRAIN_TOKEN_FILE")
    if path and os.path.exists(path):
        with open(path) as f:
            return f.read().strip()
    return default


def error_from_reply(reply: dict) -> PulsetrainError:
    """Rebuild the exception a server reported."""
    cls = getattr(errors, str(reply.get("kind", "")), None)
    if not (isinstance(cls, type) and issubclass(cls, PulsetrainError)):
        cls = DeviceError
    return cls(reply.get("error", "unknown error"))


class Client:
    """Talk to one device server's control endpoint.

    Parameters
    ----------
    endpoint : str
        The server's control endpoint, e.g. ``'tcp://127.0.0.1:5555'``.
    token : str, optional
        The control (or read-only) token; defaults to ``$PULSETRAIN_TOKEN``.
    timeout : float
        Seconds to wait for each reply.

    Examples
    --------
    >>> c = Client("tcp://127.0.0.1:5555", token="...")        # doctest: +SKIP
    >>> c.set("SPB/MOTOR/SAMPLE_X", "targetPosition", 2.5)     # doctest: +SKIP
    >>> c.call("SPB/MOTOR/SAMPLE_X", "move")                   # doctest: +SKIP
    >>> c.wait_for("SPB/MOTOR/SAMPLE_X", "state", "ON", timeout=10)  # doctest: +SKIP
    """

    def __init__(
        self,
        endpoint: str,
        token: str | None = None,
        timeout: float = 10.0,
        context: zmq.Context | None = None,
    ):
        self.endpoint = endpoint
        self.token = token if token is not None else token_from_env("")
        self.timeout = timeout
        self._ctx = context or zmq.Context.instance()
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._sock: zmq.Socket | None = None

    def _socket(self) -> zmq.Socket:
        if self._sock is None:
            sock = self._ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(self.endpoint)
            self._sock = sock
        return self._sock

    def request(self, op: str, timeout: float | None = None, **fields: Any) -> Any:
        """Send one request and return the reply's value (or raise the server's error).

        Raises
        ------
        TimeoutError
            No reply within the timeout (the socket is reset, so the client stays usable).
        """
        timeout = self.timeout if timeout is None else timeout
        with self._lock:
            sock = self._socket()
            rid = next(self._ids)
            sock.send_multipart([b"", pack({"id": rid, "token": self.token, "op": op, **fields})])
            deadline = time.monotonic() + timeout
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not sock.poll(int(remaining * 1000) + 1):
                    self._sock = None
                    sock.close(0)
                    raise TimeoutError(f"no reply from {self.endpoint} to {op!r} in {timeout} s")
                frames = sock.recv_multipart()
                reply = unpack(frames[-1])
                if isinstance(reply, dict) and reply.get("id") == rid:
                    break  # replies to earlier, timed-out requests are skipped
        if not reply.get("ok"):
            raise error_from_reply(reply)
        return reply.get("value")

    # convenience wrappers
    def ping(self) -> dict:
        """Server name, pid, uptime and devices."""
        return self.request("ping")

    def list(self) -> dict:
        """Devices on the server: ``{device_id: {'class', 'state', 'status'}}``."""
        return self.request("list")

    def get(self, device: str, key: str | None = None) -> Any:
        """One property value, or the whole configuration when ``key`` is None."""
        if key is None:
            return self.request("configuration", device=device)
        return self.request("get", device=device, key=key)

    def set(self, device: str, key: str, value: Any) -> Any:
        """Set a reconfigurable property; raises :class:`PropertyError` if refused."""
        return self.request("set", device=device, key=key, value=value)

    def call(self, device: str, slot: str, *args: Any, timeout: float | None = None) -> Any:
        """Call a slot of a device."""
        return self.request("call", device=device, slot=slot, args=list(args), timeout=timeout)

    def schema(self, device: str) -> dict:
        """Properties, slots and channels of a device."""
        return self.request("schema", device=device)

    def instantiate(
        self,
        class_name: str,
        device_id: str,
        config: dict | None = None,
        owner: str | None = None,
    ) -> Any:
        """Create and start a device on the server (under lease ``owner``'s, if given)."""
        fields: dict[str, Any] = {"owner": owner} if owner is not None else {}
        return self.request(
            "instantiate",
            device=device_id,
            cls=class_name,
            config=config or {},
            timeout=60,
            **fields,
        )

    def lease(
        self, owner: str, ttl: float, info: dict | None = None, timeout: float | None = None
    ) -> dict:
        """Take or renew the server's lease for run ``owner`` (see :mod:`.server`)."""
        return self.request("lease", owner=owner, ttl=ttl, info=info or {}, timeout=timeout)

    def release(self, owner: str, timeout: float | None = None) -> int:
        """End run ``owner``'s lease: the server stops the run's devices at once."""
        return self.request("release", owner=owner, timeout=timeout)

    def kill(self, device_id: str) -> Any:
        """Stop and remove a device."""
        return self.request("kill", device=device_id)

    def shutdown(self) -> Any:
        """Ask the server process to stop."""
        return self.request("shutdown")

    def wait_for(
        self,
        device: str,
        key: str,
        expected: Any | Callable[[Any], bool],
        timeout: float = 10.0,
        poll: float = 0.02,
    ) -> Any:
        """Poll ``key`` until it equals ``expected`` (or ``expected(value)`` is true)."""
        test = expected if callable(expected) else (lambda v: v == expected)
        deadline = time.monotonic() + timeout
        value = None
        while time.monotonic() < deadline:
            try:
                value = self.get(device, key)
                if test(value):
                    return value
            except TimeoutError:
                pass
            time.sleep(poll)
        raise TimeoutError(f"{device}.{key} is {value!r} after {timeout} s")

    def close(self) -> None:
        """Close the socket."""
        if self._sock is not None:
            self._sock.close(0)
            self._sock = None

    def __enter__(self) -> Client:  # noqa: PYI034 - Python 3.10 has no typing.Self
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def subscribe(
    events_endpoint: str, devices: list[str] | None = None, context: zmq.Context | None = None
) -> Iterator[dict]:
    """Iterate over a server's events ``{'device', 'key', 'value', 'time'}`` (and heartbeats).

    Heartbeats arrive with ``device == '__heartbeat__'`` once per second.
    """
    ctx = context or zmq.Context.instance()
    sock = ctx.socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    for d in devices or [""]:
        sock.setsockopt(zmq.SUBSCRIBE, d.encode())
    if devices:
        sock.setsockopt(zmq.SUBSCRIBE, b"__heartbeat__")
    sock.connect(events_endpoint)
    try:
        while True:
            _topic, body = sock.recv_multipart()
            yield unpack(body)
    finally:
        sock.close(0)


__all__.append("subscribe")
__all__.append("AuthenticationError")


class TopologyClient:
    """Control of a whole running topology, found through its ``state.json``.

    Parameters
    ----------
    state : dict or path
        The supervisor's state (``Supervisor.state()``) or the path of its ``state.json``.
    token : str, optional
        Defaults to the content of the state's token file.
    """

    def __init__(self, state: dict | str | os.PathLike, token: str | None = None):
        import json

        if not isinstance(state, dict):
            with open(state) as f:
                state = json.load(f)
        self.state = state
        if token is None:
            with open(state["token_file"]) as f:
                token = f.read().strip()
        self.token = token
        self.clients = {
            name: Client(s["control"], token=token) for name, s in state["servers"].items()
        }

    @classmethod
    def for_topology(cls, name_or_file: str, token: str | None = None) -> TopologyClient:
        """Find the running topology named ``name_or_file`` (or of that topology file)."""
        from pulsetrain.runtime import runstate

        name = name_or_file
        if os.path.exists(name_or_file) and name_or_file.endswith(".toml"):
            from pulsetrain.runtime.topology import Topology

            name = Topology.load(name_or_file).name
        path = runstate.state_path(name)
        state = runstate.read_state(path)
        if state is None:
            raise PulsetrainError(f"topology {name!r} is not running (no {path})")
        if not runstate.supervisor_alive(state):
            raise PulsetrainError(
                f"topology {name!r} is not running: its supervisor (pid {state.get('pid')}) is "
                f"gone; the next `pulsetrain run` of it cleans {path}"
            )
        return cls(state, token=token)

    def refresh(self) -> None:
        """Re-read the servers' entries of the running topology's state file: pids, restart
        counts and last restart causes change while it runs (endpoints do not)."""
        from pulsetrain.runtime import runstate

        name = self.state.get("topology")
        fresh = runstate.read_state(runstate.state_path(name)) if name else None
        if fresh and fresh.get("pid") == self.state.get("pid"):
            for server, info in fresh.get("servers", {}).items():
                if server in self.state["servers"]:
                    self.state["servers"][server] = {**self.state["servers"][server], **info}

    def devices(self) -> dict[str, dict]:
        """Device ID → class and server."""
        return dict(self.state["devices"])

    def client(self, device_id: str) -> Client:
        """The control client of the server hosting ``device_id``."""
        try:
            return self.clients[self.state["devices"][device_id]["server"]]
        except KeyError:
            raise DeviceError(f"no device {device_id!r} in the running topology") from None

    def get(self, device_id: str, key: str | None = None) -> Any:
        """A property (or the whole configuration)."""
        return self.client(device_id).get(device_id, key)

    def set(self, device_id: str, key: str, value: Any) -> Any:
        """Set a property."""
        return self.client(device_id).set(device_id, key, value)

    def call(self, device_id: str, slot: str, *args: Any) -> Any:
        """Call a slot."""
        return self.client(device_id).call(device_id, slot, *args)

    def output(self, channel: str) -> str:
        """The tcp endpoint of an output channel ``'DEVICE:channel'``."""
        return self.state["outputs"][channel]
