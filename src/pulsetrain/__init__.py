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
    "Device": "pulsetrain.device",
    "ProducerDevice": "pulsetrain.device",
    "Property": "pulsetrain.device",
    "State": "pulsetrain.device",
    "slot": "pulsetrain.device",
    "register_device_class": "pulsetrain.device",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'pulsetrain' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
