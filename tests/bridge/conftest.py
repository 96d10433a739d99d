"""Fixtures of the bridge tests (helpers live in _bridge_helpers.py)."""

from __future__ import annotations

import pytest
import zmq
from _bridge_helpers import Process


@pytest.fixture
def context():
    """A ZeroMQ context, destroyed (linger 0) after the test."""
    ctx = zmq.Context()
    yield ctx
    ctx.destroy(linger=0)


@pytest.fixture
def processes():
    """Start command-line processes; all are stopped at the end of the test."""
    started: list[Process] = []

    def start(*args: str) -> Process:
        p = Process(list(args))
        started.append(p)
        return p

    yield start
    for p in started:
        p.stop()
