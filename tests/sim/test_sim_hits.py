"""Crystal hits follow the sample-motor position; Bragg peaks are drawn consistently."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pulsetrain.sim import (
    DetectorSimulator,
    SampleMotor,
    SampleParameters,
    SimulatedExperiment,
    hit_probability,
)
from pulsetrain.sim.rng import Stream, stream
from pulsetrain.sim.scattering import draw_module_peaks, draw_pulse_peaks, render_peaks

#: Between the highest high-gain and the lowest medium-gain digital level of the model.
MG_DIGITAL = 5500


def test_hit_probability_formula():
    assert hit_probability(2.5) == pytest.approx(0.6)
    assert hit_probability(3.0) == pytest.approx(0.6 * math.exp(-0.5))
    assert hit_probability(1.5) == pytest.approx(0.6 * math.exp(-2))
    assert hit_probability(1.0, sample_centre_mm=1.0, width_mm=0.2, p_max=0.9) == 0.9
    sample = SampleParameters(sample_centre_mm=-1.0, width_mm=2.0, p_max=0.3)
    assert sample.hit_probability(1.0) == pytest.approx(0.3 * math.exp(-0.5))
    assert DetectorSimulator(dark="HG").hit_probability(2.5) == 0.0


@pytest.mark.parametrize("position", [2.5, 3.0, 1.6, 0.0])
def test_hit_fraction_matches_the_probability(position):
    sim = DetectorSimulator(frames=16)
    hits = np.concatenate([sim.pulse_hits(tid, position) for tid in range(1500)])
    p = sim.hit_probability(position)
    n = hits.size
    tolerance = 5 * math.sqrt(max(p * (1 - p), 1e-4) / n)
    assert hits.mean() == pytest.approx(p, abs=tolerance)


def test_hits_at_a_lower_probability_are_a_subset():
    sim = DetectorSimulator(frames=32)
    for tid in range(50):
        assert not (sim.pulse_hits(tid, 3.0) & ~sim.pulse_hits(tid, 2.5)).any()


def test_hits_in_the_data_follow_the_moving_motor():
    exp = SimulatedExperiment(
        frames=16,
        seed=8,
        modules=[0, 5, 10, 15],
        start_time=1.7e9,
        bank_size=1,
        hit_variants=4,
        motor=SampleMotor(position_mm=-1.0),
    )
    exp.motor.move(6.0, velocity_mm_s=0.5)  # scan across the sample in 14 s = 140 trains
    positions, detected, expected = [], [], []
    for tid, data, _ in exp.trains(150, include=["detector", "motor"]):
        x = data["SPB_IRU_SAMPLE/MOTOR/X"]["actualPosition.value"]
        medium = np.zeros(exp.frames, bool)
        for m in exp.simulator.modules:
            digital = data[exp.simulator.source(m)]["image.data"][:, 1]
            medium |= (digital > MG_DIGITAL).reshape(exp.frames, -1).any(axis=1)
        positions.append(x)
        detected.append(medium)
        expected.append(exp.simulator.pulse_hits(tid, x))
    positions = np.asarray(positions)
    detected, expected = np.array(detected), np.array(expected)
    assert positions[0] < 0 and positions[-1] == 6.0
    # the frames with medium-gain pixels are the simulator's hits (peaks on 4 modules
    # miss medium gain with probability ~2e-4)
    agree = (detected == expected).mean()
    assert agree > 0.995
    assert not (detected & ~expected).any()
    # and the hit rate follows the motor position
    p = np.array([hit_probability(x) for x in positions])
    far = np.abs(positions - 2.5) > 1.75
    assert far.sum() > 60 and not detected[far].any()
    near = np.abs(positions - 2.5) < 0.5
    n_near = near.sum() * exp.frames
    expected_hits = p[near].sum() * exp.frames
    sigma = math.sqrt((p[near] * (1 - p[near])).sum() * exp.frames)
    assert detected[near].sum() == pytest.approx(expected_hits, abs=5 * sigma + 0.01 * n_near)
    assert detected[near].mean() > 0.4


def test_module_peaks_have_the_distribution_of_detector_peaks():
    sample = SampleParameters()
    per_module = []
    amp_det, amp_mod = [], []
    for i in range(800):
        det = draw_pulse_peaks(stream(1, Stream.PEAKS, i), 16, (512, 128), sample).on_module(3)
        mod = draw_module_peaks(stream(2, Stream.PEAKS, i), 3, 16, (512, 128), sample)
        per_module.append((len(det), len(mod)))
        amp_det.append(det.amplitude)
        amp_mod.append(mod.amplitude)
        assert (mod.module == 3).all() and (det.module == 3).all()
        assert (mod.ss >= 0).all() and (mod.ss < 512).all() and (mod.fs < 128).all()
    counts = np.array(per_module)
    lam = sample.peaks_per_hit / 16
    se = math.sqrt(lam / len(counts))
    assert counts[:, 0].mean() == pytest.approx(lam, abs=5 * se)
    assert counts[:, 1].mean() == pytest.approx(lam, abs=5 * se)
    log_det = np.log(np.concatenate(amp_det))
    log_mod = np.log(np.concatenate(amp_mod))
    lo, hi = np.log(sample.peak_photons)
    for logs in (log_det, log_mod):
        assert logs.min() >= lo and logs.max() <= hi
        assert logs.mean() == pytest.approx(0.5 * (lo + hi), abs=0.15)


def test_rendered_peak_is_a_compact_gaussian():
    sample = SampleParameters(peak_sigma_px=1.0, peak_radius_px=5)
    from pulsetrain.sim.scattering import Peaks

    peaks = Peaks(np.array([0]), np.array([10.5]), np.array([0.5]), np.array([1000.0]))
    pixels, mu = render_peaks(peaks, (512, 128), sample)
    ss, fs = np.divmod(pixels, 128)
    assert ss.min() == 5 and ss.max() == 15 and fs.min() == 0 and fs.max() == 5  # clipped at edge
    assert mu.max() == pytest.approx(1000.0)
    assert mu[(ss == 10) & (fs == 0)][0] == pytest.approx(1000.0)
    assert mu[(ss == 11) & (fs == 0)][0] == pytest.approx(1000.0 * math.exp(-0.5))
    # two overlapping peaks add up
    two = Peaks(
        np.array([0, 0]), np.array([10.5, 10.5]), np.array([60.5, 60.5]), np.array([3.0, 4.0])
    )
    pixels, mu = render_peaks(two, (512, 128), sample)
    assert len(pixels) == 121 and mu.max() == pytest.approx(7.0)
