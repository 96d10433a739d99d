"""The hit-rate feedback strategy: scan for the sample, then track it.

:class:`HitRateOptimizer` is a pure state machine.  It never sleeps, reads a clock or talks to a
motor: a *driver* (the :class:`~pulsetrain.devices.feedback.FeedbackController` device, or
:func:`pulsetrain.feedback.simulation.run_simulated_feedback` in simulated time) feeds it

* per-train hit counts, ``add_train(train_id, timestamp, n_hits, n_pulses)``;
* motor events, ``settled(position, now)`` once the motor is at rest (state ``ON``) after a
  move it asked for, or ``move_failed(reason, now)``;

and asks it ``next_move(now)`` for the next motor target.  Times are seconds on the clock of the
train timestamps (wall time live, simulated time in simulation).

Judging a position
    After the motor settles at ``now``, only trains whose timestamp is later than ``now`` count,
    and of those the first ``settle_trains`` are skipped too (they may have been taken while the
    detector's view of the motor was still catching up).  A measurement then needs
    ``min_measure_trains`` trains; if they hold no hit at all it ends there (a position without
    sample is recognised quickly), otherwise it continues to ``measure_trains`` trains.

Scanning (phase ``SCANNING``)
    A grid from ``scan_min`` to ``scan_max`` (clipped to the limits) in steps of ``scan_step``.
    The sweep starts at the grid point nearest the motor and goes in ``scan_direction`` first.
    The scan ends as soon as the best point has a rate of at least ``min_hit_rate`` and both
    grid neighbours are measured (the peak is bracketed).  When the sweep has passed the best
    point and the rate has fallen below half of it, the sweep turns round to measure the best
    point's other neighbour; at the end of the range it continues from the start point in the
    other direction.  A bracketed peak is refined once: the vertex of the parabola through the
    logarithms of the three rates (exact for a Gaussian profile), measured with twice the
    trains, replaces the best point if it is better.  A scan that finds nothing starts over.

Tracking (phase ``TRACKING``)
    The motor holds the best position; the rate there is the mean over the last
    ``track_window_trains`` trains.  Every ``dither_interval`` seconds the controller measures
    ``dither_step`` to both sides (twice ``measure_trains`` each) and moves the best position
    ``dither_gain`` of the way to the vertex of the parabola through the three log rates
    (towards the higher side if they show no maximum), by at most ``dither_step``: a slowly
    drifting sample is followed.  If the held rate falls below
    ``collapse_fraction`` of the reference rate (the best rate of the last dither) over a full
    window, the controller scans again.

Safety
    No target outside ``[limit_low, limit_high]``; no single move longer than ``max_step`` (longer
    displacements are made of several moves, each waiting for the motor to settle); at most
    ``max_moves_per_minute`` move commands per minute (a minimum interval between commands).

Manual (phase ``MANUAL``)
    ``manual(position)`` moves to an operator's position (limits apply, ``max_step`` and the rate
    limit do not) and holds there with no automatic move until ``resume`` (tracking from the
    current position) or ``start`` (a new scan).
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import logging
import math
from collections.abc import Callable

from pulsetrain.errors import ConfigurationError

__all__ = ["Decision", "FeedbackSettings", "HitRateOptimizer", "MoveRequest", "Phase"]

log = logging.getLogger(__name__)


class Phase(str, enum.Enum):
    """What the feedback is doing."""

    IDLE = "IDLE"
    SCANNING = "SCANNING"
    TRACKING = "TRACKING"
    MANUAL = "MANUAL"

    def __str__(self) -> str:
        return self.value


@dataclasses.dataclass(frozen=True)
class FeedbackSettings:
    """Parameters of the strategy (positions in mm, times in s).  See the module docs."""

    scan_min: float = -5.0
    scan_max: float = 5.0
    scan_step: float = 0.5
    scan_direction: str = "up"
    settle_trains: int = 2
    min_measure_trains: int = 2
    measure_trains: int = 5
    min_hit_rate: float = 0.02
    limit_low: float = -10.0
    limit_high: float = 10.0
    max_step: float = 1.0
    max_moves_per_minute: float = 120.0
    dither_step: float = 0.2
    dither_interval: float = 5.0
    dither_gain: float = 0.5
    track_window_trains: int = 20
    collapse_fraction: float = 0.3
    refine: bool = True

    def __post_init__(self) -> None:
        def need(ok: bool, what: str) -> None:
            if not ok:
                raise ConfigurationError(f"feedback settings: {what}")

        need(self.limit_low < self.limit_high, "limit_low must be below limit_high")
        need(self.scan_min < self.scan_max, "scan_min must be below scan_max")
        need(
            self.scan_min < self.limit_high and self.scan_max > self.limit_low,
            "the scan range lies outside the motor limits",
        )
        need(self.scan_step > 0, "scan_step must be > 0")
        need(self.scan_direction in ("up", "down"), "scan_direction must be 'up' or 'down'")
        need(self.settle_trains >= 0, "settle_trains must be >= 0")
        need(
            1 <= self.min_measure_trains <= self.measure_trains,
            "need 1 <= min_measure_trains <= measure_trains",
        )
        need(0 <= self.min_hit_rate <= 1, "min_hit_rate must be within [0, 1]")
        need(self.max_step > 0, "max_step must be > 0")
        need(self.max_moves_per_minute > 0, "max_moves_per_minute must be > 0")
        need(self.dither_step >= 0, "dither_step must be >= 0")
        need(self.dither_interval > 0, "dither_interval must be > 0")
        need(0 < self.dither_gain <= 1, "dither_gain must be within (0, 1]")
        need(self.track_window_trains >= 1, "track_window_trains must be >= 1")
        need(0 <= self.collapse_fraction < 1, "collapse_fraction must be within [0, 1)")

    def clip(self, position: float) -> float:
        """``position`` limited to ``[limit_low, limit_high]``."""
        return min(max(float(position), self.limit_low), self.limit_high)

    def grid(self) -> list[float]:
        """The scan positions, within the limits."""
        lo = max(self.scan_min, self.limit_low)
        hi = min(self.scan_max, self.limit_high)
        n = math.floor((hi - lo) / self.scan_step + 1e-9)
        return [round(lo + i * self.scan_step, 9) for i in range(n + 1)]


@dataclasses.dataclass(frozen=True)
class Decision:
    """One decision of the controller, for logs and displays."""

    time: float
    phase: str
    text: str
    target: float | None = None

    def __str__(self) -> str:
        return f"[{self.phase}] {self.text}"


@dataclasses.dataclass(frozen=True)
class MoveRequest:
    """A move the driver must make: set the target, call ``move``, wait for state ``ON``."""

    target: float
    reason: str
    final: bool  #: False for an intermediate waypoint of a move longer than ``max_step``


@dataclasses.dataclass
class _Measurement:
    """Hit counts at one position, from the trains after the motor settled there."""

    position: float
    purpose: str
    settled_at: float
    skip: int
    min_trains: int
    trains: int
    hits: int = 0
    pulses: int = 0
    n: int = 0
    window: collections.deque | None = None  # rolling (hits, pulses), tracking only

    def add(self, n_hits: int, n_pulses: int) -> None:
        self.n += 1
        self.hits += n_hits
        self.pulses += n_pulses
        if self.window is not None:
            self.window.append((n_hits, n_pulses))

    @property
    def rate(self) -> float:
        return self.hits / self.pulses if self.pulses else 0.0

    def window_rate(self) -> tuple[float, int]:
        if not self.window:
            return 0.0, 0
        h = sum(w[0] for w in self.window)
        p = sum(w[1] for w in self.window)
        return (h / p if p else 0.0), p

    @property
    def done(self) -> bool:
        if self.n >= self.trains:
            return True
        return self.n >= self.min_trains and self.hits == 0


def _stderr(rate: float, pulses: int) -> float:
    """Standard error of a hit rate from ``pulses`` pulses (never 0, for comparisons)."""
    if pulses <= 0:
        return 1.0
    p = min(max(rate, 0.5 / pulses), 1 - 0.5 / pulses)
    return math.sqrt(p * (1 - p) / pulses)


class HitRateOptimizer:
    """Find and hold the motor position with the highest hit rate (see the module docs).

    Parameters
    ----------
    settings : FeedbackSettings
        Strategy parameters.
    on_decision : callable, optional
        Called with every :class:`Decision` (the device logs and publishes them).
    history : int
        Decisions kept in :attr:`decisions`.
    """

    def __init__(
        self,
        settings: FeedbackSettings | None = None,
        *,
        on_decision: Callable[[Decision], None] | None = None,
        history: int = 100,
    ) -> None:
        self.settings = settings or FeedbackSettings()
        self.on_decision = on_decision
        self.decisions: collections.deque[Decision] = collections.deque(maxlen=history)
        self.phase = Phase.IDLE
        self.position: float | None = None  #: where the motor last settled
        self.best_position: float | None = None
        self.best_rate = 0.0
        self.moves = 0  #: move commands given
        self.trains_used = 0  #: trains that entered a measurement
        self.trains_ignored = 0  #: trains taken while moving or before the motor settled
        self.scan_points: dict[float, tuple[float, int]] = {}  #: position → (rate, pulses)
        self._path: list[float] = []
        self._purpose = ""
        self._reason = ""
        self._in_flight: MoveRequest | None = None
        self._last_move_at = -math.inf
        self._meas: _Measurement | None = None
        self._now = 0.0
        # scanning
        self._grid: list[float] = []
        self._results: dict[int, tuple[float, int]] = {}
        self._start_index = 0
        self._dir = 1
        self._index = 0
        self._reversed = False
        self._refine_target: float | None = None
        # tracking
        self._reference = 0.0
        self._last_probe = 0.0
        self._probe_dir = 1
        self._probes: dict[float, tuple[float, int]] = {}
        self._probe_queue: list[float] = []
        self._hold: _Measurement | None = None
        self._hold_rate: tuple[float, int] = (0.0, 0)

    # ------------------------------------------------------------------ public state
    @property
    def moving(self) -> bool:
        """A move was requested and has not settled yet."""
        return self._in_flight is not None

    @property
    def current_rate(self) -> float:
        """Hit rate measured at the current position since the motor settled there."""
        if self._hold is not None and self._meas is self._hold:
            return self._hold.window_rate()[0]
        return self._meas.rate if self._meas is not None else 0.0

    @property
    def last_decision(self) -> Decision | None:
        """The most recent decision."""
        return self.decisions[-1] if self.decisions else None

    def update_settings(self, settings: FeedbackSettings) -> None:
        """Use new settings from now on (a scan in progress keeps its grid)."""
        self.settings = settings

    # ------------------------------------------------------------------ commands
    def start(self, position: float, now: float) -> None:
        """Begin a scan from the motor's current ``position``."""
        self._now = now
        self.position = float(position)
        self.best_position = None
        self.best_rate = 0.0
        self._begin_scan(now, "start")

    def stop(self, now: float) -> None:
        """Stop deciding; no further moves (a move in flight is the driver's to stop)."""
        self._now = now
        self._path = []
        self._meas = self._hold = None
        self._set_phase(Phase.IDLE)
        self._decide("stopped", None)

    def manual(self, position: float, now: float) -> None:
        """Operator override: go to ``position`` and hold it until :meth:`resume`.

        Raises
        ------
        ConfigurationError
            ``position`` is outside the limits.
        """
        s = self.settings
        if not s.limit_low <= position <= s.limit_high:
            raise ConfigurationError(
                f"manual position {position} mm is outside the limits "
                f"[{s.limit_low}, {s.limit_high}] mm"
            )
        self._now = now
        self._meas = self._hold = None
        self._set_phase(Phase.MANUAL)
        self._path = [float(position)]
        self._purpose = "manual"
        self._reason = f"manual override to {position:.3f} mm"
        self._decide(f"manual override: go to {position:.3f} mm and hold", position)

    def resume(self, position: float, now: float) -> None:
        """Leave MANUAL (or IDLE): track from the current ``position``."""
        self._now = now
        self.position = float(position)
        self.best_position = float(position)
        self.best_rate = 0.0
        self._reference = 0.0
        self._set_phase(Phase.TRACKING)
        self._decide(f"resume: track from {position:.3f} mm", position)
        self._go(position, "hold", "re-measure the current position")

    # ------------------------------------------------------------------ driver events
    def next_move(self, now: float) -> MoveRequest | None:
        """The next move to make, if one is due and the rate limit allows it."""
        self._now = now
        if self._in_flight is not None or not self._path:
            if self.phase is Phase.TRACKING and self._in_flight is None and not self._path:
                self._maybe_probe(now)
            if self._in_flight is not None or not self._path:
                return None
        manual = self._purpose == "manual"
        interval = 60.0 / self.settings.max_moves_per_minute
        if not manual and now < self._last_move_at + interval:
            return None
        target = self._path.pop(0)
        req = MoveRequest(target, self._reason, final=not self._path)
        self._in_flight = req
        self._last_move_at = now
        self.moves += 1
        self._meas = None
        return req

    def settled(self, position: float, now: float) -> None:
        """The motor is at rest at ``position`` after the requested move."""
        self._now = now
        self.position = float(position)
        req, self._in_flight = self._in_flight, None
        if req is None or not req.final or self._path or self.phase is Phase.IDLE:
            return  # a waypoint (the next leg follows), or stopped meanwhile
        s = self.settings
        purpose = self._purpose
        if purpose in ("manual", "hold"):
            self._meas = self._hold = self._new_hold(req.target, now)
            if purpose == "hold":
                self._last_probe = now
            return
        trains = s.measure_trains * (2 if purpose in ("refine", "probe") else 1)
        min_trains = s.min_measure_trains if purpose == "scan" else trains
        self._meas = _Measurement(req.target, purpose, now, s.settle_trains, min_trains, trains)

    def move_failed(self, reason: str, now: float) -> None:
        """The requested move did not complete: stop."""
        self._now = now
        self._in_flight = None
        self._path = []
        self._meas = self._hold = None
        self._set_phase(Phase.IDLE)
        self._decide(f"move failed ({reason}): feedback stopped", None)

    def add_train(self, train_id: int, timestamp: float, n_hits: int, n_pulses: int) -> None:
        """Hit counts of one train (any order; trains before the motor settled are ignored)."""
        m = self._meas
        if self.phase is Phase.IDLE or m is None or timestamp <= m.settled_at:
            self.trains_ignored += 1
            return
        if m.skip > 0:
            m.skip -= 1
            self.trains_ignored += 1
            return
        self.trains_used += 1
        m.add(int(n_hits), int(n_pulses))
        if m is self._hold:
            self._check_hold()
        elif m.done:
            self._meas = None
            self._measured(m)

    # ------------------------------------------------------------------ internals
    def _decide(self, text: str, target: float | None) -> None:
        d = Decision(self._now, self.phase.value, text, target)
        self.decisions.append(d)
        log.debug("feedback decision: %s", d)
        if self.on_decision is not None:
            self.on_decision(d)

    def _set_phase(self, phase: Phase) -> None:
        self.phase = phase

    def _new_hold(self, position: float, now: float) -> _Measurement:
        s = self.settings
        return _Measurement(
            position,
            "hold",
            now,
            s.settle_trains,
            s.track_window_trains,
            s.track_window_trains,
            window=collections.deque(maxlen=s.track_window_trains),
        )

    def _go(self, target: float, purpose: str, reason: str) -> None:
        """Plan a move to ``target`` (clipped), split into legs of at most ``max_step``."""
        s = self.settings
        target = s.clip(target)
        here = self.position if self.position is not None else target
        if self._in_flight is None and abs(target - here) < 1e-9:
            # Already there: no move, the measurement starts now.
            self._path = []
            self._purpose = purpose
            self._reason = reason
            self._in_flight = MoveRequest(target, reason, final=True)
            self.settled(here, self._now)
            return
        legs = max(1, math.ceil(abs(target - here) / s.max_step - 1e-9))
        self._path = [here + (target - here) * (i + 1) / legs for i in range(legs)]
        self._path[-1] = target
        self._purpose = purpose
        self._reason = reason
        self._meas = None

    # scanning ----------------------------------------------------------------------------
    def _begin_scan(self, now: float, why: str) -> None:
        s = self.settings
        self._set_phase(Phase.SCANNING)
        self._hold = None
        self._grid = s.grid()
        self._results = {}
        self.scan_points = {}
        here = self.position if self.position is not None else 0.0
        self._start_index = min(range(len(self._grid)), key=lambda i: abs(self._grid[i] - here))
        self._dir = 1 if s.scan_direction == "up" else -1
        self._index = self._start_index
        self._reversed = False
        self._refine_target = None
        self._decide(
            f"{why}: scan {self._grid[0]:.3f}..{self._grid[-1]:.3f} mm in "
            f"{s.scan_step:.3f} mm steps ({len(self._grid)} points), first "
            f"{'up' if self._dir > 0 else 'down'} from {self._grid[self._index]:.3f} mm",
            self._grid[self._index],
        )
        self._go(self._grid[self._index], "scan", f"scan point {self._grid[self._index]:.3f} mm")

    def _best_index(self) -> int | None:
        if not self._results:
            return None
        return max(self._results, key=lambda i: (self._results[i][0], -abs(i - self._start_index)))

    def _measured(self, m: _Measurement) -> None:
        if m.purpose == "scan":
            self._scan_measured(m)
        elif m.purpose == "refine":
            self._refine_measured(m)
        elif m.purpose == "probe":
            self._probe_measured(m)

    def _scan_measured(self, m: _Measurement) -> None:
        s = self.settings
        self._results[self._index] = (m.rate, m.pulses)
        self.scan_points[m.position] = (m.rate, m.pulses)
        self._decide(
            f"scan {m.position:.3f} mm: hit rate {m.rate:.3f} ({m.hits}/{m.pulses} pulses)", None
        )
        last = len(self._grid) - 1
        b = self._best_index()
        rate_b = self._results[b][0]
        found = rate_b >= s.min_hit_rate and rate_b > 0
        if found:
            lower_ok = b == 0 or (b - 1) in self._results
            upper_ok = b == last or (b + 1) in self._results
            if lower_ok and upper_ok:
                self._scan_done(b)
                return
            # Passed the peak?  Turn round to measure the best point's other neighbour.
            ahead = self._index - b
            if ahead * self._dir > 0 and m.rate < 0.5 * rate_b:
                other = b - self._dir
                if 0 <= other <= last and other not in self._results:
                    self._dir = -self._dir
                    self._reversed = True
                    self._index = other
                    self._decide(
                        f"passed the peak at {self._grid[b]:.3f} mm: turn round to "
                        f"{self._grid[other]:.3f} mm",
                        self._grid[other],
                    )
                    self._go(self._grid[other], "scan", f"scan point {self._grid[other]:.3f} mm")
                    return
        nxt = self._index + self._dir
        while 0 <= nxt <= last and nxt in self._results:
            nxt += self._dir
        if not 0 <= nxt <= last:
            if not self._reversed:
                self._reversed = True
                self._dir = -self._dir
                nxt = self._start_index + self._dir
                while 0 <= nxt <= last and nxt in self._results:
                    nxt += self._dir
            if not 0 <= nxt <= last:
                if found:
                    self._scan_done(b)
                else:
                    self._decide(
                        f"no hits between {self._grid[0]:.3f} and {self._grid[-1]:.3f} mm "
                        f"(best {rate_b:.3f} < min_hit_rate {s.min_hit_rate}): scan again",
                        None,
                    )
                    self._begin_scan(self._now, "nothing found")
                return
        self._index = nxt
        self._go(self._grid[nxt], "scan", f"scan point {self._grid[nxt]:.3f} mm")

    def _scan_done(self, b: int) -> None:
        s = self.settings
        x_b = self._grid[b]
        rate_b, pulses_b = self._results[b]
        self.best_position, self.best_rate = x_b, rate_b
        self._best_pulses = pulses_b
        if s.refine and 0 < b < len(self._grid) - 1:
            x_star = self._vertex(b)
            if x_star is not None and abs(x_star - x_b) >= 0.1 * s.scan_step:
                self._refine_target = x_star
                self._decide(
                    f"peak bracketed at {x_b:.3f} mm (rate {rate_b:.3f}): refine at "
                    f"{x_star:.3f} mm",
                    x_star,
                )
                self._go(x_star, "refine", f"refine at {x_star:.3f} mm")
                return
        self._decide(f"peak at {x_b:.3f} mm (rate {rate_b:.3f}): track there", x_b)
        self._begin_tracking()

    def _vertex(self, b: int) -> float | None:
        """Vertex of the parabola through log(rate) at b-1, b, b+1 (None if not a maximum)."""
        s = self.settings
        logs = []
        if (b - 1) not in self._results or (b + 1) not in self._results:
            return None
        for i in (b - 1, b, b + 1):
            rate, pulses = self._results[i]
            logs.append(math.log(max(rate, 0.5 / max(pulses, 1))))
        y0, y1, y2 = logs
        curvature = y0 - 2 * y1 + y2
        if curvature >= 0:
            return None
        offset = 0.5 * s.scan_step * (y0 - y2) / curvature
        offset = max(-0.5 * s.scan_step, min(0.5 * s.scan_step, offset))
        return s.clip(self._grid[b] + offset)

    def _refine_measured(self, m: _Measurement) -> None:
        if m.rate > self.best_rate:
            self._decide(
                f"refined {m.position:.3f} mm: rate {m.rate:.3f} beats {self.best_rate:.3f} "
                f"at {self.best_position:.3f} mm",
                m.position,
            )
            self.best_position, self.best_rate = m.position, m.rate
        else:
            self._decide(
                f"refined {m.position:.3f} mm: rate {m.rate:.3f}, keep {self.best_position:.3f} "
                f"mm ({self.best_rate:.3f})",
                self.best_position,
            )
        self._begin_tracking()

    # tracking ----------------------------------------------------------------------------
    def _begin_tracking(self) -> None:
        self._set_phase(Phase.TRACKING)
        self._reference = self.best_rate
        self._probe_dir = 1
        self._go(self.best_position, "hold", f"hold best position {self.best_position:.3f} mm")

    def _check_hold(self) -> None:
        s = self.settings
        hold = self._hold
        rate, _ = hold.window_rate()
        if self.phase is not Phase.TRACKING or len(hold.window) < s.track_window_trains:
            return
        if self._reference > 0 and rate < s.collapse_fraction * self._reference:
            self._decide(
                f"hit rate collapsed at {hold.position:.3f} mm: {rate:.3f} < "
                f"{s.collapse_fraction:.2f} x {self._reference:.3f}: rescan",
                None,
            )
            self._begin_scan(self._now, "collapse")
            return
        if self._reference == 0:
            self._reference = rate
            self.best_rate = rate

    def _maybe_probe(self, now: float) -> None:
        s = self.settings
        hold = self._hold
        if (
            hold is None
            or self._meas is not hold
            or s.dither_step <= 0
            or hold.window is None
            or len(hold.window) < s.measure_trains
            or now - self._last_probe < s.dither_interval
        ):
            return
        centre = hold.position
        sides = [self._probe_dir, -self._probe_dir]
        self._probe_dir = -self._probe_dir  # the next cycle starts on the other side
        self._probes = {}
        self._probe_queue = [s.clip(centre + d * s.dither_step) for d in sides]
        self._probe_queue = [x for x in self._probe_queue if x != centre]
        self._hold_rate = hold.window_rate()
        if not self._probe_queue:
            self._last_probe = now
            return
        self._decide(
            f"dither: probe {', '.join(f'{x:.3f}' for x in self._probe_queue)} mm around "
            f"{centre:.3f} mm (rate there {self._hold_rate[0]:.3f})",
            self._probe_queue[0],
        )
        self._next_probe()

    def _next_probe(self) -> None:
        x = self._probe_queue.pop(0)
        self._go(x, "probe", f"probe {x:.3f} mm")

    def _probe_measured(self, m: _Measurement) -> None:
        s = self.settings
        self._probes[m.position] = (m.rate, m.pulses)
        if self._probe_queue:
            self._next_probe()
            return
        self._last_probe = self._now
        centre = self.best_position
        y0, n0 = self._hold_rate
        rates = {centre: (y0, n0), **self._probes}
        lo, hi = centre - s.dither_step, centre + s.dither_step
        target = centre
        if lo in rates and hi in rates:
            logs = [math.log(max(rates[x][0], 0.5 / max(rates[x][1], 1))) for x in (lo, centre, hi)]
            curvature = logs[0] - 2 * logs[1] + logs[2]
            if curvature < 0:  # a maximum: its vertex (exact for a Gaussian profile)
                offset = 0.5 * s.dither_step * (logs[0] - logs[2]) / curvature
            else:  # no maximum in between: climb towards the higher side
                offset = s.dither_step if logs[2] > logs[0] else -s.dither_step
            offset *= s.dither_gain
            target = centre + max(-s.dither_step, min(s.dither_step, offset))
        else:  # next to a limit: take the best of what was measured
            target = max(rates, key=lambda x: rates[x][0])
        target = s.clip(target)
        best_seen = max(r for r, _ in rates.values())
        self._reference = best_seen if best_seen > 0 else self._reference
        summary = ", ".join(f"{x:.3f}: {r:.3f}" for x, (r, _) in sorted(rates.items()))
        if abs(target - centre) >= 0.1 * s.dither_step:
            self._decide(
                f"dither ({summary}): peak estimated at {target:.3f} mm, move best there", target
            )
            self.best_position = target
        else:
            self._decide(f"dither ({summary}): stay at {centre:.3f} mm", centre)
        self.best_rate = y0 if n0 else self.best_rate
        self._go(self.best_position, "hold", f"hold best position {self.best_position:.3f} mm")
