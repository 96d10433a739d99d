"""Compare iter_run_trains output with what EXtra-data reads (TrainIterator)."""

from __future__ import annotations

import fnmatch

import numpy as np

from pulsetrain.files.naming import default_frame_group


def _norm(value):
    if isinstance(value, bytes):
        return value.decode("utf-8", "surrogateescape")
    if isinstance(value, np.ndarray) and value.dtype == object:
        return np.array(
            [v.decode() if isinstance(v, bytes) else v for v in value.ravel()], dtype=object
        ).reshape(value.shape)
    return value


def assert_same_value(ours, theirs, where: str) -> None:
    ours, theirs = _norm(ours), _norm(theirs)
    if isinstance(theirs, str):
        assert ours == theirs, where
        return
    a, b = np.asarray(ours), np.asarray(theirs)
    assert a.shape == b.shape, f"{where}: shape {a.shape} != {b.shape}"
    assert a.dtype == b.dtype, f"{where}: dtype {a.dtype} != {b.dtype}"
    np.testing.assert_array_equal(a, b, err_msg=where)


def compare_with_extra_data(run, ours: list, sources=None, positions=None) -> int:
    """Check trains yielded by iter_run_trains against ``run.trains(keep_dims=True)``.

    Returns the number of trains compared.
    """
    legacy = set(getattr(run, "legacy_sources", {}) or {})
    chosen = [s for s in run.all_sources if s not in legacy]
    if sources is not None:
        chosen = [s for s in chosen if any(fnmatch.fnmatchcase(s, p) for p in sources)]
    sel = run.select(chosen, "*")
    if positions is not None:
        sel = sel.select_trains(positions)
    ours_by_tid = {tid: (data, meta) for tid, data, meta in ours}
    stamps = {}
    for src in chosen:
        one = sel.select([src], "*")
        ns = one.train_timestamps().astype("datetime64[ns]").astype(np.int64)
        stamps[src] = dict(zip(one.train_ids, ns))
    compared = 0
    for tid, theirs in sel.trains(require_all=False, keep_dims=True):
        their_sources = {s for s, v in theirs.items() if set(v) - {"metadata"}}
        data, meta = ours_by_tid.pop(tid, ({}, {}))
        extra = set(data) - their_sources
        for src in extra:  # per-frame sources present with zero frames
            assert all(np.asarray(v).shape[:1] == (0,) for v in data[src].values()), (tid, src)
        assert their_sources <= set(data), (tid, their_sources - set(data))
        for src in their_sources:
            keys = set(theirs[src]) - {"metadata"}
            for key in set(data[src]) - keys:  # per-frame groups with zero frames
                assert default_frame_group(src, key.split(".", 1)[0]), (tid, src, key)
                assert np.asarray(data[src][key]).shape[:1] == (0,), (tid, src, key)
            assert keys <= set(data[src]), (tid, src, keys - set(data[src]))
            control = src in run.control_sources
            for key in keys:
                value = theirs[src][key]
                group = key.split(".", 1)[0]
                if not control and not default_frame_group(src, group) and len(value) == 1:
                    value = value[0]
                assert_same_value(data[src][key], value, f"train {tid} {src} {key}")
            assert meta[src]["timestamp.tid"] == tid
            assert meta[src]["source"] == src
            ns = int(stamps[src][tid])
            if ns > 0:  # NaT is the minimum int64 - derived timestamps are checked elsewhere
                assert (
                    int(meta[src]["timestamp.sec"]) * 10**9
                    + int(meta[src]["timestamp.frac"]) // 10**9
                    == ns
                )
        compared += 1
    assert not ours_by_tid, f"trains not in EXtra-data: {sorted(ours_by_tid)[:5]}"
    return compared
