"""``pulsetrain catalog`` command line."""

from __future__ import annotations

import numpy as np
import pytest
from _catalog_helpers import DETECTOR, T0

from pulsetrain.catalog import Catalog
from pulsetrain.cli import main


def run_cli(capsys, *argv):
    code = main(["catalog", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_help_has_examples(capsys):
    with pytest.raises(SystemExit) as info:
        main(["catalog", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "examples:" in out
    for action in ("init", "detectors", "constants", "runs", "show"):
        assert f"pulsetrain catalog {action}" in out or f"catalog {action}" in out
    assert main(["catalog"]) == 2


def test_cli_session(catalog_url, tmp_path, capsys, dark_conditions):
    store = str(tmp_path / "store")
    common = ["--catalog", catalog_url, "--store", store]
    code, out, _ = run_cli(capsys, *common, "init", "--detector", DETECTOR, "--modules", "4")
    assert code == 0
    assert "revision 0003 (newest)" in out and f"{DETECTOR} (AGIPD, 4 modules)" in out
    assert store in out

    with Catalog(catalog_url, store_dir=store) as cat:
        offset = cat.add_constant(DETECTOR, 2, "Offset", np.ones((3, 4), "f4"), dark_conditions, T0)
        cat.add_constant(DETECTOR, 1, "Noise", np.ones(3), dark_conditions, T0, store="db")
        run = cat.add_run(
            900001,
            12,
            tmp_path / "r0012",
            sample="lysozyme",
            n_trains=40,
            files=[("RAW-R0012-AGIPD00-S00000.h5", 2_500_000)],
        )
        cat.link_run_constants(run, [offset])

    code, out, _ = run_cli(capsys, "detectors", "--modules", *common)  # options after the action
    assert code == 0 and DETECTOR in out and "PHYSICAL NAME" in out

    code, out, _ = run_cli(capsys, *common, "constants")
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["ID", "DETECTOR", "MOD", "TYPE"]
    assert len(lines) == 4  # header, rule, two constants
    assert "cells=352 bias=300 rate=1.1 gs=0 gm=0 it=12" in out

    code, out, _ = run_cli(capsys, *common, "constants", "--detector", DETECTOR, "--module", "2")
    assert len(out.splitlines()) == 3 and "Offset" in out and "Noise" not in out
    code, out, _ = run_cli(capsys, *common, "constants", "--type", "Noise")
    assert len(out.splitlines()) == 3 and "Noise" in out

    code, out, _ = run_cli(capsys, *common, "runs")
    assert code == 0 and "lysozyme" in out and "2.5 MB" in out and "900001" in out

    code, out, _ = run_cli(capsys, *common, "show", str(offset.id), "--verify")
    assert code == 0
    assert "checksum:         OK" in out and offset.checksum in out and run.describe() in out

    code, out, _ = run_cli(capsys, *common, "show", "--run", str(run.id))
    assert code == 0 and "RAW-R0012-AGIPD00-S00000.h5" in out and "Offset" in out

    code, out, err = run_cli(capsys, *common, "show", "999")
    assert code == 1 and "no constant #999" in err

    # a corrupted constant file is reported, not a traceback
    with Catalog(catalog_url, store_dir=store) as cat:
        import h5py

        with h5py.File(cat.constant_path(offset), "r+") as f:
            f[offset.dataset][0, 0] = 7
    code, out, err = run_cli(capsys, *common, "show", str(offset.id), "--verify")
    assert code == 1 and "SHA-256" in err
