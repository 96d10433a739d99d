"""Synthetic trains for the storage tests: 16 AGIPD modules, a motor and a camera."""

from __future__ import annotations

import numpy as np

from pulsetrain.files.timestamps import make_meta

FIRST_TRAIN = 1_400_000_000
T0_NS = 1_714_564_800_000_000_000  # 2024-05-01T12:00:00Z
MOTOR = "SPB_IRU_MOTORS/MOTOR/SAMPLE_X"
CAMERA = "SPB_IRU_CAM/CAM/SIDEMIC:daqOutput"


def agipd_source(module: int, corrected: bool = False) -> str:
    if corrected:
        return f"SPB_DET_AGIPD1M-1/CORR/{module}CH0:output"
    return f"SPB_DET_AGIPD1M-1/DET/{module}CH0:xtdf"


def frames_for(index: int, frames: int | list[int]) -> int:
    return frames if isinstance(frames, int) else frames[index % len(frames)]


def agipd_raw(module: int, tid: int, nframes: int, rng: np.random.Generator) -> dict:
    cells = np.arange(nframes, dtype=np.uint16)
    data = rng.integers(0, 16000, size=(nframes, 2, 512, 128), dtype=np.uint16)
    data[:, 0, 0, 0] = module * 100 + cells
    return {
        "image.data": data,
        "image.cellId": cells,
        "image.pulseId": (cells * 4).astype(np.uint64),
        "image.trainId": np.full(nframes, tid, dtype=np.uint64),
        "image.length": np.full(nframes, 262144, dtype=np.uint32),
        "image.status": np.zeros(nframes, dtype=np.uint16),
    }


def agipd_corr(module: int, tid: int, nframes: int, rng: np.random.Generator) -> dict:
    cells = np.arange(nframes, dtype=np.uint16)
    return {
        "image.data": rng.normal(size=(nframes, 512, 128)).astype(np.float32),
        "image.gain": rng.integers(0, 3, size=(nframes, 512, 128), dtype=np.uint8),
        "image.mask": rng.integers(0, 2, size=(nframes, 512, 128)).astype(np.uint32),
        "image.cellId": cells,
        "image.pulseId": (cells * 4).astype(np.uint64),
        "image.trainId": np.full(nframes, tid, dtype=np.uint64),
    }


def make_train(
    index: int,
    *,
    modules: int = 16,
    frames: int | list[int] = 2,
    corrected: bool = False,
    motor: bool = True,
    camera: bool = True,
    camera_shape: tuple[int, int] = (32, 40),
    skip_camera_every: int = 0,
    seed: int = 0,
) -> tuple[int, dict, dict]:
    """Train number *index* (0-based): (train ID, data, meta)."""
    tid = FIRST_TRAIN + index
    ns = T0_NS + index * 100_000_000
    rng = np.random.default_rng(seed * 100_003 + index)
    nframes = frames_for(index, frames)
    data: dict = {}
    for m in range(modules):
        src = agipd_source(m, corrected)
        maker = agipd_corr if corrected else agipd_raw
        data[src] = maker(m, tid, nframes, rng)
    if motor:
        data[MOTOR] = {
            "actualPosition.value": np.float64(0.5 * index),
            "actualPosition.timestamp": np.uint64(ns - 5_000_000),
            "targetPosition": 10.0,
            "state": "ON" if index % 2 == 0 else "MOVING",
            "encoderCounts": np.arange(3, dtype=np.int32) + index,
        }
    if camera and not (skip_camera_every and index % skip_camera_every == skip_camera_every - 1):
        data[CAMERA] = {
            "data.image.pixels": rng.integers(0, 4000, size=camera_shape, dtype=np.uint16),
            "data.image.dims": np.array(camera_shape[::-1], dtype=np.uint64),
            "data.trainId": np.uint64(tid),
        }
    meta = {src: make_meta(src, tid, ns) for src in data}
    return tid, data, meta
