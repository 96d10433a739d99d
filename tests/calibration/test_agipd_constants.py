"""AGIPDConstants validation and the BadPixels bit field."""

from __future__ import annotations

import numpy as np
import pytest

from pulsetrain.calibration import AGIPDConstants, BadPixels, describe_mask
from pulsetrain.errors import CalibrationError


def arrays(cells: int = 4) -> dict[str, np.ndarray]:
    shape = (3, cells, 512, 128)
    return {
        "offset": np.zeros(shape, np.float32),
        "rel_gain": np.ones(shape, np.float32),
        "thresholds": np.zeros((2, cells, 512, 128), np.float32),
        "bad_pixels": np.zeros(shape, np.uint32),
    }


def test_valid_constants_cast_and_report_cells():
    a = arrays(cells=5)
    a["offset"] = a["offset"].astype(np.float64)
    a["bad_pixels"] = a["bad_pixels"].astype(np.int64)
    a["rel_gain"] = np.asfortranarray(a["rel_gain"])
    c = AGIPDConstants(**a, noise=np.ones((3, 5, 512, 128), np.float64))
    assert c.memory_cells == 5
    assert c.offset.dtype == np.float32 and c.noise.dtype == np.float32
    assert c.bad_pixels.dtype == np.uint32
    assert all(
        x.flags.c_contiguous for x in (c.offset, c.rel_gain, c.thresholds, c.bad_pixels, c.noise)
    )
    assert c.nbytes == 5 * 512 * 128 * 4 * (3 + 3 + 2 + 3 + 3)
    assert "memory_cells=5" in repr(c)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("offset", np.zeros((3, 4, 128, 512), np.float32), r"offset: shape must be \(3, cells"),
        ("offset", np.zeros((2, 4, 512, 128), np.float32), "offset: shape"),
        ("offset", np.zeros((3, 0, 512, 128), np.float32), "offset: has no memory cells"),
        ("offset", np.zeros((3, 4, 512, 128), np.int16), "offset: dtype must be floating"),
        ("rel_gain", np.ones((3, 5, 512, 128), np.float32), "rel_gain: has 5 memory cells"),
        ("thresholds", np.zeros((3, 4, 512, 128), np.float32), r"thresholds: shape must be \(2"),
        ("bad_pixels", np.zeros((3, 4, 512, 128), np.float32), "bad_pixels: dtype must be an int"),
        ("bad_pixels", np.full((3, 4, 512, 128), -1, np.int32), "bad_pixels: contains negative"),
        ("bad_pixels", np.full((3, 4, 512, 128), 2**33, np.uint64), "bad_pixels: values do not"),
        ("noise", np.zeros((3, 3, 512, 128), np.float32), "noise: has 3 memory cells"),
    ],
)
def test_invalid_constants_name_the_problem(field, value, message):
    a = arrays(cells=4)
    a[field] = value
    with pytest.raises(CalibrationError, match=message):
        AGIPDConstants(**a)


def test_bad_pixel_bits_match_euxfel():
    assert BadPixels.OFFSET_OUT_OF_THRESHOLD == 1
    assert BadPixels.NOISE_OUT_OF_THRESHOLD == 2
    assert BadPixels.OFFSET_NOISE_EVAL_ERROR == 4
    assert BadPixels.NO_DARK_DATA == 8
    assert BadPixels.CI_EVAL_ERROR == 1 << 6
    assert BadPixels.VALUE_IS_NAN == 1 << 11
    assert BadPixels.GAIN_THRESHOLDING_ERROR == 1 << 13
    assert BadPixels.NON_STANDARD_SIZE == 1 << 22
    assert BadPixels.USER2 == 1 << 31
    assert len({int(f) for f in BadPixels}) == len(list(BadPixels))  # no aliases
    assert max(BadPixels) <= np.iinfo(np.uint32).max
    assert BadPixels.dark_flags() & BadPixels.NO_DARK_DATA
    assert not BadPixels.dark_flags() & BadPixels.CI_EVAL_ERROR


def test_describe_mask():
    value = np.uint32(BadPixels.NO_DARK_DATA | BadPixels.USER1 | (1 << 25))
    assert describe_mask(value) == ["NO_DARK_DATA", "BIT25", "USER1"]
    assert describe_mask(0) == []
