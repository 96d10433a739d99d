"""``pulsetrain dark``: characterise three dark runs and store the constants."""

from __future__ import annotations

import argparse
from datetime import datetime, timezone

EPILOG = """examples:
  pulsetrain simulate --out dark --trains 20 --frames 64 --dark HG   # r0001
  pulsetrain simulate --out dark --trains 20 --frames 64 --dark MG   # r0002
  pulsetrain simulate --out dark --trains 20 --frames 64 --dark LG   # r0003
  pulsetrain dark dark/r0001 dark/r0002 dark/r0003 --catalog cat.sqlite --rel-gain-from-sim
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "dark",
        help="offset, noise, thresholds and bad pixels from three dark runs",
        description="Characterise dark runs taken with the gain forced to high, medium and low "
        "and store Offset, Noise, ThresholdsDark and BadPixelsDark per module in the catalogue.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run_hg")
    p.add_argument("run_mg")
    p.add_argument("run_lg")
    p.add_argument("--catalog", default="", help="catalogue URL (default: the user's SQLite)")
    p.add_argument("--detector", default="SPB_DET_AGIPD1M-1")
    p.add_argument("--memory-cells", type=int, default=None,
                   help="memory cells of the constants (default: highest cellId + 1)")
    p.add_argument("--modules", type=int, nargs="*", default=None)
    p.add_argument("--bias-voltage", type=float, default=300.0)
    p.add_argument("--acquisition-rate", type=float, default=1.1)
    p.add_argument("--gain-setting", type=int, default=0)
    p.add_argument("--integration-time", type=int, default=12)
    p.add_argument("--rel-gain-from-sim", action="store_true",
                   help="also store RelativeGain from the simulator's truth (seed --seed)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run)


def _module_chunks(run_dir: str, module: int, bar):
    from pulsetrain.files import iter_run_trains

    for _tid, data, _meta in iter_run_trains(run_dir, sources=[f"*/DET/{module}CH0:*"]):
        for props in data.values():
            raw = props["image.data"]
            cells = props["image.cellId"].reshape(-1)
            bar.update(raw.shape[0])
            yield raw, cells


def run(args: argparse.Namespace) -> int:
    import re

    import numpy as np
    from tqdm import tqdm

    from pulsetrain.calibration import characterize_dark
    from pulsetrain.catalog import Catalog, Conditions
    from pulsetrain.catalog.agipd import store_dark, store_rel_gain
    from pulsetrain.files import iter_run_trains, run_info

    infos = [run_info(r) for r in (args.run_hg, args.run_mg, args.run_lg)]
    modules = args.modules
    if modules is None:
        modules = sorted({int(m.group(1)) for s in infos[0].sources
                          if (m := re.search(r"/DET/(\d+)CH0:", s))})
    if not modules:
        print("error: no detector module sources in", args.run_hg)
        return 1
    cells = args.memory_cells
    if cells is None:  # highest cellId in the first train of the HG run, plus one
        _tid, data, _ = next(iter_run_trains(args.run_hg, sources=["*/DET/*"]))
        cells = int(max(int(np.max(p["image.cellId"])) for p in data.values())) + 1
    cond = Conditions(memory_cells=cells, bias_voltage=args.bias_voltage,
                      acquisition_rate=args.acquisition_rate, gain_setting=args.gain_setting,
                      gain_mode=0, integration_time=args.integration_time)
    cat = Catalog(args.catalog or None)
    cat.add_detector(args.detector, "AGIPD", 16)
    valid_from = datetime.now(timezone.utc)
    source_runs: list = []  # the dark runs are linked when they are catalogued (by path)
    for rec in cat.find_runs(run_type=None):
        if any(str(rec.path) == str(__import__("pathlib").Path(r).resolve())
               for r in (args.run_hg, args.run_mg, args.run_lg)):
            source_runs.append(rec)
    sim = None
    if args.rel_gain_from_sim:
        from pulsetrain.sim import DetectorSimulator

        sim = DetectorSimulator("AGIPD", frames=1, memory_cells=cells, seed=args.seed)
    total = sum(i.n_trains for i in infos)
    for m in modules:
        with tqdm(desc=f"module {m:2d}", unit="frame") as bar:
            dark = characterize_dark(
                _module_chunks(args.run_hg, m, bar), _module_chunks(args.run_mg, m, bar),
                _module_chunks(args.run_lg, m, bar), memory_cells=cells,
            )
        recs = store_dark(cat, args.detector, m, dark, cond, valid_from, source_runs=source_runs)
        bad = int(np.count_nonzero(dark.bad_pixels.any(axis=(0, 1))))
        line = f"module {m}: stored {', '.join(f'{k}#{r.id}' for k, r in recs.items())}; " \
               f"{bad} bad pixels"
        if sim is not None:
            from pulsetrain.bootstrap import rel_gain_from_truth

            rec = store_rel_gain(cat, args.detector, m, rel_gain_from_truth(sim.truth(m)), cond,
                                 valid_from, comment=f"simulator truth, seed {args.seed}")
            line += f"; RelativeGain#{rec.id}"
        print(line)
    print(f"{len(modules)} modules, {total} trains, conditions: memory_cells={cells}")
    cat.close()
    return 0
