"""``pulsetrain bridge-sim``: serve simulated detector trains over the Karabo bridge protocol.

A drop-in for ``karabo-bridge-server-sim``: it takes the same command line
(``PORT -z REP|PUB|PUSH -d AGIPD|AGIPDModule|LPD -p 1.0|2.2 -r -n N -g random|zeros
--data-like online|file --debug``) and, in the default *reference layout*
(:class:`ReferenceLayoutSource`), sends the same sources, keys, shapes, dtypes, axis orders and
train IDs.  Its data come from our detector simulator unless ``-g random`` or ``-g zeros`` is
asked.  The *per-module layout* (``--layout modules``, implied by ``--modules``,
``--all-sources`` and any detector without a reference layout, such as JUNGFRAU) sends one
source per module as the DAQ and the correction pipeline see them.  Any Karabo bridge client (``karabo_bridge.Client``, EXtra-foam, OnDA,
``pulsetrain monitor``) can connect.  The trains come from
:class:`pulsetrain.sim.SimulatedExperiment` (deterministic with ``--seed``); the first train is
made before the port is bound, so a client connecting is served at once.  In the reference
layout the ``sim`` data come from a small simulator (16 frames in 4 memory cells, repeated over
the 64 or 300 pulses) so that a megapixel detector starts in a few seconds.

Corrected mode (the default, as in karabo-bridge-py) turns each raw module into the corrected
keys of a calibration pipeline, using the simulator's own per-cell constants (its ground
truth), so the values are deposited energy in keV: the detector plug-in
(:mod:`pulsetrain.detectors`) turns the truth into its constants
(:meth:`~pulsetrain.detectors.base.Detector.truth_constants`) and corrects with its own kernel
and default steps, as the correction device does, so every registered detector that can be
simulated is served the same way (AGIPD: source ``.../CORR/{m}CH0:output`` with ``image.data``
float32 (frames, 512, 128), ``image.gain`` uint8, ``image.mask`` uint32; JUNGFRAU:
``data.adc`` float32, ``data.gain``, ``data.mask``).  Constants cover the memory cells in use
only (about 2.9 MB per module and cell for AGIPD).
"""

from __future__ import annotations

import argparse
import functools
import logging
import signal
import time
from typing import Any

import numpy as np

from pulsetrain.cli._args import frame_count, non_negative_float, non_negative_int, positive_int
from pulsetrain.errors import ConfigurationError
from pulsetrain.protocol import make_meta
from pulsetrain.runtime.ports import port_or_zero_arg, port_problem, split_tcp_endpoint

log = logging.getLogger(__name__)

EPILOG = """\
examples:
  pulsetrain bridge-sim                       # REP on tcp://127.0.0.1:4545, AGIPD corrected
  pulsetrain bridge-sim 4545 -z PUSH -p 1.0 -d LPD -r -g random   # karabo-bridge-server-sim's
  pulsetrain bridge-sim 4545 -d AGIPDModule -r --data-like file   # command line, its layout
  pulsetrain bridge-sim --port 4600 --pattern PUB --raw --layout modules --frames 64
  pulsetrain bridge-sim --port 0 --trains 20 --rate 0   # free port, 20 trains, full speed
  pulsetrain bridge-sim --detector JUNGFRAU --frames 4 --bind 0.0.0.0   # per-module layout

then, e.g.:  pulsetrain monitor tcp://127.0.0.1:4545 --trains 10
"""

LAYOUTS = ("reference", "modules")


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
        self.correction = TruthCorrection(self.simulator, int(np.max(self.simulator.cell_ids)) + 1)
        if self.corrected:  # constants right after each bank: its cells' constants are cached
            for m in self.simulator.modules:
                self.simulator.prepare([m])
                self.correction.constants(m)

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
            name = self.correction.plugin.corrected_source(src)
            out_data[name] = self.correct(module, props)
            out_meta[name] = dict(meta[src], source=name)
        return tid, out_data, out_meta

    def correct(self, module: int, props: dict[str, Any]) -> dict[str, Any]:
        """Corrected keys of one raw module train."""
        return self.correction(module, props)


class TruthCorrection:
    """Corrects raw module trains of a simulator with its own constants (its ground truth),
    through the detector plug-in: the plug-in's constants of the truth, its kernel, its
    default steps.

    Parameters
    ----------
    simulator : pulsetrain.sim.DetectorSimulator
        The simulator whose trains are corrected.
    memory_cells : int
        Cells the constants cover (``0 .. memory_cells - 1``: every cell ID of its frames).
    keep : bool
        Keep each module's constants once made (else made again for each train: for few
        trains of many modules).
    """

    def __init__(self, simulator, memory_cells: int, *, keep: bool = True) -> None:
        from pulsetrain.detectors import get_detector

        self.simulator = simulator
        self.plugin = get_detector(simulator.detector)
        self.steps = tuple(self.plugin.default_steps)
        self.cells = range(int(memory_cells))
        self.keep = bool(keep)
        self._constants: dict[int, Any] = {}

    def constants(self, module: int) -> Any:
        """The plug-in's prepared constants of ``module``."""
        constants = self._constants.get(module)
        if constants is None:
            truth = self.simulator.truth(module, cells=self.cells)
            arrays = self.plugin.truth_constants(truth)
            constants = self.plugin.prepare_constants(arrays, self.steps)
            if self.keep:
                self._constants[module] = constants
        return constants

    def __call__(self, module: int, props: dict[str, Any]) -> dict[str, Any]:
        """The corrected keys (the plug-in's ``corrected_keys`` and carried keys) of one raw
        module train."""
        return self.plugin.correct(props, self.constants(module), self.steps)


# ----------------------------------------------------------------------------------------------
# The layout of karabo-bridge-server-sim
# ----------------------------------------------------------------------------------------------


class _RefDetector:
    """Geometry and names of one detector of ``karabo-bridge-server-sim``."""

    def __init__(self, modules, ss, fs, pulses, corrected, raw, sim, follows_data_like):
        self.modules = modules  # 1: no module axis
        self.ss, self.fs = ss, fs  # pixels of a module: slow scan (y), fast scan (x)
        self.pulses = pulses
        self.sources = {False: corrected, True: raw}  # by raw
        self.sim = sim  # our simulator's detector
        self.follows_data_like = follows_data_like  # LPD is always sent online-like


REFERENCE_DETECTORS = {
    "AGIPD": _RefDetector(
        16,
        128,
        512,
        64,
        "SPB_DET_AGIPD1M-1/CAL/APPEND_CORRECTED",
        "SPB_DET_AGIPD1M-1/CAL/APPEND_RAW",
        "AGIPD",
        True,
    ),
    "AGIPDMODULE": _RefDetector(
        1, 128, 512, 64, None, "SPB_DET_AGIPD1M-1/DET/0CH0:xtdf", "AGIPD", True
    ),
    "LPD": _RefDetector(
        16,
        256,
        256,
        300,
        "FXE_DET_LPD1M-1/CAL/APPEND_CORRECTED",
        "FXE_DET_LPD1M-1/CAL/APPEND_RAW",
        "LPD",
        False,
    ),
}

#: First train ID of ``karabo-bridge-server-sim``.
REFERENCE_FIRST_TRAIN = 10_000_000_000
#: Distinct trains made before binding and sent in turn (``sim`` and ``random`` data).
POOL = 2
#: Memory cells of the simulator behind the reference layout's ``sim`` data (frames cycle
#: through them); each costs its constants and a bank frame per module at start.
SIM_MEMORY_CELLS = 4
#: Hit overlays (Bragg-peak patterns) per memory cell and module of that simulator.
SIM_HIT_VARIANTS = 2
#: Frames that simulator makes per train; pulse ``p`` of a train shows frame
#: ``p % SIM_FRAMES`` (the costs of correcting and arranging a megapixel train are per frame).
SIM_FRAMES = 16


class ReferenceLayoutSource:
    """Trains in the layout of ``karabo-bridge-server-sim``: one source per detector with the
    modules stacked, its keys, shapes, dtypes, axis orders and train IDs.

    Parameters
    ----------
    detector : {'AGIPD', 'AGIPDModule', 'LPD'}
        As the reference's ``-d``.  AGIPDModule is raw only, as there.
    raw : bool
        Raw (uint16) rather than corrected (float32) data.
    nsources : int
        Sources sent (copies named ``<source>-1`` ... when more than one), as ``-n``.
    gen : {'sim', 'random', 'zeros'}
        ``sim``: our detector simulator (:class:`SimulatedSource`: raw ADU, or corrected keV);
        ``random``: uniform 1500-1600 as the reference; ``zeros``.
    data_like : {'online', 'file'}
        Axis order: ``online`` (modules, ss, fs, pulses) as the reference names it
        ``(modules, fs, ss, pulses)``; ``file`` (pulses, modules, fs, ss).  LPD ignores it and
        is always online-like, as in the reference.
    pulses : int, optional
        Pulses (frames) per train; default the reference's (64 AGIPD, 300 LPD).
    seed : int
        Seed of the simulation and of the random data.

    Notes
    -----
    ``sim`` and ``random`` data are made for :data:`POOL` trains and then sent in turn, each
    with its own train ID, timestamps and ``image.trainId``: making a megapixel train costs
    more than sending it.  The first is made when the source is created; for ``sim`` data the
    others when they are first sent.
    """

    def __init__(
        self,
        detector: str = "AGIPD",
        raw: bool = False,
        nsources: int = 1,
        gen: str = "sim",
        data_like: str = "online",
        pulses: int | None = None,
        seed: int = 0,
    ) -> None:
        key = detector.upper()
        if key not in REFERENCE_DETECTORS:
            raise ConfigurationError(f"detector {detector!r} has no reference layout")
        det = REFERENCE_DETECTORS[key]
        source = det.sources[bool(raw)]
        if source is None:
            raise ConfigurationError(
                f"{detector} is raw only in the reference layout (as in "
                "karabo-bridge-server-sim): add -r"
            )
        if gen not in ("sim", "random", "zeros"):
            raise ConfigurationError(f"unknown generator {gen!r}: sim, random or zeros")
        if data_like not in ("online", "file"):
            raise ConfigurationError(f"unknown --data-like {data_like!r}: online or file")
        if int(nsources) < 1:
            raise ConfigurationError(f"nsources must be at least 1, not {nsources}")
        self.det = det
        self.raw = bool(raw)
        self.source = source
        self.pulses = int(pulses or det.pulses)
        self.online = data_like == "online" or not det.follows_data_like
        self.dtype = np.dtype(np.uint16 if raw else np.float32)
        self.names = (
            [source] if nsources == 1 else [f"{source}-{i + 1}" for i in range(int(nsources))]
        )
        self._next_tid = REFERENCE_FIRST_TRAIN
        self._pool = self._make_pool(gen, seed)
        self._turn = 0

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of ``image.data``."""
        det = self.det
        mods = () if det.modules == 1 else (det.modules,)
        if self.online:
            return (*mods, det.ss, det.fs, self.pulses)
        return (self.pulses, *mods, det.fs, det.ss)

    def _arrange(
        self, frames: np.ndarray, out: np.ndarray, module: int, pick: np.ndarray | None = None
    ) -> None:
        """Put one module's frames (pulses, fs, ss) -- our simulator's (frames, 512, 128) for
        AGIPD -- into the stacked array; with ``pick``, pulse ``p`` gets ``frames[pick[p]]``."""
        if pick is None:
            pick = np.arange(len(frames))
        if self.online:
            target = out if self.det.modules == 1 else out[module]
            np.take(np.ascontiguousarray(frames.transpose(2, 1, 0)), pick, axis=2, out=target)
        elif self.det.modules == 1:
            out[...] = frames[pick]
        else:
            out[:, module] = frames[pick]

    def _make_pool(self, gen: str, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
        det = self.det
        gain_shape = (det.ss, det.fs, self.pulses)
        if gen == "zeros":
            return [(np.zeros(self.shape, self.dtype), np.zeros(gain_shape, np.uint16))]
        pool = []
        if gen == "random":
            rng = np.random.default_rng(seed)
            for _ in range(POOL):
                data = np.empty(self.shape, self.dtype)
                flat = data.reshape(-1)
                step = 1 << 22  # in pieces: no float64 copy of a whole train
                for a in range(0, flat.size, step):
                    flat[a : a + step] = rng.uniform(1500, 1600, min(step, flat.size - a))
                pool.append((data, np.zeros(gain_shape, np.uint16)))
            return pool
        return self._sim_pool(seed, gain_shape)

    def _sim_pool(self, seed: int, gain_shape: tuple[int, ...]) -> list:
        """:data:`POOL` trains of our simulator, raw or corrected with its own constants: the
        first made now, the others (callables in the list) when their turn first comes.

        A small simulator (:data:`SIM_FRAMES` frames in :data:`SIM_MEMORY_CELLS` memory cells,
        one bank frame per cell, :data:`SIM_HIT_VARIANTS` hit overlays) keeps the start within
        a few seconds: a full one (64 cells, 4 frames each) takes a minute of CPU for 16
        modules, and correcting and arranging 300 LPD frames of 16 modules as many seconds.
        """
        from pulsetrain.sim import DetectorSimulator

        sim = DetectorSimulator(
            self.det.sim,
            frames=min(self.pulses, SIM_FRAMES),
            memory_cells=SIM_MEMORY_CELLS,
            seed=seed,
            modules=range(self.det.modules),
            bank_size=1,
            hit_variants=SIM_HIT_VARIANTS,
            recycle_buffers=0,
        )
        # the others when their turn first comes: a thread making them would be cut short
        # (and abort the interpreter) when the process ends first
        pool: list = [self._sim_train(sim, 0, gain_shape)]
        return pool + [
            functools.partial(self._sim_train, sim, i, gain_shape) for i in range(1, POOL)
        ]

    def _sim_train(self, sim, i: int, gain_shape: tuple[int, ...]) -> tuple:
        """Train ``i`` of the pool from the simulator: ``(image.data, image.gain)``."""
        correction = TruthCorrection(sim, SIM_MEMORY_CELLS, keep=False)
        image = np.empty(self.shape, self.dtype)
        gain = np.zeros(gain_shape, np.uint16)
        data, _ = sim.train(REFERENCE_FIRST_TRAIN + i)
        pick = np.arange(self.pulses) % sim.frames  # pulse p shows frame p % frames
        for m in sim.modules:
            props = data.pop(sim.source(m))
            if self.raw:
                frames = np.asarray(props["image.data"])  # (frames, 2 or 1, ss, fs)
                stage = frames[:, 1] if frames.shape[1] > 1 else None
                frames = frames[:, 0]
            else:
                corrected = correction(m, props)
                frames, stage = corrected["image.data"], corrected["image.gain"]
            self._arrange(frames, image, m, pick)
            if m == 0 and stage is not None:  # the reference's gain: one module's
                gain[...] = np.asarray(stage).transpose(2, 1, 0)[..., pick]
        return image, gain

    def next_train(self) -> tuple[int, dict[str, dict], dict[str, dict]]:
        """The next train as ``(train_id, data, meta)``."""
        tid = self._next_tid
        self._next_tid += 1
        k = self._turn % len(self._pool)
        if callable(self._pool[k]):  # made when first needed
            self._pool[k] = self._pool[k]()
        image, gain = self._pool[k]
        self._turn += 1
        det = self.det
        props: dict[str, Any] = {
            "image.data": image,
            "image.cellId": np.arange(self.pulses, dtype=np.uint16),
        }
        if not self.raw:
            domain = self.source.partition("/")[0]
            props["image.passport"] = [
                f"{domain}/CAL/THRESHOLDING_Q1M1",
                f"{domain}/CAL/OFFSET_CORR_Q1M1",
                f"{domain}/CAL/RELGAIN_CORR_Q1M1",
            ]
        if det.modules > 1:
            base = self.source.rpartition("/")[0]
            props["sources"] = [f"{base}/{i}CH0:xtdf" for i in range(det.modules)]
            props["modulesPresent"] = [True] * det.modules
        props["image.gain"] = gain
        props["image.pulseId"] = np.arange(self.pulses, dtype=np.uint64)
        props["image.trainId"] = np.full(self.pulses, tid, dtype=np.uint64)
        now = time.time()
        data = {name: props for name in self.names}
        meta = {name: make_meta(name, tid, now) for name in self.names}
        return tid, data, meta


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
        type=_detector_arg,
        metavar="DETECTOR",
        help="detector to simulate: AGIPD (default), AGIPDModule, LPD, JUNGFRAU, ... (any "
        "detector plug-in the simulator knows; those but AGIPD, AGIPDModule and LPD in the "
        "per-module layout)",
    )
    p.add_argument(
        "--frames",
        "-f",
        type=frame_count,
        default=None,
        help="frames per train (default: the reference's 64 for AGIPD, 300 for LPD; 16 in the "
        "per-module layout)",
    )
    p.add_argument(
        "--layout",
        choices=LAYOUTS,
        default=None,
        help="reference: karabo-bridge-server-sim's (one source, modules stacked; the default); "
        "modules: one source per module (implied by --modules, --all-sources, JUNGFRAU)",
    )
    p.add_argument(
        "--nsources",
        "-n",
        type=positive_int,
        default=1,
        help="reference layout: copies of the detector source sent (default 1)",
    )
    p.add_argument(
        "--gen",
        "-g",
        choices=("sim", "random", "zeros"),
        default="sim",
        help="reference layout: data from our simulator (default), uniform random 1500-1600 "
        "as karabo-bridge-server-sim, or zeros",
    )
    p.add_argument(
        "--data-like",
        choices=("online", "file"),
        default="online",
        help="reference layout: axis order online (modules, fs, ss, pulses) or file "
        "(pulses, modules, ss, fs), as karabo-bridge-server-sim names them (LPD: always online)",
    )
    p.add_argument(
        "--serialisation",
        "-s",
        choices=("msgpack",),
        default="msgpack",
        help="message serialisation (msgpack only, as karabo-bridge-server-sim)",
    )
    p.add_argument("--debug", action="store_true", help="print a line for every train sent")
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


def _detector_arg(text: str) -> str:
    """``-d``: a reference-layout name (AGIPDModule) or a detector plug-in's type, upper case."""
    from pulsetrain.detectors import get_detector

    name = text.strip().upper()
    if name in REFERENCE_DETECTORS:
        return name
    try:
        return get_detector(name).name
    except ConfigurationError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


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
    layout = choose_layout(args)
    if layout == "reference":
        source = ReferenceLayoutSource(
            args.detector,
            raw=not args.corrected,
            nsources=args.nsources,
            gen=args.gen,
            data_like=args.data_like,
            pulses=args.frames,
            seed=args.seed,
        )
        frames = source.pulses
    else:
        frames = args.frames or 16
        source = SimulatedSource(
            args.detector,
            frames,
            args.seed,
            modules=args.modules,
            corrected=args.corrected,
            all_sources=args.all_sources,
        )
    # The first train is made before binding: a client that connects is served at once.
    first = source.next_train()
    server = BridgeServer(_endpoint(args), args.pattern, args.protocol, maxlen=args.maxlen)
    kind = "corrected" if args.corrected else "raw"
    print(
        f"pulsetrain bridge-sim: serving on {server.endpoint} ({args.pattern}, protocol "
        f"{args.protocol}, {args.detector} {kind}, {frames} frames, {layout} layout, "
        f"{'unlimited' if not args.rate else f'{args.rate:g} Hz'})",
        flush=True,
    )
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    start = time.monotonic()
    try:
        server.start()
        feed_trains(server, source, args.trains, args.rate, first=first, debug=args.debug)
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


def choose_layout(args: argparse.Namespace) -> str:
    """The layout asked for: ``--layout``, else per-module when a per-module option or a
    detector without a reference layout (JUNGFRAU, ...) is given, else the reference layout."""
    no_reference = args.detector not in REFERENCE_DETECTORS
    per_module = args.modules is not None or args.all_sources or no_reference
    layout = args.layout or ("modules" if per_module else "reference")
    if layout == "reference" and per_module:
        raise ConfigurationError(
            "--modules, --all-sources and "
            + (args.detector if no_reference else "detectors other than AGIPD, LPD")
            + " need the per-module layout (--layout modules)"
        )
    if layout == "modules":
        if args.detector == "AGIPDMODULE":
            raise ConfigurationError("AGIPDModule is a reference-layout detector; use AGIPD")
        if args.nsources != 1 or args.gen != "sim" or args.data_like != "online":
            raise ConfigurationError(
                "--nsources, --gen and --data-like apply to the reference layout only"
            )
    return layout


def feed_trains(
    server,
    source,
    trains: int | None,
    rate: float,
    *,
    first: tuple | None = None,
    debug: bool = False,
) -> None:
    """Feed ``trains`` trains (None: forever) at ``rate`` Hz (0: as fast as the clients take
    them), stamping each train's metadata with the time it is fed; ``first`` is a train
    already made."""
    period = 1.0 / rate if rate else 0.0
    due = time.monotonic()
    last_report = due
    n = 0
    while trains is None or n < trains:
        if first is not None:
            (tid, data, _), first = first, None
        else:
            tid, data, _ = source.next_train()
        if period:  # never faster than the rate; after a delay, no burst to catch up
            now = time.monotonic()
            if now < due:
                time.sleep(due - now)
            due = max(due, now) + period
        now = time.time()
        meta = {src: make_meta(src, tid, now) for src in data}
        server.feed(data, meta)
        if debug:
            print(f"pulsetrain bridge-sim: fed train {tid}", flush=True)
        n += 1
        if time.monotonic() - last_report >= 10:
            last_report = time.monotonic()
            log.info("train %d: %s", tid, server.stats())


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt
