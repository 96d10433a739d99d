"""Shared data for the offline tests: one small simulated raw run, a catalogue with the
simulator's true constants, a 2-worker local Dask cluster, and the CORR run made from it.

All session-scoped: the cluster starts once (about 2 s) and the run is corrected once; tests
that change outputs work on their own copies.
"""

from __future__ import annotations

import pytest
from _offline_helpers import CELLS, FRAMES, MODULES, simulate

from pulsetrain.bootstrap import store_truth_constants
from pulsetrain.catalog import Catalog
from pulsetrain.sim import DetectorSimulator


@pytest.fixture(scope="session")
def raw_run(tmp_path_factory):
    return simulate(tmp_path_factory.mktemp("raw"))


@pytest.fixture(scope="session")
def catalog_url(tmp_path_factory):
    url = f"sqlite:///{tmp_path_factory.mktemp('cat') / 'catalog.sqlite'}"
    cat = Catalog(url)
    sim = DetectorSimulator("AGIPD", frames=FRAMES, memory_cells=CELLS, modules=MODULES)
    store_truth_constants(cat, sim, modules=list(MODULES))
    cat.close()
    return url


@pytest.fixture(scope="session")
def dask_client():
    from pulsetrain.offline import ClusterConfig, open_client

    with open_client(ClusterConfig(workers=2)) as client:
        yield client


@pytest.fixture(scope="session")
def corr_report(raw_run, catalog_url, dask_client, tmp_path_factory):
    from pulsetrain.offline import correct_run

    out = tmp_path_factory.mktemp("proc") / "r0001"
    return correct_run(
        raw_run,
        out,
        catalog=catalog_url,
        conditions={"memory_cells": CELLS},
        client=dask_client,
        progress=False,
    )
