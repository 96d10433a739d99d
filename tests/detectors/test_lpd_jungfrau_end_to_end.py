"""LPD-1M and JUNGFRAU end to end, through the command line as a user runs it.

Simulated forced-gain dark runs -> ``pulsetrain dark --detector D`` -> catalogue; a simulated
raw run (water ring only: the sample is out of the beam, so the deposited energy is known) ->
``pulsetrain correct --detector D`` -> a CORR run that ``extra-data-validate`` accepts and
EXtra-data's detector component stacks; corrected values against the simulator's truth, the
mask against its bad pixels, and the online correction device against the CORR run, bit for
bit, on the same trains.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pulsetrain.detectors import get_detector
from pulsetrain.devices.correction import DetectorCorrection
from pulsetrain.files import iter_run_trains
from pulsetrain.sim import DetectorSimulator
from pulsetrain.testing import DeviceHarness

MODULES = (0, 1)
#: Memory cells (= frames per train) and dark trains: 20 dark frames per cell and stage.
SETUP = {"LPD": {"cells": 4, "dark_trains": 20}, "JUNGFRAU": {"cells": 2, "dark_trains": 20}}


def pulsetrain(*args: object) -> str:
    """Run ``python -m pulsetrain ARGS``; returns the last line of its output."""
    proc = subprocess.run(
        [sys.executable, "-m", "pulsetrain", *map(str, args)],
        check=False,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc.stdout.strip().splitlines()[-1]


def simulate(out: Path, name: str, trains: int, *extra: object) -> Path:
    cells = SETUP[name]["cells"]
    modules = [str(m) for m in MODULES]
    return Path(
        pulsetrain(
            "simulate",
            "--out",
            out,
            "--detector",
            name,
            "--trains",
            trains,
            "--frames",
            cells,
            "--memory-cells",
            cells,
            "--modules",
            *modules,
            "--no-slow",
            *extra,
        )
    )


@pytest.fixture(scope="module", params=["LPD", "JUNGFRAU"])
def calibrated(request, tmp_path_factory):
    """``(name, catalogue URL, raw run)`` with the dark constants (and the simulator's gains)
    stored by ``pulsetrain dark``."""
    name = request.param
    det = get_detector(name)
    tmp = tmp_path_factory.mktemp(name.lower())
    darks = [
        simulate(tmp / "dark", name, SETUP[name]["dark_trains"], "--dark", stage)
        for stage in det.dark_stages
    ]
    url = f"sqlite:///{tmp / 'catalog.sqlite'}"
    line = pulsetrain(
        "dark",
        "--detector",
        name,
        *darks,
        "--catalog",
        url,
        "--memory-cells",
        SETUP[name]["cells"],
        "--rel-gain-from-sim",
    )
    assert "modules" in line
    raw = simulate(tmp / "raw", name, 3, "--sample-position", 9.0)  # out of the beam: no hits
    return name, url, raw, tmp


def _truth(name: str):
    cells = SETUP[name]["cells"]
    return DetectorSimulator(name, frames=cells, memory_cells=cells, modules=MODULES)


def _raw_trains(det, raw: Path, module: int) -> dict[int, dict]:
    src = det.raw_source(module)
    return {tid: data[src] for tid, data, _ in iter_run_trains(raw, sources=[src])}


def _online(det, url: str, module: int, steps: str, trains: dict[int, dict]) -> dict[int, dict]:
    """Corrected trains from the DetectorCorrection device fed the raw trains."""
    cells = SETUP[det.name]["cells"]
    config = {
        "catalog": url,
        "detector": det.name,
        "module": module,
        "memory_cells": cells,
        "corrections": steps,
    }
    out = {}
    with DeviceHarness(DetectorCorrection, config=config) as dev:
        assert dev.get("constantsLoaded") is True, dev.get("status")
        for tid, props in trains.items():
            dev.send({det.raw_source(module): props}, train_id=tid)
            data, meta = dev.receive(timeout=60)
            (src,) = data
            assert src == det.corrected_source(det.raw_source(module))
            assert meta[src]["timestamp.tid"] == tid
            out[tid] = data[src]
    return out


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_dark_correct_validate_and_stack(calibrated):
    name, url, raw, tmp = calibrated
    det = get_detector(name)
    corr = Path(
        pulsetrain(
            "correct",
            raw,
            "--out",
            tmp / "proc" / "r0001",
            "--detector",
            name,
            "--catalog",
            url,
            "--memory-cells",
            SETUP[name]["cells"],
            "--workers",
            1,
            "--no-progress",
        )
    )
    # one file per module, named as the raw ones (LPD00.. / JNGFR01..)
    raw_aggregators = sorted(p.name.split("-")[2] for p in raw.glob("RAW-*.h5"))
    assert sorted(p.name.split("-")[2] for p in corr.glob("CORR-*.h5")) == raw_aggregators
    check = subprocess.run(
        ["extra-data-validate", str(corr)], check=False, capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout[-2000:] + check.stderr[-2000:]

    from extra_data import RunDirectory, components

    component = getattr(components, det.extra_data_component)
    stacked = component(RunDirectory(corr), raw=False)
    key = next(iter(det.corrected_keys))
    arr = stacked[key].ndarray()
    cells = SETUP[name]["cells"]
    assert arr.dtype == np.float32
    assert arr.shape[0] == len(MODULES) and arr.shape[-2:] == det.module_shape
    assert arr.size == len(MODULES) * 3 * cells * det.module_shape[0] * det.module_shape[1]

    sim = _truth(name)
    for module in MODULES:
        src = det.corrected_source(det.raw_source(module))
        frames = {tid: data[src] for tid, data, _ in iter_run_trains(corr, sources=[src])}
        assert len(frames) == 3
        keys = list(det.corrected_keys)
        value = np.concatenate([f[keys[0]] for f in frames.values()])
        mask = np.concatenate([f[keys[2]] for f in frames.values()])
        truth = sim.truth(module)
        # masked pixels: exactly the simulator's bad ones
        np.testing.assert_array_equal(mask != 0, np.broadcast_to(truth.bad_pixels, mask.shape))
        # the water ring's deposited energy, on average over the frames
        expected = sim.expected_ring_photons(module) * sim.photon_energy_kev
        good = mask[0] == 0
        ratio = value[:, good].sum() / (expected[good].sum() * value.shape[0])
        assert abs(ratio - 1) < 0.01, ratio
        # the online device gives the same bits on the same trains
        online = _online(det, url, module, "", _raw_trains(det, raw, module))
        for tid, offline in frames.items():
            for k in keys:
                np.testing.assert_array_equal(online[tid][k], offline[k])


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_offset_only_from_dark_constants_online(calibrated):
    name, url, raw, _ = calibrated
    det = get_detector(name)
    sim = _truth(name)
    module = MODULES[1]
    trains = _raw_trains(det, raw, module)
    online = _online(det, url, module, "offset,gainstage", trains)
    truth = sim.truth(module)
    keys = list(det.corrected_keys)
    value = np.concatenate([t[keys[0]] for t in online.values()])
    assert not np.concatenate([t[keys[2]] for t in online.values()]).any()  # no badpixels step
    # ADU above the dark level: the ring's energy times the true high-gain slope
    expected = sim.expected_ring_photons(module) * sim.photon_energy_kev * truth.slope[0, 0]
    good = ~truth.bad_pixels
    ratio = value[:, good].sum() / (expected[good].sum() * value.shape[0])
    assert abs(ratio - 1) < 0.01, ratio
    # the same bits as the plug-in's own correction with the catalogue's constants
    from pulsetrain.catalog import Catalog
    from pulsetrain.catalog.detector_constants import load_constants

    cat = Catalog(url)
    try:
        conditions = {"memory_cells": SETUP[name]["cells"], "bias_voltage": 300.0,
                      "acquisition_rate": 1.1, "gain_setting": 0, "gain_mode": 0,
                      "integration_time": 12, "photon_energy": 9.3}  # fmt: skip
        steps = det.parse_steps("offset,gainstage")
        prepared, records = load_constants(
            cat, det, det.default_detector_id, module, conditions, None, steps
        )
    finally:
        cat.close()
    assert "Offset" in records and set(records) <= set(det.dark_constants)  # dark ones only
    for tid, props in trains.items():
        ref = det.correct(props, prepared, steps)
        for k in keys:
            np.testing.assert_array_equal(online[tid][k], ref[k])
