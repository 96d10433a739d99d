"""The AGIPDCorrection device: constants from the catalogue, live correction, missing constants."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest

from pulsetrain.bootstrap import store_truth_constants
from pulsetrain.calibration import AGIPDConstants, correct_agipd
from pulsetrain.catalog import Catalog
from pulsetrain.runtime.channels import InputChannel
from pulsetrain.runtime.supervisor import Supervisor
from pulsetrain.runtime.topology import Topology
from pulsetrain.sim import DetectorSimulator

CELLS = 16


def topology(tmp_path, catalog_url, modules=(0, 3), on_missing="error"):
    text = textwrap.dedent(f"""
        [servers.det]
        [servers.corr]
        [devices."SIM"]
        class = "SimulatedDetector"
        server = "det"
        config = {{ frames = 8, memory_cells = {CELLS}, modules = {list(modules)}, rate = 5.0 }}
    """)
    for m in modules:
        text += textwrap.dedent(f"""
            [devices."CORR{m}"]
            class = "AGIPDCorrection"
            server = "corr"
            config = {{ catalog = "{catalog_url}", module = {m}, memory_cells = {CELLS}, on_missing_constants = "{on_missing}" }}
            [[connections]]
            from = "SIM:module{m}"
            to = "CORR{m}:input"
        """)
    path = tmp_path / "corr.toml"
    path.write_text(text)
    return Topology.load(path)


@pytest.fixture(scope="module")
def catalog_url(tmp_path_factory):
    """Module 0's constants of the simulator's truth (read only by the tests: made once)."""
    url = f"sqlite:///{tmp_path_factory.mktemp('catalog') / 'cat.sqlite'}"
    cat = Catalog(url)
    sim = DetectorSimulator("AGIPD", frames=8, memory_cells=CELLS, modules=(0, 3))
    store_truth_constants(cat, sim, modules=[0])  # module 3 has no constants
    cat.close()
    return url


@pytest.mark.slow
def test_live_correction_equals_offline_and_missing_constants_error(tmp_path, catalog_url):
    with Supervisor(
        topology(tmp_path, catalog_url), workdir=tmp_path / "run", may_fail={"CORR3"}
    ) as sup:
        assert sup.get("CORR0", "constantsLoaded") is True
        # module 3 has no constants: ERROR naming what is missing, server still fine
        assert sup.get("CORR3", "state") == "ERROR"
        status = sup.get("CORR3", "status")
        assert "RelativeGain" in status and "Offset" in status and "module 3" in status
        raw_in = InputChannel("test:raw", on_slowness="queueDrop", max_queue_length=10)
        raw_in.connect(sup.endpoints()["SIM:module0"])
        corr_in = InputChannel("test:corr", on_slowness="queueDrop", max_queue_length=10)
        corr_in.connect(sup.endpoints()["CORR0:output"])
        cat = Catalog(catalog_url)
        from pulsetrain.bootstrap import sim_conditions
        from pulsetrain.catalog.agipd import load_agipd_constants

        constants, _ = load_agipd_constants(cat, "SPB_DET_AGIPD1M-1", 0, sim_conditions(CELLS))
        cat.close()
        assert isinstance(constants, AGIPDConstants)
        raws: dict[int, dict] = {}

        def take_raws() -> None:
            """Keep the raw trains that arrived (the raw stream runs ahead of the corrected)."""
            while True:
                try:
                    item = raw_in.get(timeout=0)
                except TimeoutError:
                    return
                src = next(iter(item.data))
                raws[item.meta[src]["timestamp.tid"]] = {
                    k: np.array(v) for k, v in item.data[src].items() if isinstance(v, np.ndarray)
                }
                while len(raws) > 30:
                    raws.pop(min(raws))

        compared = 0
        for _ in range(60):
            item = corr_in.get(timeout=30)
            take_raws()
            src = "SPB_DET_AGIPD1M-1/CORR/0CH0:output"
            tid = item.meta[src]["timestamp.tid"]
            if tid not in raws:
                continue
            got = item.data[src]
            ref = correct_agipd(raws[tid]["image.data"], raws[tid]["image.cellId"], constants)
            np.testing.assert_array_equal(got["image.gain"], ref.gain)
            np.testing.assert_array_equal(got["image.mask"], ref.mask)
            np.testing.assert_allclose(got["image.data"], ref.data, rtol=1e-6)
            assert got["image.data"].dtype == np.float32 and got["image.data"].shape == (
                8,
                512,
                128,
            )
            np.testing.assert_array_equal(got["image.cellId"], raws[tid]["image.cellId"])
            compared += 1
            if compared == 2:
                break
        assert compared == 2
        sup.device_client("CORR0").wait_for("CORR0", "framesPerSecond", lambda v: v > 0, 10)
        assert sup.get("CORR0", "latencyP99") > 0
        raw_in.close()
        corr_in.close()


@pytest.mark.slow
def test_passthrough_when_configured(tmp_path, catalog_url):
    topo = topology(tmp_path, catalog_url, modules=(3,), on_missing="passthrough")
    with Supervisor(topo, workdir=tmp_path / "run") as sup:
        assert sup.get("CORR3", "state") == "PROCESSING"
        assert "passing raw data through" in sup.get("CORR3", "status")
        inp = InputChannel("test:pass")
        inp.connect(sup.endpoints()["CORR3:output"])
        item = inp.get(timeout=60)
        src = "SPB_DET_AGIPD1M-1/CORR/3CH0:output"
        assert item.data[src]["calibration.corrected"] is False
        assert item.data[src]["image.data"].dtype == np.uint16
        inp.close()
