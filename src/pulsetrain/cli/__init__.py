"""The ``pulsetrain`` command line: one entry point, many sub-commands.

Each sub-command lives in its own module of this package and defines
``register(subparsers)``, which adds an ``argparse`` parser whose defaults set ``func`` to a
callable taking the parsed arguments and returning an exit code.  Modules are discovered
automatically, so adding a command never means editing this file.

A user's mistake never ends in a traceback: a bad argument, a project error
(:class:`~pulsetrain.errors.PulsetrainError`) or an operating-system error that is clearly the
user's (a missing file, a port in use) is one line ``pulsetrain COMMAND: error: ...`` on stderr
and an exit code (see :data:`EXIT_CODES`).  Anything else is a bug: its traceback is printed,
with a line saying so.  ``--debug`` (before or after the command, or ``PULSETRAIN_DEBUG=1``)
prints the traceback of every error.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import logging
import os
import pkgutil
import sys
import traceback
from typing import NoReturn

from pulsetrain import __version__
from pulsetrain.errors import ConfigurationError, PulsetrainError, TopologyError

#: Exit codes of every sub-command.
EXIT_OK = 0  #: done
EXIT_FAILED = 1  #: the command ran and failed (a device, channel, catalogue or file error)
EXIT_USAGE = 2  #: bad arguments, configuration or input; nothing was started
EXIT_BUG = 70  #: an unexpected error: a bug in pulsetrain (the traceback is printed)
EXIT_INTERRUPTED = 130  #: stopped with Ctrl-C

EXIT_CODES = {
    EXIT_OK: "success",
    EXIT_FAILED: "the command failed while running",
    EXIT_USAGE: "bad arguments, configuration or input; nothing was started",
    EXIT_BUG: "internal error (a bug): the traceback is printed",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C)",
}

# Operating-system errors that are the user's to fix (a path, a permission, an address).
_USER_ERRNOS = {
    errno.ENOENT,
    errno.EACCES,
    errno.EPERM,
    errno.EISDIR,
    errno.ENOTDIR,
    errno.EEXIST,
    errno.ENAMETOOLONG,
    errno.EROFS,
    errno.EADDRINUSE,
    errno.EADDRNOTAVAIL,
}
# Operating-system errors of the environment, not of pulsetrain (disk full, peer gone).
_ENVIRONMENT_ERRNOS = {
    errno.ENOSPC,
    errno.EDQUOT,
    errno.ECONNREFUSED,
    errno.ECONNRESET,
    errno.EHOSTUNREACH,
    errno.ENETUNREACH,
    errno.EPIPE,
    errno.EMFILE,
    errno.ENOMEM,
}


class _UsageError(Exception):
    """A command line ``argparse`` refused; carries the parser's ``prog``."""

    def __init__(self, prog: str, message: str) -> None:
        super().__init__(message)
        self.prog = prog


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (no usage block), raised to :func:`main`."""

    def error(self, message: str) -> NoReturn:
        raise _UsageError(self.prog, message)


def _add_debug(parser: argparse.ArgumentParser, top: bool) -> None:
    """``--debug`` on ``parser`` and, recursively, on every sub-command parser."""
    if top:
        parser.add_argument(
            "--debug",
            action="store_true",
            default=os.environ.get("PULSETRAIN_DEBUG", "") not in ("", "0"),
            help="show the traceback of every error (also after the command, or "
            "PULSETRAIN_DEBUG=1)",
        )
    elif "--debug" not in parser._option_string_actions:
        parser.add_argument(
            "--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS
        )
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in set(action.choices.values()):
                _add_debug(sub, top=False)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """Build the argument parser with every sub-command found in this package.

    With ``command``, only the module of that sub-command is imported when it registers it:
    a ``pulsetrain server`` that systemd restarts answers without first importing what every
    other command needs (HDF5, the offline tools: seconds on a busy machine).
    """
    codes = "\n".join(f"  {code:<4} {text}" for code, text in EXIT_CODES.items())
    parser = _Parser(
        prog="pulsetrain",
        description="Train-by-train data analysis for pulsed X-ray facilities.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run 'pulsetrain COMMAND --help' for the options and examples of a command.\n\n"
        f"exit codes:\n{codes}",
    )
    parser.add_argument("--version", action="version", version=f"pulsetrain {__version__}")
    parser.add_argument(
        "--log-level",
        default="WARNING",
        type=str.upper,
        choices=("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"),
        help="logging level (DEBUG, INFO, WARNING, ERROR)",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    names = sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))
    wanted = (command or "").replace("-", "_")
    if wanted in names:
        _register(subparsers, wanted)
        if command in subparsers.choices:
            _add_debug(parser, top=True)
            return parser
        return build_parser()  # the module is named differently from its command
    for name in names:
        _register(subparsers, name)
    _add_debug(parser, top=True)
    return parser


def _register(subparsers: argparse._SubParsersAction, name: str) -> None:
    module = importlib.import_module(f"{__name__}.{name}")
    register = getattr(module, "register", None)
    if register is not None:
        register(subparsers)


def exit_code_of(exc: BaseException) -> int | None:
    """The exit code for an error that is not a bug, or None for a bug."""
    if isinstance(exc, ConfigurationError):
        return EXIT_USAGE
    if isinstance(exc, PulsetrainError):
        return EXIT_FAILED
    number = getattr(exc, "errno", None)
    zmq = sys.modules.get("zmq")  # not imported: no ZMQError can have been raised
    if isinstance(exc, OSError) or (zmq is not None and isinstance(exc, zmq.ZMQError)):
        if number in _USER_ERRNOS:
            return EXIT_USAGE
        if number in _ENVIRONMENT_ERRNOS:
            return EXIT_FAILED
    if isinstance(exc, TimeoutError):
        return EXIT_FAILED  # no answer from a server: the environment, not a bug
    return None


def _message(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror and not isinstance(exc, PulsetrainError):
        text = exc.strerror
        if exc.filename is not None:
            text += f": {exc.filename!r}"
        if exc.filename2 is not None:
            text += f" -> {exc.filename2!r}"
        return text
    return str(exc) or type(exc).__name__


def report_error(exc: BaseException, prog: str, debug: bool = False) -> int:
    """Print ``exc`` for the user (one line; a traceback for a bug); returns the exit code."""
    code = exit_code_of(exc)
    if code is None or debug:
        traceback.print_exception(exc, file=sys.stderr)
    if code is None:
        print(
            f"{prog}: internal error: {type(exc).__name__}: {exc}\n"
            f"{prog}: this is a bug in pulsetrain {__version__}; please report it with the "
            "traceback above",
            file=sys.stderr,
        )
        return EXIT_BUG
    lines = _message(exc).splitlines() or [type(exc).__name__]
    if isinstance(exc, TopologyError):
        for line in lines:
            print(f"{prog}: error: {line}", file=sys.stderr)
    else:
        print(f"{prog}: error: {lines[0]}", file=sys.stderr)
        for line in lines[1:]:
            print(f"  {line}", file=sys.stderr)
    return code


def main(argv: list[str] | None = None) -> int:
    """Run the ``pulsetrain`` command line; returns the process exit code (see
    :data:`EXIT_CODES`)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("PULSETRAIN_DEBUG", "") not in ("", "0")
    try:
        parser = build_parser(argv[0] if argv and not argv[0].startswith("-") else None)
        try:
            args = parser.parse_args(argv)
        except _UsageError as exc:
            print(f"{exc.prog}: error: {exc} (see '{exc.prog} --help')", file=sys.stderr)
            return EXIT_USAGE
        debug = bool(getattr(args, "debug", debug))
        logging.basicConfig(
            level=getattr(logging, args.log_level, logging.WARNING),
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
        if not getattr(args, "func", None):
            parser.print_help()
            return EXIT_USAGE
        prog = f"pulsetrain {args.command}"
        try:
            return int(args.func(args) or 0)
        except KeyboardInterrupt:
            return EXIT_INTERRUPTED
        except _UsageError as exc:  # a command re-parsing part of its arguments
            print(f"{exc.prog}: error: {exc}", file=sys.stderr)
            return EXIT_USAGE
        except Exception as exc:  # noqa: BLE001 - every error ends here, as one line or a bug
            return report_error(exc, prog, debug)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - failing to build the parser is a bug
        return report_error(exc, "pulsetrain", debug)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
