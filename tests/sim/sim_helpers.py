"""Shared helpers of the simulator tests."""

from __future__ import annotations

import numpy as np


def assert_trains_identical(a: tuple[dict, dict], b: tuple[dict, dict]) -> None:
    """Both ``(data, meta)`` hold the same sources, keys, dtypes, shapes and bytes."""
    data_a, meta_a = a
    data_b, meta_b = b
    assert data_a.keys() == data_b.keys()
    assert meta_a == meta_b
    for src in data_a:
        assert data_a[src].keys() == data_b[src].keys(), src
        for key, va in data_a[src].items():
            vb = data_b[src][key]
            if isinstance(va, (np.ndarray, np.generic)):
                assert va.dtype == vb.dtype, (src, key)
                assert np.shape(va) == np.shape(vb), (src, key)
                assert np.asarray(va).tobytes() == np.asarray(vb).tobytes(), (src, key)
            else:
                assert va == vb, (src, key)
