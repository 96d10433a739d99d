"""The detector registry and the parts of the plug-in contract every detector shares."""

from __future__ import annotations

import numpy as np
import pytest

from pulsetrain.detectors import (
    STEPS,
    Detector,
    detector_names,
    get_detector,
    register_detector,
    registry,
    resolve_detector,
)
from pulsetrain.detectors.agipd import AGIPD
from pulsetrain.errors import ConfigurationError


@pytest.fixture
def scratch_registry(monkeypatch):
    """Detectors registered in a test are forgotten after it."""
    monkeypatch.setattr(registry, "_REGISTERED", dict(registry._REGISTERED))
    yield
    registry._instance.cache_clear()


def test_agipd_is_found_by_name_in_any_case():
    assert "AGIPD" in detector_names()
    assert isinstance(get_detector("agipd"), AGIPD)
    assert get_detector("AGIPD") is get_detector("Agipd")


def test_unknown_detector_is_a_clear_error():
    with pytest.raises(ConfigurationError, match="unknown detector type 'NOPE'; known: .*AGIPD"):
        get_detector("nope")


@pytest.mark.parametrize("name", sorted(set(detector_names())))
def test_every_plugin_keeps_the_contract(name):
    det = get_detector(name)
    assert det.name == name
    assert set(det.steps) <= set(STEPS) and set(det.default_steps) <= set(det.steps)
    assert len(det.gain_stages) == len(set(det.gain_stages))
    for ctype in det.constant_types:
        assert set(ctype.steps) <= set(STEPS)
        assert len(det.constant_shape(ctype.name, 4)) == len(ctype.shape)
    for stage, stage_name in enumerate(det.gain_stages):
        assert det.stage_index(stage_name.lower()) == stage
        assert det.stage_index(str(stage)) == det.stage_index(stage) == stage
    assert det.dark_stages
    assert det.module_of(det.raw_source(3)) == 3
    corrected = det.corrected_source(det.raw_source(3))
    assert corrected != det.raw_source(3) and det.module_of(corrected) == 3
    out = det.allocate(2)
    assert set(out) == set(det.corrected_keys)
    assert all(a.shape == (2, *det.module_shape) for a in out.values())


def test_stage_names_and_indices():
    agipd = get_detector("AGIPD")
    assert [agipd.stage_index(s) for s in ("HG", "mg", "LG", 0, "1", 2)] == [0, 1, 2, 0, 1, 2]
    with pytest.raises(ConfigurationError, match="AGIPD has no gain stage 'G0'; use one of HG"):
        agipd.stage_index("G0")
    with pytest.raises(ConfigurationError, match="no gain stage 3"):
        agipd.stage_index(3)


def test_steps_are_parsed_in_a_fixed_order_and_checked():
    agipd = get_detector("AGIPD")
    assert agipd.parse_steps("badpixels, offset") == ("offset", "badpixels")
    assert agipd.parse_steps(["RelGain", "offset"]) == ("offset", "relgain")
    with pytest.raises(ConfigurationError, match="unknown correction step.*'?gain'?; the steps"):
        agipd.parse_steps("offset,gain")
    assert agipd.required_constants(("offset", "badpixels")) == ("Offset", "BadPixelsDark")
    assert agipd.required_constants(agipd.default_steps) == (
        "Offset",
        "ThresholdsDark",
        "BadPixelsDark",
        "RelativeGain",
    )


def test_resolve_type_or_catalogue_name():
    plugin, name = resolve_detector("AGIPD")
    assert plugin.name == "AGIPD" and name == "SPB_DET_AGIPD1M-1"
    assert resolve_detector("SPB_DET_AGIPD1M-1")[0].name == "AGIPD"
    assert resolve_detector("MID_DET_AGIPD1M-1") == (get_detector("AGIPD"), "MID_DET_AGIPD1M-1")
    assert resolve_detector("MY_CAM", "AGIPD") == (get_detector("AGIPD"), "MY_CAM")
    with pytest.raises(ConfigurationError, match="its type cannot be told"):
        resolve_detector("SOME_CAMERA")


def test_a_fourth_detector_is_registered_without_touching_shared_code(scratch_registry):
    class Toy(AGIPD):
        name = "TOYDET"
        default_detector_id = "XYZ_DET_TOY-1"

    assert register_detector(Toy) == "TOYDET"
    assert isinstance(get_detector("toydet"), Toy)
    assert "TOYDET" in detector_names()
    assert resolve_detector("XYZ_DET_TOY-1")[0].name == "TOYDET"


def test_a_plugin_may_bring_its_own_simulator_spec(scratch_registry):
    import dataclasses

    from pulsetrain.sim.detectors import DETECTORS, detector_spec

    spec = dataclasses.replace(DETECTORS["AGIPD"], name="TOYSIM", key=99, n_modules=2)

    class ToySim(AGIPD):
        name = "TOYSIM"
        default_detector_id = "XYZ_DET_TOYSIM-1"

        def sim_spec(self):
            return spec

    register_detector(ToySim)
    assert detector_spec("toysim") is spec
    with pytest.raises(ConfigurationError, match="unknown detector 'NOPE'"):
        detector_spec("NOPE")


def test_gain_stage_decoding_of_agipd():
    agipd = get_detector("AGIPD")
    thr = np.zeros((2, 2, 512, 128), np.float32)
    thr[0], thr[1] = 100, 200
    raw = np.zeros((2, 2, 512, 128), np.uint16)
    raw[:, 1, 0, :3] = [99, 100, 200]
    _adc, gain_raw = agipd.split_raw({"image.data": raw})
    stages = agipd.gain_stage(gain_raw, np.array([1, 0]), {"ThresholdsDark": thr})
    assert stages[:, 0, :3].tolist() == [[0, 1, 2], [0, 1, 2]]
    assert isinstance(agipd, Detector)


@pytest.mark.parametrize("name", ["AGIPD", "LPD", "JUNGFRAU"])
def test_store_truth_constants_stores_the_plug_ins_constants(tmp_path, name):
    """``bootstrap.store_truth_constants`` asks the plug-in: its types, layouts and values;
    without the dark ones, only those the dark procedure does not make."""
    from pulsetrain.bootstrap import sim_conditions, store_truth_constants
    from pulsetrain.catalog import Catalog
    from pulsetrain.sim import DetectorSimulator

    plugin = get_detector(name)
    sim = DetectorSimulator(name, frames=2, memory_cells=2, modules=[1])
    expected = plugin.truth_constants(sim.truth(1))
    with Catalog(f"sqlite:///{tmp_path / 'cat.sqlite'}") as cat:
        stored = store_truth_constants(cat, sim)
        assert list(stored) == [1] and set(stored[1]) == set(expected)
        assert [d.name for d in cat.detectors()] == [plugin.default_detector_id]
        det_id, cond = plugin.default_detector_id, sim_conditions(2)
        found = cat.find_constants(det_id, 1, cond, types=list(expected))
        for ctype, array in expected.items():
            np.testing.assert_array_equal(cat.load_array(found[ctype]), array)
        only = store_truth_constants(cat, sim, detector="OTHER_DET", include_dark=False)
        assert set(only[1]) == set(expected) - set(plugin.dark_constants) != set()
