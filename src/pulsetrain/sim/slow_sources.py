"""Slow (control) and auxiliary sources of the simulated experiment: motor and XGM.

Control sources carry keys ending in ``.value``, as EXtra-data shows CONTROL data
(e.g. ``actualPosition.value``); their timestamps are in ``meta``.
"""

from __future__ import annotations

import numpy as np

from pulsetrain.sim.motor import SampleMotor
from pulsetrain.sim.rng import Stream, stream

__all__ = [
    "MOTOR_SOURCE",
    "XGM_OUTPUT_SOURCE",
    "XGM_SAMPLES",
    "XGM_SOURCE",
    "motor_data",
    "xgm_data",
]

#: Control source of the sample motor.
MOTOR_SOURCE = "SPB_IRU_SAMPLE/MOTOR/X"
#: Control source of the X-ray gas monitor.
XGM_SOURCE = "SPB_XTD9_XGM/DOOCS/MAIN"
#: Per-pulse output of the X-ray gas monitor.
XGM_OUTPUT_SOURCE = "SPB_XTD9_XGM/DOOCS/MAIN:output"
#: Length of the XGM per-pulse arrays.
XGM_SAMPLES = 1000


def motor_data(motor: SampleMotor) -> dict:
    """Keys of :data:`MOTOR_SOURCE` for the motor's present state."""
    lo, hi = motor.limits
    return {
        "actualPosition.value": np.float64(motor.actual_position),
        "targetPosition.value": np.float64(motor.target_position),
        "velocity.value": np.float64(motor.velocity),
        "state.value": motor.state,
        "swLimitLow.value": np.float64(lo),
        "swLimitHigh.value": np.float64(hi),
    }


def xgm_data(seed: int, train_id: int, frames: int, pulse_energy_uj: float) -> tuple[dict, dict]:
    """Keys of :data:`XGM_SOURCE` and :data:`XGM_OUTPUT_SOURCE` for one train.

    The train's mean pulse energy is ``pulse_energy_uj * (1 + 0.05 N(0, 1))``, each pulse
    ``mean * (1 + 0.1 N(0, 1))`` (at least 0); ``pulseEnergy.photonFlux.value`` is the mean,
    ``data.intensityTD`` holds the pulses' energies in its first ``frames`` entries (0 after).
    """
    rng = stream(seed, Stream.XGM, int(train_id))
    mean = pulse_energy_uj * (1.0 + 0.05 * rng.standard_normal())
    pulses = np.maximum(mean * (1.0 + 0.1 * rng.standard_normal(frames)), 0.0)
    x, y = 0.05 * rng.standard_normal(2)
    intensity = np.zeros(XGM_SAMPLES, np.float32)
    n = min(frames, XGM_SAMPLES)
    intensity[:n] = pulses[:n]
    slow = {
        "pulseEnergy.photonFlux.value": np.float32(mean),
        "pulseEnergy.nummberOfBunches.value": np.float32(frames),
        "beamPosition.ixPos.value": np.float32(x),
        "beamPosition.iyPos.value": np.float32(y),
        "state.value": "ON",
    }
    return slow, {"data.intensityTD": intensity}
