"""The simulated experiment: a 10 Hz clock driving a detector, a sample motor, an XGM and a camera."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Iterator, Sequence

from pulsetrain.errors import ConfigurationError
from pulsetrain.sim.camera import CAMERA_SOURCE, SidemicCamera
from pulsetrain.sim.clock import DEFAULT_FIRST_TRAIN_ID, TrainClock, source_meta
from pulsetrain.sim.detector import DetectorSimulator
from pulsetrain.sim.motor import SampleMotor
from pulsetrain.sim.parameters import SampleParameters
from pulsetrain.sim.slow_sources import (
    MOTOR_SOURCE,
    XGM_OUTPUT_SOURCE,
    XGM_SOURCE,
    motor_data,
    xgm_data,
)

__all__ = ["PARTS", "PART_GROUPS", "SimulatedExperiment"]

log = logging.getLogger(__name__)

#: Parts of a train that ``include=`` can name.
PARTS = ("detector", "motor", "xgm", "xgm_output", "camera")
#: Names for several parts at once.
PART_GROUPS = {
    "all": PARTS,
    "slow": ("motor", "xgm"),
    "fast": ("detector", "xgm_output", "camera"),
}

Include = Iterable[str | int] | str | int | None


class SimulatedExperiment:
    """A whole simulated experiment, one train at a time.

    Parameters
    ----------
    detector : str
        Detector type, see :class:`DetectorSimulator`.
    frames : int
        Frames per train.
    seed : int
        Seed of everything random; same seed, same bytes (for ``meta`` timestamps and motor
        commands, also pass ``start_time`` and issue the same commands).
    first_train_id : int
        Train ID of the first train.
    start_time : float, optional
        Timestamp (s since the epoch) of the first train; default the wall clock now.
    modules : sequence of int, optional
        Detector modules to simulate (default all).
    motor : SampleMotor, optional
        The sample motor (default: at 0 mm, 1 mm/s, limits +/-10 mm).
    sample : SampleParameters, optional
        Sample model (hit probability versus motor position, ring, peaks).
    xgm_pulse_energy_uj : float
        Mean XGM pulse energy.
    camera : SidemicCamera, optional
        The side-view camera.
    exact : bool
        Use the detector's exact path instead of the fast path (slow).
    **detector_kwargs
        Passed to :class:`DetectorSimulator` (``memory_cells``, ``dark``,
        ``photon_energy_kev``, ``detector_distance_m``, ...).

    Notes
    -----
    Train ``n`` happens ``(n - first_train_id) * 0.1`` simulated seconds after the first; before
    each train the motor is advanced by the time since the previous train (0.1 s), and the
    train's hits follow the motor's actual position at that time.  ``include=`` picks what a train holds: part names
    (``"detector"``, ``"motor"``, ``"xgm"``, ``"xgm_output"``, ``"camera"``, or groups
    ``"slow"``, ``"fast"``, ``"all"``), module numbers (ints) and source names.
    """

    def __init__(
        self,
        detector: str = "AGIPD",
        frames: int = 16,
        seed: int = 0,
        first_train_id: int = DEFAULT_FIRST_TRAIN_ID,
        *,
        start_time: float | None = None,
        modules: Sequence[int] | None = None,
        motor: SampleMotor | None = None,
        sample: SampleParameters | None = None,
        xgm_pulse_energy_uj: float = 1500.0,
        camera: SidemicCamera | None = None,
        exact: bool = False,
        **detector_kwargs,
    ):
        self.clock = TrainClock(first_train_id, start_time)
        self.seed = int(seed)
        self.simulator = DetectorSimulator(
            detector,
            frames=frames,
            seed=seed,
            modules=modules,
            sample=sample,
            clock=self.clock,
            **detector_kwargs,
        )
        self.motor = motor or SampleMotor()
        self.camera = camera or SidemicCamera()
        self.xgm_pulse_energy_uj = float(xgm_pulse_energy_uj)
        self.exact = bool(exact)
        self._next_tid = self.clock.first_train_id
        self._last_elapsed_s: float | None = None
        self._lock = threading.Lock()

    # -- properties -----------------------------------------------------------------------------
    @property
    def sample(self) -> SampleParameters:
        """The sample model."""
        return self.simulator.sample

    @property
    def frames(self) -> int:
        """Frames per train."""
        return self.simulator.frames

    @property
    def next_train_id(self) -> int:
        """Train ID that :meth:`next_train` makes next."""
        return self._next_tid

    def sources(self, include: Include = None) -> list[str]:
        """Source names a train holds with this ``include``."""
        modules, parts = self._resolve(include)
        out = [self.simulator.source(m) for m in modules]
        names = {
            "motor": MOTOR_SOURCE,
            "xgm": XGM_SOURCE,
            "xgm_output": XGM_OUTPUT_SOURCE,
            "camera": CAMERA_SOURCE,
        }
        out += [names[p] for p in PARTS[1:] if p in parts]
        return out

    def _resolve(self, include: Include) -> tuple[list[int], set[str]]:
        if include is None:
            return list(self.simulator.modules), set(PARTS)
        if isinstance(include, (str, int)):
            include = [include]
        modules: list[int] = []
        parts: set[str] = set()
        by_source = {self.simulator.source(m): m for m in self.simulator.modules}
        aux = {MOTOR_SOURCE: "motor", XGM_SOURCE: "xgm", XGM_OUTPUT_SOURCE: "xgm_output"}
        aux[CAMERA_SOURCE] = "camera"
        for item in include:
            if isinstance(item, int) and not isinstance(item, bool):
                if item not in self.simulator.modules:
                    raise ConfigurationError(
                        f"module {item} is not simulated (modules {self.simulator.modules})"
                    )
                modules.append(item)
            elif item in PART_GROUPS:
                parts.update(PART_GROUPS[item])
            elif item in PARTS:
                parts.add(item)
            elif item in by_source:
                modules.append(by_source[item])
            elif item in aux:
                parts.add(aux[item])
            else:
                raise ConfigurationError(
                    f"cannot include {item!r}: give a module number, a source name or one of "
                    f"{', '.join(PARTS + tuple(PART_GROUPS))}"
                )
        if "detector" in parts:
            modules = list(self.simulator.modules)
        parts.discard("detector")
        return sorted(set(modules)), parts

    # -- trains ---------------------------------------------------------------------------------
    def next_train(self, include: Include = None) -> tuple[int, dict, dict]:
        """Make the next train.

        Parameters
        ----------
        include : optional
            What to include (default everything), see the class notes.

        Returns
        -------
        (int, dict, dict)
            ``(train_id, data, meta)`` in the Karabo bridge convention.
        """
        modules, parts = self._resolve(include)
        with self._lock:
            tid = self._next_tid
            self._next_tid += 1
            elapsed = self.clock.elapsed_s(tid)
            if self._last_elapsed_s is not None:
                self.motor.advance(elapsed - self._last_elapsed_s)
            self._last_elapsed_s = elapsed
            position = self.motor.actual_position
            motor_keys = motor_data(self.motor)
        ts_ns = self.clock.timestamp_ns(tid)
        data: dict[str, dict] = {}
        if modules:
            det, _ = self.simulator.train(tid, position, modules=modules, exact=self.exact)
            data.update(det)
        if "motor" in parts:
            data[MOTOR_SOURCE] = motor_keys
        if "xgm" in parts or "xgm_output" in parts:
            slow, fast = xgm_data(self.seed, tid, self.frames, self.xgm_pulse_energy_uj)
            if "xgm" in parts:
                data[XGM_SOURCE] = slow
            if "xgm_output" in parts:
                data[XGM_OUTPUT_SOURCE] = fast
        if "camera" in parts:
            data[CAMERA_SOURCE] = self.camera.image(self.seed, tid, position, self.sample)
        meta = {src: source_meta(src, tid, ts_ns) for src in data}
        return tid, data, meta

    def trains(
        self, n: int | None = None, include: Include = None
    ) -> Iterator[tuple[int, dict, dict]]:
        """Iterate over the next ``n`` trains (forever if ``n`` is None)."""
        count = 0
        while n is None or count < n:
            yield self.next_train(include)
            count += 1

    def __repr__(self) -> str:
        return f"SimulatedExperiment({self.simulator!r}, next_train_id={self._next_tid}, {self.motor!r})"
