"""A device for tests/faults/test_lifecycle.py: its ``initialize`` always fails, a failure no
check before the start can see (the class exists and its configuration is valid)."""

from __future__ import annotations

from typing import ClassVar

from pulsetrain.runtime.device import Device, Property

__all__ = ["FailingInit"]


class FailingInit(Device):
    """Fails in ``initialize`` with a message naming ``reason``."""

    inputs: ClassVar[dict[str, dict]] = {"input": {}}

    reason = Property(str, "injected start failure", access="init")

    def initialize(self) -> None:
        raise RuntimeError(self.reason)
