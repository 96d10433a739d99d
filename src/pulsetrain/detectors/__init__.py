"""Detector plug-ins: one :class:`~pulsetrain.detectors.base.Detector` per detector type.

``get_detector("AGIPD")`` returns the plug-in; ``docs/detectors.md`` describes the contract.
The package's ``__init__`` imports only the contract and the registry (both light); each
plug-in module is loaded when its detector is asked for.
"""

from pulsetrain.detectors.base import STEPS, ConstantType, Detector, RawCodec, RawKey, parse_steps
from pulsetrain.detectors.registry import (
    detector_names,
    get_detector,
    register_detector,
    resolve_detector,
)

__all__ = [
    "STEPS",
    "ConstantType",
    "Detector",
    "RawCodec",
    "RawKey",
    "detector_names",
    "get_detector",
    "parse_steps",
    "register_detector",
    "resolve_detector",
]
