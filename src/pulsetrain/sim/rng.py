"""Deterministic, keyed random streams for the simulator.

Every random quantity of the simulated experiment is drawn from a stream named by the
simulator seed and a tuple of integers (what is drawn, the detector, the module, the train
ID, ...).  A stream never depends on what was drawn before it, so one module's constants or
one train's frames can be generated alone, in any order and in any process, and still be
identical bit for bit.
"""

from __future__ import annotations

import enum

import numpy as np

__all__ = ["Stream", "stream"]


class Stream(enum.IntEnum):
    """What a random stream is used for (its first key)."""

    TRUTH_PIXEL = 1
    TRUTH_CELL = 2
    BAD_PIXELS = 3
    HITS = 10
    PEAKS = 11
    SIGNAL = 12
    BANK = 20
    FAST = 21
    CAMERA = 30
    XGM = 31


def stream(seed: int, kind: Stream, *keys: int) -> np.random.Generator:
    """Return the random generator for ``(seed, kind, *keys)``.

    Parameters
    ----------
    seed : int
        The simulator seed (a non-negative integer).
    kind : Stream
        What the stream is used for.
    *keys : int
        Further non-negative integers naming the stream (detector, module, train ID, ...).

    Returns
    -------
    numpy.random.Generator
        A PCG64 generator; the same arguments always give the same sequence.
    """
    spawn_key = (int(kind), *(int(k) for k in keys))
    return np.random.Generator(
        np.random.PCG64(np.random.SeedSequence(int(seed), spawn_key=spawn_key))
    )
