"""The example live pipelines of LPD-1M and JUNGFRAU run and deliver trains.

Each example topology (simulated detector -> per-module correction -> matcher -> preview and
azimuthal integration -> Karabo bridge) is run as written, but with two modules, few frames,
a catalogue holding the simulator's constants and free ports, so that it fits a test: the
bridge serves matched, corrected trains to a stock ``karabo_bridge.Client``, with the radial
profiles of the azimuthal integration, and the preview assembles the modules.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tomllib

from pulsetrain.bootstrap import store_truth_constants
from pulsetrain.catalog import Catalog
from pulsetrain.detectors import get_detector
from pulsetrain.runtime.device import device_classes
from pulsetrain.runtime.ports import free_port
from pulsetrain.runtime.supervisor import Supervisor
from pulsetrain.runtime.topology import Topology
from pulsetrain.sim import DetectorSimulator
from waiting import wait_until

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
#: Two modules the simulated water ring crosses, per detector.
MODULES_OF = {"LPD": (2, 7), "JUNGFRAU": (0, 1)}
FRAMES = {"LPD": 4, "JUNGFRAU": 2}
FILES = {"LPD": "lpd-pipeline.toml", "JUNGFRAU": "jungfrau-pipeline.toml"}


def _catalog(tmp_path: Path, name: str) -> str:
    """A catalogue with the simulator's constants of the two modules (through the plug-in)."""
    url = f"sqlite:///{tmp_path / 'catalog.sqlite'}"
    cells = FRAMES[name]
    sim = DetectorSimulator(name, frames=cells, memory_cells=cells, modules=MODULES_OF[name])
    with Catalog(url) as cat:
        stored = store_truth_constants(cat, sim)
    det = get_detector(name)
    assert all(set(recs) == {c.name for c in det.constant_types} for recs in stored.values())
    return url


def _small(doc: dict, name: str, url: str, port: int) -> dict:
    """The example with two modules, few frames, the test's catalogue and a free port."""
    modules = MODULES_OF[name]
    keep = {}
    for dev, spec in doc["devices"].items():
        config = dict(spec.get("config", {}))
        if "/CAL/CORR_" in dev:
            if config["module"] not in modules:
                continue
            config.update(catalog=url, memory_cells=FRAMES[name], on_missing_constants="error")
            if spec["class"] not in device_classes():  # an install whose metadata predates it
                spec = {**spec, "class": "pulsetrain.devices.correction:DetectorCorrection"}
        elif spec["class"] == "SimulatedDetector":
            config.update(modules=list(modules), frames=FRAMES[name], memory_cells=FRAMES[name])
            config.update(rate=5.0)
        elif spec["class"] == "Bridge":
            config.update(endpoint=f"tcp://127.0.0.1:{port}")
        keep[dev] = {**spec, "config": config}
    connections = [
        c
        for c in doc["connections"]
        if c["from"].split(":")[0] in keep and c["to"].split(":")[0] in keep
    ]
    return {**doc, "devices": keep, "connections": connections}


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("name", ["LPD", "JUNGFRAU"])
def test_example_pipeline_delivers_corrected_trains(tmp_path, name):
    from karabo_bridge import Client

    det = get_detector(name)
    doc = tomllib.loads((EXAMPLES / FILES[name]).read_text())
    n_corr = sum("/CAL/CORR_" in d for d in doc["devices"])
    assert n_corr == det.n_modules  # the example corrects every module
    port = free_port()
    topo = Topology.from_dict(_small(doc, name, _catalog(tmp_path, name), port), name)
    assert topo.check() == []
    det_id = det.default_detector_id
    modules = MODULES_OF[name]
    with Supervisor(topo, workdir=tmp_path / "run") as sup:
        for m in modules:
            corr = f"{det_id}/CAL/CORR_{m:02d}"
            assert sup.get(corr, "constantsLoaded") is True, sup.get(corr, "status")
        client = Client(f"tcp://127.0.0.1:{port}", timeout=60)
        corrected = {det.corrected_source(det.raw_source(m)) for m in modules}
        data_key, _gain_key, mask_key = det.corrected_keys

        def matched_train():
            data, meta = client.next()
            return (data, meta) if corrected <= set(data) else None

        data, _meta = wait_until(matched_train, timeout=120, what="a matched corrected train")
        for src in corrected:
            frames = data[src][data_key]
            assert frames.dtype == np.float32
            assert frames.shape == (FRAMES[name], *det.module_shape)
            assert data[src]["calibration.corrected"] is True
            assert data[src][mask_key].dtype == np.uint32

        def profile():
            d, _ = client.next()
            return d.get(f"{det_id}/AZIMUTHAL")

        radial = wait_until(profile, timeout=120, what="radial profiles on the bridge")
        assert radial["azimuthal.intensity"].shape == (FRAMES[name], 256)
        mean = radial["azimuthal.mean"]
        q = radial["azimuthal.radial"]
        # the simulated water ring (q = 2 / A, in keV: corrected with the true gains) peaks there
        assert abs(q[np.nanargmax(mean)] - 2.0) < 0.3, (q, mean)
        assert np.nanmax(mean) > 1.5 * np.nanmin(mean)
        preview = f"{det_id}/PROC/PREVIEW"
        wait_until(lambda: sup.get(preview, "modulesFound") == len(modules), timeout=60,
                   what="the preview assembling both modules")  # fmt: skip
