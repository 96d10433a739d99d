"""``pulsetrain reduce``: per-pulse azimuthal profiles, hits and statistics of a corrected run."""

from __future__ import annotations

import argparse
from pathlib import Path

from pulsetrain.cli._args import (
    finite_float,
    non_negative_int,
    positive_float,
    positive_int,
    require_run_directory,
)
from pulsetrain.errors import ConfigurationError

EPILOG = """examples:
  pulsetrain reduce proc/r0001 --out r0001-reduced.h5
  pulsetrain reduce proc/r0001 --out r1.h5 --npt 300 --unit 2th_deg --radial-range 1 25
  pulsetrain reduce proc/r0001 --out r1.h5 --threshold 150 --min-peaks 8 --workers 2
  pulsetrain reduce proc/r0001 --out r1.h5 --slurm --queue upex --cores 32 --jobs 2

The file is NeXus-style HDF5 (entry/profiles, entry/hits, entry/statistics, ...); read it back
with pulsetrain.offline.read_reduced(path).  See docs/offline.md.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    from pulsetrain.offline.cluster import add_cluster_arguments

    p = subparsers.add_parser(
        "reduce",
        help="azimuthal profiles, hit flags and statistics per pulse of a corrected run",
        description="Reduce a corrected (CORR) run on Dask: per pulse the azimuthal profile, "
        "the number of Bragg peaks and a hit flag, and pixel statistics; written to a "
        "NeXus-style HDF5 file.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run_dir", help="corrected run directory")
    p.add_argument("--out", required=True, type=_output_file, help="HDF5 file to write")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--modules", type=non_negative_int, nargs="*", default=None)
    a = p.add_argument_group("azimuthal integration (defaults: the online device's)")
    a.add_argument("--npt", type=positive_int, default=512, help="radial bins")
    a.add_argument(
        "--unit",
        default="q_A^-1",
        choices=["q_A^-1", "q_nm^-1", "2th_deg", "2th_rad", "r_mm", "r_m"],
    )
    a.add_argument("--radial-range", type=finite_float, nargs=2, default=None, metavar=("LO", "HI"))
    a.add_argument(
        "--distance", type=positive_float, default=0.2, help="sample-detector distance, m"
    )
    a.add_argument("--energy", type=positive_float, default=9.3, help="photon energy, keV")
    a.add_argument(
        "--beam-centre",
        type=finite_float,
        nargs=2,
        default=(0.0, 0.0),
        metavar=("X", "Y"),
        help="beam position in pixels from the geometry origin",
    )
    a.add_argument("--no-mask", action="store_true", help="ignore image.mask")
    h = p.add_argument_group("hit finding")
    h.add_argument("--threshold", type=finite_float, default=200.0, help="peak threshold (keV)")
    h.add_argument("--min-peaks", type=non_negative_int, default=10)
    h.add_argument("--min-pixels", type=positive_int, default=1)
    h.add_argument("--method", choices=["maxima", "pixels"], default="maxima")
    p.add_argument(
        "--chunk-frames",
        type=positive_int,
        default=8192,
        help="frames per chunk of work (memory per task)",
    )
    p.add_argument("--no-progress", action="store_true")
    add_cluster_arguments(p)
    p.set_defaults(func=run)


def _output_file(text: str) -> str:
    """A file to write, not a directory."""
    path = Path(text).expanduser()
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is a directory, not a file")
    return str(path)


def run(args: argparse.Namespace) -> int:
    from pulsetrain.offline.cluster import (
        cluster_config_from_args,
        freeze_gc_once,
        print_job_script,
    )
    from pulsetrain.offline.reduce import ReductionParameters, reduce_to_file

    if args.radial_range and args.radial_range[0] >= args.radial_range[1]:
        lo, hi = args.radial_range
        raise ConfigurationError(f"--radial-range: LO {lo:g} must be below HI {hi:g}")
    config = cluster_config_from_args(args)
    if not args.print_job_script:  # a job script may be for a run on the cluster's disks
        require_run_directory(args.run_dir)
        if not Path(args.out).parent.is_dir():
            raise ConfigurationError(f"--out {args.out!r}: its directory does not exist")
        if Path(args.out).exists() and not args.overwrite:
            raise ConfigurationError(f"--out {args.out!r} exists (use --overwrite)")
    if args.print_job_script:
        return print_job_script(config)
    freeze_gc_once()  # this process only runs the job: spare its GC the imports
    params = ReductionParameters(
        npt=args.npt,
        unit=args.unit,
        radial_range=tuple(args.radial_range) if args.radial_range else None,
        distance_m=args.distance,
        photon_energy_kev=args.energy,
        beam_centre_px=tuple(args.beam_centre),
        hit_threshold=args.threshold,
        min_peaks=args.min_peaks,
        min_pixels=args.min_pixels,
        peak_method=args.method,
        use_mask=not args.no_mask,
    )
    result = reduce_to_file(
        args.run_dir,
        args.out,
        params,
        modules=args.modules,
        cluster=config,
        progress=not args.no_progress,
        chunk_frames=args.chunk_frames,
        overwrite=args.overwrite,
    )
    frames = result["frames"]
    rate = result["hits"] / frames if frames else float("nan")
    print(
        f"{frames} frames, {result['hits']} hits (hit rate {rate:.3f}) "
        f"in {result['seconds']:.1f} s -> {result['path']}"
    )
    return 0
