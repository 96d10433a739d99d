"""The AGIPD plug-in gives, bit for bit, what the kernel gave before the plug-in existed.

``data/agipd_kernel_fixture.npz`` holds raw frames, constants and the outputs of
``correct_agipd`` at commit 8fe5333 (made by ``data/make_agipd_fixture.py``).  Each case is
reproduced through :class:`pulsetrain.detectors.agipd.AGIPD` with the matching step set.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pulsetrain.detectors import get_detector

FIXTURE = Path(__file__).with_name("data") / "agipd_kernel_fixture.npz"

#: fixture case -> (steps, options)
CASES = {
    "default": ("offset,gainstage,relgain,badpixels", {}),
    "common_mode": ("offset,gainstage,relgain,commonmode,badpixels", {}),
    "bad_to_nan": ("offset,gainstage,relgain,badpixels", {"bad_to_nan": True}),
    "unit_gain": ("offset,gainstage,badpixels", {}),
    "no_bad": ("offset,gainstage,relgain", {}),
    "offset_only": ("offset,gainstage", {}),
}


@pytest.fixture(scope="module")
def fixture():
    with np.load(FIXTURE) as z:
        return dict(z)


@pytest.mark.parametrize("case", list(CASES))
def test_plugin_equals_the_previous_kernel(fixture, case):
    agipd = get_detector("AGIPD")
    steps = agipd.parse_steps(CASES[case][0])
    arrays = {
        "Offset": fixture["offset"],
        "ThresholdsDark": fixture["thresholds"],
        "BadPixelsDark": fixture["bad_pixels"],
        "RelativeGain": fixture["rel_gain"],
    }
    only = {k: v for k, v in arrays.items() if k in agipd.required_constants(steps)}
    constants = agipd.prepare_constants(only, steps)
    source = {"image.data": fixture["raw"], "image.cellId": fixture["cell_ids"][:, None]}
    out = agipd.allocate(fixture["raw"].shape[0])
    result = agipd.correct(source, constants, steps, out=out, **CASES[case][1])
    for key, name in (("image.data", "data"), ("image.gain", "gain"), ("image.mask", "mask")):
        expected = fixture[f"{case}_{name}"]
        assert result[key] is out[key]
        assert result[key].dtype == expected.dtype
        # bit for bit, NaN included
        assert np.array_equal(result[key].view(f"u{expected.itemsize}"),
                              expected.view(f"u{expected.itemsize}")), (case, key)  # fmt: skip
    np.testing.assert_array_equal(result["image.cellId"], fixture["cell_ids"])


def test_default_steps_are_the_previous_behaviour():
    assert get_detector("AGIPD").parse_steps("") == ("offset", "gainstage", "relgain", "badpixels")


def test_offset_only_needs_only_dark_constants():
    agipd = get_detector("AGIPD")
    required = agipd.required_constants(agipd.parse_steps("offset,gainstage,badpixels"))
    assert set(required) <= set(agipd.dark_constants)
    assert "RelativeGain" not in required
