"""``pulsetrain correct``: correct a raw run into a CORR run on Dask (local, scheduler, SLURM)."""

from __future__ import annotations

import argparse

from pulsetrain.cli._args import (
    add_catalogue_arguments,
    add_condition_arguments,
    finite_float,
    non_negative_int,
    output_directory,
    positive_float,
    positive_int,
    require_run_directory,
)

EPILOG = """examples:
  pulsetrain correct data/raw/r0001 --out data/proc/r0001 --catalog cat.sqlite
  pulsetrain correct raw/r0002 --out proc/r0002 --detector LPD --corrections offset,gainstage
  pulsetrain correct raw/r0001 --out proc/r0001 --workers 2 --memory-cells 64 --common-mode
  pulsetrain correct raw/r0001 --out proc/r0001 --scheduler tcp://10.0.0.5:8786
  pulsetrain correct raw/r0001 --out proc/r0001 --slurm --queue upex --cores 32 \\
      --memory 256GB --walltime 02:00:00 --jobs 4
  pulsetrain correct raw/r0001 --out proc/r0001 --slurm --queue upex --print-job-script

Re-running the same command skips output files that are complete and verified (sidecars in
OUT/.pulsetrain-correct/); --force remakes them.  See docs/offline.md.
"""


def _constants_time(text: str) -> str:
    """'now' or an ISO 8601 time."""
    from datetime import datetime

    if text.strip().lower() == "now":
        return "now"
    try:
        datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not 'now' or an ISO time such as 2026-01-31T12:00:00"
        ) from None
    return text


def _steps(text: str) -> str:
    """Comma-separated step names (checked against the detector in :func:`run`)."""
    from pulsetrain.detectors import STEPS

    names = [t.strip().lower() for t in text.split(",") if t.strip()]
    unknown = [n for n in names if n not in STEPS]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown step(s) {', '.join(unknown)}; the steps are {', '.join(STEPS)}"
        )
    return ",".join(names)


def register(subparsers: argparse._SubParsersAction) -> None:
    from pulsetrain.offline.cluster import add_cluster_arguments

    p = subparsers.add_parser(
        "correct",
        help="correct a raw run into a CORR run (Dask: local, scheduler or SLURM)",
        description="Correct every detector module sequence file of a raw run with constants "
        "from the catalogue (one Dask task per module and sequence file) and write a CORR run "
        "in the European XFEL format; record it and the constants used in the catalogue.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run_dir", help="raw run directory")
    p.add_argument(
        "--out", required=True, type=output_directory, help="CORR run directory to write"
    )
    add_catalogue_arguments(p)
    p.add_argument(
        "--modules", type=non_negative_int, nargs="*", default=None, help="only these modules"
    )
    c = p.add_argument_group("constants look-up (defaults: the online correction device's)")
    c.add_argument("--memory-cells", type=positive_int, default=None, help="default: any")
    add_condition_arguments(c)
    c.add_argument("--gain-mode", type=non_negative_int, default=0)
    c.add_argument("--photon-energy", type=positive_float, default=9.3)
    c.add_argument(
        "--constants-time",
        type=_constants_time,
        default=None,
        help="ISO time the constants must be valid at, or 'now' (default: the run's first train)",
    )
    o = p.add_argument_group("correction steps and options (as the online device)")
    o.add_argument(
        "--corrections",
        type=_steps,
        default="",
        metavar="STEP,...",
        help="correction steps, comma-separated: offset, gainstage, relgain, flatfield, "
        "commonmode, badpixels (default: the detector's defaults; AGIPD: "
        "offset,gainstage,relgain,badpixels)",
    )
    o.add_argument("--bad-to-nan", action="store_true", help="masked pixels become NaN")
    o.add_argument("--common-mode", action="store_true")
    o.add_argument("--force-mg-threshold", type=finite_float, default=None, metavar="ADU")
    o.add_argument("--force-hg-threshold", type=finite_float, default=None, metavar="ADU")
    p.add_argument(
        "--no-copy-slow",
        action="store_true",
        help="do not copy the files without module data (slow data, cameras)",
    )
    p.add_argument("--force", action="store_true", help="remake outputs even if verified")
    p.add_argument(
        "--verify",
        choices=["index", "checksum"],
        default="index",
        help="how existing outputs are verified before being skipped: size, time and INDEX "
        "(default), or also a CRC-32 of the file recorded when it was made",
    )
    p.add_argument("--no-record", action="store_true", help="do not record in the catalogue")
    p.add_argument("--no-progress", action="store_true")
    add_cluster_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import sys

    from pulsetrain.errors import ConfigurationError, MissingConstantsError, PulsetrainError
    from pulsetrain.offline import CorrectionOptions, correct_run
    from pulsetrain.offline.cluster import (
        cluster_config_from_args,
        freeze_gc_once,
        print_job_script,
    )

    if not args.print_job_script:  # a job script may be for a run on the cluster's disks
        require_run_directory(args.run_dir)
    try:
        config = cluster_config_from_args(args)
        if args.print_job_script:
            return print_job_script(config)
        freeze_gc_once()  # this process only runs the job: spare its GC the imports
        options = CorrectionOptions(
            bad_to_nan=args.bad_to_nan,
            common_mode=args.common_mode,
            force_mg_threshold=args.force_mg_threshold,
            force_hg_threshold=args.force_hg_threshold,
            corrections=args.corrections,
        )
        report = correct_run(
            args.run_dir,
            args.out,
            catalog=args.catalog or None,
            detector=args.detector,
            conditions=_conditions(args),
            constants_time=args.constants_time,
            options=options,
            modules=args.modules,
            copy_other=not args.no_copy_slow,
            cluster=config,
            force=args.force,
            verify=args.verify,
            record=not args.no_record,
            progress=not args.no_progress,
        )
    except MissingConstantsError as exc:
        print(f"pulsetrain correct: error: {exc}", file=sys.stderr)
        hint = _how_to_make(exc, args)
        if hint:
            print(hint, file=sys.stderr)
        return 1
    except PulsetrainError as exc:
        print(f"pulsetrain correct: error: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, ConfigurationError) else 1  # exit codes: docs/cli.md
    _print_report(report)
    return 0


def _conditions(args: argparse.Namespace) -> dict[str, float | int | None]:
    """The operating conditions of the constants look-up, from the options."""
    return {
        "memory_cells": args.memory_cells,
        "bias_voltage": args.bias_voltage,
        "acquisition_rate": args.acquisition_rate,
        "gain_setting": args.gain_setting,
        "gain_mode": args.gain_mode,
        "integration_time": args.integration_time,
        "photon_energy": args.photon_energy,
    }


def _how_to_make(exc, args: argparse.Namespace) -> str:
    """The ``pulsetrain dark`` command that would store the missing constants."""
    import shlex
    import textwrap
    from datetime import datetime, timezone

    from pulsetrain.detectors import resolve_detector
    from pulsetrain.errors import ConfigurationError

    try:
        plugin = resolve_detector(args.detector)[0]
    except ConfigurationError:
        return ""  # the error named what is missing; the type needed for the hint is unknown
    conditions = exc.conditions
    modules = sorted({m for ms in exc.missing.values() for m in ms})
    stages = plugin.dark_stages
    command = ["pulsetrain", "dark", *(f"DARK_{s}" for s in stages)]
    if args.catalog:
        command += ["--catalog", args.catalog]
    command += ["--detector", exc.detector, "--modules", *map(str, modules)]
    for name, value in conditions.as_dict().items():
        if name in ("gain_mode", "photon_energy") or value is None:
            continue  # dark constants are taken in adaptive gain and do not depend on energy
        number = int(value) if isinstance(value, float) and value.is_integer() else value
        command += [f"--{name.replace('_', '-')}", str(number)]
    notes = []
    not_dark = [t for t in exc.missing if t not in plugin.dark_constants]
    if not_dark:
        command.append("--rel-gain-from-sim")
        notes.append(
            f"note: --rel-gain-from-sim stores {', '.join(not_dark)} from the simulator's truth "
            "(simulated data only: a real detector's gain constants come from its gain "
            "characterisation); or leave the steps that need them out of --corrections"
        )
    if conditions.gain_mode not in (None, 0):
        notes.append(
            f"note: pulsetrain dark stores gain_mode 0, not the {conditions.gain_mode} asked"
        )
    if exc.at is not None and exc.at < datetime.now(timezone.utc):
        notes.append(
            "note: constants stored now are valid from now on: correct this run with them by adding "
            "--constants-time now"
        )
    what = ", ".join(exc.missing)
    if not any(t in exc.missing for t in plugin.dark_constants):
        what += " (and the dark constants again)"
    simulate = ", ".join(stages)
    lines = [
        (
            f"to make {what}: take {len(stages)} dark runs of {plugin.name} with the gain forced "
            f"to {simulate} (simulated: pulsetrain simulate --detector {plugin.name} --dark "
            f"{simulate}), then run"
        ),
        *notes,
    ]
    wrapped = [
        textwrap.fill(
            t, width=100, subsequent_indent="  ", break_on_hyphens=False, break_long_words=False
        )
        for t in lines
    ]
    return "\n".join([wrapped[0], "  " + shlex.join(command), *wrapped[1:]])


def _print_report(report) -> None:
    done = report.corrected
    secs = sum(r["seconds"] for r in done)
    print(
        f"{len(done)} module files corrected, {len(report.skipped)} skipped (complete and "
        f"verified); {report.frames} frames in {report.seconds:.1f} s "
        f"({secs:.1f} s of task time)"
    )
    for module, ids in sorted(report.constants.items()):
        print(f"module {module}: " + ", ".join(f"{t}#{i}" for t, i in sorted(ids.items())))
    if report.run_record is not None:
        print(
            f"catalogue: CORR run #{report.run_record.id} "
            f"(proposal {report.run_record.proposal}, run {report.run_record.run_number})"
        )
    print(report.out_dir)
