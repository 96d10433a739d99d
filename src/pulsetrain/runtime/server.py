"""A device server: the process that hosts devices and answers the control plane.

The server binds a control endpoint (ROUTER; requests need the token) and an events endpoint
(PUB; property changes and a heartbeat every second).  Requests that touch a device (set, call,
instantiate, kill) run on a small thread pool and reach the device through its own worker
thread, so a device that hangs or raises never blocks the server or the other devices: the
control endpoint keeps answering, and a request to the stuck device times out with a clear error.

**Leases.**  A server started by something else than a supervisor (systemd, a SLURM job, by
hand: a *remote* server of a topology) hosts a run's devices only while that run's supervisor
holds its lease: the supervisor renews it (``lease`` request, every half second or so) and names
itself as the lease's owner when it creates devices.  When the renewals stop for ``ttl`` seconds
(the supervisor was killed, or its host is unreachable for that long) the server stops every
device of the lease, as the supervisor's own stop would have, and waits for the next
supervisor.  A second supervisor is refused while another one's lease runs
(:class:`~pulsetrain.errors.AlreadyRunningError`).
"""

from __future__ import annotations

import concurrent.futures
import hmac
import logging
import os
import queue
import resource
import threading
import time
from collections.abc import Mapping
from typing import Any

import zmq

from pulsetrain.errors import (
    AlreadyRunningError,
    AuthenticationError,
    ConfigurationError,
    DeviceError,
    ProtocolError,
    PulsetrainError,
)
from pulsetrain.runtime import control
from pulsetrain.runtime.device import Device, find_device_class

__all__ = ["DeviceServer"]

log = logging.getLogger(__name__)


class DeviceServer:
    """Host devices and serve the control plane.

    Parameters
    ----------
    name : str
        Server ID.
    control_bind : str
        Endpoint of the control socket (``tcp://127.0.0.1:0`` picks a free port).
    events_bind : str
        Endpoint of the events socket.
    token : str
        The control token every request must carry.
    read_token : str, optional
        A token that allows only read operations.
    request_timeout : float
        Seconds a set/call may take on a device before the client gets an error.
    """

    def __init__(
        self,
        name: str,
        control_bind: str = "tcp://127.0.0.1:0",
        events_bind: str = "tcp://127.0.0.1:0",
        *,
        token: str,
        read_token: str | None = None,
        request_timeout: float = 10.0,
        context: zmq.Context | None = None,
    ):
        if not token:
            raise ConfigurationError("a device server needs a non-empty control token")
        self.name = name
        self.token = token
        self.read_token = read_token
        self.request_timeout = request_timeout
        self.devices: dict[str, Device] = {}
        self.started = time.time()
        self._ctx = context or zmq.Context.instance()
        self._router = self._ctx.socket(zmq.ROUTER)
        self._router.setsockopt(zmq.LINGER, 0)
        self._pub = self._ctx.socket(zmq.PUB)
        self._pub.setsockopt(zmq.LINGER, 0)
        self._pub.setsockopt(zmq.SNDHWM, 10000)
        try:
            self._router.bind(control_bind)
            self._pub.bind(events_bind)
        except zmq.ZMQError as exc:
            self._router.close(0)
            self._pub.close(0)
            raise ConfigurationError(f"server {name}: cannot bind: {exc}") from exc
        self.control_endpoint = self._router.getsockopt_string(zmq.LAST_ENDPOINT)
        self.events_endpoint = self._pub.getsockopt_string(zmq.LAST_ENDPOINT)
        self._replies: queue.SimpleQueue = queue.SimpleQueue()
        self._events: queue.SimpleQueue = queue.SimpleQueue()
        self._events_announced = False  # a wake for the events queued is on its way
        wake = f"inproc://pt-server-wake-{id(self)}"
        self._wake_r = self._ctx.socket(zmq.PAIR)
        self._wake_r.bind(wake)
        self._wake_w = self._ctx.socket(zmq.PAIR)
        self._wake_w.connect(wake)
        self._wake_lock = threading.Lock()
        self._pool = concurrent.futures.ThreadPoolExecutor(16, thread_name_prefix=f"ctl:{name}")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.requests = 0
        self.refused = 0
        #: Device ID → control endpoint of its server, for devices that talk to other devices.
        self.directory: dict[str, str] = {}
        self._remote_clients: dict[str, control.Client] = {}
        #: The run holding this server: ``{'owner', 'ttl', 'info', 'deadline'}`` or None.
        self.lease: dict[str, Any] | None = None
        self._owned: dict[str, str] = {}  # device ID -> lease owner that created it
        self._lease_lock = threading.Lock()
        self.leases_expired = 0

    # ------------------------------------------------------------ devices
    def instantiate(self, class_name: str, device_id: str, config: Mapping | None = None) -> Device:
        """Create, register and start a device.

        ``config`` may hold ``module_path``, directories searched first for the module of a
        ``module:Class`` class name (a topology puts its own directory there).
        """
        if device_id in self.devices:
            raise ConfigurationError(f"device {device_id!r} already exists on {self.name}")
        config = dict(config or {})
        search_path = config.pop("module_path", None) or ()
        if isinstance(search_path, str):
            search_path = [search_path]
        cls = find_device_class(class_name, search_path)
        device = cls(device_id, config)
        device.attach_server(self)
        device.add_listener(self._on_change)
        self.devices[device_id] = device
        try:
            device.start()
        except Exception:
            self.devices.pop(device_id, None)
            raise
        log.info("%s: started %s (%s)", self.name, device_id, class_name)
        return device

    def kill(self, device_id: str) -> None:
        """Stop and remove a device."""
        device = self._device(device_id)
        self.devices.pop(device_id, None)
        self._owned.pop(device_id, None)
        device.stop()

    # ------------------------------------------------------------ leases
    def take_lease(self, owner: str, ttl: float, info: Mapping | None = None) -> dict:
        """Take or renew the lease for run ``owner`` for ``ttl`` seconds.

        Raises
        ------
        AlreadyRunningError
            Another run's lease is still running.
        """
        if not owner or not (0 < float(ttl) <= 3600):
            raise ConfigurationError("a lease needs an owner and 0 < ttl <= 3600 s")
        now = time.monotonic()
        with self._lease_lock:
            held = self.lease
            if held is not None and held["owner"] != owner and held["deadline"] > now:
                raise AlreadyRunningError(
                    f"server {self.name} is held by another run ({_describe(held['info'])}) for "
                    f"{held['deadline'] - now:.1f} s more"
                )
            if held is None or held["owner"] != owner:
                log.info("%s: lease taken by %s", self.name, _describe(info or {}))
            self.lease = {
                "owner": owner,
                "ttl": float(ttl),
                "info": dict(info or {}),
                "deadline": now + float(ttl),
            }
        return self.lease_status()

    def release_lease(self, owner: str) -> int:
        """End ``owner``'s lease now: its devices are stopped.  Returns how many."""
        with self._lease_lock:
            if self.lease is not None and self.lease["owner"] == owner:
                self.lease = None
        return self._drop_owned(owner)

    def lease_status(self) -> dict:
        """The lease as the ``ping`` and ``lease`` requests report it."""
        lease = self.lease
        if lease is None:
            return {"owner": None, "pid": os.getpid(), "devices": sorted(self.devices)}
        return {
            "owner": lease["owner"],
            "pid": os.getpid(),
            "info": lease["info"],
            "remaining": round(lease["deadline"] - time.monotonic(), 3),
            "devices": sorted(self.devices),
        }

    def _check_lease(self) -> None:
        with self._lease_lock:
            lease = self.lease
            if lease is None or lease["deadline"] > time.monotonic():
                return
            self.lease = None
            self.leases_expired += 1
        log.warning(
            "%s: the lease of %s expired (no renewal for %.0f s): stopping its devices",
            self.name,
            _describe(lease["info"]),
            lease["ttl"],
        )
        self._pool.submit(self._drop_owned, lease["owner"])

    def _drop_owned(self, owner: str) -> int:
        dropped = 0
        for device_id in [d for d, o in list(self._owned.items()) if o == owner]:
            try:
                self.kill(device_id)
                dropped += 1
            except DeviceError:
                self._owned.pop(device_id, None)
            except Exception:
                log.exception("%s: stopping %s failed", self.name, device_id)
        if dropped:
            log.info(
                "%s: stopped %d devices of the run; waiting for a supervisor", self.name, dropped
            )
        return dropped

    def client_for(self, device_id: str) -> control.Client:
        """A control client for the server hosting ``device_id`` (from the directory)."""
        endpoint = self.directory.get(device_id)
        if endpoint is None:
            if device_id in self.devices:
                endpoint = self.control_endpoint
            else:
                raise DeviceError(f"{self.name}: no known server for device {device_id!r}")
        client = self._remote_clients.get(endpoint)
        if client is None:
            client = self._remote_clients[endpoint] = control.Client(endpoint, token=self.token)
        return client

    def _check_owner(self, owner: str) -> None:
        lease = self.lease
        if lease is None or lease["owner"] != owner:
            raise AlreadyRunningError(
                f"server {self.name}: devices of a run are created only under its lease "
                f"(held by {_describe(lease['info']) if lease else 'nobody'})"
            )

    def _device(self, device_id: str | None) -> Device:
        try:
            return self.devices[str(device_id)]
        except KeyError:
            raise DeviceError(f"no device {device_id!r} on server {self.name}") from None

    def _on_change(self, device_id: str, key: str, value: Any) -> None:
        self._events.put((device_id, key, value, time.time()))
        if not self._events_announced:  # one wake for a burst of changes (a device's flush)
            self._events_announced = True
            self._wake()

    # ------------------------------------------------------------ running
    def start(self) -> DeviceServer:
        """Serve in a background thread."""
        self._thread = threading.Thread(target=self.serve, name=f"server:{self.name}", daemon=True)
        self._thread.start()
        return self

    def serve(self) -> None:
        """Serve until :meth:`stop` (or a ``shutdown`` request)."""
        poller = zmq.Poller()
        poller.register(self._router, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        next_beat = 0.0
        while not self._stop.is_set():
            events = dict(poller.poll(timeout=200))
            if self._wake_r in events:
                while True:
                    try:
                        self._wake_r.recv(zmq.NOBLOCK)
                    except zmq.Again:
                        break
            if self._router in events:
                for _ in range(100):
                    try:
                        frames = self._router.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    self._handle(frames)
            while True:
                try:
                    route, reply = self._replies.get_nowait()
                except queue.Empty:
                    break
                self._router.send_multipart(route + [control.pack(reply)])
            self._publish_events()
            now = time.monotonic()
            if now >= next_beat:
                next_beat = now + 1.0
                for device in list(self.devices.values()):  # watchdog for stuck device code
                    device.check_stall(now)
                self._check_lease()
                self._publish("__heartbeat__", self._heartbeat())
        self._shutdown_devices()

    def stop(self) -> None:
        """Stop serving and stop every device."""
        self._stop.set()
        self._wake()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=15)

    def close(self) -> None:
        """Stop and close the sockets."""
        self.stop()
        self._pool.shutdown(wait=False, cancel_futures=True)
        for sock in (self._router, self._pub, self._wake_r, self._wake_w):
            sock.close(0)

    def _shutdown_devices(self) -> None:
        for device_id in list(self.devices):
            try:
                self.devices.pop(device_id).stop()
            except Exception:
                log.exception("%s: stopping %s failed", self.name, device_id)

    def _wake(self) -> None:
        with self._wake_lock:
            try:
                self._wake_w.send(b"", zmq.NOBLOCK)
            except zmq.ZMQError:
                pass

    def _publish(self, topic: str, body: dict) -> None:
        try:
            self._pub.send_multipart([topic.encode(), control.pack(body)], zmq.NOBLOCK)
        except (zmq.ZMQError, TypeError):
            pass

    def _publish_events(self) -> None:
        self._events_announced = False  # before taking: a change put from now on wakes again
        for _ in range(10000):
            try:
                device_id, key, value, t = self._events.get_nowait()
            except queue.Empty:
                return
            self._publish(device_id, {"device": device_id, "key": key, "value": value, "time": t})

    def _heartbeat(self) -> dict:
        return {
            "device": "__heartbeat__",
            "server": self.name,
            "pid": os.getpid(),
            "time": time.time(),
            "devices": {d: dev.state for d, dev in list(self.devices.items())},
        }

    # ------------------------------------------------------------ requests
    def _handle(self, frames: list[bytes]) -> None:
        self.requests += 1
        route, body = frames[:-1], frames[-1]
        rid = None
        try:
            req = control.unpack(body)
            if not isinstance(req, dict):
                raise ProtocolError("a control request must be a map")
            rid = req.get("id")
            op = req.get("op")
            self._authorise(req.get("token"), op)
            if op in ("set", "call", "instantiate", "kill", "connect", "directory", "release"):
                future = self._pool.submit(self._execute, req)
                future.add_done_callback(
                    lambda f, route=route, rid=rid: self._reply_later(route, rid, f)
                )
                return
            value = self._execute(req)
            reply = {"id": rid, "ok": True, "value": value}
        except Exception as exc:  # noqa: BLE001 - every failure becomes an error reply
            reply = self._error_reply(rid, exc)
        try:
            self._router.send_multipart(route + [control.pack(reply)])
        except TypeError as exc:  # a value that cannot be encoded
            self._router.send_multipart(route + [control.pack(self._error_reply(rid, exc))])

    def _reply_later(self, route: list[bytes], rid: Any, future: concurrent.futures.Future) -> None:
        try:
            reply = {"id": rid, "ok": True, "value": future.result()}
            control.pack(reply)
        except Exception as exc:  # noqa: BLE001 - every failure becomes an error reply
            reply = self._error_reply(rid, exc)
        self._replies.put((route, reply))
        self._wake()

    def _error_reply(self, rid: Any, exc: Exception) -> dict:
        if isinstance(exc, AuthenticationError):
            self.refused += 1
        kind = type(exc).__name__ if isinstance(exc, PulsetrainError) else "DeviceError"
        if not isinstance(exc, PulsetrainError):
            log.exception("%s: request failed", self.name)
        return {"id": rid, "ok": False, "error": str(exc), "kind": kind}

    def _authorise(self, token: Any, op: Any) -> None:
        if op not in control.READ_OPS and op not in control.WRITE_OPS:
            raise ProtocolError(f"unknown operation {op!r}")
        if not isinstance(token, str) or not token:
            raise AuthenticationError("request refused: no control token")
        if hmac.compare_digest(token.encode(), self.token.encode()):
            return
        if self.read_token and hmac.compare_digest(token.encode(), self.read_token.encode()):
            if op in control.READ_OPS:
                return
            raise AuthenticationError(f"request refused: the read-only token cannot {op!r}")
        raise AuthenticationError("request refused: wrong control token")

    def _execute(self, req: dict) -> Any:
        op = req["op"]
        if op == "ping":
            return {
                "server": self.name,
                "pid": os.getpid(),
                "uptime": time.time() - self.started,
                "devices": sorted(self.devices),
                "events": self.events_endpoint,
                "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "lease": self.lease_status(),
            }
        if op == "lease":
            return self.take_lease(str(req.get("owner") or ""), req.get("ttl", 0), req.get("info"))
        if op == "release":
            return self.release_lease(str(req.get("owner") or ""))
        if op == "list":
            return {
                d: {
                    "class": type(dev).__name__,
                    "state": dev.state,
                    "status": dev.status,
                    "stalled": dev.stalled,
                    "busyFor": dev.busyFor,
                }
                for d, dev in list(self.devices.items())
            }
        if op == "classes":
            from pulsetrain.runtime.device import device_classes, registered_device_classes

            return sorted({*device_classes(), *registered_device_classes()})
        if op == "shutdown":
            threading.Thread(target=self.stop, daemon=True).start()
            return True
        if op == "directory":
            self.directory.update({str(k): str(v) for k, v in (req.get("value") or {}).items()})
            return len(self.directory)
        if op == "instantiate":
            owner = req.get("owner")
            if owner is not None:
                self._check_owner(str(owner))
            device = self.instantiate(
                str(req.get("cls")), str(req.get("device")), req.get("config") or {}
            )
            if owner is not None:
                self._owned[device.device_id] = str(owner)
            return {"state": device.state, "status": device.status}
        device_id = req.get("device")
        if op == "kill":
            self.kill(device_id)
            return True
        device = self._device(device_id)
        if op == "get":
            return device.get(str(req.get("key")))
        if op == "configuration":
            return device.configuration()
        if op == "schema":
            return device.schema()
        if op == "set":
            return device.set(str(req.get("key")), req.get("value"))
        if op == "call":
            return device.call(str(req.get("slot")), *(req.get("args") or []))
        if op == "connect":
            device.connect_input(str(req.get("input")), str(req.get("endpoint")))
            return True
        raise ProtocolError(f"unknown operation {op!r}")  # pragma: no cover


def _describe(info: Mapping) -> str:
    """A lease holder for messages: ``topology 'x' (supervisor pid 12 on host h)``."""
    if not info:
        return "an unnamed run"
    return (
        f"topology {info.get('topology', '?')!r} (supervisor pid {info.get('pid', '?')} on "
        f"{info.get('host', '?')})"
    )
