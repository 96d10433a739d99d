"""Tests for pulsetrain.geometry.preview: assembly, downsampling and uint8 scaling."""

import numpy as np
import pytest

from pulsetrain.errors import ConfigurationError, DataShapeError
from pulsetrain.geometry import PreviewAssembler, agipd1m_geometry, scale_to_uint8

FRAME = (16, 512, 128)


@pytest.fixture(scope="module")
def geom():
    return agipd1m_geometry(distance_m=0.3, beam_centre_px=(-40.0, 260.0))


@pytest.fixture(scope="module")
def frame():
    rng = np.random.default_rng(42)
    fr = rng.gamma(2.0, 50.0, FRAME).astype(np.float32)
    fr[2, 10:20, 30:40] = np.nan
    return fr


def _reference_image(geom, frame):
    out = geom.geom.output_array_for_position()
    img, centre = geom.geom.position_modules(frame, out=out)
    return img, centre


def test_assemble_equals_extra_geom(geom, frame):
    ref, _ = _reference_image(geom, frame)
    raw = PreviewAssembler(geom, display_orientation=False)
    np.testing.assert_array_equal(raw.assemble(frame), ref)
    shown = PreviewAssembler(geom)
    np.testing.assert_array_equal(shown.assemble(frame), ref[::-1, ::-1])
    assert shown.shape == ref.shape == (1256, 1092)
    # A reused output buffer gives the same picture.
    buf = np.empty(shown.shape, np.float32)
    assert shown.assemble(frame, out=buf) is buf
    np.testing.assert_array_equal(buf, ref[::-1, ::-1])


@pytest.mark.parametrize("factor", [2, 3, 4])
def test_downsample_is_nan_aware_block_mean(geom, frame, factor):
    ref, _ = _reference_image(geom, frame)
    ny, nx = ref.shape
    oy, ox = -(-ny // factor), -(-nx // factor)
    padded = np.full((oy * factor, ox * factor), np.nan)
    padded[:ny, :nx] = ref
    blocks = padded.reshape(oy, factor, ox, factor)
    with np.errstate(invalid="ignore"), pytest.warns(RuntimeWarning):
        expected = np.nanmean(blocks, axis=(1, 3))
    got = PreviewAssembler(geom, factor, display_orientation=False).assemble(frame)
    assert got.shape == (oy, ox)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(expected))
    np.testing.assert_allclose(got, expected, rtol=1e-6, equal_nan=True)


def test_mask_and_nan_pixels_are_left_out(geom, frame):
    mask = np.zeros(FRAME, np.uint32)
    mask[5] = 1  # a whole module
    asm = PreviewAssembler(geom, mask=mask, display_orientation=False)
    img = asm.assemble(frame)
    ref, _ = _reference_image(geom, frame)
    nan_mod = np.zeros(FRAME, np.float32)
    nan_mod[5] = np.nan
    ref_masked, _ = _reference_image(geom, frame + nan_mod)
    np.testing.assert_array_equal(img, ref_masked)
    assert np.isnan(img).sum() == np.isnan(ref).sum() + 512 * 128


@pytest.mark.parametrize("display", [True, False])
@pytest.mark.parametrize("factor", [1, 4])
def test_beam_centre_marks_the_smallest_radius(geom, display, factor):
    """The pixel closest to the beam must sit at ``beam_centre_yx`` in the output image."""
    asm = PreviewAssembler(geom, factor, display_orientation=display)
    r = asm.assemble(geom.radius_map().astype(np.float32))
    iy, ix = np.unravel_index(np.nanargmin(r), r.shape)
    cy, cx = asm.beam_centre_yx
    assert abs(iy + 0.5 - cy) <= 1.0 and abs(ix + 0.5 - cx) <= 1.0


def test_scale_to_uint8_linear_and_log():
    vals = np.array([-5.0, 0.0, 50.0, 100.0, 1e6, np.nan])
    np.testing.assert_array_equal(scale_to_uint8(vals, 0.0, 100.0), [0, 0, 128, 255, 255, 0])
    np.testing.assert_array_equal(scale_to_uint8(vals, 0.0, 100.0, nan_value=7)[-1], 7)
    # log scale: sqrt(10) is a quarter of the way from 1 to 100 in log(value): 0.25·255 → 64.
    logv = np.array([0.0, -1.0, 1.0, np.sqrt(10.0), 1000.0**0.5 * 1.0, 100.0, 1000.0])
    np.testing.assert_array_equal(
        scale_to_uint8(logv, 1.0, 100.0, "log"), [0, 0, 0, 64, 191, 255, 255]
    )
    with pytest.raises(ConfigurationError):
        scale_to_uint8(vals, 0.0, 100.0, "log")
    with pytest.raises(ConfigurationError):
        scale_to_uint8(vals, 5.0, 5.0)
    with pytest.raises(ConfigurationError):
        scale_to_uint8(vals, 0.0, 1.0, "sqrt")


def _assert_levels_close(got, expected, exact_fraction):
    """Equal, except ±1 level where float32 rounding meets a level boundary."""
    diff = got.astype(int) - expected.astype(int)
    assert np.abs(diff).max() <= 1
    assert np.mean(diff == 0) >= exact_fraction


@pytest.mark.parametrize("scale,limits", [("linear", (20.0, 300.0)), ("log", (5.0, 500.0))])
def test_preview_equals_assemble_then_scale(geom, frame, scale, limits):
    asm = PreviewAssembler(geom)
    got = asm.preview(frame, *limits, scale, nan_value=3)
    assert got.dtype == np.uint8 and got.shape == asm.shape
    expected = scale_to_uint8(asm.assemble(frame), *limits, scale, nan_value=3)
    if scale == "linear":
        np.testing.assert_array_equal(got, expected)
    else:  # the log runs in float32 in preview(), in float64 in scale_to_uint8()
        _assert_levels_close(got, expected, 0.999)
    assert (got == 0).any() and (got == 255).any() and (got == 3).any()
    np.testing.assert_array_equal(got[np.isnan(asm.assemble(frame))], 3)
    # Downsampled: the fused kernel averages in float64, assemble() rounds to float32 first.
    asm4 = PreviewAssembler(geom, 4)
    out = np.empty(asm4.shape, np.uint8)
    assert asm4.preview(frame, *limits, scale, out=out) is out
    _assert_levels_close(out, scale_to_uint8(asm4.assemble(frame), *limits, scale), 0.999)


def test_log_preview_puts_non_positive_values_at_the_bottom(geom):
    frame = np.full(FRAME, -3.0, np.float32)
    frame[0] = 0.0
    frame[1] = 1e9
    frame[2] = np.nan
    img = PreviewAssembler(geom, display_orientation=False).assemble(frame)
    got = PreviewAssembler(geom, display_orientation=False).preview(
        frame, 1.0, 10.0, "log", nan_value=9
    )
    np.testing.assert_array_equal(got[img == 1e9], 255)
    np.testing.assert_array_equal(got[img <= 0], 0)
    np.testing.assert_array_equal(got[np.isnan(img)], 9)


def test_integer_frames_are_accepted(geom):
    raw = np.arange(np.prod(FRAME), dtype=np.uint16).reshape(FRAME)
    asm = PreviewAssembler(geom, display_orientation=False)
    ref, _ = _reference_image(geom, raw.astype(np.float32))
    np.testing.assert_array_equal(asm.assemble(raw), ref)


def test_bad_input_is_refused(geom, frame):
    asm = PreviewAssembler(geom, 2)
    with pytest.raises(DataShapeError):
        asm.assemble(frame[:8])
    with pytest.raises(DataShapeError):
        asm.assemble(frame, out=np.empty((3, 3), np.float32))
    with pytest.raises(DataShapeError):
        asm.preview(frame, 0, 1, out=np.empty(asm.shape, np.float32))
    with pytest.raises(ConfigurationError):
        asm.preview(frame, 0, 1, nan_value=300)
    with pytest.raises(ConfigurationError):
        PreviewAssembler(geom, 0)
    with pytest.raises(ConfigurationError):
        PreviewAssembler(geom, 1.5)
    with pytest.raises(DataShapeError):
        PreviewAssembler(geom, mask=np.zeros((16, 512, 64)))
