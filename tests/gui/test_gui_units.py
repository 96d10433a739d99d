"""Pure parts of the GUI: axis limits, ROI boxes, and the files the Save buttons write."""

from __future__ import annotations

import io

import h5py
import numpy as np
from bokeh import palettes
from bokeh.models import Range1d

from pulsetrain.gui.base import axis_limits, follow_range
from pulsetrain.gui.export import frame_hdf5, frame_png
from pulsetrain.gui.image import rect_from_box


def test_axis_limits_show_small_and_flat_values():
    lo, hi = axis_limits(2.2e-6, 2.2e-6)  # a constant hit probability: not a flat line on -1..1
    assert lo < 2.2e-6 < hi and hi - lo < 1e-6
    assert axis_limits(0.0, 10.0) == (-0.5, 10.5)
    assert axis_limits(0.0, 0.0) == (-1.0, 1.0)
    lo, hi = axis_limits(1e-9, 3e-9)
    assert lo < 1e-9 and 3e-9 < hi and hi - lo < 1e-8


def test_a_growing_axis_moves_now_and_then_and_always_shows_the_data():
    rng = Range1d(0, 1)
    changes = 0
    t0 = 1_000_000.0
    for second in range(1, 601):  # a trend of the last 300 s, one update a second
        first, last = t0 + max(0, second - 300), t0 + second
        before = (rng.start, rng.end)
        follow_range(rng, first, last)
        changes += (rng.start, rng.end) != before
        assert rng.start <= first and last <= rng.end  # every point on the axis
        assert last - first >= 0.6 * (rng.end - rng.start) or second < 2  # and filling it
    assert 10 <= changes <= 60  # not once per update (600)
    # data that jump back (a new run) refit at once
    follow_range(rng, 5.0, 50.0)
    assert rng.start == 5.0 and 50.0 <= rng.end <= 60.0


def test_rect_from_box_rounds_and_clips():
    # a box drawn leftwards and upwards (negative size), partly outside a 100 x 200 image
    assert rect_from_box(10.2, 20.0, -8.0, 6.0, (100, 200)) == [6, 17, 8, 6]
    assert rect_from_box(195.0, 50.0, 20.0, 10.0, (100, 200)) == [185, 45, 15, 10]
    assert rect_from_box(-50.0, 50.0, 10.0, 10.0, (100, 200)) == [0, 0, 0, 0]


def test_hdf5_holds_the_frame_exactly():
    image = np.arange(12, dtype=np.uint8).reshape(3, 4)
    data = frame_hdf5(
        {"image": image, "trainId": 7, "pulseId": 3, "cellId": 1, "pulseIndex": 2, "unit": "keV"},
        geometry={"pixel_mm": 0.2, "full_shape": [6, 8]},
        average=np.ones((3, 4), np.float32),
        trends={"roi": {"train": np.array([5, 6, 7]), "roi1": np.array([1.0, np.nan, 3.0])}},
        configuration={"A/B/C": {"state": "ON", "roi1": np.array([1, 2, 3, 4])}},
        attrs={"scene": "x"},
    )
    with h5py.File(io.BytesIO(data), "r") as f:
        np.testing.assert_array_equal(f["frame/image"][()], image)
        assert f["frame/image"].dtype == np.uint8
        assert int(f["frame/trainId"][()]) == 7 and int(f["frame/pulseIndex"][()]) == 2
        assert f["geometry"].attrs["pixel_mm"] == 0.2
        np.testing.assert_array_equal(f["trends/roi/train"][()], [5, 6, 7])
        assert '"roi1": [1, 2, 3, 4]' in f["configuration/A/B/C"].attrs["json"]
        assert f.attrs["scene"] == "x"


def test_png_colours_levels_with_the_palette():
    from PIL import Image

    image = np.array([[0, 1], [128, 255]], dtype=np.uint8)
    png = frame_png(image, list(palettes.Viridis256), "#d0d0d0")
    rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    assert rgb.shape == (2, 2, 3)
    assert tuple(rgb[0, 0]) == (0xD0, 0xD0, 0xD0)  # level 0: no detector pixel
    assert tuple(rgb[1, 1]) == tuple(
        int(palettes.Viridis256[255][i : i + 2], 16) for i in (1, 3, 5)
    )
