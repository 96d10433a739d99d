"""What the Save buttons of a page write: the displayed frame (and more) as HDF5 or PNG bytes.

The GUI only packs what it already shows; nothing is recomputed.  :func:`frame_hdf5` writes

================================  ==============================================================
``/frame/image``                  the displayed image, exactly as sent to the browser
``/frame/trainId``, ``pulseId``,  the train and pulse of that image (``pulseIndex``: position
``/frame/cellId``, ``pulseIndex`` in the train)
``/frame/values``                 the same frame in data units (float32), when the output has it
``/average/image``                the running average the pipeline keeps, when there is one
``/trends/<name>/<column>``       the page's trends (e.g. ROI values against train ID)
``/geometry``                     attributes: pixel size, downsampling, beam centre, extent ...
``/configuration/<device>``       the devices' configuration as JSON (attribute ``json``)
================================  ==============================================================

All datasets are plain numpy arrays, so ``h5py`` or EXtra-data style scripts read them directly.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping, Sequence
from typing import Any

import h5py
import numpy as np

__all__ = ["frame_hdf5", "frame_png"]


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        return value.item()
    return str(value)


def frame_hdf5(
    frame: Mapping[str, Any],
    *,
    geometry: Mapping[str, Any] | None = None,
    average: np.ndarray | None = None,
    trends: Mapping[str, Mapping[str, Sequence[float] | np.ndarray]] | None = None,
    configuration: Mapping[str, Mapping[str, Any]] | None = None,
    attrs: Mapping[str, Any] | None = None,
) -> bytes:
    """The HDF5 file (as bytes) of a displayed frame and what goes with it.

    Parameters
    ----------
    frame : mapping
        ``image`` (the displayed array), ``trainId``, ``pulseId``, ``cellId``, ``pulseIndex``
        and optionally ``values`` (the frame in data units) and ``unit``.
    geometry : mapping, optional
        Scalars or small arrays stored as attributes of ``/geometry``.
    average : ndarray, optional
        The running average shown or kept by the pipeline.
    trends : mapping, optional
        Trend name → column name → 1-D values (all columns of one trend of equal length).
    configuration : mapping, optional
        Device ID → configuration (stored as JSON text).
    attrs : mapping, optional
        File attributes (the page, the output, the time of saving).
    """
    buf = io.BytesIO()
    with h5py.File(buf, "w") as f:
        for key, value in (attrs or {}).items():
            f.attrs[key] = value
        g = f.create_group("frame")
        g.create_dataset("image", data=np.asarray(frame["image"]))
        for key in ("trainId", "pulseId", "cellId", "pulseIndex"):
            if frame.get(key) is not None:
                g.create_dataset(key, data=np.asarray(frame[key], dtype=np.uint64))
        if frame.get("values") is not None:
            values = g.create_dataset("values", data=np.asarray(frame["values"], np.float32))
            values.attrs["unit"] = str(frame.get("unit") or "")
        geo = f.create_group("geometry")
        for key, value in (geometry or {}).items():
            if value is not None:
                geo.attrs[key] = np.asarray(value) if isinstance(value, (list, tuple)) else value
        if average is not None:
            f.create_dataset("average/image", data=np.asarray(average))
        for name, columns in (trends or {}).items():
            t = f.create_group(f"trends/{name}")
            for column, values in columns.items():
                t.create_dataset(column, data=np.asarray(values))
        for device, config in (configuration or {}).items():
            d = f.create_group(f"configuration/{device}")
            d.attrs["json"] = json.dumps(config, default=_jsonable)
    return buf.getvalue()


def frame_png(image: np.ndarray, palette: Sequence[str], gap_colour: str = "#d0d0d0") -> bytes:
    """A PNG of a uint8 preview image coloured with a 256-colour palette (level 0: gap colour).

    Parameters
    ----------
    image : ndarray
        uint8 (H, W), row 0 at the top (as displayed).
    palette : sequence of str
        256 ``#rrggbb`` colours.
    """
    from PIL import Image

    lut = np.array(
        [[int(c[i : i + 2], 16) for i in (1, 3, 5)] for c in [gap_colour, *palette[1:256]]],
        dtype=np.uint8,
    )
    rgb = lut[np.asarray(image, dtype=np.uint8)]
    out = io.BytesIO()
    Image.fromarray(rgb, "RGB").save(out, format="PNG")
    return out.getvalue()
