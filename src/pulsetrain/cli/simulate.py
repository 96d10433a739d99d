"""``pulsetrain simulate``: record a raw run of the simulated experiment."""

from __future__ import annotations

import argparse
import sys
import time

from pulsetrain.cli._args import (
    finite_float,
    frame_count,
    non_negative_int,
    output_directory,
    positive_int,
)

EPILOG = """examples:
  pulsetrain simulate --out data/raw --trains 100                 # AGIPD-1M, 16 frames
  pulsetrain simulate --out data/raw --trains 20 --frames 64 --dark HG
  pulsetrain simulate --out data/raw --trains 20 --detector LPD --dark 1   # LPD's stage 1
  pulsetrain simulate --out data/raw --trains 50 --modules 0 1 2 3 --catalog cat.sqlite
"""


def _detector_type(text: str):
    """A detector plug-in by type name."""
    from pulsetrain.detectors import get_detector
    from pulsetrain.errors import ConfigurationError

    try:
        return get_detector(text)
    except ConfigurationError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "simulate",
        help="record a raw run of the simulated experiment",
        description="Record a raw run (EuXFEL HDF5) of the simulated experiment through the DAQ "
        "writer, as fast as the machine allows: detector modules, motor, XGM and camera.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--out", required=True, type=output_directory, help="directory for run directories (rNNNN)"
    )
    p.add_argument("--trains", type=positive_int, required=True)
    p.add_argument(
        "--detector",
        default="AGIPD",
        type=_detector_type,
        help="detector type: AGIPD (default), LPD, JUNGFRAU, ... (any detector plug-in)",
    )
    p.add_argument("--frames", type=frame_count, default=16)
    p.add_argument("--memory-cells", type=positive_int, default=None)
    p.add_argument("--modules", type=non_negative_int, nargs="*", default=None)
    p.add_argument(
        "--dark",
        default=None,
        metavar="STAGE",
        help="dark run with the gain forced to STAGE: the detector's stage name "
        "(AGIPD: HG, MG, LG) or its index 0, 1, 2 (exact noise: slower)",
    )
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.add_argument(
        "--sample-position",
        type=finite_float,
        default=None,
        help="fixed sample position in mm (default: the motor stays at 0 mm)",
    )
    p.add_argument("--sequence-trains", type=positive_int, default=500)
    p.add_argument("--proposal", type=positive_int, default=900001)
    p.add_argument("--catalog", default="", help="record the run in this catalogue")
    p.add_argument("--no-slow", action="store_true", help="detector data only")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from pulsetrain.errors import PulsetrainError
    from pulsetrain.files.recorder import RunRecorder
    from pulsetrain.sim import SampleMotor, SimulatedExperiment

    plugin = args.detector
    stage = None
    try:
        if args.dark is not None:
            stage = plugin.stage_index(args.dark)
        motor = SampleMotor(position_mm=args.sample_position or 0.0)
        exp = SimulatedExperiment(
            plugin.sim_name,
            frames=args.frames,
            seed=args.seed,
            modules=args.modules,
            memory_cells=args.memory_cells,
            dark=stage,
            motor=motor,
            exact=stage is not None,
        )
    except PulsetrainError as exc:
        print(f"pulsetrain simulate: error: {exc}", file=sys.stderr)
        return 2
    dark_name = None if stage is None else plugin.gain_stages[stage]
    try:
        recorder = RunRecorder(
            args.out,
            proposal=args.proposal,
            catalog=args.catalog,
            sequence_trains=args.sequence_trains,
            gather_trains=0,
            run_type=f"dark-{dark_name}" if dark_name else "raw",
            sample="dark" if dark_name else "water jet + crystals",
        )
    except PulsetrainError as exc:
        print(f"error: cannot open a run in {args.out}: {exc}", file=sys.stderr)
        return 1
    number = recorder.run_number
    include = ["detector"] if args.no_slow or dark_name else None
    t0 = time.perf_counter()
    try:
        with tqdm(total=args.trains, unit="train", desc=f"run {number}") as bar:
            for _tid, data, meta in exp.trains(args.trains, include=include):
                recorder.add(data, meta)
                bar.update(1)
                bar.set_postfix(GB=f"{recorder.bytes_written / 1e9:.2f}")
        summary = recorder.close()
    except PulsetrainError as exc:
        try:
            recorder.close()  # what was written stays valid and readable
        except PulsetrainError:
            pass
        print(f"error: run {number}: {exc}", file=sys.stderr)
        return 1
    dt = time.perf_counter() - t0
    print(
        f"run {number}: {summary['trains']} trains, {len(summary['files'])} files, "
        f"{summary['bytes'] / 1e9:.2f} GB in {dt:.1f} s ({summary['bytes'] / 1e9 / dt:.2f} GB/s)"
    )
    print(summary["directory"])
    return 0
