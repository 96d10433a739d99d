"""Feedback from data analysis into control: find and hold the sample position.

Pure strategy code, usable without devices: :class:`HitRateOptimizer` decides where the sample
motor should go from per-train hit counts; :func:`run_simulated_feedback` runs it against the
simulated experiment in simulated time.  The :class:`~pulsetrain.devices.feedback.FeedbackController`
device drives a real (or simulated) motor with it through the control plane.
"""

from pulsetrain.feedback.controller import (
    Decision,
    FeedbackSettings,
    HitRateOptimizer,
    MoveRequest,
    Phase,
)
from pulsetrain.feedback.simulation import (
    SimulationResult,
    SimulationStep,
    run_simulated_feedback,
)

__all__ = [
    "Decision",
    "FeedbackSettings",
    "HitRateOptimizer",
    "MoveRequest",
    "Phase",
    "SimulationResult",
    "SimulationStep",
    "run_simulated_feedback",
]
