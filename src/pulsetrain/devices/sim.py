"""Simulated facility devices: a multi-module detector with slow data, and a sample motor."""

from __future__ import annotations

import threading
import time

import numpy as np

from pulsetrain.errors import PropertyError
from pulsetrain.protocol import make_meta
from pulsetrain.runtime.device import Device, ProducerDevice, Property, State, slot
from pulsetrain.sim import (
    CAMERA_SOURCE,
    DEFAULT_FIRST_TRAIN_ID,
    DETECTORS,
    MOTOR_SOURCE,
    XGM_SOURCE,
    DetectorSimulator,
    SampleMotor,
    SidemicCamera,
)
from pulsetrain.sim.slow_sources import xgm_data

__all__ = ["SimulatedDetector", "SimulatedMotor"]

N_OUTPUTS = 16


class SimulatedDetector(ProducerDevice):
    """The simulated experiment as a train source: detector modules, slow data and a camera.

    Writes one train per ``1 / rate`` seconds: module ``m`` on output ``module{m}`` (one output
    per module, as each detector module has its own pipeline at EuXFEL), and on ``slow`` the
    sample-motor source (position read from ``motor_device`` through the control plane), the XGM
    and a side-view camera.  The chance of a Bragg "hit" per pulse follows the motor's position.
    The frame banks of the fast path are built by a helper thread at start; trains follow once
    they are ready (``prepared``).
    """

    outputs = tuple(f"module{m}" for m in range(N_OUTPUTS)) + ("slow",)

    detector = Property(
        str,
        "AGIPD",
        access="init",
        description="detector type: any detector plug-in with a simulator description",
    )
    frames = Property(
        int, 16, minimum=1, maximum=2700, access="init", description="frames (pulses) per train"
    )
    memory_cells = Property(
        int,
        0,
        minimum=0,
        maximum=2700,
        access="init",
        description="memory cells (0: detector default)",
    )
    modules = Property(list, [], access="init", description="modules to simulate (empty: all)")
    seed = Property(int, 0, minimum=0, access="init")
    dark = Property(
        str,
        "",
        options=("", "HG", "MG", "LG"),
        access="init",
        description="dark run with the gain forced to this stage",
    )
    rate = Property(
        float,
        10.0,
        minimum=0.0,
        maximum=1000.0,
        unit="Hz",
        description="trains per second (0: as fast as possible)",
    )
    n_trains = Property(int, 0, minimum=0, description="stop after this many trains (0: never)")
    motor_device = Property(
        str, "", access="init", description="device ID of the sample motor (empty: fixed position)"
    )
    sample_position = Property(
        float, 0.0, unit="mm", description="sample position used when there is no motor device"
    )
    first_train_id = Property(int, DEFAULT_FIRST_TRAIN_ID, minimum=0, access="init")
    detector_distance = Property(float, 0.2, minimum=0.05, maximum=10.0, unit="m", access="init")
    photon_energy = Property(float, 9.3, minimum=1.0, maximum=30.0, unit="keV", access="init")

    trainId = Property(int, 0, access="readonly", description="last train ID written")
    prepared = Property(
        bool, False, access="readonly", description="frame banks built: trains come at the set rate"
    )
    hitProbability = Property(
        float,
        0.0,
        access="readonly",
        description="per-pulse hit probability at the motor's position",
    )
    generationTime = Property(
        float, 0.0, access="readonly", unit="s", description="time to simulate the last train"
    )

    def initialize(self) -> None:
        names = list(DETECTORS)  # every detector plug-in that can be simulated
        if self.detector not in names:
            raise PropertyError(f"detector: {self.detector!r} is not one of {names}")
        self.sim = DetectorSimulator(
            self.detector,
            frames=self.frames,
            memory_cells=self.memory_cells or None,
            seed=self.seed,
            dark=self.dark or None,
            modules=self.modules or None,
            photon_energy_kev=self.photon_energy,
            detector_distance_m=self.detector_distance,
        )
        if len(self.sim.modules) and max(self.sim.modules) >= N_OUTPUTS:
            raise ValueError(f"at most {N_OUTPUTS} modules have outputs")
        self.camera = SidemicCamera()
        self._position = float(self.sample_position)
        self._motor_state: dict = {}
        self._tid = self.first_train_id
        self._banks_ready = threading.Event()
        if self.motor_device:
            self._motor = self.remote(self.motor_device)
            threading.Thread(
                target=self._follow_motor, daemon=True, name=f"motor-poll:{self.device_id}"
            ).start()
        threading.Thread(
            target=self._prepare, daemon=True, name=f"sim-prepare:{self.device_id}"
        ).start()

    def _prepare(self) -> None:
        """Build the fast path's frame banks (helper thread) before the first train."""
        try:
            self.sim.prepare(self.sim.modules)
        except Exception as exc:  # noqa: BLE001 - the first train builds them instead
            self.log.warning("preparing the simulator failed: %s", exc)
        self._banks_ready.set()
        self.record(prepared=True)  # handed over to the device's thread

    def _follow_motor(self) -> None:
        """Poll the motor's position at 20 Hz (the facility's view of where the sample is)."""
        while not self.stopping:
            try:
                cfg = self._motor.client.get(self.motor_device)
                self._position = float(cfg["actualPosition"])
                self._motor_state = cfg
            except Exception as exc:  # noqa: BLE001 - motor unreachable: keep the last position
                self.log.debug("motor poll failed: %s", exc)
            self.wait_stop(0.05)

    def _allocate(self, module: int, key: str, shape: tuple, dtype) -> np.ndarray:
        """Module frames go straight into the module output's shared memory (when useful)."""
        return self.allocate(f"module{module}", (shape, dtype))[0]

    def _slow(self, tid: int, ts: float) -> tuple[dict, dict]:
        m = self._motor_state
        motor = {
            "actualPosition.value": np.float64(self._position),
            "targetPosition.value": np.float64(m.get("targetPosition", self._position)),
            "velocity.value": np.float64(m.get("velocity", 0.0)),
            "state.value": str(m.get("state", "ON")),
        }
        xgm, _ = xgm_data(self.seed, tid, self.frames, 1500.0)
        cam = self.camera.image(self.seed, tid, self._position, self.sim.sample)
        data = {MOTOR_SOURCE: motor, XGM_SOURCE: xgm, CAMERA_SOURCE: cam}
        return data, {s: make_meta(s, tid, ts) for s in data}

    def produce(self) -> bool:
        if not self._banks_ready.is_set():
            return False
        tid = self._tid
        ts = time.time()
        t0 = time.perf_counter()
        position = self._position
        data, meta = self.sim.train(tid, position, timestamp=ts, alloc=self._allocate)
        slow, slow_meta = self._slow(tid, ts)
        self.record(generationTime=time.perf_counter() - t0)
        for m in self.sim.modules:
            src = self.sim.source(m)
            self.write(f"module{m}", {src: data[src]}, {src: meta[src]})
        self.write("slow", slow, slow_meta)
        self._tid += 1
        self.record(trainId=tid, hitProbability=float(self.sim.hit_probability(position)))
        return True


class SimulatedMotor(Device):
    """A linear sample stage (Karabo motor interface: targetPosition, move, stop, ON/MOVING)."""

    actualPosition = Property(float, 0.0, unit="mm", access="readonly")
    targetPosition = Property(
        float, 0.0, unit="mm", minimum=-10.0, maximum=10.0, description="where `move` goes"
    )
    velocity = Property(float, 1.0, unit="mm/s", minimum=0.001, maximum=10.0)
    initialPosition = Property(float, 0.0, unit="mm", access="init")
    swLimitLow = Property(float, -10.0, unit="mm", access="init")
    swLimitHigh = Property(float, 10.0, unit="mm", access="init")
    moves = Property(int, 0, access="readonly", description="moves started")

    def initialize(self) -> None:
        self.motor = SampleMotor(
            self.initialPosition, self.velocity, (self.swLimitLow, self.swLimitHigh)
        )
        self.set_limits("targetPosition", self.swLimitLow, self.swLimitHigh)
        self.update(actualPosition=self.initialPosition, targetPosition=self.initialPosition)
        self._last = time.monotonic()
        self.every(0.02, self._tick)
        self.set_state(State.ON)

    def on_set(self, key: str, value: object) -> None:
        if key == "velocity":
            self.motor.set_velocity(float(value))

    @slot(allowed_states=("ON",), description="Move to targetPosition")
    def move(self) -> None:
        """Move to ``targetPosition``."""
        self.motor.move(self.targetPosition)
        self.count("moves")
        self._tick()

    @slot(allowed_states=("MOVING",), description="Stop where the motor is", name="stop")
    def stop_motion(self) -> None:
        """Stop where the motor is."""
        self.motor.stop()
        self._tick()

    def _tick(self) -> None:
        now = time.monotonic()
        self.motor.advance(now - self._last)
        self._last = now
        pos = self.motor.actual_position
        if pos != self.actualPosition:
            self.update(actualPosition=pos)
        state = State.MOVING if self.motor.state == "MOVING" else State.ON
        if self.state != state.value and self.state != State.ERROR.value:
            self.set_state(state)
