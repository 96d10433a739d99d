"""The simulated detector (a ProducerDevice) and motor (per-instance limits), in the harness."""

from __future__ import annotations

import pytest

from pulsetrain.errors import PropertyError
from pulsetrain.testing import DeviceHarness


def test_detector_prepares_without_producing_then_sends_n_trains_and_end_of_stream():
    config = {
        "modules": [0],
        "frames": 2,
        "memory_cells": 2,
        "autostart": False,
        "n_trains": 3,
        "rate": 20.0,
        "first_train_id": 500,
    }
    outputs = ("module0", "slow")
    with DeviceHarness("SimulatedDetector", config, device_id="TEST/SIM/1", outputs=outputs) as sim:
        sim.wait_for("prepared", True, timeout=120)  # frame banks built while not acquiring
        assert sim.get("state") == "ON" and sim.get("sentTrains") == 0
        sim.call("start_acquisition")
        tids = []
        for _ in range(3):
            data, meta = sim.receive("module0", timeout=60)
            (src,) = data
            assert data[src]["image.data"].shape[0] == 2
            tids.append(meta[src]["timestamp.tid"])
        assert tids == [500, 501, 502]
        assert sim.receive_eos("module0") == 0
        assert sim.receive_eos("slow") == 3
        sim.wait_for("state", "STOPPED")
        assert sim.get("status") == "all trains sent" and sim.get("trainId") == 502
        assert sim.get("trainsOut") == 6  # module0 and slow, three trains each


def test_motor_limits_come_from_its_configuration():
    config = {"swLimitLow": -1.0, "swLimitHigh": 2.0, "velocity": 10.0}
    with DeviceHarness("SimulatedMotor", config, device_id="TEST/MOTOR/1") as motor:
        with pytest.raises(PropertyError, match="above the maximum 2.0"):
            motor.set("targetPosition", 3.0)
        motor.set("targetPosition", 1.5)
        motor.call("move")
        motor.wait_for("actualPosition", 1.5)
        motor.wait_for("state", "ON")
        assert motor.get("moves") == 1
        motor.set("targetPosition", -1.0)
        motor.set("velocity", 0.01)
        motor.call("move")
        motor.wait_for("state", "MOVING")
        motor.call("stop")  # the Karabo motor slot, not the device's lifecycle stop
        motor.wait_for("state", "ON")
        assert -1.0 < motor.get("actualPosition") < 1.5
        assert not motor.device.stopping
