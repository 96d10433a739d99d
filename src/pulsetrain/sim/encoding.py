"""Reading raw detector words back: each detector plug-in's codec does the work.

How a detector lays out its raw words is the plug-in's business (``DetectorSpec.codec``, a
:class:`pulsetrain.detectors.RawCodec`); the simulator only calls the codec.  :func:`decode`
reads simulated raw data of a detector type given by its spec, codec or name.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pulsetrain.sim.detectors import DetectorSpec, detector_spec

__all__ = ["codec_of", "decode"]


def codec_of(encoding: Any) -> Any:
    """The codec of ``encoding``: a codec, a :class:`DetectorSpec` or an encoding/type name."""
    if isinstance(encoding, DetectorSpec):
        return encoding.codec
    if isinstance(encoding, str):
        return detector_spec(encoding).codec
    return encoding


def decode(encoding: Any, data: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Unpack raw keys into ``(analog, gain)``, both ``(frames, ss, fs)``.

    ``encoding`` is a codec, a spec or a name (``spec.encoding``: ``"agipd"``).  ``gain`` is
    the AGIPD digital value, the LPD gain stage (0-2) or the JUNGFRAU gain code (0, 1, 3).
    """
    return codec_of(encoding).decode(data)
