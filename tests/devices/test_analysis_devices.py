"""The AzimuthalIntegration and HitFinder devices on small live pipelines."""

from __future__ import annotations

import numpy as np
import pytest
from _live_helpers import LiveServer, collect, corrected_train, wait_until

from pulsetrain.analysis import AzimuthalIntegrator, HitFinder, count_peaks
from pulsetrain.geometry import agipd1m_geometry
from pulsetrain.sim import DetectorSimulator

PULSES = 3
WAIT = {"inputs": {"input": {"on_slowness": "wait"}}}  # the test writes faster than 10 Hz


@pytest.fixture
def live():
    srv = LiveServer()
    yield srv
    srv.close()


def ring_frames(rng, n=PULSES):
    """Corrected-looking frames: a powder ring in q plus noise, some NaN pixels, a mask."""
    geom = agipd1m_geometry(distance_m=0.2)
    q = geom.radial_map("q_A^-1", 9.3).astype(np.float32)
    frames = np.empty((n, 16, 512, 128), np.float32)
    for i in range(n):
        frames[i] = 30.0 * (1 + i) * np.exp(-0.5 * ((q - 2.0) / 0.2) ** 2) + rng.normal(
            0, 1, q.shape
        ).astype(np.float32)
    frames[:, 5, 100:120, 10:20] = np.nan
    mask = (rng.random(frames.shape) < 0.01).astype(np.uint32)
    return frames, mask


def test_azimuthal_device_equals_the_pure_integrator(live):
    rng = np.random.default_rng(1)
    frames, mask = ring_frames(rng)
    dev = live.add(
        "AzimuthalIntegration",
        "AZI",
        {
            "npt": 300,
            "unit": "q_A^-1",
            "radial_min": 0.2,
            "radial_max": 3.5,
            "distance": 0.2,
            "photon_energy": 9.3,
        },
    )
    src = live.source()
    live.connect(src.endpoints[0], dev)
    tap = live.tap(live.output(dev))
    assert src.wait_for_inputs(1, 10)
    wait_until(
        lambda: live.client.get(dev, "channels.outputs.output.connections"),
        10,
        "the tap to connect",
    )
    data, meta = corrected_train(1000, frames, mask)
    src.write(data, meta)
    (item,) = collect(tap, 1)
    out = item.data["SPB_DET_AGIPD1M-1/AZIMUTHAL"]
    assert item.meta["SPB_DET_AGIPD1M-1/AZIMUTHAL"]["timestamp.tid"] == 1000

    ai = AzimuthalIntegrator.from_geometry(
        agipd1m_geometry(distance_m=0.2),
        300,
        "q_A^-1",
        photon_energy_kev=9.3,
        radial_range=(0.2, 3.5),
    )
    ref = ai.integrate_stack(frames, mask=mask)
    assert out["azimuthal.intensity"].shape == (PULSES, 300)
    assert out["azimuthal.intensity"].dtype == np.float32
    np.testing.assert_allclose(out["azimuthal.radial"], ai.radial, rtol=1e-12)
    np.testing.assert_allclose(out["azimuthal.intensity"], ref.intensity, rtol=2e-6, atol=1e-6)
    with np.errstate(invalid="ignore"):
        pooled = ref.sum.sum(axis=0) / ref.count.sum(axis=0)
    np.testing.assert_allclose(out["azimuthal.mean"], pooled, rtol=2e-6, atol=1e-6)
    assert out["azimuthal.unit"] == "q_A^-1"
    np.testing.assert_array_equal(out["image.pulseId"], np.arange(PULSES) * 4)
    # The ring is where it was put (q = 2.0), and it grows with the pulse index.
    peak = ai.radial[np.nanargmax(out["azimuthal.mean"])]
    assert abs(peak - 2.0) < 0.05
    assert np.all(np.diff(np.nanmax(out["azimuthal.intensity"], axis=1)) > 0)
    # The mean profile is also a read-only property (arrays travel on the control plane).
    wait_until(lambda: live.client.get(dev, "processedTrains") == 1, 5)
    np.testing.assert_allclose(live.client.get(dev, "meanProfile"), out["azimuthal.mean"])
    assert live.client.get(dev, "processingTime") > 0

    # Reconfigure: fewer bins in 2-theta; the next train uses them.
    live.client.set(dev, "unit", "2th_deg")
    live.client.set(dev, "radial_min", 1.0)
    live.client.set(dev, "radial_max", 40.0)
    live.client.set(dev, "npt", 100)
    data, meta = corrected_train(1001, frames[:1], mask[:1])
    src.write(data, meta)
    (item,) = collect(tap, 1)
    out = item.data["SPB_DET_AGIPD1M-1/AZIMUTHAL"]
    assert out["azimuthal.intensity"].shape == (1, 100)
    assert out["azimuthal.unit"] == "2th_deg"
    assert out["azimuthal.radial"][0] == pytest.approx(1.0 + 0.5 * 39.0 / 100)


def test_bad_trains_are_counted_and_do_not_stop_the_device(live):
    rng = np.random.default_rng(2)
    frames, mask = ring_frames(rng, n=1)
    dev = live.add("AzimuthalIntegration", "AZI2", {"npt": 50, **WAIT})
    src = live.source()
    live.connect(src.endpoints[0], dev)
    tap = live.tap(live.output(dev))
    assert src.wait_for_inputs(1, 10)
    wait_until(lambda: live.client.get(dev, "channels.outputs.output.connections"), 10)
    bad, meta = corrected_train(7, frames, mask, modules=[0])
    bad[next(iter(bad))]["image.data"] = np.zeros((1, 256, 128), np.float32)
    src.write(bad, meta)
    src.write({"OTHER/SOURCE": {"x": 1}}, {"OTHER/SOURCE": meta[next(iter(meta))]})
    data, meta = corrected_train(8, frames, mask)
    src.write(data, meta)
    (item,) = collect(tap, 1)
    assert item.meta["SPB_DET_AGIPD1M-1/AZIMUTHAL"]["timestamp.tid"] == 8
    assert live.client.get(dev, "badTrains") == 2
    assert "must be (pulses, 512, 128)" in live.client.get(
        dev, "lastError"
    ) or "no source matches" in live.client.get(dev, "lastError")
    assert live.client.get(dev, "state") == "PROCESSING"


def planted_peaks(rng, n_pulses, peaks_per_pulse):
    """Noise frames with well separated single-pixel peaks in chosen pulses."""
    frames = rng.normal(0, 1, (n_pulses, 16, 512, 128)).astype(np.float32)
    for i, k in enumerate(peaks_per_pulse):
        mods = rng.integers(0, 16, k)
        ss = rng.integers(0, 64, k) * 8 + 3
        fs = rng.integers(0, 16, k) * 8 + 3
        frames[i, mods, ss, fs] = 500.0
    return frames


def test_hit_finder_device_counts_peaks_like_the_pure_function(live):
    rng = np.random.default_rng(3)
    dev = live.add(
        "HitFinder", "HITS", {"threshold": 100.0, "min_peaks": 10, "window_trains": 2, **WAIT}
    )
    src = live.source()
    live.connect(src.endpoints[0], dev)
    tap = live.tap(live.output(dev))
    assert src.wait_for_inputs(1, 10)
    wait_until(lambda: live.client.get(dev, "channels.outputs.output.connections"), 10)
    plan = [[0, 25, 3, 12], [0, 0, 0, 0], [30, 30, 30, 9]]
    results = []
    for t, peaks in enumerate(plan):
        frames = planted_peaks(rng, 4, peaks)
        mask = np.zeros(frames.shape, np.uint32)
        mask[3, 0] = 1  # module 0 of pulse 3 is masked out
        data, meta = corrected_train(500 + t, frames, mask)
        src.write(data, meta)
        (item,) = collect(tap, 1)
        out = item.data["SPB_DET_AGIPD1M-1/HITS"]
        expected = count_peaks(frames, 100.0, mask=mask)
        np.testing.assert_array_equal(out["hits.nPeaks"], expected)
        assert out["hits.nPeaks"].dtype == np.int32
        np.testing.assert_array_equal(
            out["hits.isHit"], HitFinder(100.0, 10).find(frames, mask).is_hit
        )
        results.append(out)
    for r in results:
        assert r["hits.nHits"] == int(np.count_nonzero(r["hits.isHit"]))
        assert r["hits.nPulses"] == 4
    assert [r["hits.nHits"] for r in results] == [2, 0, 3]  # pulse 3 of train 0: 12 - masked
    assert results[0]["hits.hitRate"] == pytest.approx(results[0]["hits.nHits"] / 4)
    # The rolling window holds 2 train IDs: trains 501 and 502.
    window = (results[1]["hits.nHits"] + results[2]["hits.nHits"]) / 8
    assert results[2]["hits.hitRateWindow"] == pytest.approx(window)
    wait_until(lambda: live.client.get(dev, "pulses") == 12, 5)
    assert live.client.get(dev, "hitRate") == pytest.approx(window)
    assert live.client.get(dev, "hits") == sum(r["hits.nHits"] for r in results)
    live.client.call(dev, "reset_counters")
    assert live.client.get(dev, "hits") == 0 and live.client.get(dev, "pulses") == 0


@pytest.mark.slow
def test_hit_finder_on_raw_simulated_data_agrees_with_the_simulator_truth(live):
    """Simulated detector (4 modules, raw) -> matcher -> HitFinder (raw fallback)."""
    modules, frames, seed = [0, 1, 2, 3], 8, 5
    det = live.add(
        "SimulatedDetector",
        "SIM",
        {
            "frames": frames,
            "modules": modules,
            "seed": seed,
            "rate": 10.0,
            "sample_position": 2.5,
            "autostart": False,
        },
    )
    match = live.add(
        "TrainMatcher",
        "MATCH",
        {"sources": [f"SPB_DET_AGIPD1M-1/DET/{m}CH0:xtdf" for m in modules], "buffer_size": 10},
    )
    hits = live.add(
        "HitFinder",
        "HITS",
        {
            "data_kind": "raw",
            "source_pattern": "SPB_DET_AGIPD1M-1/DET/{m}CH0:xtdf",
            "threshold": 1000.0,
            "min_peaks": 5,
            "dark_frames": 16,
        },
    )
    for m in modules:
        live.connect(live.output(det, f"module{m}"), match)
    live.connect(live.output(match), hits)
    tap = live.tap(live.output(hits))
    wait_until(lambda: live.client.get(hits, "channels.outputs.output.connections"), 10)
    live.client.call(det, "start_acquisition")
    got = collect(tap, 12, timeout=60)
    # 16 dark frames = 2 trains of 8: the first only feeds the estimate, the second completes it
    assert live.client.get(hits, "skippedTrains") == 1
    truth_sim = DetectorSimulator("AGIPD", frames=frames, seed=seed, modules=modules)
    agree = total = n_true = 0
    for item in got:
        out = item.data["SPB_DET_AGIPD1M-1/HITS"]
        tid = item.meta["SPB_DET_AGIPD1M-1/HITS"]["timestamp.tid"]
        truth = truth_sim.pulse_hits(tid, 2.5)
        agree += int(np.sum(out["hits.isHit"] == truth))
        total += truth.size
        n_true += int(truth.sum())
    assert n_true > 20  # p = 0.6 at the sample centre
    assert agree / total >= 0.95, (agree, total)
    assert live.client.get(hits, "hitRate") > 0.3
