"""A simulated experiment: AGIPD-1M, LPD-1M and JUNGFRAU detectors, a sample motor, slow data.

Deterministic with a seed.  The main entry points are :class:`DetectorSimulator` (raw detector
trains, exact and fast paths, ground truth) and :class:`SimulatedExperiment` (a 10 Hz clock
driving the detector, a :class:`SampleMotor`, an XGM and a camera).  See ``docs/simulator.md``.
"""

from pulsetrain.sim.camera import CAMERA_SOURCE, SidemicCamera
from pulsetrain.sim.clock import DEFAULT_FIRST_TRAIN_ID, TrainClock, source_meta
from pulsetrain.sim.detector import DARK_STAGES, DetectorSimulator
from pulsetrain.sim.detectors import DETECTORS, DetectorSpec, detector_spec
from pulsetrain.sim.encoding import decode
from pulsetrain.sim.experiment import PARTS, SimulatedExperiment
from pulsetrain.sim.motor import SampleMotor
from pulsetrain.sim.parameters import GainModelParameters, SampleParameters, hit_probability
from pulsetrain.sim.slow_sources import MOTOR_SOURCE, XGM_OUTPUT_SOURCE, XGM_SOURCE
from pulsetrain.sim.truth import ModuleTruth, SignalTruth, load_truth

__all__ = [
    "CAMERA_SOURCE",
    "DARK_STAGES",
    "DEFAULT_FIRST_TRAIN_ID",
    "DETECTORS",
    "MOTOR_SOURCE",
    "PARTS",
    "XGM_OUTPUT_SOURCE",
    "XGM_SOURCE",
    "DetectorSimulator",
    "DetectorSpec",
    "GainModelParameters",
    "ModuleTruth",
    "SampleMotor",
    "SampleParameters",
    "SidemicCamera",
    "SignalTruth",
    "SimulatedExperiment",
    "TrainClock",
    "decode",
    "detector_spec",
    "hit_probability",
    "load_truth",
    "source_meta",
]
