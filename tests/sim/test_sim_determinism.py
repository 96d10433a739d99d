"""Same seed, same bytes; other seeds or trains, other data."""

from __future__ import annotations

import numpy as np
import pytest
from sim_helpers import assert_trains_identical

from pulsetrain.sim import DetectorSimulator, SimulatedExperiment, TrainClock


def make(detector="AGIPD", seed=3, **kw):
    kw.setdefault("frames", 4)
    kw.setdefault("bank_size", 2)
    kw.setdefault("hit_variants", 2)
    return DetectorSimulator(detector, seed=seed, clock=TrainClock(100, start_time=1.6e9), **kw)


@pytest.mark.parametrize("detector, modules", [("AGIPD", [0, 9]), ("LPD", [4]), ("JUNGFRAU", [1])])
def test_fast_path_is_deterministic(detector, modules):
    frames = 2 if detector == "JUNGFRAU" else 4
    a = make(detector, frames=frames, modules=modules)
    b = make(detector, frames=frames, modules=modules)
    for tid in (100, 101):
        assert_trains_identical(a.train(tid), b.train(tid))


def test_exact_path_is_deterministic_and_independent_of_other_modules():
    a = make(modules=[0, 9])
    b = make(modules=[9])
    a.module_train(0, 7)  # computing another module first changes nothing
    da, ta = a.module_train(9, 7, sample_position_mm=2.3, return_truth=True)
    db, tb = b.module_train(9, 7, sample_position_mm=2.3, return_truth=True)
    assert_trains_identical(({"m": da}, {}), ({"m": db}, {}))
    np.testing.assert_array_equal(ta.energy_kev, tb.energy_kev)
    assert_trains_identical(a.train(7, modules=[9]), b.train(7))
    assert_trains_identical(a.train(7, modules=[9], exact=True), ({b.source(9): db}, b.train(7)[1]))


def test_seed_and_train_id_change_the_data():
    a = make(modules=[2])
    other_seed = make(seed=4, modules=[2])
    src = a.source(2)
    x = a.train(50)[0][src]["image.data"]
    assert not np.array_equal(x, other_seed.train(50)[0][src]["image.data"])
    assert not np.array_equal(x, a.train(51)[0][src]["image.data"])
    e = a.module_train(2, 50)["image.data"]
    assert not np.array_equal(e, other_seed.module_train(2, 50)["image.data"])
    assert not np.array_equal(e, a.module_train(2, 51)["image.data"])


def test_experiment_is_deterministic():
    def run():
        exp = SimulatedExperiment(
            frames=4, seed=9, first_train_id=2000, start_time=1.7e9, modules=[3], bank_size=1
        )
        out = []
        for i, (tid, data, meta) in enumerate(exp.trains(6)):
            if i == 2:
                exp.motor.move(1.0, velocity_mm_s=3.0)
            out.append((tid, data, meta))
        return out

    first, second = run(), run()
    assert [t for t, _, _ in first] == list(range(2000, 2006))
    for (ta, da, ma), (tb, db, mb) in zip(first, second):
        assert ta == tb
        assert_trains_identical((da, ma), (db, mb))
