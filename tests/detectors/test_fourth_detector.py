"""A fourth detector type, defined here and registered through the registry's API only, is
simulated (exact and fast paths, any source through the simulated-detector device's check) and
corrected like the built-in ones: no shared code names it."""

from __future__ import annotations

import functools
from typing import Any, ClassVar

import numpy as np
import pytest

from pulsetrain.detectors import get_detector, register_detector, registry
from pulsetrain.detectors._gainbits import GainBitsDetector, GainBitsLayout, GainWordCodec
from pulsetrain.detectors.base import RawKey
from waiting import wait_until

SHAPE = (64, 64)
PITCH_M = 500e-6
LAYOUT = GainBitsLayout(
    name="TOYGB",
    module_shape=SHAPE,
    adc_bits=12,
    stage_codes=(0, 1, 2),
    stage_names=("HG", "MG", "LG"),
    block_shape=(32, 32),
)


def _positions() -> np.ndarray:
    """Two modules side by side below and above the beam, 2 mm from it."""
    ss, fs = np.meshgrid(np.arange(SHAPE[0]), np.arange(SHAPE[1]), indexing="ij")
    pos = np.zeros((2, *SHAPE, 3))
    for m, sign in enumerate((-1, 1)):
        pos[m, ..., 0] = (fs - SHAPE[1] / 2 + 0.5) * PITCH_M
        pos[m, ..., 1] = sign * (2e-3 + ss * PITCH_M)
    return pos


@functools.cache
def _spec() -> Any:
    from pulsetrain.sim.detectors import DetectorSpec

    return DetectorSpec(
        name="TOYGB",
        key=99,
        n_modules=2,
        module_shape=SHAPE,
        pixel_size_m=PITCH_M,
        source_format="XYZ_DET_TOYGB-1/DET/{module}CH0:xtdf",
        encoding="toygb",
        default_memory_cells=4,
        default_bank_size=1,
        gain_model=get_detector("LPD").sim_spec().gain_model,
        codec=GainWordCodec("image.data", 12),
        positions=_positions,
    )


class ToyGainBits(GainBitsDetector):
    """Two 64 x 64 modules, 12-bit ADC, gain stage in bits 12-13 of ``image.data``."""

    name: ClassVar[str] = "TOYGB"
    default_detector_id: ClassVar[str] = "XYZ_DET_TOYGB-1"
    n_modules: ClassVar[int] = 2
    module_shape: ClassVar[tuple[int, int]] = SHAPE
    pixel_size_m: ClassVar[float] = PITCH_M
    gain_stages: ClassVar[tuple[str, ...]] = LAYOUT.stage_names
    raw_keys: ClassVar[tuple[RawKey, ...]] = (RawKey("image.data", SHAPE, "uint16"),)
    cell_key: ClassVar[str | None] = "image.cellId"
    steps: ClassVar[tuple[str, ...]] = ("offset", "gainstage", "relgain", "badpixels")
    default_steps: ClassVar[tuple[str, ...]] = steps
    constant_types = GainBitsDetector._constant_types("keV/ADU", flat_field=False)
    carried_keys: ClassVar[tuple[str, ...]] = ("image.cellId", "image.pulseId", "image.trainId")
    layout = LAYOUT
    data_key = "image.data"

    def truth_gain(self, slope_adu_per_kev: np.ndarray, dead: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore"):
            return np.where(slope_adu_per_kev > 0, 1.0 / slope_adu_per_kev, 0.0).astype(np.float32)

    def geometry(self, **kwargs: Any) -> Any:
        raise NotImplementedError

    def sim_spec(self) -> Any:
        return _spec()


@pytest.fixture
def toy(monkeypatch):
    """The toy type is registered for one test, and forgotten after it."""
    monkeypatch.setattr(registry, "_REGISTERED", dict(registry._REGISTERED))
    register_detector(ToyGainBits)
    yield get_detector("TOYGB")
    registry._instance.cache_clear()


def test_a_fourth_detector_is_simulated_and_corrected(toy):
    from pulsetrain.sim import DETECTORS, DetectorSimulator, TrainClock, decode

    assert DETECTORS["TOYGB"] is _spec()
    assert "TOYGB" in list(DETECTORS)
    cells = 4
    clock = TrainClock(start_time=1.6e9)
    sim = DetectorSimulator("toygb", frames=cells, seed=3, clock=clock)
    data, truth = sim.module_train(1, 1234, return_truth=True)
    assert data["image.data"].shape == (cells, *SHAPE) and data["image.data"].dtype == np.uint16
    assert toy.check_raw(data) is None
    assert sim.spec.source(1) == toy.raw_source(1)
    # the plug-in reads the words the simulator wrote
    adc, code = decode("toygb", data)
    np.testing.assert_array_equal(toy.split_raw(data)[0], adc)
    np.testing.assert_array_equal(toy.gain_stage(code, toy.cell_ids(data), {}), truth.gain_stage)

    prepared = toy.prepare_constants(toy.truth_constants(sim.truth(1)), toy.default_steps)
    out = toy.correct(data, prepared, toy.default_steps)
    value, gain, mask = (out[k] for k in toy.corrected_keys)
    assert value.shape == (cells, *SHAPE) and value.dtype == np.float32
    np.testing.assert_array_equal(gain, truth.gain_stage)
    lit = (mask == 0) & (truth.energy_kev > 0)
    assert lit.sum() > 100, lit.sum()
    assert abs(np.median(value[lit] / truth.energy_kev[lit]) - 1) < 0.02

    # the fast path gives the same keys and shapes; a second simulator gives the same trains
    train, _meta = sim.train(1235)
    again, _ = DetectorSimulator("toygb", frames=cells, seed=3, clock=clock).train(1235)
    for source, keys in train.items():
        assert set(keys) == set(data), source
        for key, arr in keys.items():
            np.testing.assert_array_equal(arr, again[source][key])


def test_the_simulated_detector_device_accepts_a_registered_type(toy):
    from pulsetrain.devices.sim import SimulatedDetector
    from pulsetrain.errors import PropertyError

    dev = SimulatedDetector("sim-toy", config={"detector": "TOYGB", "frames": 2})
    assert dev.detector == "TOYGB"
    dev.initialize()
    assert dev.sim.spec is _spec()
    wait_until(dev._banks_ready.is_set, timeout=60.0, what="the toy detector's frame banks")
    assert set(dev.sim.train(dev.first_train_id)[0]) == {_spec().source(0), _spec().source(1)}
    bad = SimulatedDetector("sim-bad", config={"detector": "NOPE", "frames": 2})
    with pytest.raises(PropertyError, match="detector: 'NOPE' is not one of"):
        bad.initialize()


def test_the_simulator_compares_no_detector_name():
    """Shared simulator code never branches on a detector's name or encoding name."""
    import ast
    import pathlib

    import pulsetrain.sim

    names = {"AGIPD", "LPD", "JUNGFRAU", "agipd", "lpd", "jungfrau"}
    found = []
    for path in pathlib.Path(pulsetrain.sim.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Compare, ast.MatchValue)):
                for sub in ast.walk(node):
                    if isinstance(sub, ast.Constant) and sub.value in names:
                        found.append(f"{path.name}:{node.lineno}")
    assert found == []


def test_bridge_sim_serves_a_registered_type_corrected_through_its_plug_in(toy):
    """``pulsetrain bridge-sim -d TOYGB``: the per-module layout (it has no reference one),
    corrected by the plug-in's kernel with the simulator's own constants."""
    from pulsetrain.cli import build_parser
    from pulsetrain.cli.bridge_sim import SimulatedSource, choose_layout

    args = build_parser().parse_args(["bridge-sim", "-d", "toygb", "--frames", "4"])
    assert args.detector == "TOYGB" and choose_layout(args) == "modules"
    source = SimulatedSource("TOYGB", frames=4, seed=3, corrected=True)
    _, data, meta = source.next_train()
    corrected = {toy.corrected_source(toy.raw_source(m)) for m in range(2)}
    assert corrected <= set(data) and corrected <= set(meta)
    raw = SimulatedSource("TOYGB", frames=4, seed=3).next_train()[1]  # the same trains
    for m in range(2):
        out = data[toy.corrected_source(toy.raw_source(m))]
        assert set(toy.corrected_keys) <= set(out)
        expected = toy.correct(
            raw[toy.raw_source(m)],
            toy.prepare_constants(
                toy.truth_constants(source.simulator.truth(m, cells=range(4))), toy.default_steps
            ),
            toy.default_steps,
        )
        for key in toy.corrected_keys:
            np.testing.assert_array_equal(out[key], expected[key])
    assert np.isfinite(out["image.data"]).all() and out["image.gain"].max() <= 2
