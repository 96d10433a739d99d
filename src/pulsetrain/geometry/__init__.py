"""Detector geometry (EXtra-geom adapters): pixel positions, 2θ/q maps and preview images.

Pure functions and classes on numpy arrays; nothing here knows about devices or sockets.
"""

from pulsetrain.geometry.agipd import (
    AGIPD1M_FRAME_SHAPE,
    AGIPD1M_QUAD_POSITIONS_PX,
    AGIPD_PIXEL_SIZE_M,
    RADIAL_UNITS,
    DetectorGeometry,
    agipd1m_geometry,
    wavelength_angstrom,
)
from pulsetrain.geometry.preview import PreviewAssembler, scale_to_uint8

__all__ = [
    "AGIPD1M_FRAME_SHAPE",
    "AGIPD1M_QUAD_POSITIONS_PX",
    "AGIPD_PIXEL_SIZE_M",
    "RADIAL_UNITS",
    "DetectorGeometry",
    "PreviewAssembler",
    "agipd1m_geometry",
    "scale_to_uint8",
    "wavelength_angstrom",
]
