"""iter_run_trains / run_info: equal to what EXtra-data reads, for our runs and its mock runs."""

from __future__ import annotations

import extra_data
import numpy as np
import pytest
from compare import compare_with_extra_data
from extra_data import by_id
from extra_data.tests import make_examples
from synthetic import CAMERA, FIRST_TRAIN, MOTOR, agipd_source

from pulsetrain.errors import ConfigurationError, FileFormatError
from pulsetrain.files import iter_run_trains, run_info
from pulsetrain.files.timestamps import TRAIN_PERIOD_NS


def test_iter_run_trains_equals_extra_data_for_our_run(raw_run):
    run_dir, written, _ = raw_run
    ours = list(iter_run_trains(run_dir))
    run = extra_data.RunDirectory(str(run_dir))
    assert compare_with_extra_data(run, ours) == len(written)


def test_iter_run_trains_equals_extra_data_for_corrected_run(corr_run):
    run_dir, written, _ = corr_run
    ours = list(iter_run_trains(run_dir, max_block_trains=3))
    assert compare_with_extra_data(extra_data.RunDirectory(str(run_dir)), ours) == len(written)


# (make_examples function, kwargs, source globs (None: all), train selection)
MOCK_RUNS = {
    "spb_raw_0.5": (
        make_examples.make_spb_run,
        {},
        ["*/DET/3CH0:xtdf", "SA1_XTD2_XGM/DOOCS/MAIN*", "*SIDEMIC*"],
        (10028, 10036),
    ),
    "spb_raw_1.0": (
        make_examples.make_spb_run,
        {"format_version": "1.0"},
        ["*/DET/0CH0:xtdf", "SPB_XTD9_XGM/DOOCS/MAIN"],
        slice(30, 34),
    ),
    "spb_reduced": (
        make_examples.make_reduced_spb_run,
        {"format_version": "1.2", "rng": np.random.RandomState(7)},
        ["*/DET/1[12]CH0:xtdf", "SPB_XTD9_XGM/DOOCS/MAIN*"],
        slice(0, 12),
    ),
    "spb_proc_legacy": (make_examples.make_modern_spb_proc_run, {}, ["*/CORR/4CH0*"], slice(0, 3)),
    "fxe": (make_examples.make_fxe_run, {}, ["*LPD1M-1/DET/0CH0*", "*XGM*", "*GEC*"], slice(0, 3)),
    "jungfrau": (make_examples.make_jungfrau_run, {}, ["*/DET/JNGFR02:daqOutput"], slice(1, 3)),
    "remi": (make_examples.make_remi_run, {}, None, None),
    "agipd1m_ctrl": (
        make_examples.make_agipd1m_run,
        {},
        ["*/DET/0CH0*", "*MDL*", "*FPGA*", "*PSC*"],
        slice(0, 4),
    ),
}


@pytest.mark.parametrize("name", sorted(MOCK_RUNS))
def test_iter_run_trains_equals_extra_data_for_mock_runs(tmp_path, name):
    make, kwargs, sources, trains = MOCK_RUNS[name]
    make(str(tmp_path), **kwargs)
    ours = list(iter_run_trains(tmp_path, sources=sources, trains=trains, max_block_trains=5))
    assert ours, "no trains read"
    run = extra_data.RunDirectory(str(tmp_path))
    selection = by_id[trains[0] : trains[1]] if isinstance(trains, tuple) else trains
    assert compare_with_extra_data(run, ours, sources, selection) == len(ours)


def test_timestamps_are_derived_where_files_have_none(tmp_path):
    # format 0.5: no INDEX/timestamp
    make_examples.make_fxe_da_file(str(tmp_path / "RAW-R0001-DA01-S00000.h5"))
    trains = list(iter_run_trains(tmp_path, sources=["*XGM*"], trains=slice(0, 400, 37)))
    stamps = [int(next(iter(m.values()))["timestamp.sec"]) * 10**9 for _, _, m in trains]
    fracs = [int(next(iter(m.values()))["timestamp.frac"]) // 10**9 for _, _, m in trains]
    ns = np.add(stamps, fracs)
    tids = np.array([t[0] for t in trains])
    np.testing.assert_array_equal(np.diff(ns), np.diff(tids) * TRAIN_PERIOD_NS)
    assert ns[0] > 1_500_000_000 * 10**9  # anchored at the file's date, not at 1970


def test_source_and_train_selection(raw_run):
    run_dir, _, _ = raw_run
    picked = list(
        iter_run_trains(run_dir, sources=[CAMERA, "*/DET/1?CH0:xtdf"], trains=slice(2, 9))
    )
    assert [t[0] for t in picked] == [FIRST_TRAIN + i for i in range(2, 9)]
    for tid, data, meta in picked:
        assert set(meta) == set(data)
        expected = {agipd_source(m) for m in range(10, 16)}
        if (tid - FIRST_TRAIN) % 4 != 3:
            expected.add(CAMERA)
        assert set(data) == expected
    by_tid = list(iter_run_trains(run_dir, sources=MOTOR, trains=(FIRST_TRAIN + 10, None)))
    assert [t[0] for t in by_tid] == [FIRST_TRAIN + 10, FIRST_TRAIN + 11]
    assert by_tid[1][1][MOTOR]["actualPosition.value"] == 5.5
    complete = list(iter_run_trains(run_dir, sources=[MOTOR, CAMERA], require_all=True))
    assert [t[0] - FIRST_TRAIN for t in complete] == [i for i in range(12) if i % 4 != 3]
    with pytest.raises(ConfigurationError, match="no source"):
        list(iter_run_trains(run_dir, sources=["NOTHING*"]))
    with pytest.raises(ConfigurationError, match="slice"):
        list(iter_run_trains(run_dir, trains=[1, 2, 3]))


def test_zero_frame_trains_keep_their_frame_axis(raw_run):
    run_dir, _, _ = raw_run
    trains = list(iter_run_trains(run_dir, sources=["*/DET/0CH0:xtdf"], trains=slice(2, 4)))
    empty = trains[0][1][agipd_source(0)]
    assert empty["image.data"].shape == (0, 2, 512, 128)
    assert empty["image.cellId"].shape == (0,)
    assert trains[1][1][agipd_source(0)]["image.data"].shape == (1, 2, 512, 128)


def test_run_info(raw_run):
    run_dir, written, _ = raw_run
    info = run_info(run_dir)
    np.testing.assert_array_equal(info.train_ids, [t[0] for t in written])
    assert info.n_files == 51 and info.n_trains == len(written)
    assert info.control_sources == (MOTOR,)
    assert len(info.instrument_sources) == 17 and CAMERA in info.instrument_sources
    assert info.sources == tuple(sorted(written[0][1]))
    assert info.metadata["dataFormatVersion"] == "1.3"


def test_reading_a_directory_without_runs_fails_clearly(tmp_path):
    with pytest.raises(FileFormatError, match="no run files"):
        run_info(tmp_path)
