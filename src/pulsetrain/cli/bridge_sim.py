"""``pulsetrain bridge-sim``: serve simulated detector trains over the Karabo bridge protocol.

A drop-in for ``karabo-bridge-server-sim``: any Karabo bridge client (``karabo_bridge.Client``,
EXtra-foam, OnDA, ``pulsetrain monitor``) can connect.  The trains come from
:class:`pulsetrain.sim.SimulatedExperiment` (deterministic with ``--seed``).

Corrected mode (the default, as in karabo-bridge-py) turns each raw module into the corrected
keys of a calibration pipeline, using the simulator's own per-cell constants (its ground
truth), so the values are deposited energy in keV:

* AGIPD: :func:`pulsetrain.calibration.correct_module_data` with offset, relative gain
  ``1 / slope`` and gain thresholds of the truth; source ``.../CORR/{m}CH0:output`` with
  ``image.data`` float32 (frames, 512, 128), ``image.gain`` uint8, ``image.mask`` uint32.
* LPD and JUNGFRAU: the same offset/gain model in numpy (gain stage from the raw word);
  JUNGFRAU keys stay ``data.adc`` (now float32), ``data.gain``, ``data.mask``.

Constants cover the memory cells in use only (about 2.9 MB per module and cell for AGIPD).
"""

from __future__ import annotations

import argparse
import logging
import signal
import time
from typing import Any

import numpy as np

from pulsetrain.cli._args import frame_count, non_negative_float, non_negative_int, positive_int
from pulsetrain.errors import ConfigurationError
from pulsetrain.files.naming import corrected_source_name
from pulsetrain.protocol import make_meta
from pulsetrain.runtime.ports import port_or_zero_arg, port_problem, split_tcp_endpoint

log = logging.getLogger(__name__)

EPILOG = """\
examples:
  pulsetrain bridge-sim                       # REP on tcp://127.0.0.1:4545, AGIPD corrected
  pulsetrain bridge-sim --port 4600 --pattern PUB --raw --frames 64
  pulsetrain bridge-sim --port 0 --trains 20 --rate 0   # free port, 20 trains, full speed
  pulsetrain bridge-sim --detector JUNGFRAU --frames 4 --bind 0.0.0.0
  pulsetrain bridge-sim 4545 -z PUSH -p 1.0 -r   # karabo-bridge-server-sim style options

then, e.g.:  pulsetrain monitor tcp://127.0.0.1:4545 --trains 10
"""

DETECTORS = ("AGIPD", "LPD", "JUNGFRAU")
# Per-frame keys a correction carries from raw to corrected sources.
_CARRIED = {
    "image": ("image.cellId", "image.pulseId", "image.trainId"),
    "data": ("data.memoryCell", "data.frameNumber", "data.timestamp", "data.trainId"),
}


# ----------------------------------------------------------------------------------------------
# Train source
# ----------------------------------------------------------------------------------------------


class SimulatedSource:
    """Simulated trains for the bridge: raw, or corrected with the simulator's constants.

    Parameters
    ----------
    detector : {'AGIPD', 'LPD', 'JUNGFRAU'}
        Detector type.
    frames : int
        Frames per train.
    seed : int
        Seed of the simulation: the same seed gives the same data (train IDs included).
    modules : sequence of int, optional
        Modules to simulate (default all).
    corrected : bool
        Send corrected data instead of raw.
    all_sources : bool
        Also send the sample motor, XGM and camera sources.
    """

    def __init__(
        self,
        detector: str = "AGIPD",
        frames: int = 16,
        seed: int = 0,
        *,
        modules: list[int] | None = None,
        corrected: bool = False,
        all_sources: bool = False,
    ) -> None:
        from pulsetrain.sim import SimulatedExperiment

        self.experiment = SimulatedExperiment(detector, frames=frames, seed=seed, modules=modules)
        self.simulator = self.experiment.simulator
        self.detector = self.simulator.detector
        self.corrected = bool(corrected)
        self.include = None if all_sources else "detector"
        self._module_of = {self.simulator.source(m): m for m in self.simulator.modules}
        self._constants: dict[int, Any] = {}
        self._cells = int(np.max(self.simulator.cell_ids)) + 1

    def next_train(self) -> tuple[int, dict[str, dict], dict[str, dict]]:
        """The next train as ``(train_id, data, meta)``."""
        tid, data, meta = self.experiment.next_train(self.include)
        if not self.corrected:
            return tid, data, meta
        out_data, out_meta = {}, {}
        for src, props in data.items():
            module = self._module_of.get(src)
            if module is None:
                out_data[src], out_meta[src] = props, meta[src]
                continue
            name = corrected_source_name(src)
            out_data[name] = self.correct(module, props)
            out_meta[name] = dict(meta[src], source=name)
        return tid, out_data, out_meta

    # -- correction --------------------------------------------------------------------------

    def _truth(self, module: int):
        return self.simulator.truth(module, cells=range(self._cells))

    def correct(self, module: int, props: dict[str, Any]) -> dict[str, Any]:
        """Corrected keys of one raw module train."""
        if self.detector == "AGIPD":
            from pulsetrain.calibration import correct_module_data

            return correct_module_data(props, self._agipd_constants(module))
        return self._correct_generic(module, props)

    def _agipd_constants(self, module: int):
        constants = self._constants.get(module)
        if constants is None:
            from pulsetrain.calibration import AGIPDConstants, BadPixels

            truth = self._truth(module)
            with np.errstate(divide="ignore", invalid="ignore"):
                rel_gain = np.where(truth.slope > 0, 1.0 / truth.slope, 0.0)
            constants = AGIPDConstants(
                offset=truth.offset,
                rel_gain=rel_gain,
                thresholds=truth.gain_thresholds(),
                bad_pixels=np.broadcast_to(_mask_of(truth, BadPixels), truth.offset.shape),
            )
            self._constants[module] = constants
        return constants

    def _generic_constants(self, module: int):
        constants = self._constants.get(module)
        if constants is None:
            from pulsetrain.calibration import BadPixels

            truth = self._truth(module)
            with np.errstate(divide="ignore", invalid="ignore"):
                rel_gain = np.where(truth.slope > 0, 1.0 / truth.slope, 0.0).astype(np.float32)
            constants = (truth.offset.astype(np.float32), rel_gain, _mask_of(truth, BadPixels))
            self._constants[module] = constants
        return constants

    def _correct_generic(self, module: int, props: dict[str, Any]) -> dict[str, Any]:
        from pulsetrain.sim import decode

        offset, rel_gain, mask = self._generic_constants(module)
        encoding = self.simulator.spec.encoding
        analog, code = decode(encoding, props)
        stage = np.minimum(code, 2).astype(np.intp)  # JUNGFRAU codes 0, 1, 3 -> stages 0, 1, 2
        prefix = "data" if encoding == "jungfrau" else "image"
        cells = np.asarray(props[f"{prefix}.memoryCell" if prefix == "data" else "image.cellId"])
        cells = cells.astype(np.intp)
        pick = stage[None]
        off = np.take_along_axis(offset[:, cells], pick, axis=0)[0]
        gain = np.take_along_axis(rel_gain[:, cells], pick, axis=0)[0]
        data = (analog.astype(np.float32) - off) * gain
        out = {
            f"{prefix}.{'adc' if prefix == 'data' else 'data'}": data.astype(np.float32),
            f"{prefix}.gain": stage.astype(np.uint8),
            f"{prefix}.mask": np.broadcast_to(mask, data.shape).copy(),
        }
        for key in _CARRIED[prefix]:
            if key in props:
                out[key] = props[key]
        return out


def _mask_of(truth, flags) -> np.ndarray:
    """uint32 bad-pixel mask (ss, fs) of a module's truth: dead and noisy pixels have
    ``NOISE_OUT_OF_THRESHOLD``, hot pixels ``OFFSET_OUT_OF_THRESHOLD``."""
    mask = np.zeros(truth.dead.shape, np.uint32)
    mask[truth.dead | truth.noisy] |= np.uint32(flags.NOISE_OUT_OF_THRESHOLD)
    mask[truth.hot] |= np.uint32(flags.OFFSET_OUT_OF_THRESHOLD)
    return mask


def parse_modules(text: str | None) -> list[int] | None:
    """``'0,1,4-7'`` -> ``[0, 1, 4, 5, 6, 7]``; None stays None."""
    if text is None:
        return None
    modules: list[int] = []
    try:
        for part in text.split(","):
            lo, sep, hi = part.strip().partition("-")
            modules.extend(range(int(lo), int(hi) + 1) if sep else [int(lo)])
    except ValueError:
        raise ConfigurationError(f"invalid module list {text!r}; e.g. '0,1,4-7'") from None
    return modules


# ----------------------------------------------------------------------------------------------
# Command
# ----------------------------------------------------------------------------------------------


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``bridge-sim`` sub-command."""
    p = subparsers.add_parser(
        "bridge-sim",
        help="serve simulated detector trains over the Karabo bridge protocol",
        description="Serve simulated AGIPD, LPD or JUNGFRAU trains to Karabo bridge clients "
        "(a drop-in for karabo-bridge-server-sim).  Prints the endpoint on the first line.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "port_arg",
        nargs="?",
        type=port_or_zero_arg,
        metavar="PORT",
        help="TCP port, as karabo-bridge-server-sim takes it (same as --port)",
    )
    p.add_argument(
        "--port",
        type=port_or_zero_arg,
        default=None,
        help="TCP port to bind (default 4545; 0 picks a free port)",
    )
    p.add_argument(
        "--bind",
        default="127.0.0.1",
        metavar="ADDR",
        help="interface address to bind (default 127.0.0.1; '*' for all)",
    )
    p.add_argument(
        "--pattern",
        "-z",
        "--server-socket",
        dest="pattern",
        default="REP",
        type=str.upper,
        choices=("REP", "PUB", "PUSH"),
        help="server socket: REP (clients REQ), PUB (SUB) or PUSH (PULL); default REP",
    )
    p.add_argument(
        "--protocol",
        "-p",
        default="2.2",
        choices=("1.0", "2.2"),
        help="Karabo bridge protocol version (default 2.2)",
    )
    p.add_argument(
        "--detector",
        "-d",
        default="AGIPD",
        type=str.upper,
        choices=DETECTORS,
        help="detector to simulate (default AGIPD)",
    )
    p.add_argument(
        "--frames", "-f", type=frame_count, default=16, help="frames per train (default 16)"
    )
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--raw", "-r", dest="corrected", action="store_false", help="send raw data")
    mode.add_argument(
        "--corrected",
        dest="corrected",
        action="store_true",
        default=True,
        help="send corrected data (default)",
    )
    p.add_argument(
        "--rate",
        type=non_negative_float,
        default=10.0,
        metavar="HZ",
        help="trains per second (default 10; 0 = as fast as possible)",
    )
    p.add_argument(
        "--trains",
        type=positive_int,
        default=None,
        metavar="N",
        help="stop after N trains were sent (default: run until interrupted)",
    )
    p.add_argument("--seed", type=non_negative_int, default=0, help="simulation seed (default 0)")
    p.add_argument(
        "--modules",
        type=_modules_arg,
        default=None,
        metavar="LIST",
        help="modules to simulate, e.g. '0-3' or '0,5' (default all)",
    )
    p.add_argument(
        "--all-sources",
        action="store_true",
        help="also send the sample motor, XGM and camera sources",
    )
    p.add_argument(
        "--maxlen",
        type=positive_int,
        default=10,
        help="trains waiting to be sent before feeding blocks (default 10)",
    )
    p.set_defaults(func=run)


def _modules_arg(text: str) -> list[int]:
    try:
        modules = parse_modules(text)
    except ConfigurationError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if not modules or min(modules) < 0:
        raise argparse.ArgumentTypeError(f"invalid module list {text!r}; e.g. '0,1,4-7'")
    return modules


def _endpoint(args: argparse.Namespace) -> str:
    port = args.port if args.port is not None else args.port_arg
    return f"tcp://{args.bind}:{4545 if port is None else port}"


def run(args: argparse.Namespace) -> int:
    """Run the simulator until ``--trains`` were sent or it is interrupted; exit code."""
    from pulsetrain.bridge import BridgeServer

    if args.port is not None and args.port_arg is not None and args.port != args.port_arg:
        raise ConfigurationError(f"two ports given: PORT {args.port_arg} and --port {args.port}")
    host, port = split_tcp_endpoint(_endpoint(args))
    problem = port_problem(host, port)
    if problem:
        raise ConfigurationError(f"cannot serve on {_endpoint(args)}: {problem}")
    source = SimulatedSource(
        args.detector,
        args.frames,
        args.seed,
        modules=args.modules,
        corrected=args.corrected,
        all_sources=args.all_sources,
    )
    server = BridgeServer(_endpoint(args), args.pattern, args.protocol, maxlen=args.maxlen)
    kind = "corrected" if args.corrected else "raw"
    print(
        f"pulsetrain bridge-sim: serving on {server.endpoint} ({args.pattern}, protocol "
        f"{args.protocol}, {args.detector} {kind}, {args.frames} frames, "
        f"{'unlimited' if not args.rate else f'{args.rate:g} Hz'})",
        flush=True,
    )
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    start = time.monotonic()
    try:
        server.start()
        feed_trains(server, source, args.trains, args.rate)
        if args.trains is not None:
            server.flush()
            server.stop(linger=5.0)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        server.stop()
    elapsed = time.monotonic() - start
    print(
        f"pulsetrain bridge-sim: stopped after {elapsed:.1f} s: fed {server.fed}, "
        f"sent {server.sent}, dropped {server.dropped}, bad requests {server.bad_requests}",
        flush=True,
    )
    return 0


def feed_trains(server, source: SimulatedSource, trains: int | None, rate: float) -> None:
    """Feed ``trains`` trains (None: forever) at ``rate`` Hz (0: as fast as the clients take
    them), stamping each train's metadata with the time it is fed."""
    period = 1.0 / rate if rate else 0.0
    due = time.monotonic()
    last_report = due
    n = 0
    while trains is None or n < trains:
        tid, data, _ = source.next_train()
        if period:  # never faster than the rate; after a delay, no burst to catch up
            now = time.monotonic()
            if now < due:
                time.sleep(due - now)
            due = max(due, now) + period
        now = time.time()
        meta = {src: make_meta(src, tid, now) for src in data}
        server.feed(data, meta)
        n += 1
        if time.monotonic() - last_report >= 10:
            last_report = time.monotonic()
            log.info("train %d: %s", tid, server.stats())


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt
