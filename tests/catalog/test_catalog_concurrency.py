"""Several processes using one catalogue at once (16 correction devices start together)."""

from __future__ import annotations

import multiprocessing
import threading
from datetime import timedelta

import numpy as np
import pytest
from _catalog_helpers import DETECTOR, T0
from _catalog_workers import open_fresh_and_register, read_constants

from pulsetrain.catalog import Catalog

N_PROCESSES = 4
TIMEOUT = 120


@pytest.fixture(scope="module")
def spawn_pool():
    """Worker processes that share nothing with this one (like separate devices): forked from
    a fresh 'forkserver' process that has imported the catalogue once, so starting them is
    cheap on this small machine."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["pulsetrain.catalog", "_catalog_workers"])
    manager = ctx.Manager()
    pool = ctx.Pool(N_PROCESSES)
    yield pool, manager
    pool.terminate()
    pool.join()
    manager.shutdown()


def test_concurrent_readers_while_writing(agipd, dark_conditions, spawn_pool):
    pool, manager = spawn_pool
    rng = np.random.default_rng(0)
    queries = []
    for module in range(N_PROCESSES):
        for ctype, store in (("Offset", "file"), ("ThresholdsDark", "db")):
            arr = rng.random((3, 16, 32, 16), dtype=np.float32)
            rec = agipd.add_constant(DETECTOR, module, ctype, arr, dark_conditions, T0, store=store)
            queries.append((module, ctype, dark_conditions.as_dict(), rec.id, rec.checksum))
    at = (T0 + timedelta(days=1)).isoformat()
    barrier = manager.Barrier(N_PROCESSES + 1)
    results = [
        pool.apply_async(
            read_constants,
            (agipd.engine.url, agipd.store_dir, DETECTOR, queries, at, 5, barrier, TIMEOUT),
        )
        for _ in range(N_PROCESSES)
    ]
    barrier.wait(TIMEOUT)
    # write while they read: newer constants (valid later than the readers ask about)
    written = [
        agipd.add_constant(
            DETECTOR,
            m % 16,
            "Offset",
            np.full((8, 8), m, "f4"),
            dark_conditions,
            T0 + timedelta(days=2),
            store="file" if m % 2 else "db",
        )
        for m in range(8)
    ]
    loads = [r.get(TIMEOUT) for r in results]
    assert loads == [5 * len(queries)] * N_PROCESSES
    assert len(agipd.list_constants(ctype="Offset")) == N_PROCESSES + len(written)


def test_concurrent_first_open(catalog_url, tmp_path, spawn_pool):
    """Processes opening a brand-new catalogue together: one creates the schema, all work."""
    pool, manager = spawn_pool
    barrier = manager.Barrier(N_PROCESSES)
    store = tmp_path / "store"
    results = [
        pool.apply_async(open_fresh_and_register, (catalog_url, store, DETECTOR, barrier, TIMEOUT))
        for _ in range(N_PROCESSES)
    ]
    outcomes = [r.get(TIMEOUT) for r in results]
    print("open + register seconds per process:", [round(t, 2) for _, _, t in outcomes])
    ids = {det_id for det_id, _, _ in outcomes}
    assert len(ids) == 1, "every process sees the same detector"
    assert {rev for _, rev, _ in outcomes} == {"0003"}
    with Catalog(catalog_url, store_dir=store) as cat:
        assert [d.name for d in cat.detectors()] == [DETECTOR]


def test_threads_share_one_catalogue(agipd, dark_conditions):
    """One Catalog used from several threads (a device's start and reload_constants slot)."""
    expected = {}
    for module in range(4):
        rec = agipd.add_constant(
            DETECTOR,
            module,
            "Offset",
            np.full((4, 4), module, "f4"),
            dark_conditions,
            T0,
            store="db" if module % 2 else "file",
        )
        expected[module] = rec.id
    errors = []

    def work(module):
        try:
            for _ in range(20):
                rec = agipd.find_constant(DETECTOR, module, "Offset", dark_conditions)
                assert rec.id == expected[module]
                assert agipd.load_array(rec)[0, 0] == module
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(repr(exc))

    threads = [threading.Thread(target=work, args=(m,)) for m in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT)
    assert errors == []
    assert not any(t.is_alive() for t in threads)
