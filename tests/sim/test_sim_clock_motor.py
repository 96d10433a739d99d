"""The 10 Hz train clock and the sample motor."""

from __future__ import annotations

import pytest

from pulsetrain.errors import ConfigurationError
from pulsetrain.sim import SampleMotor, TrainClock, source_meta


def test_clock_maps_train_ids_to_timestamps_at_10_hz():
    clock = TrainClock(first_train_id=5000, start_time=1_700_000_000.25)
    assert clock.timestamp(5000) == pytest.approx(1_700_000_000.25)
    assert clock.timestamp_ns(5013) - clock.timestamp_ns(5000) == 13 * 100_000_000
    assert clock.timestamp(4990) == pytest.approx(1_699_999_999.25)
    assert clock.elapsed_s(5025) == pytest.approx(2.5)
    assert clock.train_id_at(clock.timestamp(5077) + 0.05) == 5077


def test_default_clock_starts_now_on_a_tenth_of_a_second():
    import time

    before = time.time()
    clock = TrainClock()
    assert before - 0.2 < clock.start_time <= time.time()
    assert clock.start_ns % 100_000_000 == 0


def test_meta_follows_the_bridge_convention():
    meta = source_meta("A/B/C:out", 123, 1_700_000_000_123_456_789)
    assert meta == {
        "source": "A/B/C:out",
        "timestamp": pytest.approx(1_700_000_000.123456789),
        "timestamp.sec": "1700000000",
        "timestamp.frac": "123456789000000000",
        "timestamp.tid": 123,
    }
    assert len(meta["timestamp.frac"]) == 18
    clock = TrainClock(10, start_time=100.0)
    metas = clock.meta(["x", "y"], 12)
    assert metas["x"]["timestamp"] == pytest.approx(100.2)
    assert metas["y"]["timestamp.frac"] == "200000000000000000"
    assert metas["y"]["timestamp.tid"] == 12


def test_motor_moves_at_its_velocity_and_reaches_the_target():
    motor = SampleMotor(position_mm=0.0, velocity_mm_s=2.0, limits_mm=(-1.0, 5.0))
    assert motor.state == "ON"
    motor.move(3.0)
    assert motor.state == "MOVING" and motor.target_position == 3.0
    assert motor.advance(0.5) == pytest.approx(1.0)
    assert motor.advance(0.5) == pytest.approx(2.0)
    assert motor.state == "MOVING"
    assert motor.advance(10.0) == 3.0
    assert motor.state == "ON"
    assert motor.time_s == pytest.approx(11.0)
    motor.move(2.0, velocity_mm_s=1.0)
    assert motor.advance(0.25) == pytest.approx(2.75)
    assert motor.velocity == 1.0


def test_motor_stop_and_relative_moves():
    motor = SampleMotor(position_mm=1.0, velocity_mm_s=1.0)
    motor.move_relative(2.0)
    motor.advance(0.5)
    motor.stop()
    assert motor.state == "ON"
    assert motor.actual_position == motor.target_position == pytest.approx(1.5)
    motor.advance(1.0)
    assert motor.actual_position == pytest.approx(1.5)


def test_motor_refuses_targets_outside_limits_and_bad_velocities():
    motor = SampleMotor(position_mm=0.0, limits_mm=(-2.0, 2.0), max_velocity_mm_s=5.0)
    with pytest.raises(ConfigurationError, match="outside limits"):
        motor.move(2.5)
    assert motor.target_position == 0.0 and motor.state == "ON"
    with pytest.raises(ConfigurationError, match="velocity"):
        motor.set_velocity(0.0)
    with pytest.raises(ConfigurationError, match="velocity"):
        motor.move(1.0, velocity_mm_s=6.0)
    with pytest.raises(ConfigurationError):
        motor.advance(-1.0)
    with pytest.raises(ConfigurationError):
        SampleMotor(position_mm=20.0)
