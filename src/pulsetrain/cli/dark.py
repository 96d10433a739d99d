"""``pulsetrain dark``: characterise a detector's dark runs and store the constants.

``pulsetrain dark --detector D RUN...`` takes the runs the detector's dark procedure needs,
in its stage order (AGIPD: HG, MG, LG).  The workflow, including the checks that refuse runs
which are not dark runs of the stated gain stages, is :func:`pulsetrain.calibration.darkruns.characterize_dark_runs`; this module
only parses the arguments and reports.
"""

from __future__ import annotations

import argparse

from pulsetrain.cli._args import (
    add_catalogue_arguments,
    add_condition_arguments,
    non_negative_int,
    positive_int,
)

EPILOG = """examples:
  pulsetrain simulate --out dark --trains 20 --frames 64 --dark HG   # r0001
  pulsetrain simulate --out dark --trains 20 --frames 64 --dark MG   # r0002
  pulsetrain simulate --out dark --trains 20 --frames 64 --dark LG   # r0003
  pulsetrain dark dark/r0001 dark/r0002 dark/r0003 --catalog cat.sqlite --rel-gain-from-sim
  pulsetrain dark --detector LPD lpd/r0001 lpd/r0002 lpd/r0003 --catalog cat.sqlite

The runs are given in the detector's stage order (AGIPD: HG MG LG); `--detector` takes a
detector type (AGIPD, LPD, JUNGFRAU, ...) or a detector's name in the catalogue.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "dark",
        help="dark constants (offset, noise, bad pixels, ...) from a detector's dark runs",
        description="Characterise a detector's dark runs (AGIPD: the gain forced to high, "
        "medium and low, in that order) and store its dark constants (AGIPD: Offset, Noise, "
        "ThresholdsDark and BadPixelsDark) per module in the catalogue.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "runs",
        nargs="+",
        metavar="RUN",
        help="dark run directories in the detector's stage order (AGIPD: HG MG LG)",
    )
    add_catalogue_arguments(p)
    p.add_argument(
        "--memory-cells",
        type=positive_int,
        default=None,
        help="memory cells of the constants (default: highest cellId + 1)",
    )
    p.add_argument("--modules", type=non_negative_int, nargs="*", default=None)
    add_condition_arguments(p)
    p.add_argument(
        "--rel-gain-from-sim",
        action="store_true",
        help="also store the gain constants (AGIPD: RelativeGain) from the simulator's truth "
        "(seed --seed)",
    )
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.set_defaults(func=run)


def _relative_gain_from_sim(plugin, seed: int):
    """The gain constants (those not from dark runs) from the simulator's truth (the simulator
    is made once, on first use)."""
    from functools import lru_cache

    from pulsetrain.calibration.darkruns import RelativeGainSource
    from pulsetrain.sim import DetectorSimulator

    @lru_cache(maxsize=1)
    def simulator(cells: int) -> DetectorSimulator:
        return DetectorSimulator(plugin.sim_name, frames=1, memory_cells=cells, seed=seed)

    def gain(module: int, cells: int) -> dict:
        truth = plugin.truth_constants(simulator(cells).truth(module))
        return {t: a for t, a in truth.items() if t not in plugin.dark_constants}

    return RelativeGainSource(rel_gain=gain, comment=f"simulator truth, seed {seed}")


class _Progress:
    """One tqdm bar per module; a line per module when its constants are stored."""

    def __init__(self) -> None:
        self._module: int | None = None
        self._bar = None

    def frames(self, module: int, _stage: str, n: int) -> None:
        from tqdm import tqdm

        if module != self._module:
            self.close()
            self._module = module
            self._bar = tqdm(desc=f"module {module:2d}", unit="frame")
        self._bar.update(n)

    def stored(self, result) -> None:
        self.close()
        items = list(result.constants.items())
        dark = [(k, r) for k, r in items if r.comment is None]
        other = [(k, r) for k, r in items if r.comment is not None]
        line = (
            f"module {result.module}: stored {', '.join(f'{k}#{r.id}' for k, r in dark)}; "
            f"{result.bad_pixels} bad pixels"
        )
        if other:
            line += "; " + ", ".join(f"{k}#{r.id}" for k, r in other)
        print(line)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        self._module = None


def run(args: argparse.Namespace) -> int:
    """Check the dark runs, characterise them and store the constants (a thin CLI over
    :func:`pulsetrain.calibration.darkruns.characterize_dark_runs`)."""
    import sys

    from pulsetrain.calibration.darkruns import characterize_dark_runs
    from pulsetrain.catalog import Catalog, Conditions
    from pulsetrain.detectors import resolve_detector
    from pulsetrain.errors import ConfigurationError, DarkRunError

    try:
        plugin, name = resolve_detector(args.detector)
    except ConfigurationError as exc:
        print(f"pulsetrain dark: error: {exc}", file=sys.stderr)
        return 2

    conditions = Conditions(
        memory_cells=args.memory_cells,
        bias_voltage=args.bias_voltage,
        acquisition_rate=args.acquisition_rate,
        gain_setting=args.gain_setting,
        gain_mode=0,
        integration_time=args.integration_time,
    )
    rel_gain = _relative_gain_from_sim(plugin, args.seed) if args.rel_gain_from_sim else None
    progress = _Progress()
    with Catalog(args.catalog or None) as cat:
        try:
            result = characterize_dark_runs(
                args.runs,
                cat,
                conditions,
                detector=name,
                detector_type=plugin.name,
                modules=args.modules,
                rel_gain=rel_gain,
                progress=progress.frames,
                on_module=progress.stored,
            )
        except DarkRunError as exc:
            for problem in exc.problems:
                print(f"pulsetrain dark: error: {problem}", file=sys.stderr)
            print("pulsetrain dark: nothing stored", file=sys.stderr)
            return 2
        finally:
            progress.close()
    print(
        f"{len(result.modules)} modules, {result.n_trains} trains, conditions: "
        f"memory_cells={result.conditions.memory_cells}"
    )
    return 0
