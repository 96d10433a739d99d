"""``pulsetrain bridge-sim`` with ``karabo-bridge-server-sim``'s command line sends what it sends.

For every configuration of the reference simulator (3 detectors x raw/corrected x protocol
1.0/2.2 x REP/PUB/PUSH x online/file: 72), the first 3 trains have the same sources, keys,
dtypes, shapes, values of the non-array keys and metadata keys, and train IDs from
10000000000.  The data of a train do not depend on the socket type, so the trains of each
(detector, raw, protocol, data-like) are compared in-process: the reference's from its
installed generator and serialiser, ours from the same command line parsed by our CLI; both
decoded by karabo-bridge-py.  A sample of configurations then runs both simulators as
processes and compares what a stock client receives over each socket type.  The data are
zeros (``-g zeros``) so that megapixel trains cost no memory; ``sim`` and ``random`` data are
checked on one configuration.
"""

from __future__ import annotations

import itertools
import sys

import numpy as np
import pytest
from _bridge_helpers import Process, pulsetrain_cmd

from pulsetrain.cli import build_parser
from pulsetrain.cli.bridge_sim import ReferenceLayoutSource, choose_layout
from pulsetrain.errors import ConfigurationError
from pulsetrain.protocol import serialize
from pulsetrain.runtime.ports import free_port

DETECTORS = ("AGIPD", "AGIPDModule", "LPD")
CONFIGS = list(
    itertools.product(
        DETECTORS, (True, False), ("1.0", "2.2"), ("REP", "PUB", "PUSH"), ("online", "file")
    )
)
N = 3


def command_line(det, raw, protocol, sock, like, port="4545") -> list[str]:
    args = [port, "-z", sock, "-d", det, "-p", protocol, "-g", "zeros", "--data-like", like]
    return [*args, "-r"] if raw else args


def structure(data: dict, meta: dict) -> dict:
    """What must agree: per source, per key the dtype and shape of arrays and the type (and
    value, for lists and strings) of the rest; the metadata keys."""
    out = {}
    for src, props in data.items():
        keys = {}
        for key, value in props.items():
            if key == "metadata":
                keys[key] = ("metadata", tuple(sorted(value)))
            elif isinstance(value, np.ndarray):
                keys[key] = ("array", str(value.dtype), value.shape)
            elif isinstance(value, (list, str)):
                keys[key] = (type(value).__name__, repr(value))
            else:
                keys[key] = (type(value).__name__,)
        out[src] = (keys, tuple(sorted(meta[src])))
    return out


# Protocol 1.0 packs arrays into one msgpack message: a copy of each.  Megapixel zeros would
# then cost gigabytes; their dtype and shape are compared before packing, and a one-element
# slice (same dtype, same key) goes through the 1.0 serialiser and deserialiser instead.
BIG = 64 << 20


def _shrink(data: dict, protocol: str) -> list:
    seen = []
    if protocol != "1.0":
        return seen
    for props in data.values():
        for key, value in list(props.items()):
            if isinstance(value, np.ndarray) and value.nbytes > BIG:
                seen.append((key, value.dtype, value.shape))
                props[key] = np.ascontiguousarray(value.reshape(-1)[:1])
    return seen


def reference_trains(det, raw, protocol, like, n=N):
    from karabo_bridge.serializer import deserialize
    from karabo_bridge.serializer import serialize as kserialize
    from karabo_bridge.simulation import data_generator

    gen = data_generator(det, raw=raw, nsources=1, datagen="zeros", data_like=like)
    out = []
    for d, m in itertools.islice(gen, n):
        big = _shrink(d, protocol)
        out.append((*deserialize(kserialize(d, m, protocol_version=protocol)), big))
    return out


def our_trains(argv, n=N):
    from karabo_bridge.serializer import deserialize

    args = build_parser().parse_args(["bridge-sim", *argv])
    assert choose_layout(args) == "reference"
    source = ReferenceLayoutSource(
        args.detector,
        raw=not args.corrected,
        nsources=args.nsources,
        gen=args.gen,
        data_like=args.data_like,
        pulses=args.frames,
        seed=args.seed,
    )
    out = []
    for _ in range(n):
        _, data, meta = source.next_train()
        data = {src: dict(props) for src, props in data.items()}
        big = _shrink(data, args.protocol)
        out.append((*deserialize(serialize(data, meta, args.protocol)), big))
    return out


@pytest.mark.parametrize(
    ("det", "raw", "protocol", "like"),
    list(itertools.product(DETECTORS, (True, False), ("1.0", "2.2"), ("online", "file"))),
)
def test_same_trains_as_the_reference(det, raw, protocol, like):
    """Covers the 3 socket types of each: the trains do not depend on them (see the module)."""
    for sock in ("REP", "PUB", "PUSH"):
        assert (det, raw, protocol, sock, like) in CONFIGS
    argv = command_line(det, raw, protocol, "REP", like)
    if det == "AGIPDModule" and not raw:  # the reference has no corrected single module
        with pytest.raises(NotImplementedError):
            reference_trains(det, raw, protocol, like)
        with pytest.raises(ConfigurationError, match="raw only"):
            our_trains(argv)
        return
    ref = reference_trains(det, raw, protocol, like)
    ours = our_trains(argv)
    for i, ((rd, rm, rbig), (od, om, obig)) in enumerate(zip(ref, ours)):
        assert structure(od, om) == structure(rd, rm), i
        assert obig == rbig, i
        src = next(iter(rd))
        assert om[src]["timestamp.tid"] == rm[src]["timestamp.tid"] == 10_000_000_000 + i
        assert np.array_equal(od[src]["image.trainId"], rd[src]["image.trainId"])


def test_nsources_copies_the_source():
    from karabo_bridge.serializer import deserialize
    from karabo_bridge.serializer import serialize as kserialize
    from karabo_bridge.simulation import data_generator

    gen = data_generator("AGIPDModule", raw=True, nsources=3, datagen="zeros")
    ref = [deserialize(kserialize(*next(gen)))]
    ours = our_trains(["4545", "-d", "AGIPDModule", "-r", "-n", "3", "-g", "zeros"], 1)
    assert structure(*ours[0][:2]) == structure(*ref[0])
    assert sorted(ours[0][0]) == [f"SPB_DET_AGIPD1M-1/DET/0CH0:xtdf-{i}" for i in (1, 2, 3)]


def test_sim_and_random_data():
    """Default data come from our simulator: raw ADU around the dark offset with photon
    signal on top, not noise; -g random is uniform 1500-1600 as the reference's."""
    ((data, _, _),) = our_trains(["4545", "-d", "AGIPDModule", "-r", "--frames", "4"], 1)
    image = data["SPB_DET_AGIPD1M-1/DET/0CH0:xtdf"]["image.data"]
    assert image.shape == (128, 512, 4) and image.dtype == np.uint16
    assert image.std() > 0 and len(np.unique(image)) > 100
    ((data, _, _),) = our_trains(
        ["4545", "-d", "AGIPDModule", "-r", "-g", "random", "--frames", "4"], 1
    )
    image = data["SPB_DET_AGIPD1M-1/DET/0CH0:xtdf"]["image.data"]
    assert 1500 <= image.min() and image.max() <= 1600


def _receive(cmd: list[str], port: int, sock: str, n: int) -> list:
    from karabo_bridge import Client

    proc = Process(cmd)
    try:
        client_sock = {"REP": "REQ", "PUB": "SUB", "PUSH": "PULL"}[sock]
        with Client(f"tcp://127.0.0.1:{port}", sock=client_sock, timeout=60) as client:
            return [client.next() for _ in range(n)]
    finally:
        proc.stop()


@pytest.mark.parametrize(
    ("det", "raw", "protocol", "sock", "like"),
    [
        ("AGIPDModule", True, "2.2", "REP", "file"),
        ("AGIPDModule", True, "1.0", "PUSH", "online"),
        ("AGIPD", False, "2.2", "PUB", "online"),
    ],
)
def test_over_the_wire_sample(det, raw, protocol, sock, like):
    port = free_port()
    argv = command_line(det, raw, protocol, sock, like, str(port))
    ref = _receive([sys.executable, "-m", "karabo_bridge.cli.simulation", *argv], port, sock, N)
    port = free_port()
    argv = command_line(det, raw, protocol, sock, like, str(port))
    ours = _receive(pulsetrain_cmd("bridge-sim", *argv), port, sock, N)
    for (rd, rm), (od, om) in zip(ref, ours):
        assert structure(od, om) == structure(rd, rm)
    if sock != "PUB":  # a subscriber may join after the first trains
        tids = [m[next(iter(m))]["timestamp.tid"] for _, m in ours]
        assert tids == [10_000_000_000 + i for i in range(N)]


def test_per_module_layout_stays_available():
    args = build_parser().parse_args(["bridge-sim", "--modules", "0"])
    assert choose_layout(args) == "modules"
    args = build_parser().parse_args(["bridge-sim", "--layout", "modules"])
    assert choose_layout(args) == "modules"
    args = build_parser().parse_args(["bridge-sim", "-d", "JUNGFRAU"])
    assert choose_layout(args) == "modules"
    args = build_parser().parse_args(["bridge-sim", "--layout", "reference", "--modules", "0"])
    with pytest.raises(ConfigurationError, match="per-module layout"):
        choose_layout(args)


@pytest.mark.parametrize("sock", ["REP", "PUSH"])
def test_karabo_bridge_glimpse_works_against_it(sock):
    port = free_port()
    sim = Process(
        pulsetrain_cmd(
            "bridge-sim", str(port), "-z", sock, "-d", "AGIPDModule", "-r", "-g", "zeros",
            "--rate", "0",
        )
    )  # fmt: skip
    try:
        glimpse = Process(["karabo-bridge-glimpse", f"tcp://127.0.0.1:{port}", "-z", sock, "-v"])
        code = glimpse.wait(120)
    finally:
        sim.stop()
    out = glimpse.output
    assert code == 0, out
    assert "Train ID: 10000000000" in out, out
    assert "SPB_DET_AGIPD1M-1/DET/0CH0:xtdf" in out and "image.data" in out, out


def test_sim_correction_is_the_calibration_pipelines():
    """The corrected ``sim`` data (the detector plug-in with the simulator's own constants, as
    both layouts use it) equal what the calibration's numpy reference correction gives with
    the same constants."""
    from pulsetrain.calibration import AGIPDConstants, correct_agipd_numpy
    from pulsetrain.cli.bridge_sim import TruthCorrection
    from pulsetrain.sim import DetectorSimulator

    sim = DetectorSimulator(
        "AGIPD", frames=12, memory_cells=4, modules=[3], bank_size=1, hit_variants=2
    )
    raw = sim.train(10_000_000_000)[0][sim.source(3)]
    truth = sim.truth(3, cells=range(4))
    with np.errstate(divide="ignore"):
        rel_gain = np.where(truth.slope > 0, 1.0 / truth.slope, 0.0).astype(np.float32)
    ref = correct_agipd_numpy(
        raw["image.data"],
        raw["image.cellId"],
        AGIPDConstants(
            offset=truth.offset,
            rel_gain=rel_gain,
            thresholds=truth.gain_thresholds(),
            bad_pixels=np.zeros(truth.offset.shape, np.uint32),
        ),
    )
    out = TruthCorrection(sim, 4)(3, raw)
    assert np.array_equal(out["image.gain"], ref.gain)
    np.testing.assert_allclose(out["image.data"], ref.data, rtol=1e-6, atol=1e-3)
    assert (out["image.gain"] > 0).any()  # hits switch gain: the check covers the other stages
    assert (out["image.mask"][:, truth.dead] != 0).all()  # the truth's bad pixels are masked


def test_sim_pool_trains_are_physical_and_differ():
    """Corrected AGIPD ``sim`` trains: deposited energy in whole 9.3 keV photons (noise well
    below one), gain switching on bright pixels, and the pool's second train another train."""
    source = ReferenceLayoutSource("AGIPD", pulses=16)
    trains = [source.next_train() for _ in range(3)]
    name = "SPB_DET_AGIPD1M-1/CAL/APPEND_CORRECTED"
    first, second, third = (t[1][name]["image.data"] for t in trains)
    assert first.shape == (16, 128, 512, 16) and first.dtype == np.float32
    photons = first / np.float32(9.3)
    assert np.mean(np.abs(photons - np.round(photons)) < 0.25) > 0.9  # bad pixels aside
    assert 0 <= np.median(photons) < 3 and photons.max() > 100  # water ring; Bragg peaks
    assert trains[0][1][name]["image.gain"].max() >= 1
    assert not np.array_equal(first, second)
    assert third is first  # the pool of two is sent in turn
    assert [t[0] for t in trains] == [10_000_000_000 + i for i in range(3)]
