"""RunRecorder: one run recorded — numbering, gathering per train, late data, failure, close."""

from __future__ import annotations

import extra_data
import numpy as np
import pytest
from synthetic import CAMERA, FIRST_TRAIN, MOTOR, make_train

from conftest import disk_full_after
from pulsetrain.catalog import Catalog
from pulsetrain.errors import FileFormatError, StorageError
from pulsetrain.files.recorder import RunRecorder, next_run_number

SMALL = {"modules": 2, "frames": 1}


def test_records_a_run_counts_it_and_numbers_the_next(tmp_path):
    rec = RunRecorder(tmp_path, sequence_trains=3, sample="water", run_type="raw")
    assert rec.run_number == 1 and rec.run_dir == tmp_path / "r0001"
    sizes = []
    for i in range(7):
        _, data, meta = make_train(i, **SMALL)
        assert rec.add(data, meta) == 1  # gather_trains 0: written at once
        sizes.append(rec.bytes_written)
    assert rec.trains_written == 7
    assert sizes == sorted(sizes) and sizes[0] > 0
    summary = rec.close()
    assert rec.close() is summary  # closing twice is harmless
    assert summary["run"] == 1 and summary["trains"] == 7 and summary["error"] is None
    assert summary["directory"] == str(tmp_path / "r0001")
    assert len(summary["files"]) == len(summary["paths"]) >= 3  # 2 modules + DA01, 3 sequences
    run = extra_data.RunDirectory(summary["directory"])
    assert list(run.train_ids) == [FIRST_TRAIN + i for i in range(7)]
    assert next_run_number(tmp_path) == 2
    assert RunRecorder(tmp_path).run_number == 2


def test_gathers_the_sources_of_a_train_and_refuses_late_data(tmp_path):
    rec = RunRecorder(tmp_path, gather_trains=2)
    trains = [make_train(i, **SMALL) for i in range(6)]

    def part(i, slow):
        _, data, meta = trains[i]
        keep = [s for s in data if (s in (MOTOR, CAMERA)) == slow]
        return {s: data[s] for s in keep}, {s: meta[s] for s in keep}

    written = 0
    for i in range(6):  # detector data of train i arrives with the slow data of train i - 1
        written += rec.add(*part(i, slow=False))
        if i:
            written += rec.add(*part(i - 1, slow=True))
    assert rec.pending == 2 and written == 4  # trains 4 and 5 wait for late sources
    assert rec.add(*part(0, slow=True)) == 0  # train 0 was written: its data is late
    assert rec.late == 1
    rec.add(*part(5, slow=True))
    summary = rec.close()  # writes what was held back
    assert summary["trains"] == 6 and rec.pending == 0
    run = extra_data.RunDirectory(summary["directory"])
    for tid in run.train_ids:  # every train has all its sources
        _, data = run.train_from_id(tid)
        assert {MOTOR, CAMERA} <= set(data) and len(data) == 4


def test_a_train_without_id_is_refused(tmp_path):
    rec = RunRecorder(tmp_path)
    _, data, meta = make_train(0, **SMALL)
    with pytest.raises(FileFormatError, match="no train ID"):
        rec.add(
            data, {s: {k: v for k, v in m.items() if k != "timestamp.tid"} for s, m in meta.items()}
        )
    assert rec.add(data, meta) == 1  # the run goes on
    assert rec.close()["trains"] == 1


def test_a_storage_failure_stops_the_recording_and_keeps_closed_files(tmp_path):
    rec = RunRecorder(tmp_path, sequence_trains=2)
    with disk_full_after(3 << 20):
        for i in range(200):
            _, data, meta = make_train(i, **SMALL)
            try:
                rec.add(data, meta)
            except StorageError as exc:
                assert "disk full" in str(exc)
                break
        else:
            pytest.fail("no StorageError")
        assert rec.failure is not None and rec.not_recorded == 1
        _, data, meta = make_train(i + 1, **SMALL)
        assert rec.add(data, meta) == 0 and rec.not_recorded == 2  # refused, counted
    summary = rec.close()
    assert "disk full" in summary["error"]
    assert summary["paths"]
    for path in summary["paths"]:  # closed files stay valid and readable
        with extra_data.H5File(path) as f:
            assert len(f.train_ids) >= 1


def test_a_closed_run_is_catalogued(tmp_path):
    url = f"sqlite:///{tmp_path / 'cat.sqlite'}"
    Catalog(url).close()
    rec = RunRecorder(
        tmp_path / "raw", proposal=900123, catalog=url, run_type="dark-HG", sample="dark"
    )
    for i in range(3):
        rec.add(*make_train(i, **SMALL)[1:])
    summary = rec.close()
    cat = Catalog(url)
    try:
        (record,) = cat.find_runs(900123, summary["run"])
        assert record.n_trains == 3 and record.run_type == "dark-HG" and record.sample == "dark"
        assert sorted(f.name for f in record.files) == sorted(summary["files"])
        assert next_run_number(tmp_path / "other", url, 900123) == summary["run"] + 1
    finally:
        cat.close()
    assert np.all(np.diff(extra_data.RunDirectory(summary["directory"]).train_ids) == 1)
