"""``FeedbackController``: drive the sample motor to the position with the highest hit rate.

The hit rate comes in on the data plane: the device's input ``hits`` receives the output of a
:class:`~pulsetrain.devices.analysis.HitFinder` (per-pulse hit flags of every train, with the
train's ID and timestamp).  The motor is driven on the control plane, exactly as a Karabo macro
does it: set ``targetPosition``, call ``move``, wait until the motor's state is ``ON`` again.
The decisions are made by the pure strategy :class:`pulsetrain.feedback.HitRateOptimizer`
(scan, then track); this device is its driver.

Why an input channel rather than polling the hit finder's ``hitRate`` property: a position may
only be judged from trains recorded after the motor settled there, so the controller needs each
train's hit counts together with its timestamp and train ID; a rolling-rate property mixes trains
from before and after a move and has no train ID.  The data plane also delivers every train
without polling.
"""

from __future__ import annotations

import collections
import queue
import threading
import time
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np

from pulsetrain.errors import ConfigurationError, DeviceError, PropertyError
from pulsetrain.feedback import Decision, FeedbackSettings, HitRateOptimizer, MoveRequest, Phase
from pulsetrain.runtime.device import Device, Property, State, slot

__all__ = ["FeedbackController"]

#: Device properties that map one-to-one onto :class:`FeedbackSettings` fields.
_SETTINGS = (
    "scan_min",
    "scan_max",
    "scan_step",
    "scan_direction",
    "settle_trains",
    "min_measure_trains",
    "measure_trains",
    "min_hit_rate",
    "limit_low",
    "limit_high",
    "max_step",
    "max_moves_per_minute",
    "dither_step",
    "dither_interval",
    "dither_gain",
    "track_window_trains",
    "collapse_fraction",
    "refine",
)


class _MoveAborted(Exception):
    pass


class FeedbackController(Device):
    """Find and hold the sample position that maximises the hit rate (scan, then track).

    Every decision is logged (with the device ID) and published: ``lastDecision`` and the
    recent ``decisionLog``.  Slots: ``start_feedback`` (scan from the current position),
    ``stop_feedback``, ``manual_override(position)`` (go there and hold, no automatic moves) and ``resume``
    (track from the current position).
    """

    inputs: ClassVar[dict] = {"hits": {}}

    enabled = Property(bool, True, description="allow automatic moves (False stops the feedback)")
    autostart = Property(
        bool, False, access="init", description="start scanning as soon as the motor answers"
    )
    motor_device = Property(str, "", access="init", description="device ID of the sample motor")
    hit_device = Property(
        str,
        "",
        access="init",
        description="device ID of the hit finder whose output to read if the "
        "input is not connected by the topology",
    )
    hit_source = Property(
        str, "SPB_DET_AGIPD1M-1/HITS", description="source holding hits.isHit in the input trains"
    )
    scan_min = Property(float, -5.0, unit="mm", description="lower end of the scan")
    scan_max = Property(float, 5.0, unit="mm", description="upper end of the scan")
    scan_step = Property(float, 0.5, unit="mm", minimum=0.001, description="scan grid step")
    scan_direction = Property(
        str, "up", options=("up", "down"), description="direction of the first sweep"
    )
    settle_trains = Property(
        int, 2, minimum=0, maximum=1000, description="trains skipped after the motor is ON"
    )
    min_measure_trains = Property(
        int,
        2,
        minimum=1,
        maximum=10000,
        description="trains after which a hitless scan point is done",
    )
    measure_trains = Property(
        int, 5, minimum=1, maximum=10000, description="trains measured per scan point"
    )
    min_hit_rate = Property(
        float, 0.02, minimum=0.0, maximum=1.0, description="rates below this count as no sample"
    )
    limit_low = Property(
        float, -10.0, unit="mm", description="lowest position the feedback may command"
    )
    limit_high = Property(
        float, 10.0, unit="mm", description="highest position the feedback may command"
    )
    max_step = Property(float, 1.0, unit="mm", minimum=0.001, description="largest single move")
    max_moves_per_minute = Property(
        float, 120.0, minimum=0.1, maximum=6000.0, description="rate limit of move commands"
    )
    dither_step = Property(
        float,
        0.2,
        unit="mm",
        minimum=0.0,
        description="tracking: distance of the probes either side",
    )
    dither_interval = Property(
        float, 5.0, unit="s", minimum=0.1, description="tracking: time between dither cycles"
    )
    dither_gain = Property(
        float,
        0.5,
        minimum=0.01,
        maximum=1.0,
        description="tracking: fraction of the estimated offset moved",
    )
    track_window_trains = Property(
        int, 20, minimum=1, maximum=100000, description="tracking: trains in the held-position rate"
    )
    collapse_fraction = Property(
        float,
        0.3,
        minimum=0.0,
        maximum=0.99,
        description="rescan below this fraction of the reference rate",
    )
    refine = Property(bool, True, description="refine a bracketed peak once before tracking")
    move_timeout = Property(
        float,
        60.0,
        unit="s",
        minimum=0.1,
        description="longest wait for the motor to reach a target",
    )
    position_tolerance = Property(
        float,
        0.005,
        unit="mm",
        minimum=0.0,
        description="how close to the target counts as arrived",
    )
    decision_log_length = Property(int, 50, minimum=1, maximum=10000, access="init")

    phase = Property(
        str, Phase.IDLE.value, access="readonly", options=tuple(p.value for p in Phase)
    )
    bestPosition = Property(float, 0.0, unit="mm", access="readonly")
    bestRate = Property(float, 0.0, access="readonly", description="hit rate at bestPosition")
    currentRate = Property(
        float,
        0.0,
        access="readonly",
        description="hit rate at the current position since it settled",
    )
    motorPosition = Property(
        float, 0.0, unit="mm", access="readonly", description="where the motor last settled"
    )
    commandedPosition = Property(
        float, 0.0, unit="mm", access="readonly", description="target of the last move command"
    )
    moves = Property(int, 0, access="readonly", description="move commands given")
    trainsUsed = Property(int, 0, access="readonly", description="trains used in measurements")
    trainsIgnored = Property(
        int,
        0,
        access="readonly",
        description="trains ignored (moving, or before the motor settled)",
    )
    lastDecision = Property(str, "", access="readonly")
    decisionLog = Property(
        list, [], access="readonly", description="recent decisions, oldest first"
    )
    scanPositions = Property(
        np.ndarray,
        np.zeros(0),
        access="readonly",
        unit="mm",
        description="positions measured by the last scan",
    )
    scanRates = Property(
        np.ndarray,
        np.zeros(0),
        access="readonly",
        description="hit rates measured by the last scan",
    )

    def initialize(self) -> None:
        self.ctrl = HitRateOptimizer(self._settings(), on_decision=self._on_decision)
        self._log: collections.deque[str] = collections.deque(maxlen=self.decision_log_length)
        self._moves: queue.SimpleQueue = queue.SimpleQueue()
        self._abort = threading.Event()
        self._busy = False
        self._started_once = False
        self._last_connect_try = 0.0
        self._motor = self.remote(self.motor_device) if self.motor_device else None
        threading.Thread(
            target=self._motion_loop, name=f"motion:{self.device_id}", daemon=True
        ).start()
        self.every(0.05, self._tick)
        self.set_state(State.ON, "idle")

    # ------------------------------------------------------------ settings
    def _settings(self, **override: Any) -> FeedbackSettings:
        values = {k: getattr(self, k) for k in _SETTINGS}
        values.update(override)
        return FeedbackSettings(**values)

    def on_set(self, key: str, value: Any) -> None:
        if key in _SETTINGS:
            try:
                settings = self._settings()
            except ConfigurationError as exc:
                raise PropertyError(str(exc)) from None
            self.ctrl.update_settings(self._with_motor_limits(settings))
        elif key == "enabled" and not value and self.ctrl.phase is not Phase.IDLE:
            self._stop("disabled")

    def _with_motor_limits(self, settings: FeedbackSettings) -> FeedbackSettings:
        """Narrow the limits to the motor's own software limits, if it has them."""
        lo, hi = getattr(self, "_motor_limits", (None, None))
        if lo is None:
            return settings
        import dataclasses

        new_lo, new_hi = max(settings.limit_low, lo), min(settings.limit_high, hi)
        try:
            return dataclasses.replace(settings, limit_low=new_lo, limit_high=new_hi)
        except ConfigurationError as exc:
            raise DeviceError(
                f"limits [{settings.limit_low}, {settings.limit_high}] and the "
                f"motor's [{lo}, {hi}] leave no range: {exc}"
            ) from None

    # ------------------------------------------------------------ slots
    @slot(allowed_states=("ON", "MONITORING"), description="Scan from the current position")
    def start_feedback(self) -> str:
        """Start (or restart) the feedback: scan, then track.  Refused while disabled."""
        if not self.enabled:
            return self._refused("start", "feedback is disabled (enabled = False)")
        position = self._read_motor()
        self.ctrl.update_settings(self._with_motor_limits(self._settings()))
        self._abort_move()
        self.ctrl.start(position, time.time())
        self._started_once = True
        self._publish()
        return f"scanning from {position:.4f} mm"

    @slot(description="Stop the feedback (no more moves)")
    def stop_feedback(self) -> None:
        """Stop: no further automatic moves; a move in progress is stopped."""
        self._stop("stop requested")

    @slot(
        allowed_states=("ON", "MONITORING"),
        description="Go to a position and hold it (no automatic moves until resume)",
    )
    def manual_override(self, position: float) -> str:
        """Move the sample to ``position`` (mm) and hold it; the feedback makes no moves.

        Returns a short reply; a position outside the limits is refused (the reply says why,
        the refusal is logged, and the device stays in its state: a bad request is not a
        device failure).
        """
        position = float(position)
        if self.ctrl.position is None:
            self.ctrl.position = self._read_motor()
        self.ctrl.update_settings(self._with_motor_limits(self._settings()))
        try:
            self.ctrl.manual(position, time.time())
        except ConfigurationError as exc:
            return self._refused("manual override", str(exc))
        self._abort_move()
        self._started_once = True
        self._publish()
        return f"moving to {position:.4f} mm and holding"

    @slot(allowed_states=("ON", "MONITORING"), description="Track from the current position")
    def resume(self) -> str:
        """Leave manual mode: track the hit rate from the current position."""
        if not self.enabled:
            return self._refused("resume", "feedback is disabled (enabled = False)")
        position = self._read_motor()
        self.ctrl.update_settings(self._with_motor_limits(self._settings()))
        self._abort_move()
        self.ctrl.resume(position, time.time())
        self._publish()
        return f"tracking from {position:.4f} mm"

    def _refused(self, what: str, why: str) -> str:
        """Refuse a request without failing the device (a bad request is not a fault)."""
        self.log.warning("%s refused: %s", what, why)
        self.update(lastDecision=f"refused {what}: {why}")
        return f"refused: {why}"

    def _stop(self, why: str) -> None:
        self._abort_move()
        self.ctrl.stop(time.time())
        self.log.info("feedback stopped: %s", why)
        self._publish()

    # ------------------------------------------------------------ data
    def on_data(self, data: dict, meta: dict, channel: str) -> None:
        src = (
            self.hit_source
            if self.hit_source in data
            else next((s for s, v in data.items() if "hits.isHit" in v), None)
        )
        if src is None:
            return
        props = data[src]
        flags = np.asarray(props["hits.isHit"], dtype=bool)
        n_hits = int(props.get("hits.nHits", np.count_nonzero(flags)))
        n_pulses = int(props.get("hits.nPulses", flags.size))
        m = meta.get(src, {})
        ts = float(m.get("timestamp", time.time()))
        tid = int(m.get("timestamp.tid", 0))
        self.ctrl.add_train(tid, ts, n_hits, n_pulses)
        self._tick()

    # ------------------------------------------------------------ the loop
    def _tick(self) -> None:
        now = time.time()
        hits = self.input_channels.get("hits")
        if (
            hits is not None
            and not hits.endpoints
            and self.hit_device
            and now - self._last_connect_try > 1.0
        ):
            self._last_connect_try = now
            self._connect_hits()
        if self.autostart and not self._started_once and self.enabled:
            self._started_once = True
            try:
                self.start_feedback()
            except Exception as exc:  # noqa: BLE001 - the motor may not be up yet: retry
                self._started_once = False
                self.log.debug("autostart: %s", exc)
        if not self._busy and self.enabled and self.ctrl.phase is not Phase.IDLE:
            req = self.ctrl.next_move(now)
            if req is not None:
                self._busy = True
                self._abort.clear()
                self._moves.put(req)
                self.update(commandedPosition=req.target)
        self._publish()

    def _connect_hits(self) -> None:
        try:
            endpoints = self.remote(self.hit_device).get("channels.outputs.output.endpoints")
        except Exception as exc:  # noqa: BLE001 - not up yet: the next tick retries
            self.log.debug("hit device %s not reachable yet: %s", self.hit_device, exc)
            return
        tcp = [e for e in endpoints if e.startswith("tcp://")] or list(endpoints)
        if tcp:
            self.connect_input("hits", tcp[0])
            self.log.info("reading hits from %s at %s", self.hit_device, tcp[0])

    def _publish(self) -> None:
        c = self.ctrl
        values: dict[str, Any] = {
            "phase": c.phase.value,
            "bestRate": float(c.best_rate),
            "currentRate": float(c.current_rate),
            "moves": c.moves,
            "trainsUsed": c.trains_used,
            "trainsIgnored": c.trains_ignored,
        }
        if c.best_position is not None:
            values["bestPosition"] = float(c.best_position)
        if c.position is not None:
            values["motorPosition"] = float(c.position)
        if len(c.scan_points) != len(self.scanPositions):
            xs = sorted(c.scan_points)
            values["scanPositions"] = np.array(xs, dtype=np.float64)
            values["scanRates"] = np.array([c.scan_points[x][0] for x in xs], dtype=np.float64)
        changed = {
            k: v for k, v in values.items() if isinstance(v, np.ndarray) or getattr(self, k) != v
        }
        if changed:
            self.update(**changed)
        state = State.ON if c.phase is Phase.IDLE else State.MONITORING
        if self.state not in (state.value, State.ERROR.value):
            self.set_state(state, f"feedback {c.phase.value.lower()}")

    def _on_decision(self, d: Decision) -> None:
        stamp = time.strftime("%H:%M:%S", time.localtime(d.time))
        text = f"{stamp} {d}"
        self.log.info("decision: %s", d)
        self._log.append(text)
        self.update(lastDecision=text, decisionLog=list(self._log))

    # ------------------------------------------------------------ the motor (control plane)
    def _read_motor(self) -> float:
        if self._motor is None:
            raise DeviceError(f"{self.device_id}: no motor_device configured")
        position = float(self._motor.get("actualPosition"))
        try:
            self._motor_limits = (
                float(self._motor.get("swLimitLow")),
                float(self._motor.get("swLimitHigh")),
            )
        except Exception:  # noqa: BLE001 - a motor without software limits
            self._motor_limits = (None, None)
        return position

    def _abort_move(self) -> None:
        if self._busy:
            self._abort.set()

    def _motion_loop(self) -> None:
        while not self.stopping:
            try:
                req = self._moves.get(timeout=0.2)
            except queue.Empty:
                continue
            job = self._run_move(req)
            try:
                self.run_in_device(job)
            except Exception:
                if not self.stopping:
                    self.log.exception("could not report the end of a move")

    def _run_move(self, req: MoveRequest) -> Callable[[], None]:
        """Make the move; return what the device thread must do about its outcome."""
        try:
            position, settled_at = self._move(req)
        except _MoveAborted as exc:
            position, settled_at = exc.args
        except Exception as exc:  # noqa: BLE001 - any failure of a move stops the feedback
            return lambda exc=exc: self._move_failed(req, exc)
        return lambda: self._settled(position, settled_at)

    def _move(self, req: MoveRequest) -> tuple[float, float]:
        """Set targetPosition, call move, wait for ON (runs on the motion thread)."""
        motor = self._motor
        self.log.info("move to %.4f mm (%s)", req.target, req.reason)
        motor.set("targetPosition", req.target)
        motor.call("move")
        deadline = time.monotonic() + self.move_timeout
        seen_moving = False
        while True:
            state = motor.get("state")
            position = float(motor.get("actualPosition"))
            now = time.time()
            if state == State.MOVING.value:
                seen_moving = True
            if self._abort.is_set():
                if state == State.MOVING.value:
                    motor.call("stop")
                    motor.wait_for("state", lambda s: s != State.MOVING.value, timeout=10)
                    position, now = float(motor.get("actualPosition")), time.time()
                raise _MoveAborted(position, now)
            if state == State.ON.value and (
                seen_moving or abs(position - req.target) <= self.position_tolerance
            ):
                if abs(position - req.target) > max(self.position_tolerance, 1e-6):
                    raise DeviceError(
                        f"motor {self.motor_device} stopped at {position:.4f} mm, "
                        f"not at the target {req.target:.4f} mm"
                    )
                return position, now
            if state in (State.ERROR.value, State.UNKNOWN.value):
                raise DeviceError(f"motor {self.motor_device} is in state {state}")
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"motor {self.motor_device} did not reach {req.target:.4f} mm within "
                    f"{self.move_timeout} s (at {position:.4f} mm, state {state})"
                )
            time.sleep(0.02)

    def _settled(self, position: float, settled_at: float) -> None:
        self._busy = False
        self.ctrl.settled(position, settled_at)
        self._tick()

    def _move_failed(self, req: MoveRequest, exc: Exception) -> None:
        self._busy = False
        message = f"{type(exc).__name__}: {exc}"
        self.log.error("move to %.4f mm failed: %s", req.target, message)
        self.ctrl.move_failed(message, time.time())
        self._publish()
        self.update(status=f"move failed: {message}")
