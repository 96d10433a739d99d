"""Run the feedback strategy against the simulated experiment in simulated time.

Deterministic: no threads, no sockets, no wall clock.  Every 0.1 s of simulated time
:class:`~pulsetrain.sim.SimulatedExperiment` makes the next train (advancing its
:class:`~pulsetrain.sim.SampleMotor`), the train's hits are taken from the simulator's per-pulse
truth :meth:`DetectorSimulator.pulse_hits` at the motor's position for that train (the same hit
decisions the simulated detector frames carry; no frames are generated, so a run of minutes
takes milliseconds), and they reach the controller ``latency_trains`` trains later, as results
of a real pipeline would.  The motor is seen at rest once per train, like a driver polling its
state.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Callable

import numpy as np

from pulsetrain.feedback.controller import (
    FeedbackSettings,
    HitRateOptimizer,
    MoveRequest,
    Phase,
)
from pulsetrain.sim import SimulatedExperiment

__all__ = ["SimulationResult", "SimulationStep", "run_simulated_feedback"]


@dataclasses.dataclass(frozen=True)
class SimulationStep:
    """The state after one train."""

    time: float  #: simulated seconds since the start
    train_id: int
    position: float  #: motor position during the train (mm)
    hit_probability: float  #: true per-pulse hit probability there
    n_hits: int
    n_pulses: int
    phase: str


@dataclasses.dataclass
class SimulationResult:
    """Everything a simulated feedback run did."""

    steps: list[SimulationStep]
    controller: HitRateOptimizer
    p_max: float  #: the highest hit probability the sample allows
    #: Every move command: (simulated time, position before, MoveRequest).
    moves: list[tuple[float, float, MoveRequest]] = dataclasses.field(default_factory=list)

    def times(self) -> np.ndarray:
        """Simulated time of each train (s)."""
        return np.array([s.time for s in self.steps])

    def positions(self) -> np.ndarray:
        """Motor position of each train (mm)."""
        return np.array([s.position for s in self.steps])

    def probabilities(self) -> np.ndarray:
        """True hit probability of each train."""
        return np.array([s.hit_probability for s in self.steps])

    def measured_rate(self, t0: float, t1: float) -> float:
        """Hits / pulses of the trains with ``t0 <= time < t1``."""
        sel = [s for s in self.steps if t0 <= s.time < t1]
        pulses = sum(s.n_pulses for s in sel)
        return sum(s.n_hits for s in sel) / pulses if pulses else float("nan")

    def mean_probability(self, t0: float, t1: float) -> float:
        """Mean true hit probability of the trains with ``t0 <= time < t1``."""
        p = [s.hit_probability for s in self.steps if t0 <= s.time < t1]
        return float(np.mean(p)) if p else float("nan")

    def time_to_fraction(self, fraction: float, window_s: float = 2.0) -> float | None:
        """First time at which the true hit probability, averaged over the trains of the last
        ``window_s`` seconds, reaches ``fraction * p_max``; None if it never does."""
        t = self.times()
        p = self.probabilities()
        level = fraction * self.p_max
        csum = np.concatenate([[0.0], np.cumsum(p)])
        for i in range(len(t)):
            j = int(np.searchsorted(t, t[i] - window_s + 1e-9))
            if t[i] - t[0] >= window_s - 1e-9 and (csum[i + 1] - csum[j]) / (i + 1 - j) >= level:
                return float(t[i])
        return None


def run_simulated_feedback(
    experiment: SimulatedExperiment,
    settings: FeedbackSettings | None = None,
    *,
    duration_s: float = 30.0,
    latency_trains: int = 2,
    start_after_s: float = 0.0,
    on_train: Callable[[SimulationStep, SimulatedExperiment], None] | None = None,
) -> SimulationResult:
    """Drive a :class:`HitRateOptimizer` against ``experiment`` for ``duration_s`` seconds.

    Parameters
    ----------
    experiment : SimulatedExperiment
        Its motor is the sample motor; its detector's ``pulse_hits`` gives the hits.
    settings : FeedbackSettings, optional
        Strategy parameters (default :class:`FeedbackSettings()`).
    duration_s : float
        Simulated time to run.
    latency_trains : int
        Trains between a train and the arrival of its hit counts at the controller.
    start_after_s : float
        Simulated time before the feedback is started (the motor stays where it is).
    on_train : callable, optional
        Called after every train with the step and the experiment (e.g. to move the sample).

    Returns
    -------
    SimulationResult
    """
    ctrl = HitRateOptimizer(settings or FeedbackSettings())
    sim = experiment.simulator
    motor = experiment.motor
    clock = experiment.clock
    pending: collections.deque = collections.deque()
    steps: list[SimulationStep] = []
    moves: list[tuple[float, float, MoveRequest]] = []
    t_start = None
    started = False
    while True:
        tid, _, _ = experiment.next_train(include=[])
        now = clock.timestamp(tid)
        if t_start is None:
            t_start = now
        elapsed = now - t_start
        if elapsed > duration_s + 1e-9:
            break
        position = motor.actual_position
        hits = sim.pulse_hits(tid, position)
        n_hits, n_pulses = int(np.count_nonzero(hits)), int(hits.size)
        pending.append((tid + latency_trains, tid, now, n_hits, n_pulses))
        while pending and pending[0][0] <= tid:
            _, t_id, ts, h, p = pending.popleft()
            ctrl.add_train(t_id, ts, h, p)
        if not started and elapsed >= start_after_s - 1e-9:
            ctrl.start(motor.actual_position, now)
            started = True
        if ctrl.moving and motor.state == motor.ON:
            ctrl.settled(motor.actual_position, now)
        req = ctrl.next_move(now) if started else None
        if req is not None:
            moves.append((elapsed, motor.actual_position, req))
            motor.move(req.target)
        step = SimulationStep(
            elapsed,
            tid,
            position,
            sim.hit_probability(position),
            n_hits,
            n_pulses,
            ctrl.phase.value if started else Phase.IDLE.value,
        )
        steps.append(step)
        if on_train is not None:
            on_train(step, experiment)
    return SimulationResult(steps, ctrl, sim.sample.p_max, moves)
