"""pulsetrain: train-by-train data analysis for pulsed X-ray facilities.

The names a device author needs are importable from here (``from pulsetrain import Device,
Property, slot``); they are loaded on first use, so ``import pulsetrain`` itself stays cheap
(the command line imports only what a sub-command needs).
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

#: Name → module of the public names offered at the top of the package.
_EXPORTS = {
    "Device": "pulsetrain.runtime.device",
    "ProducerDevice": "pulsetrain.runtime.device",
    "Property": "pulsetrain.runtime.device",
    "State": "pulsetrain.runtime.device",
    "slot": "pulsetrain.runtime.device",
    "register_device_class": "pulsetrain.runtime.device",
}

__all__ = [
    "Device",
    "ProducerDevice",
    "Property",
    "State",
    "__version__",
    "register_device_class",
    "slot",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'pulsetrain' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
