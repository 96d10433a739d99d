"""The ``pulsetrain`` command line: one entry point, many sub-commands.

Each sub-command lives in its own module of this package and defines
``register(subparsers)``, which adds an ``argparse`` parser whose defaults set ``func`` to a
callable taking the parsed arguments and returning an exit code.  Modules are discovered
automatically, so adding a command never means editing this file.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys

from pulsetrain import __version__


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser with every sub-command found in this package."""
    parser = argparse.ArgumentParser(
        prog="pulsetrain",
        description="Train-by-train data analysis for pulsed X-ray facilities.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run 'pulsetrain COMMAND --help' for the options and examples of a command.",
    )
    parser.add_argument("--version", action="version", version=f"pulsetrain {__version__}")
    parser.add_argument(
        "--log-level", default="WARNING", help="logging level (DEBUG, INFO, WARNING, ERROR)"
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the ``pulsetrain`` command line; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.WARNING),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
