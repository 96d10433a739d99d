"""Helpers of the offline tests: the small simulated run they share."""

from __future__ import annotations

import contextlib
import io

MODULES = (0, 1)
FRAMES = 8
CELLS = 16
TRAINS = 6
SEQUENCE_TRAINS = 3  # two sequence files per module


def simulate(
    out_dir,
    *,
    trains=TRAINS,
    frames=FRAMES,
    modules=MODULES,
    cells=CELLS,
    sequence_trains=SEQUENCE_TRAINS,
    sample_position=2.5,
    extra=(),
):
    """Record a raw run with ``pulsetrain simulate`` (in-process); returns its directory."""
    from pulsetrain.cli import main

    argv = [
        "simulate",
        "--out",
        str(out_dir),
        "--trains",
        str(trains),
        "--frames",
        str(frames),
        "--modules",
        *map(str, modules),
        "--memory-cells",
        str(cells),
        "--sequence-trains",
        str(sequence_trains),
        "--sample-position",
        str(sample_position),
        *extra,
    ]
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        assert main(argv) == 0
    runs = sorted(p for p in out_dir.iterdir() if p.name.startswith("r"))
    return runs[-1]
