"""The GUI's link to a running topology: output taps, property polling and guarded writes.

One :class:`GuiBackend` serves every page and browser of a GUI process:

* :class:`OutputTap` reads a pipeline output through an :class:`~pulsetrain.runtime.channels.InputChannel`
  with the ``drop`` policy and keeps only the latest train, so a slow GUI or browser never slows
  the pipeline (the output drops what the GUI is not ready for, and counts it).
* A poller thread fetches every device's configuration (properties, state, channel counters)
  through the control plane every ``poll_interval`` seconds, and keeps the recent history of
  every numeric value for trends.
* :meth:`GuiBackend.set_property` and :meth:`GuiBackend.call_slot` change devices.  They are
  refused in a read-only GUI, and otherwise carry the control token the *page user* entered, so
  the device server itself checks it.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import hmac
import itertools
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from pulsetrain.errors import AuthenticationError, ChannelError, DeviceError, PulsetrainError
from pulsetrain.runtime.channels import EndOfStream, InputChannel
from pulsetrain.runtime.control import Client, TopologyClient

__all__ = ["GuiBackend", "OutputTap", "TapFrame", "flatten_numeric"]

log = logging.getLogger(__name__)

_tap_ids = itertools.count()


@dataclasses.dataclass(frozen=True)
class TapFrame:
    """The latest train an :class:`OutputTap` received."""

    seq: int  #: increases by one for every train received
    data: dict
    meta: dict
    arrival: float  #: time.time() when it arrived
    train_id: int | None
    latency: float | None  #: arrival − the train's timestamp (s)


def lower_priority(nice: int) -> None:
    """Lower the calling thread's CPU priority by ``nice`` (Linux: niceness is per thread).

    The GUI's threads (web server, taps, poller) use it so that, on a machine the pipeline
    fills, the pipeline's servers get the CPU first and the GUI what is left.  Nothing happens
    for ``nice <= 0`` or where threads cannot be reniced.
    """
    if nice <= 0 or not hasattr(os, "setpriority"):
        return
    try:
        tid = threading.get_native_id()
        current = os.getpriority(os.PRIO_PROCESS, tid)
        os.setpriority(os.PRIO_PROCESS, tid, min(19, current + nice))
    except OSError as exc:  # pragma: no cover - e.g. a sandbox refusing it
        log.debug("thread priority unchanged: %s", exc)


class OutputTap:
    """Keep the latest train of one output (``drop`` policy: never slows the pipeline).

    Parameters
    ----------
    output : str
        ``'DEVICE_ID:channel'``.
    endpoint : str
        The output's tcp endpoint.
    """

    def __init__(self, output: str, endpoint: str, nice: int = 0):
        self.output = output
        self.nice = nice
        self.endpoint = endpoint
        self.channel = InputChannel(
            f"gui-{os.getpid()}-{next(_tap_ids)}:{output}", on_slowness="drop", window=2
        )
        self.opened = time.time()  #: when the tap connected (time.time())
        self.channel.connect(endpoint)
        self.latest: TapFrame | None = None
        self.recent: collections.deque[TapFrame] = collections.deque(maxlen=64)
        self.received = 0
        self.eos = 0
        self._latencies: collections.deque = collections.deque(maxlen=200)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"gui-tap:{output}", daemon=True)
        self._thread.start()

    @property
    def missed(self) -> int:
        """Trains the output dropped for this tap (the GUI was not ready)."""
        return self.channel.missed

    def latency_percentiles(self) -> dict[str, float]:
        """p50/p99 of arrival − train timestamp over the last 200 trains (seconds)."""
        if not self._latencies:
            return {}
        arr = np.fromiter(self._latencies, dtype=float)
        return {
            "p50": float(np.percentile(arr, 50)),
            "p99": float(np.percentile(arr, 99)),
            "n": len(arr),
        }

    def since(self, seq: int) -> list[TapFrame]:
        """The trains received after ``seq`` that are still kept (the last 64), oldest first."""
        return [f for f in list(self.recent) if f.seq > seq]

    def wait(self, seq: int = 0, timeout: float = 10.0) -> TapFrame:
        """Wait for a train with ``seq`` greater than the given one (for scripts and tests)."""
        deadline = time.monotonic() + timeout
        while True:
            frame = self.latest
            if frame is not None and frame.seq > seq:
                return frame
            if time.monotonic() > deadline:
                raise TimeoutError(f"no train from {self.output} within {timeout} s")
            time.sleep(0.01)

    def _run(self) -> None:
        lower_priority(self.nice)
        seq = 0
        while not self._stop.is_set():
            try:
                item = self.channel.get(timeout=0.5)
            except TimeoutError:
                continue
            except ChannelError:
                return
            if isinstance(item, EndOfStream):
                self.eos += 1
                continue
            now = time.time()
            tid = ts = None
            for m in item.meta.values():
                if isinstance(m, dict):
                    tid = m.get("timestamp.tid", tid)
                    ts = m.get("timestamp", ts)
                    if tid is not None and ts is not None:
                        break
            latency = now - float(ts) if ts is not None else None
            if latency is not None:
                self._latencies.append(latency)
            seq += 1
            if seq == 1:
                log.debug(
                    "first train from %s %.3f s after tapping (train %s, %s s after its timestamp)",
                    self.output,
                    now - self.opened,
                    tid,
                    "?" if latency is None else f"{latency:.3f}",
                )
            self.received = seq
            self.latest = TapFrame(
                seq, item.data, item.meta, now, int(tid) if tid is not None else None, latency
            )
            self.recent.append(self.latest)

    def close(self) -> None:
        """Stop reading and close the channel."""
        self._stop.set()
        self._thread.join(timeout=2)
        self.channel.close()


def flatten_numeric(value: Any, prefix: str = "") -> Iterator[tuple[str, float]]:
    """Yield ``(dotted.key, number)`` for every numeric leaf of nested dicts (not lists)."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield from flatten_numeric(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(value, (bool, np.bool_, int, float, np.integer, np.floating)):
        yield prefix, float(value)


def lookup(config: dict | None, key: str) -> Any:
    """A value of a configuration by dotted key (``'outputLatency.p50'``); None if absent."""
    if config is None:
        return None
    if key in config:
        return config[key]
    value: Any = config
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


class GuiBackend:
    """Everything the pages of one GUI process share.

    Parameters
    ----------
    topology : TopologyClient
        The running topology (it holds the control token, read from the topology's token file).
    read_only : bool
        Refuse every change to a device (the pages also disable their editors).
    poll_interval : float
        Seconds between two polls of the device properties.
    history : float
        Seconds of property history kept for trends.
    devices : list of str, optional
        Devices to poll (default: every device of the topology).
    nice : int
        Lower the CPU priority of the GUI's threads by this much (see :func:`lower_priority`).
    """

    def __init__(
        self,
        topology: TopologyClient,
        *,
        read_only: bool = False,
        poll_interval: float = 0.5,
        history: float = 900.0,
        devices: list[str] | None = None,
        nice: int = 0,
    ):
        self.topology = topology
        self.read_only = read_only
        self.poll_interval = float(poll_interval)
        self.history_seconds = float(history)
        self.nice = int(nice)
        self.device_ids = list(devices) if devices is not None else sorted(topology.devices())
        self.taps: dict[str, OutputTap] = {}
        self.snapshots: dict[str, dict[str, Any]] = {}
        self.snapshot_times: dict[str, float] = {}
        self.errors: dict[str, str] = {}
        self.polls = 0
        self._state_read = 0.0
        self._schemas: dict[str, dict] = {}
        maxlen = max(10, int(self.history_seconds / self.poll_interval) + 1)
        self._history: dict[tuple[str, str], collections.deque] = collections.defaultdict(
            lambda: collections.deque(maxlen=maxlen)
        )
        self._poll_clients = {
            name: Client(s["control"], token=topology.token, timeout=2.0)
            for name, s in topology.state["servers"].items()
        }
        self._write_clients: dict[tuple[str, str], Client] = {}
        self._lock = threading.Lock()
        self._pool = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="gui-write")
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None

    # ------------------------------------------------------------ lifecycle
    def start(self) -> GuiBackend:
        """Start polling."""
        self._poll_once()
        self._poller = threading.Thread(target=self._poll_loop, name="gui-poll", daemon=True)
        self._poller.start()
        return self

    def stop(self) -> None:
        """Stop polling, close the taps and the clients."""
        self._stop.set()
        if self._poller is not None:
            self._poller.join(timeout=5)
        for tap in list(self.taps.values()):
            tap.close()
        self._pool.shutdown(wait=False, cancel_futures=True)
        for c in [*self._poll_clients.values(), *self._write_clients.values()]:
            c.close()

    # ------------------------------------------------------------ topology
    def devices(self) -> dict[str, dict]:
        """Device ID → ``{'class', 'server'}`` of the running topology."""
        return self.topology.devices()

    def outputs(self) -> dict[str, str]:
        """Output ``DEVICE:channel`` → tcp endpoint."""
        return dict(self.topology.state.get("outputs", {}))

    def tap(self, output: str) -> OutputTap:
        """The tap on ``output``, opened on first use.

        Raises
        ------
        DeviceError
            If the topology has no such output.
        """
        with self._lock:
            tap = self.taps.get(output)
            if tap is None:
                endpoint = self.outputs().get(output)
                if endpoint is None:
                    raise DeviceError(f"the running topology has no output {output!r}")
                tap = self.taps[output] = OutputTap(output, endpoint, self.nice)
                log.info("tapping %s at %s", output, endpoint)
            return tap

    # ------------------------------------------------------------ reading
    def snapshot(self, device_id: str) -> dict[str, Any] | None:
        """The last polled configuration of a device (None if never reached)."""
        return self.snapshots.get(device_id)

    def value(self, device_id: str, key: str) -> Any:
        """A property from the last poll, by dotted key; None if unknown."""
        return lookup(self.snapshots.get(device_id), key)

    def history(
        self, device_id: str, key: str, since: float = 0.0
    ) -> tuple[np.ndarray, np.ndarray]:
        """Times (unix s) and values of a numeric property polled after ``since``."""
        points = [p for p in list(self._history.get((device_id, key), ())) if p[0] > since]
        if not points:
            return np.empty(0), np.empty(0)
        arr = np.asarray(points, dtype=float)
        return arr[:, 0], arr[:, 1]

    def schema(self, device_id: str) -> dict | None:
        """A device's schema (properties, slots), fetched once; None if unreachable."""
        if device_id not in self._schemas:
            try:
                server = self.devices()[device_id]["server"]
                self._schemas[device_id] = self._poll_clients[server].schema(device_id)
            except (PulsetrainError, TimeoutError, KeyError) as exc:
                log.debug("schema of %s: %s", device_id, exc)
                return None
        return self._schemas[device_id]

    def restarts(self, device_id: str) -> tuple[int, str | None]:
        """How often the supervisor restarted the server of ``device_id``, and the last cause."""
        server = self.devices().get(device_id, {}).get("server")
        info = self.topology.state["servers"].get(server, {})
        last = info.get("last_restart") or {}
        return int(info.get("restarts", 0)), last.get("cause")

    def _poll_once(self) -> None:
        now = time.time()
        if now - self._state_read >= 2.0:  # restart counts live in the run's state file
            self._state_read = now
            try:
                self.topology.refresh()
            except (OSError, ValueError) as exc:
                log.debug("state file not re-read: %s", exc)
        for device_id in self.device_ids:
            info = self.devices().get(device_id)
            if info is None:
                continue
            client = self._poll_clients.get(info["server"])
            try:
                config = client.get(device_id)
            except (PulsetrainError, TimeoutError) as exc:
                self.errors[device_id] = str(exc)
                old = self.snapshots.get(device_id)
                if old is not None:
                    self.snapshots[device_id] = {**old, "state": "UNREACHABLE", "status": str(exc)}
                continue
            self.errors.pop(device_id, None)
            self.snapshots[device_id] = config
            self.snapshot_times[device_id] = now
            for key, number in flatten_numeric(config):
                self._history[(device_id, key)].append((now, number))
        self.polls += 1

    def _poll_loop(self) -> None:
        lower_priority(self.nice)
        next_t = time.monotonic()
        while not self._stop.is_set():
            next_t += self.poll_interval
            delay = next_t - time.monotonic()
            if delay < 0:
                next_t = time.monotonic()
            elif self._stop.wait(delay):
                return
            try:
                self._poll_once()
            except Exception:  # never let the poller die
                log.exception("polling the devices failed")

    # ------------------------------------------------------------ writing
    def check_token(self, token: str) -> bool:
        """Whether ``token`` is the topology's control token (constant-time comparison)."""
        return bool(token) and hmac.compare_digest(token.encode(), self.topology.token.encode())

    def _writer(self, device_id: str, token: str | None) -> Client:
        if self.read_only:
            raise AuthenticationError("refused: this GUI is read-only (started with --read-only)")
        if not token:
            raise AuthenticationError("refused: enter the control token to change devices")
        try:
            server = self.devices()[device_id]
        except KeyError:
            raise DeviceError(f"no device {device_id!r} in the running topology") from None
        endpoint = self.topology.state["servers"][server["server"]]["control"]
        with self._lock:
            client = self._write_clients.get((endpoint, token))
            if client is None:
                client = Client(endpoint, token=token, timeout=10.0)
                self._write_clients[(endpoint, token)] = client
            return client

    def set_property(self, device_id: str, key: str, value: Any, token: str | None) -> Any:
        """Set a property through the control plane with the page user's token.

        Raises
        ------
        AuthenticationError
            Read-only GUI, no token, or the device server refused the token.
        PropertyError
            The device refused the value.
        """
        value = self._writer(device_id, token).set(device_id, key, value)
        log.info("set %s.%s = %r", device_id, key, value)
        return value

    def call_slot(self, device_id: str, slot: str, token: str | None) -> Any:
        """Call a slot through the control plane with the page user's token (see set_property)."""
        result = self._writer(device_id, token).call(device_id, slot)
        log.info("called %s.%s()", device_id, slot)
        return result

    def fetch(self, device_id: str, key: str) -> Any:
        """One property read now through the control plane (e.g. a large read-only map that
        the poll leaves out); blocking: call through :meth:`submit`."""
        server = self.devices()[device_id]["server"]
        endpoint = self.topology.state["servers"][server]["control"]
        with Client(endpoint, token=self.topology.token, timeout=10.0) as client:
            return client.get(device_id, key)

    def submit(self, fn: Callable[..., Any], *args: Any) -> concurrent.futures.Future:
        """Run a (blocking) control request off the web server's thread."""
        return self._pool.submit(fn, *args)

    # ------------------------------------------------------------ status
    def status(self) -> dict[str, Any]:
        """A summary for ``/status.json``: taps, polls, device states."""
        return {
            "topology": self.topology.state.get("topology"),
            "read_only": self.read_only,
            "polls": self.polls,
            "taps": {
                name: {
                    "received": tap.received,
                    "missed": tap.missed,
                    "train_id": tap.latest.train_id if tap.latest else None,
                    "latency": tap.latency_percentiles(),
                }
                for name, tap in list(self.taps.items())
            },
            "devices": {
                d: {"state": (self.snapshots.get(d) or {}).get("state", "UNKNOWN")}
                for d in self.device_ids
            },
        }
