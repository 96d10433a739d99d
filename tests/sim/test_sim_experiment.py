"""The simulated experiment: clock, parts, slow data and camera."""

from __future__ import annotations

import numpy as np
import pytest

from pulsetrain.errors import ConfigurationError
from pulsetrain.sim import (
    CAMERA_SOURCE,
    MOTOR_SOURCE,
    XGM_OUTPUT_SOURCE,
    XGM_SOURCE,
    SampleMotor,
    SimulatedExperiment,
)


@pytest.fixture()
def exp():
    return SimulatedExperiment(
        frames=4,
        seed=2,
        first_train_id=7000,
        start_time=1_700_000_000.0,
        modules=[0, 1, 2, 3, 4],
        bank_size=1,
        hit_variants=1,
    )


def test_trains_carry_consecutive_ids_and_10_hz_timestamps(exp):
    seen = list(exp.trains(3, include="slow"))
    assert [tid for tid, _, _ in seen] == [7000, 7001, 7002]
    assert exp.next_train_id == 7003
    for tid, data, meta in seen:
        assert set(meta) == set(data) == {MOTOR_SOURCE, XGM_SOURCE}
        for src, m in meta.items():
            assert m["source"] == src and m["timestamp.tid"] == tid
            assert m["timestamp"] == pytest.approx(1_700_000_000.0 + (tid - 7000) * 0.1)
            assert len(m["timestamp.frac"]) == 18
    assert seen[2][2][MOTOR_SOURCE]["timestamp.frac"] == "200000000000000000"


def test_include_picks_parts_modules_and_sources(exp):
    assert exp.sources() == [exp.simulator.source(m) for m in range(5)] + [
        MOTOR_SOURCE,
        XGM_SOURCE,
        XGM_OUTPUT_SOURCE,
        CAMERA_SOURCE,
    ]
    _, data, meta = exp.next_train(include=[0, 3])
    assert list(data) == [exp.simulator.source(0), exp.simulator.source(3)] == list(meta)
    _, data, _ = exp.next_train(include=["camera", "SPB_DET_AGIPD1M-1/DET/2CH0:xtdf"])
    assert set(data) == {CAMERA_SOURCE, exp.simulator.source(2)}
    _, data, _ = exp.next_train(include="detector")
    assert set(data) == {exp.simulator.source(m) for m in range(5)}
    _, data, _ = exp.next_train(include=["fast"])
    assert set(data) == {exp.simulator.source(m) for m in range(5)} | {
        XGM_OUTPUT_SOURCE,
        CAMERA_SOURCE,
    }
    with pytest.raises(ConfigurationError, match="not simulated"):
        exp.next_train(include=[7])
    with pytest.raises(ConfigurationError, match="cannot include"):
        exp.next_train(include=["laser"])


def test_slow_data_keys(exp):
    exp.motor.move(1.0, velocity_mm_s=2.0)
    _, data, _ = exp.next_train(include="slow")
    _, data, _ = exp.next_train(include="slow")
    motor = data[MOTOR_SOURCE]
    assert motor["actualPosition.value"] == pytest.approx(0.2)
    assert motor["targetPosition.value"] == 1.0
    assert motor["velocity.value"] == 2.0
    assert motor["state.value"] == "MOVING"
    assert motor["swLimitLow.value"] == -10.0 and motor["swLimitHigh.value"] == 10.0
    assert all(key.endswith(".value") for key in motor)
    xgm = data[XGM_SOURCE]
    assert all(key.endswith(".value") for key in xgm)
    assert 1000 < xgm["pulseEnergy.photonFlux.value"] < 2000
    assert xgm["pulseEnergy.photonFlux.value"].dtype == np.float32
    _, data, _ = exp.next_train(include="xgm_output")
    pulses = data[XGM_OUTPUT_SOURCE]["data.intensityTD"]
    assert pulses.shape == (1000,) and pulses.dtype == np.float32
    assert (pulses[:4] > 0).all() and (pulses[4:] == 0).all()


def test_camera_shows_the_sample_moving_past_the_beam():
    exp = SimulatedExperiment(
        frames=1, seed=3, modules=[0], motor=SampleMotor(position_mm=1.5), start_time=0.0
    )

    def sample_column() -> float:
        _, data, _ = exp.next_train(include="camera")
        img = data[CAMERA_SOURCE]["data.image.pixels"]
        assert img.shape == (256, 256) and img.dtype == np.uint16
        np.testing.assert_array_equal(data[CAMERA_SOURCE]["data.image.dims"], [256, 256])
        profile = img[100:156].astype(float).mean(axis=0)
        profile -= np.median(profile)
        profile[120:136] = 0  # mask the jet through the beam
        profile = np.clip(profile, 0, None)
        return float((profile * np.arange(256)).sum() / profile.sum())

    before = sample_column()  # motor 1 mm below the sample centre: sample 40 px right
    assert before == pytest.approx(127.5 + 40, abs=3)
    exp.motor.move(3.5, velocity_mm_s=10.0)
    exp.next_train(include="slow")
    after = sample_column()  # 1 mm above the sample centre: sample 40 px left
    assert after == pytest.approx(127.5 - 40, abs=3)
