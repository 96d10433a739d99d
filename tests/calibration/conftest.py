"""Small synthetic AGIPD data for the calibration tests (independent of pulsetrain.sim)."""

from __future__ import annotations

import numpy as np
import pytest

from pulsetrain.calibration import AGIPDConstants, BadPixels

#: Mean digital level per gain stage, and the thresholds between them.
LEVELS = np.array([4000.0, 5500.0, 7000.0])
THRESHOLDS = np.array([4750.0, 6250.0])


def synthetic_constants(cells: int, seed: int = 0, *, nan_fraction: float = 0.0) -> AGIPDConstants:
    """Random but plausible constants: per-stage offsets ~N(mean, 50), relative gains
    around 1/10/50, thresholds jittered around the midpoints, 2 % random bad flags."""
    rng = np.random.default_rng(seed)
    shape = (3, cells, 512, 128)
    offset = rng.normal(np.array([5000.0, 5600.0, 6200.0])[:, None, None, None], 50.0, shape)
    rel_gain = rng.normal(np.array([0.1, 1.0, 5.0])[:, None, None, None], 0.01, shape)
    thresholds = THRESHOLDS[:, None, None, None] + rng.normal(0, 30.0, (2, *shape[1:]))
    flags = np.array([int(f) for f in BadPixels], dtype=np.uint64)
    bad = np.where(rng.random(shape) < 0.02, rng.choice(flags, shape), 0).astype(np.uint32)
    if nan_fraction:
        offset[rng.random(shape) < nan_fraction] = np.nan
        rel_gain[rng.random(shape) < nan_fraction] = np.nan
        thresholds[rng.random((2, *shape[1:])) < nan_fraction] = np.nan
    return AGIPDConstants(offset, rel_gain, thresholds, bad)


def synthetic_raw(frames: int, seed: int = 1) -> np.ndarray:
    """Raw frames with a random per-pixel gain mix (70/20/10 %) and some digital values
    exactly on the nominal thresholds."""
    rng = np.random.default_rng(seed)
    u = rng.random((frames, 512, 128))
    stage = np.where(u < 0.7, 0, np.where(u < 0.9, 1, 2))
    raw = np.empty((frames, 2, 512, 128), np.uint16)
    raw[:, 0] = rng.integers(4000, 9000, (frames, 512, 128))
    digital = LEVELS[stage] + rng.normal(0, 400.0, stage.shape)
    on_threshold = rng.random(stage.shape) < 0.01
    digital[on_threshold] = rng.choice(THRESHOLDS, int(on_threshold.sum()))
    raw[:, 1] = np.clip(digital, 0, 65535)
    return raw


@pytest.fixture(scope="module")
def constants() -> AGIPDConstants:
    return synthetic_constants(cells=12, seed=0)


@pytest.fixture(scope="module")
def raw() -> np.ndarray:
    return synthetic_raw(frames=10, seed=1)


@pytest.fixture(scope="session")
def make_constants():
    """Factory: ``make_constants(cells, seed=0, nan_fraction=0.0)``."""
    return synthetic_constants


@pytest.fixture(scope="session")
def make_raw():
    """Factory: ``make_raw(frames, seed=1)``."""
    return synthetic_raw
