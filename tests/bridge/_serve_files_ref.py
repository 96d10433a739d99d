"""What ``karabo-bridge-serve-files`` sends, produced in-process from EXtra-data's installed
code, and what ``pulsetrain replay`` sends; both decoded by karabo-bridge-py's deserialiser."""

from __future__ import annotations

import inspect
import itertools
from pathlib import Path

import numpy as np


def generators() -> dict[str, tuple[str, object]]:
    """The mock-data generators of EXtra-data's ``make_examples``: those writing a run directory
    (first argument ``dir_path``) and those writing one file (``path``), served as a run of that
    one file."""
    from extra_data.tests import make_examples

    found = {}
    for name, func in inspect.getmembers(make_examples, inspect.isfunction):
        if not name.startswith("make_") or func.__module__ != make_examples.__name__:
            continue
        params = list(inspect.signature(func).parameters)
        if params[:1] == ["dir_path"]:
            found[name] = ("dir", func)
        elif params[:1] == ["path"]:
            found[name] = ("file", func)
    return found


def make_run(name: str, base: Path, **kwargs) -> Path:
    """Write the mock run of generator *name* (with *kwargs*) under *base*; its directory."""
    kind, func = generators()[name]
    run_dir = base / name
    if run_dir.exists():
        return run_dir
    run_dir.mkdir(parents=True)
    if kind == "dir":
        func(str(run_dir), **kwargs)
    else:
        func(str(run_dir / "RAW-R0001-DA01-S00000.h5"), **kwargs)
    return run_dir


def reference_trains(run_dir, source="*", key="*", n=None):
    """The trains serve-files sends for ``--source SOURCE --key KEY`` (the first *n*),
    decoded: ``[(data, meta), ...]``."""
    from extra_data import RunDirectory
    from extra_data.export import _drop_object_arrays, _iter_trains
    from karabo_bridge.serializer import deserialize, serialize

    run = RunDirectory(str(run_dir)).select(source, key)
    out = []
    for _tid, data in itertools.islice(_iter_trains(run), n):
        _drop_object_arrays(data)
        out.append(deserialize([bytes(f) for f in serialize(data)]))
    return out


def our_trains(run_dir, sources=None, keys=None, n=None, protocol="2.2"):
    """The trains ``pulsetrain replay`` sends (the first *n*), decoded by karabo-bridge-py."""
    from karabo_bridge.serializer import deserialize

    from pulsetrain.files.reader import BridgeRun
    from pulsetrain.protocol import serialize

    with BridgeRun(run_dir, sources=sources, keys=keys) as run:
        return [
            deserialize([bytes(f) for f in serialize(data, meta, protocol)])
            for _tid, data, meta in itertools.islice(run.trains(), n)
        ]


def diff_trains(ref: list, ours: list) -> list[str]:
    """Differences between two decoded streams (empty: the same sources, keys, value types
    and values, train by train)."""
    problems = []
    if len(ref) != len(ours):
        problems.append(f"{len(ref)} trains against {len(ours)}")
    for i, ((rd, _rm), (od, _om)) in enumerate(zip(ref, ours)):
        if set(rd) != set(od):
            problems.append(f"train {i}: sources differ: {sorted(set(rd) ^ set(od))}")
            continue
        for src in rd:
            if set(rd[src]) != set(od[src]):
                problems.append(
                    f"train {i} {src}: keys differ: {sorted(set(rd[src]) ^ set(od[src]))}"
                )
                continue
            for key, a in rd[src].items():
                b = od[src][key]
                where = f"train {i} {src} {key}"
                if type(a) is not type(b):
                    problems.append(f"{where}: {type(a).__name__} against {type(b).__name__}")
                elif isinstance(a, np.ndarray):
                    if a.dtype != b.dtype or a.shape != b.shape:
                        problems.append(f"{where}: {a.dtype}{a.shape} against {b.dtype}{b.shape}")
                    elif not np.array_equal(a, b, equal_nan=a.dtype.kind in "fc"):
                        problems.append(f"{where}: values differ")
                elif a != b and not (_is_nan(a) and _is_nan(b)):
                    problems.append(f"{where}: {a!r} against {b!r}")
    return problems


def _is_nan(value) -> bool:
    return isinstance(value, float) and np.isnan(value)
