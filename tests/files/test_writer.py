"""RunWriter: layout, EXtra-data compatibility, exact values, sequences, compression, errors."""

from __future__ import annotations

import json

import extra_data
import h5py
import numpy as np
import pytest
from extra_data.components import AGIPD1M
from synthetic import CAMERA, FIRST_TRAIN, MOTOR, T0_NS, agipd_source, frames_for, make_train

from conftest import RAW_FRAMES, RAW_TRAINS, assert_valid, cli
from pulsetrain.errors import ConfigurationError, FileFormatError, TrainOrderError
from pulsetrain.files import RunWriter, aggregator_by_patterns, iter_run_trains, make_meta


def _stored_key(source: str, key: str) -> str:
    if ":" not in source and not key.endswith((".value", ".timestamp")):
        return key + ".value"
    return key


def assert_train_equal(expected: dict, got: dict) -> None:
    assert set(got) == set(expected)
    for src, values in expected.items():
        for key, value in values.items():
            stored = got[src][_stored_key(src, key)]
            if isinstance(value, str):
                assert stored == value, (src, key)
            else:
                np.testing.assert_array_equal(stored, value, err_msg=f"{src} {key}")
                assert np.asarray(stored).dtype == np.asarray(value).dtype, (src, key)


# --- the 16-module raw run --------------------------------------------------------------------
def test_raw_run_passes_extra_data_validate(raw_run):
    run_dir, _, _ = raw_run
    names = sorted(p.name for p in run_dir.iterdir() if p.suffix == ".h5")
    assert len(names) == 17 * 3  # 16 modules + DA01, sequences of 5, 5, 2 trains
    assert "RAW-R0001-AGIPD07-S00000.h5" in names
    assert "RAW-R0001-DA01-S00002.h5" in names
    assert not list(run_dir.glob("*.part"))
    assert_valid(run_dir)
    assert_valid(run_dir / "RAW-R0001-AGIPD15-S00001.h5")


def test_raw_run_opens_with_run_directory(raw_run):
    run_dir, written, _ = raw_run
    run = extra_data.RunDirectory(str(run_dir))
    assert list(run.train_ids) == [t[0] for t in written]
    assert len(run.detector_sources) == 16
    assert run.control_sources == {MOTOR}
    assert CAMERA in run.instrument_sources
    md = run.run_metadata()
    assert md["dataFormatVersion"] == "1.3"
    assert md["proposalNumber"] == 900001 and md["runNumber"] == 1
    assert md["sample"] == "lysozyme" and md["runType"] == "SASE"
    stamps = run.train_timestamps().astype("datetime64[ns]").astype(np.int64)
    np.testing.assert_array_equal(stamps, T0_NS + np.arange(RAW_TRAINS) * 100_000_000)
    motor = run[MOTOR]
    np.testing.assert_array_equal(motor["actualPosition"].ndarray(), 0.5 * np.arange(RAW_TRAINS))
    assert motor.run_value("actualPosition") == 0.0  # RUN = first train
    assert motor.run_value("state") == "ON"
    assert motor.device_class == "MotorDevice"
    assert motor["actualPosition"].units == "mm"
    counts = run[CAMERA].data_counts(labelled=False)
    np.testing.assert_array_equal(counts, [0 if i % 4 == 3 else 1 for i in range(RAW_TRAINS)])
    assert run[CAMERA, "data.image.pixels"].shape == (9, 32, 40)


def test_agipd1m_stacks_raw_modules(raw_run):
    run_dir, written, _ = raw_run
    run = extra_data.RunDirectory(str(run_dir))
    det = AGIPD1M(run, raw=True)
    arr = det["image.data"].ndarray()
    total = sum(frames_for(i, RAW_FRAMES) for i in range(RAW_TRAINS))
    assert arr.shape == (16, total, 2, 512, 128)
    for m in (0, 7, 15):
        expected = np.concatenate([t[1][agipd_source(m)]["image.data"] for t in written])
        np.testing.assert_array_equal(arr[m], expected)
    cells = det["image.cellId"].ndarray()
    np.testing.assert_array_equal(
        cells[3], np.concatenate([t[1][agipd_source(3)]["image.cellId"] for t in written])
    )


def test_lsxfel_lists_the_run(raw_run):
    run_dir, _, _ = raw_run
    result = cli("lsxfel", run_dir)
    assert result.returncode == 0, result.stderr
    assert f"# of trains:    {RAW_TRAINS}" in result.stdout
    assert "16 XTDF detector modules of SPB_DET_AGIPD1M-1/DET/*" in result.stdout
    assert CAMERA in result.stdout and MOTOR in result.stdout
    result = cli("lsxfel", "--aggregators", run_dir)
    assert result.returncode == 0, result.stderr
    assert f"[DA01] {MOTOR}" in result.stdout and f"[DA01] {CAMERA}" in result.stdout
    result = cli("lsxfel", run_dir.parent)  # a proposal's raw/ directory: file name parsing
    assert result.returncode == 0, result.stderr
    assert "r0001 : Run of   12 trains, with  48 detector files and   3 others" in result.stdout


def test_raw_run_holds_exactly_the_values_written(raw_run):
    run_dir, written, _ = raw_run
    read = list(iter_run_trains(run_dir))
    assert [t[0] for t in read] == [t[0] for t in written]
    for (tid, data, meta), (tid0, data0, meta0) in zip(read, written):
        assert_train_equal(data0, data)
        for src in data0:
            assert meta[src] == meta0[src]


def test_index_and_metadata_follow_the_reference(raw_run):
    run_dir, _, _ = raw_run
    with h5py.File(run_dir / "RAW-R0001-AGIPD00-S00000.h5", "r") as f:
        src = agipd_source(0)
        np.testing.assert_array_equal(f["INDEX/trainId"][:], FIRST_TRAIN + np.arange(5))
        assert f["INDEX/trainId"].dtype == np.uint64
        np.testing.assert_array_equal(f["INDEX/flag"][:], np.ones(5, np.int32))
        np.testing.assert_array_equal(f["INDEX/origin"][:], -np.ones(5, np.int32))
        counts = [frames_for(i, RAW_FRAMES) for i in range(5)]
        np.testing.assert_array_equal(f[f"INDEX/{src}/image/count"][:], counts)
        np.testing.assert_array_equal(
            f[f"INDEX/{src}/image/first"][:], np.concatenate([[0], np.cumsum(counts)[:-1]])
        )
        assert f[f"INSTRUMENT/{src}/image/data"].shape == (sum(counts), 2, 512, 128)
        assert [v.decode() for v in f["METADATA/dataSources/dataSourceId"][:]] == [
            f"INSTRUMENT/{src}/image"
        ]
        assert f["METADATA/dataSources/root"][0] == b"INSTRUMENT"
        assert f["METADATA/dataSources/deviceId"][0].decode() == f"{src}/image"
        for name in (
            "dataFormatVersion",
            "creationDate",
            "updateDate",
            "daqLibrary",
            "karaboFramework",
            "proposalNumber",
            "runNumber",
            "sequenceNumber",
            "runType",
            "sample",
        ):
            assert f[f"METADATA/{name}"].shape == (1,), name
        assert f["METADATA/proposalNumber"].dtype == np.uint32
        assert "RUN" in f and "CONTROL" in f
    with h5py.File(run_dir / "RAW-R0001-DA01-S00001.h5", "r") as f:
        assert f["METADATA/sequenceNumber"][0] == 1
        np.testing.assert_array_equal(f[f"INDEX/{CAMERA}/data/count"][:], [1, 1, 0, 1, 1])
        np.testing.assert_array_equal(f[f"INDEX/{MOTOR}/count"][:], np.ones(5))
        ts = f[f"CONTROL/{MOTOR}/actualPosition/timestamp"][:]
        np.testing.assert_array_equal(ts, T0_NS + np.arange(5, 10) * 100_000_000 - 5_000_000)
        ts = f[f"CONTROL/{MOTOR}/targetPosition/timestamp"][:]
        np.testing.assert_array_equal(ts, T0_NS + np.arange(5, 10) * 100_000_000)
        # RUN holds the run's first train in every sequence file
        assert f[f"RUN/{MOTOR}/actualPosition/value"][:].tolist() == [0.0]
        assert f[f"RUN/{MOTOR}/classId/value"][0] == b"MotorDevice"
        assert f[f"CONTROL/{MOTOR}/actualPosition"].attrs["unitSymbol"] == "m"


def test_manifest_describes_the_run(raw_run):
    run_dir, written, _ = raw_run
    manifest = raw_run.manifest
    json.dumps(manifest)  # serialisable
    assert manifest["trains"] == RAW_TRAINS
    assert manifest["first_train"] == FIRST_TRAIN
    assert manifest["last_train"] == FIRST_TRAIN + RAW_TRAINS - 1
    assert len(manifest["files"]) == 51
    assert manifest["bytes"] == sum((run_dir / r["name"]).stat().st_size for r in manifest["files"])
    assert set(manifest["sources"]) == set(written[0][1])
    assert manifest["control_sources"] == [MOTOR]
    assert manifest["metadata"]["sample"] == "lysozyme"
    assert manifest["closed"] and manifest["error"] is None
    da01 = [r for r in manifest["files"] if r["aggregator"] == "DA01"]
    assert [r["trains"] for r in da01] == [5, 5, 2]
    assert da01[1]["first_train"] == FIRST_TRAIN + 5
    assert da01[0]["sources"] == sorted([CAMERA, MOTOR])


# --- corrected data ---------------------------------------------------------------------------
def test_corrected_run_validates_and_stacks(corr_run):
    run_dir, written, _ = corr_run
    assert min(p.name for p in run_dir.iterdir() if p.suffix == ".h5") == (
        "CORR-R0002-AGIPD00-S00000.h5"
    )
    assert_valid(run_dir)
    run = extra_data.RunDirectory(str(run_dir))
    det = AGIPD1M(run, raw=False)
    data = det["image.data"].ndarray()
    assert data.shape == (16, 8, 512, 128) and data.dtype == np.float32
    expected = np.concatenate(
        [t[1][agipd_source(5, corrected=True)]["image.data"] for t in written]
    )
    np.testing.assert_array_equal(data[5], expected)
    mask = det["image.mask"].ndarray()
    np.testing.assert_array_equal(
        mask[2], np.concatenate([t[1][agipd_source(2, True)]["image.mask"] for t in written])
    )


# --- sequences, chunking and compression ------------------------------------------------------
def _small_train(i: int, **kw):
    return make_train(i, modules=2, frames=[1, 2], **kw)


def test_sequence_files_roll_by_trains(tmp_path):
    with RunWriter(tmp_path, sequence_trains=2) as writer:
        for i in range(5):
            _, data, meta = _small_train(i)
            writer.write_train(data, meta)
    names = sorted(p.name for p in writer.files)
    assert [n for n in names if "DA01" in n] == [f"RAW-R0001-DA01-S0000{s}.h5" for s in range(3)]
    for path in writer.files:
        with h5py.File(path, "r") as f:
            seq = int(path.stem[-1])
            np.testing.assert_array_equal(
                f["INDEX/trainId"][:], FIRST_TRAIN + np.arange(2 * seq, min(5, 2 * seq + 2))
            )
    run = extra_data.RunDirectory(str(tmp_path))  # no train in two files
    assert len(run.train_ids) == 5
    assert_valid(tmp_path)


def test_sequence_files_roll_by_bytes(tmp_path):
    module_train = 2 * 512 * 128 * 2  # one frame of raw AGIPD
    with RunWriter(tmp_path, sequence_bytes=int(2.5 * module_train)) as writer:
        for i in range(6):
            _, data, meta = make_train(i, modules=1, frames=1, motor=False, camera=False)
            writer.write_train(data, meta)
    counts = [r["trains"] for r in writer.manifest()["files"]]
    assert counts == [3, 3]  # the file is rolled once it holds >= 2.5 frames
    assert_valid(tmp_path)


@pytest.mark.parametrize("compression", ["gzip", "lzf"])
def test_compression_keeps_values(tmp_path, compression):
    written = []
    with RunWriter(tmp_path, compression=compression, chunk_trains=4, flush_trains=2) as writer:
        for i in range(5):
            train = _small_train(i)
            writer.write_train(train[1], train[2])
            written.append(train)
    with h5py.File(tmp_path / "RAW-R0001-AGIPD00-S00000.h5", "r") as f:
        ds = f[f"INSTRUMENT/{agipd_source(0)}/image/data"]
        assert ds.compression == compression
        assert ds.chunks == (4, 2, 512, 128)  # chunk_bytes 1 MiB / 256 KiB frames
    with h5py.File(tmp_path / "RAW-R0001-DA01-S00000.h5", "r") as f:
        assert f[f"INSTRUMENT/{CAMERA}/data/image/pixels"].compression == compression
        assert f[f"CONTROL/{MOTOR}/actualPosition/value"].compression is None
        assert f[f"CONTROL/{MOTOR}/actualPosition/value"].chunks == (4,)
    for (tid, data, _), (_, expected, _) in zip(iter_run_trains(tmp_path), written):
        assert_train_equal(expected, data)
    assert_valid(tmp_path)


# --- ordering and schema errors ---------------------------------------------------------------
def _trains_in(path) -> list[int]:
    with h5py.File(path, "r") as f:
        return f["INDEX/trainId"][:].tolist()


def test_out_of_order_and_duplicate_trains_are_refused(tmp_path):
    writer = RunWriter(tmp_path)
    for i in (0, 1, 3):
        _, data, meta = _small_train(i)
        writer.write_train(data, meta)
    before = writer.bytes_written
    _, data, meta = _small_train(2)
    with pytest.raises(TrainOrderError, match="arrived after train"):
        writer.write_train(data, meta)
    _, data, meta = _small_train(3)
    with pytest.raises(TrainOrderError, match="already"):
        writer.write_train({MOTOR: data[MOTOR]}, meta)
    assert writer.bytes_written == before
    # Sources of the current train may still come separately, later trains are fine.
    _, data, meta = _small_train(4)
    writer.write_train({CAMERA: data[CAMERA]}, meta)
    writer.write_train({MOTOR: data[MOTOR]}, meta)
    with pytest.raises(TrainOrderError, match="already"):
        writer.write_train({CAMERA: data[CAMERA]}, meta)
    writer.write_train({k: v for k, v in data.items() if "AGIPD" in k}, meta)
    files = writer.close()
    expected = [FIRST_TRAIN + i for i in (0, 1, 3, 4)]
    assert all(_trains_in(p) == expected for p in files)
    run = extra_data.RunDirectory(str(tmp_path))
    assert run[MOTOR, "actualPosition"].ndarray().tolist() == [0.0, 0.5, 1.5, 2.0]
    assert_valid(tmp_path)


def test_mixed_train_ids_in_one_aggregator_are_refused(tmp_path):
    _, data, meta = _small_train(0)
    meta[MOTOR] = make_meta(MOTOR, FIRST_TRAIN + 7, T0_NS)
    with RunWriter(tmp_path) as writer, pytest.raises(TrainOrderError, match="different train"):
        writer.write_train(data, meta)


def test_schema_changes_are_refused_and_not_written(tmp_path):
    writer = RunWriter(tmp_path)
    _, data, meta = _small_train(0)
    writer.write_train(data, meta)
    _, data, meta = _small_train(1)
    del data[CAMERA]["data.image.dims"]
    with pytest.raises(FileFormatError, match="missing .'data.image.dims'."):
        writer.write_train(data, meta)
    _, data, meta = _small_train(1)
    data[CAMERA]["data.image.pixels"] = np.zeros((5, 5), np.uint16)
    with pytest.raises(FileFormatError, match="shape of one entry changed"):
        writer.write_train(data, meta)
    _, data, meta = _small_train(1)
    data[MOTOR]["targetPosition"] = "far"
    with pytest.raises(FileFormatError, match="strings and numbers"):
        writer.write_train(data, meta)
    _, data, meta = _small_train(1)
    data[MOTOR]["targetPosition"] = 3  # int into a float64 key: cast
    writer.write_train(data, meta)
    files = writer.close()
    assert all(_trains_in(p) == [FIRST_TRAIN, FIRST_TRAIN + 1] for p in files)
    run = extra_data.RunDirectory(str(tmp_path))
    assert run[MOTOR, "targetPosition"].ndarray().tolist() == [10.0, 3.0]


@pytest.mark.parametrize(
    ("data", "meta", "message"),
    [
        ({MOTOR: {"x": 1.0}}, {}, "no train ID"),
        ({MOTOR: {"x": 1.0}}, {MOTOR: {"timestamp.tid": 0}}, "out of range"),
        ({CAMERA: {"pixels": np.zeros(3)}}, {CAMERA: {"timestamp.tid": 5}}, "no index group"),
        ({MOTOR: {"a..b": 1.0}}, {MOTOR: {"timestamp.tid": 5}}, "invalid key"),
        ({MOTOR: {"x": 1.0, "x.value": 2.0}}, {MOTOR: {"timestamp.tid": 5}}, "twice"),
        ({MOTOR: {"x": np.datetime64("now")}}, {MOTOR: {"timestamp.tid": 5}}, "dtype"),
        (
            {agipd_source(0): {"image.data": np.zeros((2, 4)), "image.cellId": np.zeros(3)}},
            {agipd_source(0): {"timestamp.tid": 5}},
            "number of\\s+frames",
        ),
    ],
)
def test_malformed_trains_are_refused(tmp_path, data, meta, message):
    with RunWriter(tmp_path) as writer:
        with pytest.raises(FileFormatError, match=message):
            writer.write_train(data, meta)
        assert writer.trains_written == 0


def test_protocol_1_metadata_inside_data_is_accepted(tmp_path):
    with RunWriter(tmp_path) as writer:
        writer.write_train({MOTOR: {"x": 1.0, "metadata": {"timestamp.tid": 42}}})
    run = extra_data.RunDirectory(str(tmp_path))
    assert list(run.train_ids) == [42]
    assert run[MOTOR].keys(inc_timestamps=False) == {"x"}


# --- configuration ----------------------------------------------------------------------------
def test_format_1_2_and_custom_aggregators(tmp_path):
    rule = aggregator_by_patterns({"*CAM*": "CAM01"})
    with RunWriter(
        tmp_path, format_version="1.2", run_number=17, proposal=2012, aggregator_of=rule
    ) as writer:
        for i in range(2):
            _, data, meta = _small_train(i)
            writer.write_train(data, meta)
    names = sorted(p.name for p in writer.files)
    assert names == [
        "RAW-R0017-AGIPD00-S00000.h5",
        "RAW-R0017-AGIPD01-S00000.h5",
        "RAW-R0017-CAM01-S00000.h5",
        "RAW-R0017-DA01-S00000.h5",
    ]
    with h5py.File(tmp_path / names[2], "r") as f:
        assert f["METADATA/dataFormatVersion"][0] == b"1.2"
        assert "runType" not in f["METADATA"]
        assert f["METADATA/proposalNumber"][0] == 2012
    assert_valid(tmp_path)
    assert extra_data.RunDirectory(str(tmp_path))[CAMERA].aggregator == "CAM01"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"format_version": "1.1"},
        {"data_category": "PROC"},
        {"compression": "zstd"},
        {"run_number": 10000},
        {"sequence_trains": 0},
        {"run_metadata": {"runNumber": 3}},
        {"aggregator_of": lambda s: "DA-01"},
    ],
)
def test_bad_configuration_is_refused(tmp_path, kwargs):
    with pytest.raises(ConfigurationError):
        writer = RunWriter(tmp_path, **kwargs)
        _, data, meta = _small_train(0)
        writer.write_train(data, meta)


def test_existing_run_is_not_overwritten(tmp_path):
    with RunWriter(tmp_path) as writer:
        _, data, meta = _small_train(0)
        writer.write_train(data, meta)
    with pytest.raises(ConfigurationError, match="already holds files of run 1"):
        RunWriter(tmp_path)
    RunWriter(tmp_path, run_number=2).close()  # another run number is fine


def test_open_files_are_hidden_until_closed(tmp_path):
    writer = RunWriter(tmp_path, flush_trains=1)
    _, data, meta = _small_train(0)
    writer.write_train(data, meta)
    assert sorted(p.suffix for p in tmp_path.iterdir()) == [".part"] * 3
    assert writer.files == []
    files = writer.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in files)
    with pytest.raises(FileFormatError, match="closed"):
        writer.write_train(data, meta)


def test_control_timestamps_never_decrease(tmp_path):
    with RunWriter(tmp_path) as writer:
        for i, ts in enumerate([500, 900, 700, 1000]):
            meta = {MOTOR: make_meta(MOTOR, FIRST_TRAIN + i, T0_NS + i)}
            writer.write_train({MOTOR: {"x.value": 1.0, "x.timestamp": np.uint64(ts)}}, meta)
    run = extra_data.RunDirectory(str(tmp_path))
    assert run[MOTOR, "x.timestamp"].ndarray().tolist() == [500, 900, 900, 1000]
    assert_valid(tmp_path)
