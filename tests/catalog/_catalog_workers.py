"""Functions run in child processes by test_catalog_concurrency.py (importable by 'spawn')."""

from __future__ import annotations

import time
from datetime import datetime


def read_constants(url, store_dir, detector, queries, at_iso, repeats, barrier, timeout):
    """Open a catalogue, wait for the others, then find and load constants ``repeats`` times.

    ``queries`` is a list of ``(module, ctype, conditions_dict, expected_id, expected_sha)``.
    Returns the number of verified loads.
    """
    from pulsetrain.catalog import Catalog, Conditions
    from pulsetrain.catalog.storage import array_checksum

    at = datetime.fromisoformat(at_iso)
    with Catalog(url, store_dir=store_dir) as cat:
        barrier.wait(timeout)
        loads = 0
        for _ in range(repeats):
            for module, ctype, conditions, expected_id, expected_sha in queries:
                rec = cat.find_constant(detector, module, ctype, Conditions(**conditions), at=at)
                if rec.id != expected_id:
                    raise AssertionError(f"found #{rec.id}, expected #{expected_id}")
                if array_checksum(cat.load_array(rec)) != expected_sha:
                    raise AssertionError(f"wrong array for #{rec.id}")
                loads += 1
    return loads


def open_fresh_and_register(url, store_dir, detector, barrier, timeout):
    """Open a (possibly brand-new) catalogue at the same moment as others; register a detector."""
    from pulsetrain.catalog import Catalog

    barrier.wait(timeout)
    start = time.monotonic()
    with Catalog(url, store_dir=store_dir) as cat:
        det = cat.add_detector(detector, "AGIPD", 16)
        return det.id, cat.revision, time.monotonic() - start
