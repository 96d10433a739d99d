"""A simulated sample motor: one linear axis moving at constant velocity.

The motor has no clock of its own: the caller advances it (``advance(dt_s)``), so its motion
is deterministic and follows simulated time, not the wall clock.
"""

from __future__ import annotations

import threading

from pulsetrain.errors import ConfigurationError

__all__ = ["SampleMotor"]


class SampleMotor:
    """A linear sample stage.

    Parameters
    ----------
    position_mm : float
        Initial position (also the initial target).
    velocity_mm_s : float
        Speed of moves (> 0).
    limits_mm : (float, float)
        Lowest and highest allowed positions.
    max_velocity_mm_s : float
        Largest speed that may be set.

    Notes
    -----
    States: ``"ON"`` (at rest) and ``"MOVING"``.  A move goes straight to the target at
    :attr:`velocity`, with no acceleration; ``stop()`` ends it where the motor is.  All methods
    are thread-safe.
    """

    ON = "ON"
    MOVING = "MOVING"

    def __init__(
        self,
        position_mm: float = 0.0,
        velocity_mm_s: float = 1.0,
        limits_mm: tuple[float, float] = (-10.0, 10.0),
        max_velocity_mm_s: float = 10.0,
    ):
        lo, hi = (float(v) for v in limits_mm)
        if not lo < hi:
            raise ConfigurationError(f"motor limits must be (low, high), got {limits_mm}")
        self._limits = (lo, hi)
        self.max_velocity_mm_s = float(max_velocity_mm_s)
        self._lock = threading.Lock()
        self._check_position(position_mm)
        self._position = float(position_mm)
        self._target = float(position_mm)
        self._velocity = self._check_velocity(velocity_mm_s)
        self._time_s = 0.0

    def _check_position(self, value: float) -> float:
        lo, hi = self._limits
        if not lo <= float(value) <= hi:
            raise ConfigurationError(f"motor position {value} mm is outside limits [{lo}, {hi}] mm")
        return float(value)

    def _check_velocity(self, value: float) -> float:
        if not 0.0 < float(value) <= self.max_velocity_mm_s:
            raise ConfigurationError(
                f"motor velocity must be in (0, {self.max_velocity_mm_s}] mm/s, got {value}"
            )
        return float(value)

    # -- read ---------------------------------------------------------------------------------
    @property
    def actual_position(self) -> float:
        """Where the motor is, in mm."""
        return self._position

    @property
    def target_position(self) -> float:
        """Where the motor is going, in mm."""
        return self._target

    @property
    def velocity(self) -> float:
        """Speed of moves, in mm/s."""
        return self._velocity

    @property
    def limits(self) -> tuple[float, float]:
        """``(low, high)`` allowed positions in mm."""
        return self._limits

    @property
    def state(self) -> str:
        """``"MOVING"`` while away from the target, else ``"ON"``."""
        return self.MOVING if self._position != self._target else self.ON

    @property
    def time_s(self) -> float:
        """Simulated seconds advanced so far."""
        return self._time_s

    # -- commands -----------------------------------------------------------------------------
    def move(self, target_mm: float, velocity_mm_s: float | None = None) -> None:
        """Start moving to ``target_mm`` (optionally at a new velocity)."""
        target = self._check_position(target_mm)
        with self._lock:
            if velocity_mm_s is not None:
                self._velocity = self._check_velocity(velocity_mm_s)
            self._target = target

    def move_relative(self, delta_mm: float) -> None:
        """Start moving by ``delta_mm`` from the current target."""
        self.move(self._target + float(delta_mm))

    def set_velocity(self, velocity_mm_s: float) -> None:
        """Change the speed of moves."""
        with self._lock:
            self._velocity = self._check_velocity(velocity_mm_s)

    def stop(self) -> None:
        """Stop where the motor is now (state becomes ``"ON"``)."""
        with self._lock:
            self._target = self._position

    def advance(self, dt_s: float) -> float:
        """Let ``dt_s`` simulated seconds pass; returns the new position."""
        if dt_s < 0:
            raise ConfigurationError(f"cannot advance the motor by a negative time {dt_s} s")
        with self._lock:
            self._time_s += dt_s
            gap = self._target - self._position
            step = self._velocity * dt_s
            if abs(gap) <= step:
                self._position = self._target
            else:
                self._position += step if gap > 0 else -step
            return self._position

    def __repr__(self) -> str:
        return (
            f"SampleMotor(position={self._position:.4f} mm, target={self._target:.4f} mm, "
            f"velocity={self._velocity} mm/s, state={self.state})"
        )
