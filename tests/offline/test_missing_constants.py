"""``pulsetrain correct`` without the constants it needs: one summary, and a command that
makes them."""

from __future__ import annotations

import contextlib
import io
import shlex

import pytest
from _offline_helpers import CELLS, MODULES, simulate

from pulsetrain.bootstrap import store_truth_constants
from pulsetrain.catalog import Catalog
from pulsetrain.cli import main
from pulsetrain.errors import ConstantNotFoundError, MissingConstantsError
from pulsetrain.offline import correct_run
from pulsetrain.offline.cluster import ClusterConfig
from pulsetrain.offline.missing_constants import module_ranges
from pulsetrain.sim import DetectorSimulator

REQUIRED = "Offset, ThresholdsDark, BadPixelsDark, RelativeGain"
UNREACHABLE = "tcp://127.0.0.1:9"  # a scheduler that would fail if contacted


@pytest.mark.parametrize(
    ("modules", "text"),
    [
        ([5], "module 5"),
        (range(16), "modules 0-15"),
        ([8, 0, 1, 2, 3, 3], "modules 0-3, 8"),
        ([1, 3, 4, 9, 10, 11, 15], "modules 1, 3-4, 9-11, 15"),
    ],
)
def test_module_ranges(modules, text):
    assert module_ranges(modules) == text


@pytest.fixture
def module1_catalog(tmp_path):
    """A catalogue with the constants of module 1 only."""
    url = f"sqlite:///{tmp_path / 'module1.sqlite'}"
    cat = Catalog(url)
    sim = DetectorSimulator("AGIPD", frames=8, memory_cells=CELLS, modules=(1,))
    store_truth_constants(cat, sim, modules=[1])
    cat.close()
    return url


def correct(run, out, catalog, *extra, scheduler=UNREACHABLE):
    """``pulsetrain correct`` in-process; returns (exit code, stdout, stderr)."""
    argv = ["correct", str(run), "--out", str(out), "--catalog", catalog, "--no-progress"]
    argv += ["--scheduler", scheduler, *extra]
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main(argv)
    return code, stdout.getvalue(), stderr.getvalue()


def test_one_summary_names_what_is_missing_and_the_command(raw_run, module1_catalog, tmp_path):
    code, out, err = correct(raw_run, tmp_path / "out", module1_catalog, "--memory-cells", "16")
    assert code == 1 and out == ""
    assert "Traceback" not in err and " | " not in err
    lines = err.splitlines()
    assert lines[0].startswith("pulsetrain correct: error: constants missing for SPB_DET_AGIPD1M-1 (valid at ")
    assert lines[1] == f"  module 0: {REQUIRED}"  # module 1 has its constants
    assert sum("conditions asked" in line for line in lines) == 1
    assert "memory_cells 16, bias_voltage 300 V, acquisition_rate 1.1 MHz" in err
    assert f"  {REQUIRED} of module 0: none stored" in lines
    command = next(line for line in lines if line.startswith("  pulsetrain dark "))
    assert max(len(line) for line in lines if line != command) < 150, err  # no 300-char lines
    assert shlex.split(command)[:5] == ["pulsetrain", "dark", "DARK_HG", "DARK_MG", "DARK_LG"]
    assert f"--catalog {module1_catalog} --detector SPB_DET_AGIPD1M-1 --modules 0 " in command
    assert "--memory-cells 16 --bias-voltage 300 --acquisition-rate 1.1" in command
    assert command.endswith("--rel-gain-from-sim")  # RelativeGain is missing too
    assert not (tmp_path / "out").exists()  # nothing made, no worker contacted


def test_nearest_candidates_say_how_they_differ(raw_run, catalog_url, tmp_path):
    code, _, err = correct(raw_run, tmp_path / "out", catalog_url, "--memory-cells", "32")
    assert code == 1 and "Traceback" not in err
    assert f"  modules 0-1: {REQUIRED}" in err.splitlines()
    nearest = err.split("nearest in the catalogue:\n", 1)[1].splitlines()[0]
    assert nearest.startswith(f"  {REQUIRED} of modules 0-1 (#")
    assert nearest.endswith("): memory_cells is 16 (wanted 32)")
    assert "--modules 0 1 --memory-cells 32 " in err


def test_the_library_raises_one_error_with_what_is_missing(raw_run, module1_catalog, tmp_path):
    with pytest.raises(MissingConstantsError) as info:
        correct_run(
            raw_run,
            tmp_path / "out",
            catalog=module1_catalog,
            conditions={"memory_cells": CELLS},
            cluster=ClusterConfig(scheduler=UNREACHABLE),
            progress=False,
        )
    exc = info.value
    assert isinstance(exc, ConstantNotFoundError)  # what callers caught before
    assert exc.missing == {t: [0] for t in REQUIRED.split(", ")}
    assert exc.module == [0] and exc.detector == "SPB_DET_AGIPD1M-1"
    assert exc.conditions.memory_cells == CELLS


@pytest.mark.slow
def test_the_suggested_command_makes_the_constants(raw_run, dask_client, tmp_path):
    empty = f"sqlite:///{tmp_path / 'empty.sqlite'}"
    code, _, err = correct(raw_run, tmp_path / "proc", empty, "--memory-cells", str(CELLS))
    assert code == 1
    assert f"  modules 0-1: {REQUIRED}" in err.splitlines()
    assert f"the catalogue {empty} has no detector 'SPB_DET_AGIPD1M-1'" in err
    assert "--constants-time now" in err  # the run was taken before the constants exist
    command = shlex.split(next(ln for ln in err.splitlines() if ln.startswith("  pulsetrain dark")))
    darks = [
        simulate(tmp_path / "dark", trains=4, frames=16, extra=["--dark", gain])
        for gain in ("HG", "MG", "LG")
    ]
    argv = [*command[1:2], *map(str, darks), *command[5:]]
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        assert main(argv) == 0
    code, out, err = correct(
        raw_run,
        tmp_path / "proc",
        empty,
        "--memory-cells",
        str(CELLS),
        "--constants-time",
        "now",
        scheduler=dask_client.scheduler.address,
    )
    assert code == 0, err
    assert f"{2 * len(MODULES)} module files corrected" in out
