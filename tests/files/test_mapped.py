"""Zero-copy columns (pulsetrain.files.mapped): equal to h5py for every layout, views only
where the bytes are stored back to back, h5py for everything it has to convert or make up."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from pulsetrain.files.mapped import Column, FileMaps


def all_ranges(n: int):
    return [(a, b) for a in range(n + 1) for b in range(a, n + 1)]


def check_rows_equal_h5py(col: Column, ds: h5py.Dataset) -> None:
    for a, b in all_ranges(ds.shape[0]):
        got = col.rows(a, b)
        want = ds[a:b]
        assert got.dtype == want.dtype, (a, b)
        assert got.shape == want.shape, (a, b)
        np.testing.assert_array_equal(got, want, err_msg=f"rows {a}:{b}")


@pytest.fixture
def layouts(tmp_path):
    """A file with one dataset per layout case."""
    path = tmp_path / "layouts.h5"
    rng = np.random.default_rng(3)
    with h5py.File(path, "w") as f:
        f.create_dataset(
            "chunked", data=rng.integers(0, 1000, (10, 2, 3)).astype(np.uint16), chunks=(3, 2, 3)
        )
        f.create_dataset("big_endian", data=np.arange(8, dtype=">f8"), chunks=(3,))
        # Two datasets written chunk by chunk in turn: their chunks are interleaved in the file.
        a = f.create_dataset("interleaved", shape=(12, 3), dtype="i4", chunks=(2, 3))
        b = f.create_dataset("other", shape=(12, 3), dtype="i4", chunks=(2, 3))
        for k in range(6):
            a[2 * k : 2 * k + 2] = rng.integers(-50, 50, (2, 3))
            f.flush()
            b[2 * k : 2 * k + 2] = -k
            f.flush()
        f.create_dataset(
            "gzip",
            data=np.arange(20, dtype=np.int32).reshape(10, 2),
            chunks=(4, 2),
            compression="gzip",
        )
        f.create_dataset(
            "strings", data=np.array(["a", "bc", "def"], dtype=object), dtype=h5py.string_dtype()
        )
        partial = f.create_dataset("partial", shape=(9,), dtype="f4", chunks=(3,), fillvalue=-1.5)
        partial[0:3] = [1, 2, 3]
        f.create_dataset("split_rows", data=np.arange(24.0).reshape(6, 4), chunks=(2, 2))
        f.create_dataset("empty", shape=(0, 4), maxshape=(None, 4), dtype="u1", chunks=(4, 4))
        f.create_dataset("pad", data=np.arange(3, dtype=np.uint8))  # next allocation is odd
        f.create_dataset("contiguous_odd", data=rng.normal(size=(6, 2)))
    return path


def test_chunked_and_contiguous_rows_are_views_on_the_file(layouts):
    maps = FileMaps()
    with h5py.File(layouts, "r") as f:
        file_bytes = maps.bytes_of(f)
        assert file_bytes is not None
        for name in ("chunked", "big_endian", "contiguous_odd"):
            col = Column(f[name], maps)
            assert col.mapped, name
            check_rows_equal_h5py(col, f[name])
        chunked = Column(f["chunked"], maps)
        assert np.shares_memory(chunked.rows(1, 9), file_bytes)  # chunks stored back to back
        assert Column(f["big_endian"], maps).rows(0, 8).dtype == np.dtype(">f8")
        # float64 at an odd file offset: never handed out misaligned, copied instead
        odd = Column(f["contiguous_odd"], maps)
        assert f["contiguous_odd"].id.get_offset() % 8 != 0
        assert odd.rows(0, 6).flags.aligned
        assert not np.shares_memory(odd.rows(0, 6), file_bytes)


def test_interleaved_chunks_are_gathered_into_one_array(layouts):
    maps = FileMaps()
    with h5py.File(layouts, "r") as f:
        ds = f["interleaved"]
        col = Column(ds, maps)
        assert col.mapped
        check_rows_equal_h5py(col, ds)
        offsets = [ds.id.get_chunk_info(i).byte_offset for i in range(ds.id.get_num_chunks())]
        apart = [k for k in range(1, len(offsets)) if offsets[k] != offsets[k - 1] + 24]
        assert apart, "the fixture should interleave chunks"
        k = apart[0]
        across = col.rows(2 * k - 1, 2 * k + 1)  # last row of chunk k-1, first of chunk k
        assert across.flags.c_contiguous and across.flags.writeable
        assert not np.shares_memory(across, maps.bytes_of(f))
        within = col.rows(2 * k, 2 * k + 2)
        assert offsets[k] % 4 == 0  # int32 rows at an aligned offset: served as a view
        assert np.shares_memory(within, maps.bytes_of(f))


@pytest.mark.parametrize("name", ["gzip", "strings", "partial", "split_rows", "empty"])
def test_other_layouts_are_read_through_h5py(layouts, name):
    maps = FileMaps()
    with h5py.File(layouts, "r") as f:
        col = Column(f[name], maps)
        assert not col.mapped
        ds = f[name].asstr() if name == "strings" else f[name]
        for a, b in all_ranges(f[name].shape[0]):
            got = col.rows(a, b)
            want = ds[a:b]
            assert got.shape == want.shape
            np.testing.assert_array_equal(got, want)
        if name == "partial":  # chunks never written come with HDF5's fill value
            np.testing.assert_array_equal(col.rows(2, 5), [3, -1.5, -1.5])
        if name == "strings":
            assert col.rows(1, 3).tolist() == ["bc", "def"]


def test_disabled_maps_read_everything_through_h5py(layouts):
    maps = FileMaps(enabled=False)
    with h5py.File(layouts, "r") as f:
        col = Column(f["chunked"], maps)
        assert not col.mapped
        check_rows_equal_h5py(col, f["chunked"])


def test_file_with_user_block_is_not_mapped(tmp_path):
    path = tmp_path / "ub.h5"
    with h5py.File(path, "w", userblock_size=512) as f:
        f.create_dataset("x", data=np.arange(10.0), chunks=(5,))
    maps = FileMaps()
    with h5py.File(path, "r") as f:
        assert maps.bytes_of(f) is None
        col = Column(f["x"], maps)
        assert not col.mapped
        np.testing.assert_array_equal(col.rows(3, 8), np.arange(3.0, 8.0))


def test_take_splits_rows_per_train(layouts):
    maps = FileMaps()
    with h5py.File(layouts, "r") as f:
        for name in ("chunked", "interleaved", "gzip"):
            ds = f[name]
            col = Column(ds, maps)
            firsts = np.array([0, 3, 3, 4, 7])
            counts = np.array([3, 0, 1, 3, 2])
            parts = col.take(firsts, counts)
            assert len(parts) == 5
            for part, a, n in zip(parts, firsts, counts):
                assert part.shape == (n,) + ds.shape[1:]
                np.testing.assert_array_equal(part, ds[a : a + n])
            none = col.take(np.array([2, 2]), np.array([0, 0]))
            assert [p.shape for p in none] == [(0,) + ds.shape[1:]] * 2


def test_mapped_arrays_are_writeable_but_the_file_is_not_written(layouts):
    maps = FileMaps()
    with h5py.File(layouts, "r") as f:
        before = f["chunked"][:]
        view = Column(f["chunked"], maps).rows(0, 6)
        assert view.flags.writeable
        view[:] = 7
        # a new map of the file sees the file, not the private change
        assert (Column(f["chunked"], FileMaps()).rows(0, 6) == before[:6]).all()
    with h5py.File(layouts, "r") as f:
        np.testing.assert_array_equal(f["chunked"][:], before)


class _AdviceRecorder(bytearray):
    """Stands in for an mmap: records the hints it is given."""

    def __init__(self, size: int) -> None:
        super().__init__(size)
        self.calls: list[tuple[int, int, int]] = []

    def madvise(self, option: int, start: int, length: int) -> None:
        self.calls.append((option, start, length))


def test_read_ahead_hints_only_after_waiting_for_the_disk(monkeypatch):
    import mmap

    from pulsetrain.files import mapped

    faults = [10]
    monkeypatch.setattr(mapped, "_major_faults", lambda: faults[0])
    monkeypatch.setattr(mapped, "_ADVISE_AFTER_FAULT", 3)
    buf = _AdviceRecorder(16 << 20)
    data = np.frombuffer(buf, dtype=np.uint8)
    maps = FileMaps()
    big = 1 << 20
    maps.will_need(data, 5000, big)
    assert buf.calls == []  # all in the page cache so far: no hint
    faults[0] += 2  # the process had to wait for the disk
    maps.will_need(data, 5000, 100)  # too small to be worth a hint
    for start in (5000, 3 * big, 5 * big, 7 * big):
        maps.will_need(data, start, big)
    page = mmap.PAGESIZE
    begin = 5000 - 5000 % page
    assert buf.calls == [
        (mmap.MADV_WILLNEED, begin, 5000 + big - begin),
        (mmap.MADV_WILLNEED, 3 * big, big),
        (mmap.MADV_WILLNEED, 5 * big, big),
    ]  # 3 hints after a fault, then quiet again
    faults[0] += 1
    maps.will_need(data, 9 * big, big)
    assert buf.calls[-1] == (mmap.MADV_WILLNEED, 9 * big, big)
