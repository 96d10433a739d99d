"""iter_run_trains / run_info: equal to what EXtra-data reads, for our runs and its mock runs."""

from __future__ import annotations

import mmap
from pathlib import Path

import extra_data
import h5py
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


def _from_file_map(array: np.ndarray) -> bool:
    """Whether *array* is a view on a memory map of a file (no HDF5 read, no copy)."""
    base = array
    while isinstance(base, np.ndarray):
        base = base.base
    return isinstance(base, memoryview) and isinstance(base.obj, mmap.mmap)


def _first_chunk_offset(run_dir, module: int) -> int:
    (path,) = run_dir.glob(f"*-AGIPD{module:02d}-S00000.h5")
    with h5py.File(path, "r") as f:
        ds = f[f"INSTRUMENT/{agipd_source(module)}/image/data"]
        return ds.id.get_chunk_info_by_coord((0, 0, 0, 0)).byte_offset


def test_uncompressed_arrays_are_served_from_the_file_map(raw_run):
    run_dir, written, _ = raw_run
    # Train 0 has 2 frames: rows 0-1, both in the first chunk of image.data.  HDF5 does not
    # align chunks; a uint16 view needs an even offset (else the rows are copied).
    module = next(m for m in range(16) if _first_chunk_offset(run_dir, m) % 2 == 0)
    source = agipd_source(module)
    _, data, _ = next(iter_run_trains(run_dir, sources=["*/DET/*"], trains=slice(0, 1)))
    image = data[source]["image.data"]
    assert image.shape == (2, 2, 512, 128)
    assert _from_file_map(image)
    np.testing.assert_array_equal(image, written[0][1][source]["image.data"])
    # writeable like an h5py array; the change stays in this process, never in the file
    assert image.flags.writeable
    image[:] = 0
    _, again, _ = next(iter_run_trains(run_dir, sources=["*/DET/*"], trains=slice(0, 1)))
    np.testing.assert_array_equal(again[source]["image.data"], written[0][1][source]["image.data"])
    _, copied, _ = next(
        iter_run_trains(run_dir, sources=["*/DET/*"], trains=slice(0, 1), zero_copy=False)
    )
    assert not _from_file_map(copied[source]["image.data"])


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs /proc/self/maps")
def test_files_are_unmapped_once_read_and_their_trains_dropped(raw_run):
    run_dir, _, _ = raw_run

    def mapped_sequences() -> set[str]:
        text = Path("/proc/self/maps").read_text()
        return {s for s in ("S00000", "S00001", "S00002") if f"-{s}.h5" in text}

    seen = []
    trains = iter_run_trains(run_dir, max_block_trains=2)
    for i, (_tid, _data, _meta) in enumerate(trains):
        seen.append(mapped_sequences())
        if i == 8:  # trains 0-4 are in S00000, 5-9 in S00001
            break
    del _data
    trains.close()
    assert "S00000" in seen[0]
    assert "S00000" not in seen[8] and "S00001" in seen[8]
    assert not mapped_sequences()


def test_without_zero_copy_equals_extra_data(raw_run):
    run_dir, written, _ = raw_run
    ours = list(iter_run_trains(run_dir, zero_copy=False, max_block_trains=4))
    run = extra_data.RunDirectory(str(run_dir))
    assert compare_with_extra_data(run, ours) == len(written)


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


@pytest.mark.parametrize(
    "name, zero_copy",
    [(name, True) for name in sorted(MOCK_RUNS)] + [("fxe", False)],
)
def test_iter_run_trains_equals_extra_data_for_mock_runs(tmp_path, name, zero_copy):
    make, kwargs, sources, trains = MOCK_RUNS[name]
    make(str(tmp_path), **kwargs)
    ours = list(
        iter_run_trains(
            tmp_path, sources=sources, trains=trains, max_block_trains=5, zero_copy=zero_copy
        )
    )
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
