"""``pulsetrain catalog``: create and inspect the catalogue of detectors, constants and runs."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING

from pulsetrain.cli._args import positive_int
from pulsetrain.errors import CatalogError, ConfigurationError

if TYPE_CHECKING:  # the catalogue (SQLAlchemy, Alembic) loads only when this command runs
    from pulsetrain.catalog import Catalog, Conditions, ConstantRecord, RunRecord

EPILOG = """\
examples:
  pulsetrain catalog init
        create (or upgrade) the default catalogue
  pulsetrain catalog --catalog postgresql+psycopg://calib:secret@dbhost:5432/calib init
        the same for a PostgreSQL database
  pulsetrain catalog init --detector SPB_DET_AGIPD1M-1 --type AGIPD --modules 16
        create it and register a detector
  pulsetrain catalog detectors --modules
        list detectors and their physical modules
  pulsetrain catalog constants --detector SPB_DET_AGIPD1M-1 --module 3 --type Offset
        list constants, newest first
  pulsetrain catalog runs --proposal 900001 --category RAW
        list runs
  pulsetrain catalog show 12 --verify
        details of constant #12, reading its array to check the checksum
  pulsetrain catalog show --run 4
        details of run #4, its files and the constants it was corrected with

The catalogue is --catalog (a URL or a SQLite file), else $PULSETRAIN_CATALOG, else
~/.local/share/pulsetrain/catalog.sqlite.  Constant files live in --store, else
$PULSETRAIN_CATALOG_STORE, else a folder next to the SQLite file.
"""

_SHORT_CONDITIONS = {
    "memory_cells": "cells",
    "bias_voltage": "bias",
    "acquisition_rate": "rate",
    "gain_setting": "gs",
    "gain_mode": "gm",
    "integration_time": "it",
    "photon_energy": "E",
}


def _common_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--catalog",
        metavar="URL",
        default=argparse.SUPPRESS,
        help="database URL or SQLite file (default: $PULSETRAIN_CATALOG or the user catalogue)",
    )
    common.add_argument(
        "--store",
        metavar="DIR",
        default=argparse.SUPPRESS,
        help="directory of constant files (default: $PULSETRAIN_CATALOG_STORE or next to the "
        "SQLite file)",
    )
    return common


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``catalog`` sub-command."""
    common = _common_options()
    parser = subparsers.add_parser(
        "catalog",
        parents=[common],
        help="create and inspect the catalogue of constants and runs",
        description="Create and inspect the catalogue of detectors, calibration constants and "
        "runs (SQLite by default, PostgreSQL by URL).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = parser.add_subparsers(dest="catalog_action", metavar="ACTION")

    init = actions.add_parser(
        "init",
        parents=[common],
        help="create or upgrade the catalogue (optionally register a detector)",
        description="Create the catalogue, or upgrade its schema to the newest revision.",
    )
    init.add_argument("--detector", metavar="NAME", help="also register this detector")
    init.add_argument("--type", dest="detector_type", default="AGIPD", help="detector type")
    init.add_argument(
        "--modules", type=positive_int, default=16, help="number of modules (default 16)"
    )

    detectors = actions.add_parser(
        "detectors", parents=[common], help="list detectors", description="List detectors."
    )
    detectors.add_argument(
        "--modules", action="store_true", help="also list each module's physical name"
    )

    constants = actions.add_parser(
        "constants",
        parents=[common],
        help="list constants",
        description="List constants, newest valid_from first.",
    )
    constants.add_argument("--detector", metavar="NAME")
    constants.add_argument("--module", metavar="M", help="module index or physical name")
    constants.add_argument("--type", dest="constant_type", metavar="TYPE", help="e.g. Offset")
    constants.add_argument("--limit", type=positive_int, metavar="N", help="show at most N")

    runs = actions.add_parser(
        "runs", parents=[common], help="list runs", description="List recorded runs."
    )
    runs.add_argument("--proposal", type=positive_int)
    runs.add_argument("--run", dest="run_number", type=positive_int)
    runs.add_argument("--category", dest="data_category", help="RAW, CORR, ...")
    runs.add_argument("--type", dest="run_type", help="raw, dark, corr, ...")

    show = actions.add_parser(
        "show",
        parents=[common],
        help="details of a constant (or a run with --run)",
        description="Show everything about one constant, or one run with --run.",
    )
    show.add_argument("id", type=positive_int, metavar="ID", help="catalogue ID")
    show.add_argument("--run", action="store_true", help="ID is a run, not a constant")
    show.add_argument(
        "--verify", action="store_true", help="read the constant's array and check its checksum"
    )
    parser.set_defaults(func=run, _catalog_parser=parser)


# ---------------------------------------------------------------------- formatting


def _time(value: datetime | None, empty: str = "-") -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value is not None else empty


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")  # pragma: no cover


def _short_conditions(conditions: Conditions) -> str:
    parts = []
    for name, value in conditions.as_dict(drop_none=True).items():
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        parts.append(f"{_SHORT_CONDITIONS[name]}={value}")
    return " ".join(parts) or "-"


def _print_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    cells = [[str(cell) for cell in row] for row in rows]
    widths = [max([len(h)] + [len(row[i]) for row in cells]) for i, h in enumerate(headers)]
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip())
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
    if not cells:
        print("(none)")


def _constant_rows(records: Sequence[ConstantRecord]) -> list[list[object]]:
    return [
        [
            r.id,
            r.detector,
            r.module,
            r.constant_type,
            _short_conditions(r.conditions),
            _time(r.valid_from),
            _time(r.valid_to, "open"),
            r.storage,
            "x".join(str(n) for n in r.shape) or "()",
            r.dtype,
        ]
        for r in records
    ]


_CONSTANT_HEADERS = (
    "ID",
    "DETECTOR",
    "MOD",
    "TYPE",
    "CONDITIONS",
    "VALID FROM (UTC)",
    "VALID TO",
    "STORE",
    "SHAPE",
    "DTYPE",
)
_RUN_HEADERS = ("ID", "PROPOSAL", "RUN", "CATEGORY", "TYPE", "SAMPLE", "TRAINS", "FILES", "SIZE")


def _run_rows(records: Sequence[RunRecord]) -> list[list[object]]:
    return [
        [
            r.id,
            r.proposal,
            r.run_number,
            r.data_category,
            r.run_type,
            r.sample or "-",
            "-" if r.n_trains is None else r.n_trains,
            len(r.files),
            _size(r.total_size),
        ]
        for r in records
    ]


# ---------------------------------------------------------------------- actions


def _init(catalog: Catalog, args: argparse.Namespace) -> int:
    from pulsetrain.catalog.migrate import head_revision

    if args.detector:
        det = catalog.add_detector(args.detector, args.detector_type, args.modules)
        print(f"detector:       {det.name} ({det.detector_type}, {det.n_modules} modules)")
    revision = catalog.revision
    state = "newest" if revision == head_revision() else f"newest is {head_revision()}"
    print(f"catalogue:      {catalog.url}")
    print(f"schema:         revision {revision} ({state})")
    print(f"constant store: {catalog.store_dir}")
    return 0


def _detectors(catalog: Catalog, args: argparse.Namespace) -> int:
    detectors = catalog.detectors()
    _print_table(
        ("NAME", "TYPE", "MODULES", "CREATED (UTC)"),
        [[d.name, d.detector_type, d.n_modules, _time(d.created)] for d in detectors],
    )
    if args.modules:
        for det in detectors:
            print(f"\n{det.name}")
            _print_table(
                ("MODULE", "PHYSICAL NAME"),
                [[m.index, m.physical_name or "-"] for m in det.modules],
            )
    return 0


def _constants(catalog: Catalog, args: argparse.Namespace) -> int:
    module: int | str | None = args.module
    if isinstance(module, str) and module.isdigit():
        module = int(module)
    if module is not None and args.detector is None:
        raise ConfigurationError("--module needs --detector")
    records = catalog.list_constants(args.detector, module, args.constant_type, limit=args.limit)
    _print_table(_CONSTANT_HEADERS, _constant_rows(records))
    return 0


def _runs(catalog: Catalog, args: argparse.Namespace) -> int:
    records = catalog.find_runs(
        args.proposal,
        args.run_number,
        data_category=args.data_category,
        run_type=args.run_type,
    )
    _print_table(_RUN_HEADERS, _run_rows(records))
    return 0


def _show_constant(catalog: Catalog, constant_id: int, verify: bool) -> int:
    r = catalog.get_constant(constant_id)
    module = f"{r.module}" + (f" ({r.module_name})" if r.module_name else "")
    lines = [
        ("constant", f"#{r.id} {r.constant_type}"),
        ("detector", r.detector),
        ("module", module),
        ("valid from", r.valid_from.isoformat()),
        ("valid to", r.valid_to.isoformat() if r.valid_to else "open"),
        ("created", r.created.isoformat()),
    ]
    for name, value in r.conditions.as_dict().items():
        lines.append((name.replace("_", " "), "-" if value is None else value))
    lines += [
        ("storage", r.storage),
        ("shape", r.shape),
        ("dtype", r.dtype),
        ("size", _size(r.nbytes)),
        ("sha256", r.checksum),
    ]
    if r.storage == "file":
        lines += [("file", catalog.constant_path(r)), ("dataset", r.dataset)]
    lines.append(("source runs", ", ".join(f"#{i}" for i in r.source_runs) or "-"))
    if r.comment:
        lines.append(("comment", r.comment))
    used = catalog.runs_using_constant(r)
    lines.append(("used by runs", ", ".join(run.describe() for run in used) or "-"))
    for key, value in lines:
        print(f"{key + ':':<18}{value}")
    if verify:
        catalog.load_array(r)
        print(f"{'checksum:':<18}OK (array read and verified)")
    return 0


def _show_run(catalog: Catalog, run_id: int) -> int:
    r = catalog.get_run(run_id)
    lines = [
        ("run", r.describe()),
        ("proposal", r.proposal),
        ("run number", r.run_number),
        ("data category", r.data_category),
        ("run type", r.run_type),
        ("sample", r.sample or "-"),
        ("path", r.path),
        ("trains", "-" if r.n_trains is None else r.n_trains),
        ("start", r.start_time.isoformat() if r.start_time else "-"),
        ("end", r.end_time.isoformat() if r.end_time else "-"),
        ("created", r.created.isoformat()),
        ("total size", _size(r.total_size)),
    ]
    for key, value in lines:
        print(f"{key + ':':<18}{value}")
    print("\nfiles")
    _print_table(("NAME", "SIZE"), [[f.name, _size(f.size)] for f in r.files])
    print("\nconstants used")
    _print_table(_CONSTANT_HEADERS, _constant_rows(catalog.constants_of_run(r)))
    return 0


def run(args: argparse.Namespace) -> int:
    """Run ``pulsetrain catalog``; returns the exit code."""
    from pulsetrain.catalog import Catalog

    action = getattr(args, "catalog_action", None)
    if action is None:
        args._catalog_parser.print_help()
        return 2
    try:
        with Catalog(getattr(args, "catalog", None), store_dir=getattr(args, "store", None)) as cat:
            if action == "init":
                return _init(cat, args)
            if action == "detectors":
                return _detectors(cat, args)
            if action == "constants":
                return _constants(cat, args)
            if action == "runs":
                return _runs(cat, args)
            if action == "show":
                if args.run:
                    return _show_run(cat, args.id)
                return _show_constant(cat, args.id, args.verify)
    except (CatalogError, ConfigurationError) as exc:
        print(f"pulsetrain catalog {action}: error: {exc}", file=sys.stderr)
        return 1
    raise AssertionError(f"unhandled action {action}")  # pragma: no cover
