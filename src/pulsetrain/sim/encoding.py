"""How raw detector words are laid out in the simulated data, and how to read them back.

* ``agipd``: ``image.data`` ``(frames, 2, ss, fs)`` uint16, ``[:, 0]`` analogue, ``[:, 1]``
  digital gain value.
* ``lpd``: ``image.data`` ``(frames, 1, ss, fs)`` uint16, ADC value in bits 0-11 and the gain
  stage (0 high, 1 medium, 2 low) in bits 12-13.
* ``jungfrau``: ``data.adc`` ``(frames, ss, fs)`` uint16, ADC value in bits 0-13 and the gain
  code (0 = G0, 1 = G1, 3 = G2) in bits 14-15; ``data.gain`` ``(frames, ss, fs)`` uint8 holds
  the same code.
"""

from __future__ import annotations

import numpy as np

from pulsetrain.errors import ConfigurationError

__all__ = [
    "JUNGFRAU_GAIN_SHIFT",
    "LPD_GAIN_SHIFT",
    "decode",
    "encode",
    "encode_pixels",
    "frame_keys",
]

LPD_GAIN_SHIFT = 12
JUNGFRAU_GAIN_SHIFT = 14


def frame_keys(encoding: str, module_shape: tuple[int, int]) -> dict[str, tuple[tuple, type]]:
    """Per-frame keys of raw data: ``{key: (shape of one frame, dtype)}``."""
    ny, nx = module_shape
    if encoding == "agipd":
        return {"image.data": ((2, ny, nx), np.uint16)}
    if encoding == "lpd":
        return {"image.data": ((1, ny, nx), np.uint16)}
    if encoding == "jungfrau":
        return {"data.adc": ((ny, nx), np.uint16), "data.gain": ((ny, nx), np.uint8)}
    raise ConfigurationError(f"unknown raw encoding {encoding!r}")


def encode(encoding: str, analog: np.ndarray, digital: np.ndarray) -> dict[str, np.ndarray]:
    """Pack analogue and digital values ``(frames, ss, fs)`` into raw keys."""
    if encoding == "agipd":
        return {"image.data": np.stack([analog, digital], axis=1).astype(np.uint16)}
    if encoding == "lpd":
        word = (digital.astype(np.uint16) << LPD_GAIN_SHIFT) | analog.astype(np.uint16)
        return {"image.data": word[:, None]}
    if encoding == "jungfrau":
        word = (digital.astype(np.uint16) << JUNGFRAU_GAIN_SHIFT) | analog.astype(np.uint16)
        return {"data.adc": word, "data.gain": digital.astype(np.uint8)}
    raise ConfigurationError(f"unknown raw encoding {encoding!r}")


def encode_pixels(
    encoding: str, pixels: np.ndarray, analog: np.ndarray, digital: np.ndarray, npix: int
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Raw values of some pixels of one frame: ``{key: (flat index in the frame, values)}``."""
    pixels = pixels.astype(np.intp)
    if encoding == "agipd":
        return {
            "image.data": (
                np.concatenate([pixels, pixels + npix]),
                np.concatenate([analog, digital]).astype(np.uint16),
            )
        }
    if encoding == "lpd":
        return {"image.data": (pixels, (digital << LPD_GAIN_SHIFT) | analog)}
    if encoding == "jungfrau":
        return {
            "data.adc": (pixels, (digital << JUNGFRAU_GAIN_SHIFT) | analog),
            "data.gain": (pixels, digital.astype(np.uint8)),
        }
    raise ConfigurationError(f"unknown raw encoding {encoding!r}")


def decode(encoding: str, data: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Unpack raw keys into ``(analog, gain)``, both ``(frames, ss, fs)``.

    ``gain`` is the AGIPD digital value, the LPD gain stage (0-2) or the JUNGFRAU gain code
    (0, 1, 3).
    """
    if encoding == "agipd":
        raw = data["image.data"]
        return raw[:, 0], raw[:, 1]
    if encoding == "lpd":
        raw = data["image.data"][:, 0]
        return raw & ((1 << LPD_GAIN_SHIFT) - 1), raw >> LPD_GAIN_SHIFT
    if encoding == "jungfrau":
        raw = data["data.adc"]
        return raw & ((1 << JUNGFRAU_GAIN_SHIFT) - 1), raw >> JUNGFRAU_GAIN_SHIFT
    raise ConfigurationError(f"unknown raw encoding {encoding!r}")
