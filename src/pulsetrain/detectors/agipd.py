"""AGIPD-1M: the plug-in over :mod:`pulsetrain.calibration` (the numba kernel is unchanged).

Raw data: ``image.data`` ``(frames, 2, 512, 128)`` uint16, plane 0 the analog value, plane 1
the digital gain value; the gain stage (HG, MG, LG) is found by comparing the digital value
with the ``ThresholdsDark`` of the frame's memory cell.  Constants are indexed
``[stage, cell, 512, 128]``.  Steps that are switched off are folded into the constants the
kernel reads (offset 0, relative gain 1, thresholds +inf = every pixel high gain, no bad
pixels), so every step set runs through the same kernel, and the default set through exactly
the same arrays as before the plug-in existed (bit for bit; tested against a fixture).
"""

from __future__ import annotations

import functools
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import numpy as np

from pulsetrain.detectors.base import ConstantType, DarkRun, Detector, RawCodec, RawKey
from pulsetrain.errors import CalibrationError

__all__ = ["AGIPD", "DETECTOR"]

_STAGED = ("stages", "cells", "ss", "fs")


class AGIPD(Detector):
    """AGIPD-1M (16 modules of 512 x 128 pixels, up to 352 memory cells, adaptive gain)."""

    name = "AGIPD"
    default_detector_id = "SPB_DET_AGIPD1M-1"
    n_modules = 16
    module_shape = (512, 128)
    pixel_size_m = 200e-6
    gain_stages = ("HG", "MG", "LG")
    raw_keys = (RawKey("image.data", (2, 512, 128), "uint16"),)
    cell_key = "image.cellId"
    steps = ("offset", "gainstage", "relgain", "flatfield", "commonmode", "badpixels")
    default_steps = ("offset", "gainstage", "relgain", "badpixels")
    constant_types = (
        ConstantType("Offset", _STAGED, "float32", ("offset",), from_dark=True),
        ConstantType("Noise", _STAGED, "float32", (), from_dark=True),
        ConstantType(
            "ThresholdsDark",
            ("stages-1", "cells", "ss", "fs"),
            "float32",
            ("gainstage",),
            from_dark=True,
        ),
        ConstantType("BadPixelsDark", _STAGED, "uint32", ("badpixels",), from_dark=True),
        ConstantType("RelativeGain", _STAGED, "float32", ("relgain",)),
        ConstantType("FlatField", ("cells", "ss", "fs"), "float32", ("flatfield",)),
    )
    carried_keys = ("image.cellId", "image.pulseId", "image.trainId")
    correction_options = (
        "bad_to_nan",
        "force_mg_threshold",
        "force_hg_threshold",
        "common_mode_threshold",
        "common_mode_min_pixels",
    )
    extra_geom_class = "AGIPD_1MGeometry"
    extra_data_component = "AGIPD1M"

    # ------------------------------------------------------------------ raw data, gain
    def split_raw(self, source_data: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        raw = np.asarray(source_data["image.data"])
        return raw[:, 0], raw[:, 1]

    def gain_stage(
        self, gain_raw: np.ndarray, cell_ids: np.ndarray, constants: Mapping[str, np.ndarray]
    ) -> np.ndarray:
        thr = np.asarray(constants["ThresholdsDark"])[:, np.asarray(cell_ids).reshape(-1)]
        d = np.asarray(gain_raw, np.float32)
        return np.where(d < thr[0], 0, np.where(d < thr[1], 1, 2)).astype(np.uint8)

    # ------------------------------------------------------------------ constants, correction
    def prepare_constants(
        self,
        arrays: Mapping[str, np.ndarray],
        steps: Collection[str],
        memory_cells: int | None = None,
    ):
        """An :class:`~pulsetrain.calibration.AGIPDConstants` with the steps off folded in."""
        from pulsetrain.calibration import AGIPDConstants

        steps = set(steps)
        missing = [t for t in self.required_constants(steps) if t not in arrays]
        if missing:
            raise CalibrationError(f"AGIPD constants missing for the steps: {', '.join(missing)}")
        cells = _memory_cells(arrays, memory_cells)
        staged = (len(self.gain_stages), cells, *self.module_shape)
        offset = arrays["Offset"] if "offset" in steps else _filled(staged, "float32", 0.0)
        if "gainstage" in steps:
            thresholds = arrays["ThresholdsDark"]
        else:  # every pixel in high gain: digital < +inf
            thresholds = _filled((staged[0] - 1, *staged[1:]), "float32", np.inf)
        rel_gain = arrays["RelativeGain"] if "relgain" in steps else _filled(staged, "float32", 1.0)
        if "flatfield" in steps:
            flat = np.asarray(arrays["FlatField"], np.float32)
            rel_gain = np.asarray(rel_gain, np.float32) * flat[None]
        bad = arrays["BadPixelsDark"] if "badpixels" in steps else _filled(staged, "uint32", 0)
        noise = arrays.get("Noise")
        return AGIPDConstants(
            offset=offset, rel_gain=rel_gain, thresholds=thresholds, bad_pixels=bad, noise=noise
        )

    def correct(
        self,
        source_data: Mapping[str, Any],
        constants: Any,
        steps: Collection[str],
        *,
        out: Mapping[str, np.ndarray] | None = None,
        **options: Any,
    ) -> dict[str, Any]:
        from pulsetrain.calibration import correct_module_data

        buffers = None
        if out is not None:
            buffers = (out["image.data"], out["image.gain"], out["image.mask"])
        return correct_module_data(
            source_data, constants, common_mode="commonmode" in steps, out=buffers, **options
        )

    # ------------------------------------------------------------------ dark procedure
    def characterize_dark(
        self, runs: Sequence[DarkRun], memory_cells: int
    ) -> dict[str, np.ndarray]:
        from pulsetrain.calibration import characterize_dark

        if len(runs) != len(self.dark_stages):
            raise CalibrationError(
                f"AGIPD needs {len(self.dark_stages)} dark runs, got {len(runs)}"
            )
        hg, mg, lg = (((d["image.data"], c) for d, c in run) for run in runs)
        dark = characterize_dark(hg, mg, lg, memory_cells=memory_cells)
        return {
            "Offset": dark.offset,
            "Noise": dark.noise,
            "ThresholdsDark": dark.thresholds,
            "BadPixelsDark": dark.bad_pixels,
        }

    # ------------------------------------------------------------------ geometry, simulator
    def geometry(self, **kwargs: Any):
        """:func:`pulsetrain.geometry.agipd1m_geometry` (``quad_positions``, ``distance_m``,
        ``beam_centre_px``)."""
        from pulsetrain.geometry import agipd1m_geometry

        return agipd1m_geometry(**kwargs)

    def sim_spec(self) -> Any:
        """AGIPD-1M in the simulator (analogue and digital planes, default response)."""
        return _sim_spec()

    def truth_constants(self, truth: Any) -> dict[str, np.ndarray]:
        from pulsetrain.calibration import BadPixels

        slope = np.asarray(truth.slope, dtype=np.float32)
        rel_gain = np.zeros_like(slope)
        np.divide(1.0, slope, out=rel_gain, where=slope > 0)
        bad = np.zeros(truth.offset.shape, np.uint32)
        bad[:, :, truth.dead | truth.noisy] |= np.uint32(BadPixels.NOISE_OUT_OF_THRESHOLD)
        bad[:, :, truth.hot] |= np.uint32(BadPixels.OFFSET_OUT_OF_THRESHOLD)
        return {
            "Offset": np.asarray(truth.offset, np.float32),
            "Noise": np.asarray(truth.noise, np.float32),
            "ThresholdsDark": np.asarray(truth.gain_thresholds(), np.float32),
            "BadPixelsDark": bad,
            "RelativeGain": rel_gain,
        }


@functools.lru_cache(maxsize=8)
class AGIPDSimCodec(RawCodec):
    """Simulated AGIPD words: ``image.data`` ``(frames, 2, ss, fs)`` uint16, ``[:, 0]`` the
    analogue value and ``[:, 1]`` the digital gain value."""

    def frame_keys(self, module_shape):
        ny, nx = module_shape
        return {"image.data": ((2, ny, nx), np.uint16)}

    def encode(self, analog, digital):
        return {"image.data": np.stack([analog, digital], axis=1).astype(np.uint16)}

    def encode_pixels(self, pixels, analog, digital, npix):
        pixels = pixels.astype(np.intp)
        return {
            "image.data": (
                np.concatenate([pixels, pixels + npix]),
                np.concatenate([analog, digital]).astype(np.uint16),
            )
        }

    def decode(self, data):
        raw = data["image.data"]
        return raw[:, 0], raw[:, 1]


def _sim_positions() -> np.ndarray:
    import extra_geom

    return extra_geom.AGIPD_1MGeometry.example().get_pixel_positions()


@functools.cache
def _sim_spec() -> Any:
    from pulsetrain.sim.detectors import DetectorSpec
    from pulsetrain.sim.parameters import GainModelParameters

    return DetectorSpec(
        name="AGIPD",
        key=1,
        n_modules=16,
        module_shape=(512, 128),
        pixel_size_m=200e-6,
        source_format="SPB_DET_AGIPD1M-1/DET/{module}CH0:xtdf",
        encoding="agipd",
        default_memory_cells=64,
        default_bank_size=4,
        gain_model=GainModelParameters(),
        codec=AGIPDSimCodec(),
        positions=_sim_positions,
    )


def _filled(shape: tuple[int, ...], dtype: str, value: float) -> np.ndarray:
    """A constant array standing for a step that is off, shared by every module of a process
    (at 352 cells one is 277 MB; the kernel only reads it)."""
    return np.full(shape, value, np.dtype(dtype))


def _memory_cells(arrays: Mapping[str, np.ndarray], memory_cells: int | None) -> int:
    for name in ("Offset", "ThresholdsDark", "BadPixelsDark", "RelativeGain"):
        if name in arrays:
            return int(np.shape(arrays[name])[1])
    if memory_cells:
        return int(memory_cells)
    raise CalibrationError(
        "AGIPD constants: none of Offset, ThresholdsDark, BadPixelsDark, RelativeGain given "
        "and no memory_cells: the number of memory cells is unknown"
    )


#: The plug-in class of this module (found by :mod:`pulsetrain.detectors.registry`).
DETECTOR = AGIPD
