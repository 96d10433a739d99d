"""Correction steps chosen per run: offset-only from dark constants alone, online and offline;
the steps recorded in the CORR run's metadata and the catalogue; missing constants named."""

from __future__ import annotations

import contextlib
import io
from datetime import datetime, timedelta, timezone

import h5py
import numpy as np
import pytest
from _offline_helpers import CELLS, FRAMES, MODULES

from pulsetrain.bootstrap import sim_conditions
from pulsetrain.calibration import AGIPDConstants, correct_agipd
from pulsetrain.catalog import Catalog
from pulsetrain.catalog.detector_constants import store_constants
from pulsetrain.cli import main
from pulsetrain.detectors import get_detector
from pulsetrain.devices.correction import DetectorCorrection
from pulsetrain.errors import MissingConstantsError
from pulsetrain.files import iter_run_trains
from pulsetrain.offline import CorrectionOptions, correct_run
from pulsetrain.sim import DetectorSimulator
from pulsetrain.testing import DeviceHarness

DARK_STEPS = "offset,gainstage,badpixels"
DETECTOR = "SPB_DET_AGIPD1M-1"


@pytest.fixture(scope="module")
def dark_only(tmp_path_factory):
    """A catalogue with the dark constants of the simulator's truth, and no RelativeGain."""
    url = f"sqlite:///{tmp_path_factory.mktemp('dark') / 'cat.sqlite'}"
    agipd = get_detector("AGIPD")
    sim = DetectorSimulator("AGIPD", frames=FRAMES, memory_cells=CELLS, modules=MODULES)
    truth = {}
    with Catalog(url) as cat:
        cat.add_detector(DETECTOR, "AGIPD", 16)
        for m in MODULES:
            arrays = agipd.truth_constants(sim.truth(m))
            truth[m] = {t: arrays[t] for t in agipd.dark_constants}
            store_constants(
                cat, DETECTOR, m, truth[m], sim_conditions(CELLS),
                datetime.now(timezone.utc) - timedelta(days=1),
            )  # fmt: skip
    return url, truth


def correct(*argv):
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main(["correct", *map(str, argv), "--no-progress"])
    return code, stdout.getvalue(), stderr.getvalue()


def expected_offset_only(raw, cells, dark):
    """The previous kernel with unit relative gain: what offset,gainstage,badpixels means."""
    constants = AGIPDConstants(
        offset=dark["Offset"],
        rel_gain=np.ones_like(dark["Offset"]),
        thresholds=dark["ThresholdsDark"],
        bad_pixels=dark["BadPixelsDark"],
    )
    return correct_agipd(raw, cells, constants)


def test_offset_only_offline_from_dark_constants_alone(raw_run, dark_only, dask_client, tmp_path):
    url, truth = dark_only
    out = tmp_path / "proc"
    report = correct_run(
        raw_run, out, catalog=url, conditions={"memory_cells": CELLS},
        options=CorrectionOptions(corrections="badpixels,offset,gainstage"),
        client=dask_client, progress=False,
    )  # fmt: skip
    assert all(set(ids) == {"Offset", "ThresholdsDark", "BadPixelsDark"}
               for ids in report.constants.values())  # fmt: skip
    assert report.run_record.corrections == ("offset", "gainstage", "badpixels")
    with Catalog(url) as cat:
        assert cat.get_run(report.run_record.id).corrections == report.run_record.corrections
    module_files = [p for p in report.output_files if "AGIPD" in p.name]
    assert module_files
    for path in module_files:
        with h5py.File(path, "r") as f:
            assert f["METADATA/calibrationCorrections"][0].decode() == DARK_STEPS
            assert f["METADATA/calibrationDetector"][0].decode() == "AGIPD"
    m = MODULES[0]
    raw_src, corr_src = f"{DETECTOR}/DET/{m}CH0:xtdf", f"{DETECTOR}/CORR/{m}CH0:output"
    raw = {t: d[raw_src] for t, d, _ in iter_run_trains(raw_run, sources=[raw_src])}
    corr = {t: d[corr_src] for t, d, _ in iter_run_trains(out, sources=[corr_src])}
    assert raw.keys() == corr.keys()
    for tid, props in raw.items():
        want = expected_offset_only(props["image.data"], props["image.cellId"], truth[m])
        np.testing.assert_array_equal(corr[tid]["image.data"], want.data)
        np.testing.assert_array_equal(corr[tid]["image.gain"], want.gain)
        np.testing.assert_array_equal(corr[tid]["image.mask"], want.mask)


def test_a_step_without_its_constants_is_one_error_naming_them(raw_run, dark_only, tmp_path):
    url, _ = dark_only
    with pytest.raises(MissingConstantsError) as info:
        correct_run(raw_run, tmp_path / "a", catalog=url, conditions={"memory_cells": CELLS},
                    options=CorrectionOptions(corrections="offset,relgain"), progress=False)  # fmt: skip
    assert info.value.missing == {"RelativeGain": list(MODULES)}
    code, out, err = correct(
        raw_run, "--out", tmp_path / "b", "--catalog", url, "--memory-cells", CELLS
    )  # the default steps include relgain
    assert code == 1 and out == "" and "Traceback" not in err
    first = err.splitlines()[0]
    assert first.startswith("pulsetrain correct: error: constants missing for " + DETECTOR)
    assert "  modules 0-1: RelativeGain" in err.splitlines()
    assert "or leave the steps that need them out of --corrections" in " ".join(err.split())
    assert not (tmp_path / "b").exists()


def test_unknown_step_is_a_usage_error(raw_run, tmp_path):
    code, _, err = correct(raw_run, "--out", tmp_path / "c", "--corrections", "offset,gain")
    assert code == 2 and "Traceback" not in err
    assert "unknown step(s) gain; the steps are offset, gainstage, relgain" in err


def test_offset_only_online_equals_offline(raw_run, dark_only):
    url, truth = dark_only
    m = MODULES[1]
    raw_src = f"{DETECTOR}/DET/{m}CH0:xtdf"
    tid, data, _ = next(iter_run_trains(raw_run, sources=[raw_src]))
    config = {"catalog": url, "detector": "AGIPD", "module": m, "memory_cells": CELLS,
              "corrections": DARK_STEPS}  # fmt: skip
    with DeviceHarness(DetectorCorrection, config, request_timeout=60.0) as dev:
        assert dev.get("constantsLoaded") is True
        assert dev.get("appliedCorrections") == DARK_STEPS
        assert set(dev.get("constantIds")) == {"Offset", "Noise", "ThresholdsDark", "BadPixelsDark"}
        dev.send(data, train_id=tid)
        out, _ = dev.receive(timeout=300)  # the first call compiles the kernel (cold cache)
        corrected = out[f"{DETECTOR}/CORR/{m}CH0:output"]
        props = data[raw_src]
        want = expected_offset_only(props["image.data"], props["image.cellId"], truth[m])
        np.testing.assert_array_equal(corrected["image.data"], want.data)
        np.testing.assert_array_equal(corrected["image.mask"], want.mask)
        # the default steps need RelativeGain, which is not there: ERROR naming it and the module
        dev.set("corrections", "")
        dev.wait_for("state", "ERROR", timeout=120.0)
        status = dev.get("status")
        assert f"module {m}" in status and "RelativeGain" in status
        assert dev.get("appliedCorrections") == ""


def test_steps_without_constants_need_the_memory_cells(raw_run, tmp_path):
    code, _, err = correct(raw_run, "--out", tmp_path / "d", "--corrections", "commonmode")
    assert code == 2 and "Traceback" not in err
    assert "the steps commonmode use no constants: give the number of memory cells" in err
    assert not (tmp_path / "d").exists()
