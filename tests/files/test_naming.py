"""Aggregator, file name and timestamp rules; the guarded file object."""

from __future__ import annotations

import errno

import pytest

from pulsetrain.errors import ConfigurationError, FileFormatError
from pulsetrain.files import (
    default_aggregator,
    default_frame_group,
    guarded_io,
    make_meta,
    meta_to_ns,
)
from pulsetrain.files.naming import (
    check_aggregator,
    corrected_source_name,
    detector_name,
    module_number,
    parse_file_name,
    run_file_name,
)


@pytest.mark.parametrize(
    ("source", "aggregator"),
    [
        ("SPB_DET_AGIPD1M-1/DET/7CH0:xtdf", "AGIPD07"),
        ("SPB_DET_AGIPD1M-1/CORR/15CH0:output", "AGIPD15"),
        ("FXE_DET_LPD1M-1/DET/3CH0:xtdf", "LPD03"),
        ("SCS_DET_DSSC1M-1/DET/12CH0:xtdf", "DSSC12"),
        ("HED_DET_AGIPD500K2G/DET/5CH0:xtdf", "AGIPD05"),
        ("SPB_IRU_CAM/CAM/SIDEMIC:daqOutput", "DA01"),
        ("SPB_DET_AGIPD1M-1/DET/7CH0:output2", "DA01"),
        ("SA1_XTD2_XGM/DOOCS/MAIN", "DA01"),
    ],
)
def test_default_aggregator(source, aggregator):
    assert default_aggregator(source) == aggregator


def test_detector_name_and_frame_groups():
    assert detector_name("SPB_DET_AGIPD1M-1") == "AGIPD"
    assert detector_name("X_1") == "DET"
    assert default_frame_group("SPB_DET_AGIPD1M-1/DET/0CH0:xtdf", "image")
    assert not default_frame_group("SPB_DET_AGIPD1M-1/DET/0CH0:xtdf", "header")
    assert not default_frame_group("SPB_IRU_CAM/CAM/SIDEMIC:daqOutput", "image")


def test_file_names_and_aggregator_check():
    assert run_file_name("RAW", 1, "AGIPD07", 0) == "RAW-R0001-AGIPD07-S00000.h5"
    assert run_file_name("CORR", 348, "DA01", 12) == "CORR-R0348-DA01-S00012.h5"
    assert check_aggregator("JNGFR01") == "JNGFR01"
    for bad in ("DA-01", "", "DA_01", None):
        with pytest.raises(ConfigurationError):
            check_aggregator(bad)


def test_file_names_parse_back():
    for name in ("RAW-R0001-AGIPD07-S00000.h5", "CORR-R0348-DA01-S00012.h5"):
        category, run, aggregator, sequence = parse_file_name(name)
        assert run_file_name(category, run, aggregator, sequence) == name
    with pytest.raises(FileFormatError, match="not a run file name"):
        parse_file_name("RAW-R0001-AGIPD07.h5")


@pytest.mark.parametrize(
    ("raw", "corrected", "module"),
    [
        ("SPB_DET_AGIPD1M-1/DET/7CH0:xtdf", "SPB_DET_AGIPD1M-1/CORR/7CH0:output", 7),
        ("FXE_DET_LPD1M-1/DET/15CH0:xtdf", "FXE_DET_LPD1M-1/CORR/15CH0:output", 15),
        ("SPB_IRDA_JF4M/DET/JNGFR01:daqOutput", "SPB_IRDA_JF4M/CORR/JNGFR01:output", None),
        ("SPB_IRU_CAM/CAM/SIDEMIC:daqOutput", "SPB_IRU_CAM/CAM/SIDEMIC:daqOutput", None),
        ("SA1_XTD2_XGM/DOOCS/MAIN", "SA1_XTD2_XGM/DOOCS/MAIN", None),
    ],
)
def test_corrected_source_names_and_module_numbers(raw, corrected, module):
    assert corrected_source_name(raw) == corrected
    assert module_number(raw) == module
    assert module_number(raw, "DET") == module
    assert module_number(raw, "CORR") is None
    assert module_number(corrected) == module  # the module survives the renaming
    if module is not None:
        assert module_number(corrected, "CORR") == module
        assert module_number(corrected, "DET") is None


def test_meta_timestamps_round_trip():
    ns = 1_714_564_800_123_456_789
    meta = make_meta("SRC", 42, ns)
    assert meta["timestamp.frac"] == "123456789000000000" and meta["timestamp.sec"] == "1714564800"
    assert meta_to_ns(meta) == ns
    assert meta_to_ns({"timestamp": 1.5}) == 1_500_000_000
    assert meta_to_ns({"timestamp.tid": 3}) == 0


def test_guarded_file_contains_write_failures(tmp_path, monkeypatch):
    f = guarded_io.GuardedFile(tmp_path / "x.bin")
    f.write(b"abcdef")
    f.seek(0)
    assert f.read(6) == b"abcdef"

    def no_space(fd, data, offset):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(guarded_io, "_pwrite", no_space)
    f.seek(4)
    assert f.write(b"XYZW") == 4  # reported as written ...
    assert f.disk_full and f.error.errno == errno.ENOSPC
    f.seek(2)
    assert f.read(6) == b"cdXYZW"  # ... and read back from memory
    f.seek(0, 2)
    assert f.tell() == 8
    f.close()
    assert (tmp_path / "x.bin").read_bytes() == b"abcdef"  # the disk holds what was written
