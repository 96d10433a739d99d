"""Make ``agipd_kernel_fixture.npz``: AGIPD raw frames, constants and the kernel's output.

Run once, before the detector plug-in refactor (commit 8fe5333, ``correct_agipd`` of
``pulsetrain.calibration``), to freeze what the AGIPD correction produced then; the test
``tests/calibration/test_agipd_fixture.py`` checks that the refactored AGIPD path still gives
the same bits.  Do not regenerate it unless the AGIPD results are meant to change.

To stay small (< 1 MB) the module is tiled: each 16-row block (one kernel chunk) of a frame or
constant plane is one of three random patterns, so zlib finds the repeats.  The patterns cover
chunks all in high gain, mixed chunks with low-gain pixels, and chunks with no high gain; the
constants differ per memory cell and the cellIds come out of order with a repeat.

Cases (output arrays ``<case>_data``, ``<case>_gain``, ``<case>_mask``):

* ``default``   - the constants as they are (offset, gain stage, relative gain, bad pixels);
* ``common_mode`` - the same with ``common_mode=True``;
* ``bad_to_nan`` - the same with ``bad_to_nan=True``;
* ``unit_gain`` - relative gain all 1 (what the steps without ``relgain`` must give);
* ``no_bad``    - bad pixels all 0 (what the steps without ``badpixels`` must give);
* ``offset_only`` - relative gain 1 and no bad pixels.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from pulsetrain.calibration import AGIPDConstants, correct_agipd

ROWS, COLS, CHUNK_ROWS = 512, 128, 16
CELLS = 3
CELL_IDS = np.array([2, 0, 2, 1], np.uint16)


def tiled(rng: np.random.Generator, make, lead: tuple[int, ...]) -> np.ndarray:
    """``lead + (512, 128)``: each 16-row block one of three patterns made by ``make(shape)``."""
    out = np.empty((*lead, ROWS, COLS), dtype=make((1,)).dtype)
    for index in np.ndindex(*lead):
        patterns = [make((CHUNK_ROWS, COLS)) for _ in range(3)]
        for block in range(ROWS // CHUNK_ROWS):
            out[index][block * CHUNK_ROWS : (block + 1) * CHUNK_ROWS] = patterns[block % 3]
    return out


def main(path: Path) -> None:
    rng = np.random.default_rng(20261207)
    off_mean = np.array([5000.0, 5600.0, 6200.0])
    gains = np.array([0.1, 1.0, 5.0])
    offset = np.stack(
        [
            tiled(rng, lambda s, g=g: np.round(rng.normal(off_mean[g], 40, s)), (CELLS,))
            for g in range(3)
        ]
    ).astype(np.float32)
    rel_gain = np.stack(
        [
            tiled(rng, lambda s, g=g: gains[g] * rng.choice([0.97, 1.0, 1.01, 1.03], s), (CELLS,))
            for g in range(3)
        ]
    ).astype(np.float32)
    thresholds = np.stack(
        [
            tiled(rng, lambda s, t=t: np.round(rng.normal(t, 20, s)), (CELLS,))
            for t in (4750.0, 6250.0)
        ]
    ).astype(np.float32)
    flags = np.array([1, 2, 4, 8, 1 << 13, 1 << 19], np.uint32)
    bad = tiled(
        rng,
        lambda s: np.where(rng.random(s) < 0.03, rng.choice(flags, s), 0).astype(np.uint32),
        (3, CELLS),
    )

    raw = np.empty((len(CELL_IDS), 2, ROWS, COLS), np.uint16)
    shape = (CHUNK_ROWS, COLS)
    for f in range(len(CELL_IDS)):
        patterns = []
        for kind in range(3):  # 0 all high gain, 1 mixed with some low gain, 2 no high gain
            p = [[1.0, 0, 0], [0.97, 0.02, 0.01], [0, 0.7, 0.3]][kind]
            stage = rng.choice(3, shape, p=p)
            digital = np.array([4000.0, 5500.0, 7000.0])[stage] + rng.normal(0, 150, shape)
            analog = off_mean[stage] + rng.normal(0, 30, shape) + (rng.random(shape) < 0.05) * 300
            patterns.append(np.stack([analog, digital]).round().astype(np.uint16))
        for block in range(ROWS // CHUNK_ROWS):
            raw[f, :, block * CHUNK_ROWS : (block + 1) * CHUNK_ROWS] = patterns[(block + f) % 3]

    arrays = {
        "raw": raw,
        "cell_ids": CELL_IDS,
        "offset": offset,
        "rel_gain": rel_gain,
        "thresholds": thresholds,
        "bad_pixels": bad,
    }
    ones = np.ones_like(rel_gain)
    zeros = np.zeros_like(bad)
    cases = {
        "default": ((rel_gain, bad), {}),
        "common_mode": ((rel_gain, bad), {"common_mode": True}),
        "bad_to_nan": ((rel_gain, bad), {"bad_to_nan": True}),
        "unit_gain": ((ones, bad), {}),
        "no_bad": ((rel_gain, zeros), {}),
        "offset_only": ((ones, zeros), {}),
    }
    for name, ((rg, bp), options) in cases.items():
        constants = AGIPDConstants(offset=offset, rel_gain=rg, thresholds=thresholds, bad_pixels=bp)
        result = correct_agipd(raw, CELL_IDS, constants, **options)
        arrays[f"{name}_data"] = result.data
        arrays[f"{name}_gain"] = result.gain
        arrays[f"{name}_mask"] = result.mask
    np.savez_compressed(path, **arrays)
    print(f"{path}: {path.stat().st_size / 1e6:.2f} MB")


if __name__ == "__main__":
    main(
        Path(sys.argv[1])
        if len(sys.argv) > 1
        else Path(__file__).with_name("agipd_kernel_fixture.npz")
    )
