"""Benchmark: azimuthal integration against pyFAI, preview assembly against EXtra-geom.

One AGIPD-1M frame (16 x 512 x 128 float32: powder rings on a background, Poisson noise, 1 % bad
pixels masked), EXtra-geom's canonical quadrant geometry at 0.4 m, 9.3 keV, 1000 bins in q over
an explicit radial range.  Measured side by side in one run, interleaved round by round, medians
of the rounds after warm-up (the machine is shared; ratios within a run are the stable figure):

* ``AzimuthalIntegrator.integrate`` (numba, precomputed bin index) against pyFAI
  ``integrate1d(method=("no", "histogram", "cython"))`` on the same bins and mask
  (goal >= 3x), and, for information, pyFAI's default ``("bbox", "csr", "cython")`` and a numpy
  ``np.bincount`` over the same bin index;
* ``integrate_stack`` per frame on a train of frames (parallel over frames);
* ``PreviewAssembler.assemble`` against EXtra-geom ``position_modules`` with a reused output
  array, and the GUI path ``preview`` (assemble + 2x2 NaN-mean + log scale to uint8 in one
  kernel) against EXtra-geom + numpy (``position_modules``, ``nanmean`` of blocks, scaling);
* per-pulse hit finding and pulse statistics per frame, against scipy.ndimage / numpy;
* the image analysis devices (``RoiAnalysis``, ``PixelHistogram``, ``ImageAverage``,
  ``Correlator``) and the ``PreviewAssembler``, per train at the demo's size (16 corrected
  modules x 8 frames): each device's whole ``on_data`` (its output write replaced by a no-op),
  interleaved in rounds; the preview is the reference the others are compared with.

Run ``python benchmarks/analysis.py [--quick] [--devices]`` (``--devices``: only the last part).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable

import numba
import numpy as np

from pulsetrain.analysis import AzimuthalIntegrator, count_peaks, pulse_statistics
from pulsetrain.geometry import PreviewAssembler, agipd1m_geometry, scale_to_uint8

ENERGY_KEV = 9.3
DISTANCE_M = 0.4
NPT = 1000
RADIAL_RANGE = (0.05, 1.6)
FRAME = (16, 512, 128)
GOAL_VS_PYFAI = 3.0


def make_frame(geom, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A ring pattern with Poisson noise and a 1 % bad-pixel mask."""
    rng = np.random.default_rng(seed)
    q = geom.q_map(ENERGY_KEV)
    signal = 30.0 + 200.0 * np.exp(-q / 0.3)
    for q0, amp in [(0.35, 900.0), (0.62, 500.0), (1.05, 300.0), (1.4, 150.0)]:
        signal += amp * np.exp(-0.5 * ((q - q0) / 0.008) ** 2)
    frame = rng.poisson(signal).astype(np.float32)
    mask = (rng.random(FRAME) < 0.01).astype(np.uint8)
    return frame, mask


def _time_rounds(funcs: dict[str, Callable[[], object]], rounds: int) -> dict[str, list[float]]:
    """Run every function once per round, interleaved, and return the per-call times (s)."""
    times: dict[str, list[float]] = {name: [] for name in funcs}
    for _ in range(rounds):
        for name, func in funcs.items():
            t0 = time.perf_counter()
            func()
            times[name].append(time.perf_counter() - t0)
    return times


DEMO_FRAMES = 8
#: Budget of one device per train at 10 Hz: a tenth of a core.
DEVICE_BUDGET_MS = 10.0


def device_rows(rounds: int) -> list[dict]:
    """Milliseconds per train of each image analysis device's ``on_data`` at the demo's size."""
    from pulsetrain.devices.averaging import ImageAverage
    from pulsetrain.devices.correlation import Correlator
    from pulsetrain.devices.pixel_histogram import PixelHistogram
    from pulsetrain.devices.preview import PreviewAssembler as PreviewDevice
    from pulsetrain.devices.roi import RoiAnalysis
    from pulsetrain.protocol import make_meta

    rng = np.random.default_rng(4)
    data, meta = {}, {}
    for m in range(16):
        src = f"SPB_DET_AGIPD1M-1/CORR/{m}CH0:output"
        data[src] = {
            "image.data": rng.gamma(2.0, 5.0, (DEMO_FRAMES, 512, 128)).astype(np.float32),
            "image.pulseId": np.arange(DEMO_FRAMES, dtype=np.uint64),
        }
        meta[src] = make_meta(src, 1)
    rois = {
        "roi1": [300, 200, 200, 200],
        "roi2": [600, 700, 200, 200],
        "roi3": [100, 900, 100, 300],
        "roi4": [500, 500, 100, 100],
        "normaliser": "roi4",
    }
    devices = {
        "PreviewAssembler (demo: 4 pulses, downsample 2)": (
            PreviewDevice,
            {"max_pulses": 4, "downsample": 2},
        ),
        "PreviewAssembler, all 8 pulses + float values": (
            PreviewDevice,
            {"max_pulses": 0, "downsample": 2, "send_values": True},
        ),
        "RoiAnalysis, 4 ROIs of 200x200..100x100 + ROI normaliser": (RoiAnalysis, rois),
        "PixelHistogram, all pixels, per pulse, 100 bins, auto range": (
            PixelHistogram,
            {"per": "pulse"},
        ),
        "PixelHistogram, 200x200 region, fixed range": (
            PixelHistogram,
            {"region": [300, 200, 200, 200], "range": [0.0, 100.0]},
        ),
        "ImageAverage, 10 trains, downsample 2, all pulses": (ImageAverage, {"n_trains": 10}),
    }
    calls: dict[str, Callable[[], object]] = {}
    for name, (cls, config) in devices.items():
        dev = cls(f"BENCH/{cls.__name__}/{len(calls)}", config)
        dev.write = lambda output, d, m, timeout=None: None
        dev.initialize()
        calls[name] = lambda dev=dev: dev.on_data(data, meta, "input")
    corr = Correlator("BENCH/CORRELATOR", {"x": "M.x", "y": "R.y", "bins": 50})
    corr.write = lambda output, d, m, timeout=None: None
    corr.initialize()
    corr_data = {"M": {"x": 0.0}, "R": {"y": np.arange(8.0)}}
    for k in range(10000):  # a full window of points: the cost per train at its largest
        corr_data["M"]["x"] = float(k % 97)
        corr.on_data(corr_data, {"R": make_meta("R", k)}, "input")
    calls["Correlator, 10000 points kept, 50 bins"] = lambda: corr.on_data(
        corr_data, {"R": make_meta("R", 1)}, "input"
    )
    for func in calls.values():  # warm-up: numba compile / cache load, first allocations
        func()
        func()
    times = _time_rounds(calls, rounds)
    med = {name: statistics.median(t) * 1e3 for name, t in times.items()}
    ref_name = next(iter(devices))
    print()
    print(
        f"image analysis devices, ms per train (16 corrected modules x {DEMO_FRAMES} frames), "
        f"median of {rounds} interleaved rounds; load average {os.getloadavg()[0]:.2f}"
    )
    rows = []
    for name, value in med.items():
        print(f"{name:<64}{value:>9.2f}   min {min(times[name]) * 1e3:8.2f}")
        rows.append(
            {
                "name": f"device {name} ms/train",
                "value": value,
                "unit": "ms",
                "peer": ref_name if name != ref_name else None,
                "ratio": med[ref_name] / value if name != ref_name else None,
                "goal": None if name.startswith("PreviewAssembler") else DEVICE_BUDGET_MS,
            }
        )
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    """Run the benchmark, print a table, return the result dicts."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds and frames (for CI)")
    parser.add_argument("--rounds", type=int, default=None, help="timing rounds (default 30)")
    parser.add_argument("--frames", type=int, default=None, help="frames per train (default 32)")
    parser.add_argument(
        "--devices", action="store_true", help="only the image analysis devices per train"
    )
    args = parser.parse_args(argv)
    rounds = args.rounds or (8 if args.quick else 30)
    if args.devices:
        return device_rows(rounds)
    n_frames = args.frames or (8 if args.quick else 32)

    from pyFAI import version as pyfai_version
    from scipy import ndimage

    load_before = os.getloadavg()
    geom = agipd1m_geometry(distance_m=DISTANCE_M)
    frame, mask = make_frame(geom)
    rng = np.random.default_rng(1)
    train = np.stack([frame * rng.uniform(0.5, 1.5) for _ in range(n_frames)]).astype(np.float32)

    # --- azimuthal integration -------------------------------------------------------------
    t0 = time.perf_counter()
    ours = AzimuthalIntegrator.from_geometry(
        geom, NPT, "q_A^-1", photon_energy_kev=ENERGY_KEV, radial_range=RADIAL_RANGE, mask=mask
    )
    t_build_ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    ai = geom.to_pyfai(ENERGY_KEV)
    t_build_pyfai = time.perf_counter() - t0
    frame2d = frame.reshape(16 * 512, 128)
    mask2d = mask.reshape(16 * 512, 128)
    kw = {
        "unit": "q_A^-1",
        "radial_range": RADIAL_RANGE,
        "mask": mask2d,
        "correctSolidAngle": False,
        "polarization_factor": None,
    }
    bins = ours._bins.astype(np.intp)
    dense_bins = np.where(bins >= 0, bins, NPT)  # one spare bin collects the unused pixels
    flat = frame.reshape(-1)

    def bincount() -> np.ndarray:
        s = np.bincount(dense_bins, weights=flat, minlength=NPT + 1)[:NPT]
        return s / ours.pixels_per_bin

    # --- assembly ----------------------------------------------------------------------------
    asm = PreviewAssembler(geom)
    asm_raw = PreviewAssembler(geom, display_orientation=False)
    asm2 = PreviewAssembler(geom, 2)
    out_img = np.empty(asm_raw.shape, np.float32)
    out_eg = geom.geom.output_array_for_position()
    out_u8 = np.empty(asm2.shape, np.uint8)
    vmin, vmax = 20.0, 1000.0

    def extra_geom_preview() -> np.ndarray:
        img, _ = geom.geom.position_modules(frame, out=out_eg)
        ny, nx = img.shape
        blocks = img[: ny // 2 * 2, : nx // 2 * 2].reshape(ny // 2, 2, nx // 2, 2)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            small = np.nanmean(blocks, axis=(1, 3))
        return scale_to_uint8(small[::-1, ::-1], vmin, vmax, "log")

    # --- hit finding and statistics ------------------------------------------------------------
    threshold = 2000.0

    def ndimage_peaks() -> list[int]:
        return [
            sum(ndimage.label(train[f, m] > threshold)[1] for m in range(16))
            for f in range(n_frames)
        ]

    def numpy_stats():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            axes = (1, 2, 3)
            return (
                np.nansum(train, axis=axes),
                np.nanmean(train, axis=axes),
                np.nanstd(train, axis=axes),
                np.nanmax(train, axis=axes),
            )

    funcs: dict[str, Callable[[], object]] = {
        "ours integrate": lambda: ours.integrate(frame),
        "pyFAI no/histogram": lambda: ai.integrate1d(
            frame2d, NPT, method=("no", "histogram", "cython"), **kw
        ),
        "pyFAI bbox/csr": lambda: ai.integrate1d(
            frame2d, NPT, method=("bbox", "csr", "cython"), **kw
        ),
        "numpy bincount": bincount,
        "ours integrate_stack": lambda: ours.integrate_stack(train),
        "ours assemble": lambda: asm_raw.assemble(frame, out=out_img),
        "extra-geom position_modules": lambda: geom.geom.position_modules(frame, out=out_eg),
        "ours assemble (display orientation)": lambda: asm.assemble(frame),
        "ours preview 2x2 log uint8": lambda: asm2.preview(frame, vmin, vmax, "log", out=out_u8),
        "extra-geom + numpy preview": extra_geom_preview,
        "ours count_peaks": lambda: count_peaks(train, threshold),
        "scipy.ndimage.label peaks": ndimage_peaks,
        "ours pulse_statistics": lambda: pulse_statistics(train),
        "numpy nan-statistics": numpy_stats,
    }
    t0 = time.perf_counter()
    ai.integrate1d(frame2d, NPT, method=("bbox", "csr", "cython"), **kw)
    t_first_csr = time.perf_counter() - t0
    for func in funcs.values():  # warm-up: numba compile/cache load, pyFAI engines, page faults
        func()
        func()
        func()
    times = _time_rounds(funcs, rounds)
    med = {name: statistics.median(t) for name, t in times.items()}
    best = {name: min(t) for name, t in times.items()}
    load_after = os.getloadavg()

    # Check the compared things agree (the tests assert this too).
    ref = ai.integrate1d(frame2d, NPT, method=("no", "histogram", "cython"), **kw)
    res = ours.integrate(frame)
    both = (res.count >= 20) & (ref.count >= 20)
    rel = np.abs(res.intensity[both] - ref.intensity[both]) / np.abs(ref.intensity[both])
    np.testing.assert_array_equal(asm_raw.assemble(frame), out_eg)
    if np.median(rel) >= 1e-4:
        raise SystemExit(f"integration disagrees with pyFAI: median rel. diff {np.median(rel)}")

    per = {"ours integrate_stack": n_frames, "ours count_peaks": n_frames}
    per.update({"scipy.ndimage.label peaks": n_frames, "ours pulse_statistics": n_frames})
    per["numpy nan-statistics"] = n_frames

    def ms(name: str) -> float:
        """Median milliseconds per frame."""
        return med[name] / per.get(name, 1) * 1e3

    print(
        f"AGIPD-1M analysis, frame 16 x 512 x 128 float32, {NPT} bins in q over {RADIAL_RANGE} "
        f"A^-1, train of {n_frames} frames; pyFAI {pyfai_version}, numba {numba.__version__} "
        f"({numba.threading_layer()}, {numba.get_num_threads()} threads), numpy {np.__version__}, "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"
    )
    print(
        f"median of {rounds} interleaved rounds after 3 warm-up calls; load average before "
        f"{load_before[0]:.2f}, after {load_after[0]:.2f} (shared machine). Set-up: our bin index "
        f"{t_build_ours * 1e3:.0f} ms, pyFAI detector {t_build_pyfai * 1e3:.0f} ms, first "
        f"bbox/csr call {t_first_csr * 1e3:.0f} ms"
    )
    print(
        f"accuracy vs pyFAI no/histogram: median rel. diff {np.median(rel):.1e}, max "
        f"{rel.max():.1e} over {both.sum()} bins with >= 20 pixels"
    )
    print()
    rows = [
        ("ours integrate", "pyFAI no/histogram"),
        ("pyFAI no/histogram", None),
        ("pyFAI bbox/csr", None),
        ("numpy bincount", None),
        ("ours integrate_stack", "pyFAI no/histogram"),
        ("ours assemble", "extra-geom position_modules"),
        ("extra-geom position_modules", None),
        ("ours assemble (display orientation)", "extra-geom position_modules"),
        ("ours preview 2x2 log uint8", "extra-geom + numpy preview"),
        ("extra-geom + numpy preview", None),
        ("ours count_peaks", "scipy.ndimage.label peaks"),
        ("scipy.ndimage.label peaks", None),
        ("ours pulse_statistics", "numpy nan-statistics"),
        ("numpy nan-statistics", None),
    ]
    print(f"{'ms per frame':<40}{'median':>9}{'min':>9}   peer median / ours median")
    for name, peer in rows:
        line = f"{name:<40}{ms(name):>9.3f}{best[name] / per.get(name, 1) * 1e3:>9.3f}"
        if peer is not None:
            line += f"   {ms(peer) / ms(name):6.2f}x  vs {peer}"
        elif name.startswith(("pyFAI", "numpy bincount")):
            line += f"   {ms(name) / ms('ours integrate'):6.2f}x  (this / ours integrate)"
        print(line)

    def result(name, value, unit, peer, ratio, goal=None):
        return {
            "name": name,
            "value": value,
            "unit": unit,
            "peer": peer,
            "ratio": ratio,
            "goal": goal,
        }

    t_ours = ms("ours integrate")
    return device_rows(rounds) + [
        result(
            "analysis.integrate ms/frame",
            t_ours,
            "ms",
            'pyFAI ("no","histogram","cython")',
            ms("pyFAI no/histogram") / t_ours,
            GOAL_VS_PYFAI,
        ),
        result(
            "analysis.integrate ms/frame vs pyFAI default",
            t_ours,
            "ms",
            'pyFAI ("bbox","csr","cython")',
            ms("pyFAI bbox/csr") / t_ours,
        ),
        result(
            "analysis.integrate ms/frame vs numpy bincount",
            t_ours,
            "ms",
            "np.bincount on the same bin index",
            ms("numpy bincount") / t_ours,
        ),
        result(
            "analysis.integrate_stack ms/frame",
            ms("ours integrate_stack"),
            "ms",
            'pyFAI ("no","histogram","cython")',
            ms("pyFAI no/histogram") / ms("ours integrate_stack"),
            GOAL_VS_PYFAI,
        ),
        result(
            "geometry.PreviewAssembler.assemble ms/frame",
            ms("ours assemble"),
            "ms",
            "extra-geom position_modules (out reused)",
            ms("extra-geom position_modules") / ms("ours assemble"),
        ),
        result(
            "geometry.PreviewAssembler.preview 2x2 log ms/frame",
            ms("ours preview 2x2 log uint8"),
            "ms",
            "extra-geom + numpy",
            ms("extra-geom + numpy preview") / ms("ours preview 2x2 log uint8"),
        ),
        result(
            "analysis.count_peaks ms/frame",
            ms("ours count_peaks"),
            "ms",
            "scipy.ndimage.label per module",
            ms("scipy.ndimage.label peaks") / ms("ours count_peaks"),
        ),
        result(
            "analysis.pulse_statistics ms/frame",
            ms("ours pulse_statistics"),
            "ms",
            "numpy nansum/nanmean/nanstd/nanmax",
            ms("numpy nan-statistics") / ms("ours pulse_statistics"),
        ),
    ]


if __name__ == "__main__":
    main(sys.argv[1:])
