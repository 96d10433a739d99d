"""AGIPD correction: the numba kernel against hand-computed values and the numpy reference."""

from __future__ import annotations

import numpy as np
import pytest

from pulsetrain.calibration import (
    AGIPDConstants,
    BadPixels,
    allocate_output,
    correct_agipd,
    correct_agipd_numpy,
    correct_module_data,
)
from pulsetrain.errors import CalibrationError

IMPLEMENTATIONS = [correct_agipd, correct_agipd_numpy]


def uniform_constants(cells: int) -> AGIPDConstants:
    """offset[g, c] = 1000 (g+1) + c, rel_gain[g, c] = 0.5 (g+1) + 0.25 c, thresholds 100/200."""
    g = np.arange(3, dtype=np.float32)[:, None, None, None]
    c = np.arange(cells, dtype=np.float32)[None, :, None, None]
    shape = (3, cells, 512, 128)
    offset = np.broadcast_to(1000 * (g + 1) + c, shape)
    rel_gain = np.broadcast_to(0.5 * (g + 1) + 0.25 * c, shape)
    thresholds = np.stack([np.full(shape[1:], 100.0), np.full(shape[1:], 200.0)])
    return AGIPDConstants(offset, rel_gain, thresholds, np.zeros(shape, np.uint32))


@pytest.mark.parametrize("correct", IMPLEMENTATIONS)
def test_hand_computed_stages_offsets_gains_and_mask(correct):
    consts = uniform_constants(cells=3)
    consts.bad_pixels[1, 2, 10, 20] = BadPixels.NOISE_OUT_OF_THRESHOLD
    consts.bad_pixels[0, 2, 10, 20] = BadPixels.OFFSET_OUT_OF_THRESHOLD
    raw = np.zeros((2, 2, 512, 128), np.uint16)
    raw[:, 0] = 5000
    raw[:, 1, :, 0] = 50  # below thr0 -> HG
    raw[:, 1, :, 1] = 100  # == thr0 -> MG (stage 0 needs d < thr0)
    raw[:, 1, :, 2] = 150
    raw[:, 1, :, 3] = 200  # == thr1 -> LG
    raw[:, 1, :, 4:] = 250
    raw[:, 1, 10, 20] = 150  # MG at the flagged pixel
    cells = np.array([2, 0], np.uint16)

    res = correct(raw, cells, consts)

    expected_gain = np.full((2, 512, 128), 2, np.uint8)
    expected_gain[:, :, :4] = [0, 1, 1, 2]
    expected_gain[:, 10, 20] = 1
    np.testing.assert_array_equal(res.gain, expected_gain)
    for frame, cell in enumerate(cells):
        for stage in range(3):
            expected = (np.float32(5000) - np.float32(1000 * (stage + 1) + cell)) * np.float32(
                0.5 * (stage + 1) + 0.25 * cell
            )
            got = res.data[frame][res.gain[frame] == stage]
            assert got.size and (got == expected).all(), (frame, stage)
    assert res.mask[0, 10, 20] == BadPixels.NOISE_OUT_OF_THRESHOLD  # cell 2, stage 1 flags
    assert res.mask[1, 10, 20] == 0  # frame 1 is cell 0: good
    assert np.count_nonzero(res.mask) == 1
    assert res.data.dtype == np.float32 and res.gain.dtype == np.uint8
    assert res.mask.dtype == np.uint32


@pytest.mark.parametrize("correct", IMPLEMENTATIONS)
def test_bad_to_nan_only_masked_pixels(correct, constants, raw):
    cells = np.arange(raw.shape[0]) % constants.memory_cells
    res = correct(raw, cells, constants, bad_to_nan=True)
    assert np.isnan(res.data[res.mask != 0]).all()
    assert np.isfinite(res.data[res.mask == 0]).all()
    assert np.count_nonzero(res.mask) > 1000


@pytest.mark.parametrize("correct", IMPLEMENTATIONS)
def test_force_thresholds_move_stages_down(correct):
    consts = uniform_constants(cells=1)  # offsets 1000 / 2000 / 3000 ADU
    raw = np.zeros((1, 2, 512, 128), np.uint16)
    raw[0, 1] = 250  # digital: LG everywhere
    raw[0, 0, :, 0] = 2100  # analog - MG offset = 100
    raw[0, 0, :, 1] = 1050  # analog - MG offset = -950, analog - HG offset = 50
    raw[0, 0, :, 2:] = 2600  # analog - MG offset = 600: stays LG
    cells = np.zeros(1, np.uint16)

    assert (correct(raw, cells, consts).gain == 2).all()
    g = correct(raw, cells, consts, force_mg_threshold=500.0).gain[0]
    assert (g[:, :2] == 1).all() and (g[:, 2:] == 2).all()
    g = correct(raw, cells, consts, force_mg_threshold=500.0, force_hg_threshold=80.0).gain[0]
    assert (g[:, 0] == 1).all()  # 2100 - 1000 = 1100 >= 80: stays MG
    assert (g[:, 1] == 0).all()  # forced LG -> MG -> HG
    assert (g[:, 2:] == 2).all()
    # force-HG alone acts only on pixels the thresholds put into MG
    assert (correct(raw, cells, consts, force_hg_threshold=1e6).gain == 2).all()
    raw[0, 1, :, 0] = 150
    g = correct(raw, cells, consts, force_hg_threshold=1200.0).gain[0]
    assert (g[:, 0] == 0).all() and (g[:, 1:] == 2).all()


def _common_mode_scene() -> tuple[np.ndarray, np.ndarray, AGIPDConstants, np.ndarray]:
    """All-HG frames with a known shift per (frame, ASIC), photons and bad pixels."""
    rng = np.random.default_rng(5)
    shape = (3, 2, 512, 128)
    offset = np.full(shape, 1000.0)
    rel_gain = np.ones(shape)
    thresholds = np.full((2, 2, 512, 128), 60000.0)
    bad = np.zeros(shape, np.uint32)
    bad[0, :, 0:64, 0:64][rng.random((2, 64, 64)) < 0.55] = BadPixels.OFFSET_OUT_OF_THRESHOLD
    consts = AGIPDConstants(offset, rel_gain, thresholds, bad)

    frames = 3
    shift = rng.integers(-30, 30, (frames, 8, 2))
    analog = 1000 + np.repeat(np.repeat(shift, 64, axis=1), 64, axis=2)
    photons = rng.random((frames, 512, 128)) < 0.2
    analog = analog + 100 * photons
    # ASIC (0, 0): its bad pixels read far too low; they must not enter the median
    analog[:, 0:64, 0:64] -= 500 * (bad[0, 0, 0:64, 0:64] != 0)
    # ASIC (1, 1) of frame 1: 80 % photons -> too few dark pixels, left alone
    analog[1, 64:128, 64:128] += 100 * (rng.random((64, 64)) < 0.8)
    raw = np.empty((frames, 2, 512, 128), np.uint16)
    raw[:, 0] = analog
    raw[:, 1] = 0
    raw[2, 1, 448:, 64:] = 61000  # frame 2, last ASIC: low gain, untouched
    return raw, np.zeros(frames, np.uint16), consts, shift


@pytest.mark.parametrize("correct", IMPLEMENTATIONS)
def test_common_mode_removes_asic_shifts(correct):
    raw, cells, consts, shift = _common_mode_scene()
    plain = correct(raw, cells, consts)
    res = correct(raw, cells, consts, common_mode=True, common_mode_threshold=40.0)
    for f in range(raw.shape[0]):
        for i in range(8):
            for j in range(2):
                area = np.s_[f, 64 * i : 64 * (i + 1), 64 * j : 64 * (j + 1)]
                before, after = plain.data[area], res.data[area]
                good = (res.mask[area] == 0) & (res.gain[area] == 0)
                if (f, i, j) == (1, 1, 1):
                    assert (after == before).all()  # too few dark pixels
                elif (f, i, j) == (2, 7, 1):
                    assert (after == before).all()  # low gain: not corrected
                else:
                    assert set(np.unique(after[good])) == {0.0, 100.0}, (f, i, j)
                    assert (after[~good] == before[~good] - shift[f, i, j]).all()


@pytest.mark.parametrize("correct", IMPLEMENTATIONS)
def test_cells_index_constants_not_positions(correct, constants, raw):
    cells = np.array([7, 3, 3, 11, 0, 5, 7, 1, 2, 9], np.uint16)
    whole = correct(raw, cells, constants)
    for f in [0, 3, 6]:
        single = correct(raw[f : f + 1], cells[f : f + 1], constants)
        np.testing.assert_array_equal(single.data[0], whole.data[f])
        np.testing.assert_array_equal(single.mask[0], whole.mask[f])
    # frames 1 and 2 share cell 3 but not data; same data in two cells gives different results
    other = correct(raw[:1], np.array([4], np.uint16), constants)
    assert not np.array_equal(other.data[0], whole.data[0])


OPTION_SETS = [
    {},
    {"bad_to_nan": True},
    {"force_mg_threshold": 300.0},
    {"force_hg_threshold": -200.0},
    {"force_mg_threshold": 300.0, "force_hg_threshold": 100.0},
    {"common_mode": True, "common_mode_threshold": 1e4, "common_mode_min_pixels": 100},
    {"common_mode": True, "common_mode_threshold": 300.0, "common_mode_min_pixels": 1},
    {
        "common_mode": True,
        "common_mode_threshold": 5e3,
        "common_mode_min_pixels": 200,
        "bad_to_nan": True,
        "force_mg_threshold": 300.0,
        "force_hg_threshold": 100.0,
    },
]


@pytest.mark.parametrize("options", OPTION_SETS, ids=lambda o: ",".join(o) or "default")
@pytest.mark.parametrize("nan_fraction", [0.0, 0.002])
def test_numba_equals_numpy_reference(make_constants, make_raw, options, nan_fraction):
    consts = make_constants(cells=16, seed=3, nan_fraction=nan_fraction)
    raw = make_raw(frames=12, seed=4)
    rng = np.random.default_rng(9)
    cells = rng.permutation(16)[:12].astype(np.uint16)
    cells[5] = cells[2]  # a repeated cell
    fast = correct_agipd(raw, cells, consts, **options)
    ref = correct_agipd_numpy(raw, cells, consts, **options)
    np.testing.assert_array_equal(fast.gain, ref.gain)
    np.testing.assert_array_equal(fast.mask, ref.mask)
    np.testing.assert_allclose(fast.data, ref.data, rtol=1e-6, atol=0, equal_nan=True)
    assert set(np.unique(fast.gain)) == {0, 1, 2}
    if nan_fraction:
        assert np.isnan(fast.data).any()


@pytest.mark.parametrize("options", OPTION_SETS[:5], ids=lambda o: ",".join(o) or "default")
def test_numba_equals_numpy_where_high_gain_regions_alternate(make_constants, make_raw, options):
    """The kernel treats a chunk of 16 rows as a whole when every row is in high gain, row by
    row when some are, and redoes low-gain pixels in a second pass: all must give the
    reference's result, as must a single low-gain pixel in an otherwise high row."""
    consts = make_constants(cells=4, seed=5, nan_fraction=0.002)
    raw = make_raw(frames=4, seed=6)
    cells = np.array([0, 1, 2, 3], np.uint16)
    high = np.uint16(1000)  # far below every threshold
    raw[:, 1, :16] = high  # one whole chunk in high gain
    raw[:, 1, 16:32:2] = high  # every second row of the next chunk
    raw[:, 1, 32:48] = high
    raw[:, 1, 40, 77] = 60000  # one low-gain pixel in an otherwise high chunk
    raw[1, 1, 64:] = 60000  # frame 1: the rest in low gain
    fast = correct_agipd(raw, cells, consts, **options)
    ref = correct_agipd_numpy(raw, cells, consts, **options)
    np.testing.assert_array_equal(fast.gain, ref.gain)
    np.testing.assert_array_equal(fast.mask, ref.mask)
    np.testing.assert_allclose(fast.data, ref.data, rtol=1e-6, atol=0, equal_nan=True)
    # the layout is as meant (NaN thresholds put a few pixels of the high rows elsewhere)
    assert (fast.gain[:, :16] == 0).mean() > 0.99
    if not options:
        assert fast.gain[0, 40, 77] == 2


def test_in_order_cells_match_shuffled(constants, raw):
    """The numpy reference takes a slice for consecutive cells; both paths must agree."""
    cells = np.arange(raw.shape[0], dtype=np.uint16)
    ordered = correct_agipd_numpy(raw, cells, constants)
    order = np.random.default_rng(2).permutation(raw.shape[0])
    shuffled = correct_agipd_numpy(raw[order], cells[order], constants)
    np.testing.assert_array_equal(shuffled.data, ordered.data[order])
    np.testing.assert_array_equal(correct_agipd(raw, cells, constants).data, ordered.data)


def test_block_of_trains_equals_train_by_train(constants, raw):
    """A block of several trains (each cell several times, which the kernel corrects cell by
    cell) gives each train exactly what correcting it alone gives."""
    trains = [raw[:5], raw[5:], raw[2:7]]
    cells = [np.array([4, 0, 3, 1, 2], np.uint16)] * 3
    block = correct_agipd(np.concatenate(trains), np.concatenate(cells), constants, bad_to_nan=True)
    row = 0
    for frames, c in zip(trains, cells):
        alone = correct_agipd(frames, c, constants, bad_to_nan=True)
        n = frames.shape[0]
        np.testing.assert_array_equal(block.data[row : row + n], alone.data)
        np.testing.assert_array_equal(block.gain[row : row + n], alone.gain)
        np.testing.assert_array_equal(block.mask[row : row + n], alone.mask)
        row += n


@pytest.mark.parametrize("correct", IMPLEMENTATIONS)
def test_out_buffers_are_filled_and_returned(correct, constants, raw):
    cells = np.arange(raw.shape[0], dtype=np.uint16)
    out = allocate_output(raw.shape[0])
    out.data.fill(-1)
    res = correct(raw, cells, constants, out=out)
    assert res.data is out.data and res.gain is out.gain and res.mask is out.mask
    np.testing.assert_array_equal(res.data, correct(raw, cells, constants).data)
    # a plain tuple works as well
    res2 = correct(raw, cells, constants, out=(out.data, out.gain, out.mask))
    assert res2.data is out.data


@pytest.mark.parametrize("correct", IMPLEMENTATIONS)
def test_out_buffer_errors(correct, constants, raw):
    cells = np.arange(raw.shape[0], dtype=np.uint16)
    out = allocate_output(raw.shape[0])
    with pytest.raises(CalibrationError, match="out.gain: dtype"):
        correct(raw, cells, constants, out=(out.data, out.mask, out.mask))
    with pytest.raises(CalibrationError, match="out.data: shape"):
        correct(raw, cells, constants, out=allocate_output(raw.shape[0] + 1))
    strided = np.empty((raw.shape[0], 512, 256), np.float32)[:, :, ::2]
    with pytest.raises(CalibrationError, match="C-contiguous"):
        correct(raw, cells, constants, out=(strided, out.gain, out.mask))


@pytest.mark.parametrize("correct", IMPLEMENTATIONS)
def test_input_errors(correct, constants, raw):
    n = raw.shape[0]
    cells = np.zeros(n, np.uint16)
    cells[3] = constants.memory_cells
    with pytest.raises(CalibrationError, match=f"cellId {constants.memory_cells} is outside"):
        correct(raw, cells, constants)
    with pytest.raises(CalibrationError, match="cellId -1"):
        correct(raw, np.full(n, -1), constants)
    with pytest.raises(CalibrationError, match="cell_ids: shape"):
        correct(raw, np.zeros(n + 1, np.uint16), constants)
    with pytest.raises(CalibrationError, match="cell_ids: dtype"):
        correct(raw, np.zeros(n, np.float32), constants)
    with pytest.raises(CalibrationError, match="raw: dtype must be uint16"):
        correct(raw.astype(np.int32), np.zeros(n, np.uint16), constants)
    with pytest.raises(CalibrationError, match="raw: shape"):
        correct(raw[:, :1], np.zeros(n, np.uint16), constants)
    with pytest.raises(CalibrationError, match="constants: must be AGIPDConstants"):
        correct(raw, np.zeros(n, np.uint16), {"offset": 0})
    with pytest.raises(CalibrationError, match="common_mode_min_pixels"):
        correct(raw, np.zeros(n, np.uint16), constants, common_mode=True, common_mode_min_pixels=0)
    with pytest.raises(CalibrationError, match="force_mg_threshold"):
        correct(raw, np.zeros(n, np.uint16), constants, force_mg_threshold=float("nan"))


@pytest.mark.parametrize("correct", IMPLEMENTATIONS)
def test_file_layout_cells_noncontiguous_raw_and_empty_train(correct, constants, raw):
    cells = (np.arange(raw.shape[0]) % constants.memory_cells).astype(np.uint16)
    expected = correct(raw, cells, constants)
    # cellId as stored in files, (frames, 1); raw as a strided view
    padded = np.zeros((raw.shape[0], 3, 512, 128), np.uint16)
    padded[:, :2] = raw
    res = correct(padded[:, :2], cells[:, None], constants)
    np.testing.assert_array_equal(res.data, expected.data)
    empty = correct(raw[:0], cells[:0], constants)
    assert empty.data.shape == (0, 512, 128)


def test_correct_module_data_carries_ids(constants, raw):
    n = raw.shape[0]
    source = {
        "image.data": raw,
        "image.cellId": (np.arange(n) % constants.memory_cells).astype(np.uint16)[:, None],
        "image.pulseId": np.arange(n, dtype=np.uint64)[:, None] * 4,
        "image.trainId": np.full((n, 1), 10_000, np.uint64),
        "image.length": np.full((n, 1), 262144, np.uint32),
    }
    out = correct_module_data(source, constants, bad_to_nan=True)
    assert set(out) == {
        "image.data",
        "image.gain",
        "image.mask",
        "image.cellId",
        "image.pulseId",
        "image.trainId",
    }
    np.testing.assert_array_equal(out["image.pulseId"], np.arange(n) * 4)
    assert out["image.cellId"].shape == (n,)
    ref = correct_agipd_numpy(raw, source["image.cellId"], constants, bad_to_nan=True)
    np.testing.assert_array_equal(out["image.data"], ref.data)
    with pytest.raises(CalibrationError, match="image.cellId"):
        correct_module_data({"image.data": raw}, constants)


def test_common_mode_median_matches_numpy():
    from pulsetrain.calibration.correction import median_float32
    from pulsetrain.calibration.kernels import median_of

    rng = np.random.default_rng(0)
    for n in [*range(1, 20), 64, 1000, 1001, 4096]:
        for values in (
            rng.normal(size=n).astype(np.float32),
            rng.integers(-3, 3, n).astype(np.float32),  # many ties
            np.sort(rng.normal(size=n)).astype(np.float32)[::-1].copy(),  # descending
        ):
            expected = np.float32(np.median(values.astype(np.float64)))
            assert median_of(values.copy()) == expected, n
            assert median_float32(values) == expected, n
