"""The same command line for every detector: simulate --dark STAGE, dark --detector D RUN..."""

from __future__ import annotations

import contextlib
import io

import h5py
import pytest

from pulsetrain.cli import main


def run_cli(*argv):
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            code = main([str(a) for a in argv])
        except SystemExit as exc:  # argparse usage errors
            code = exc.code
    return code, stdout.getvalue(), stderr.getvalue()


SMALL = ("--trains", 2, "--frames", 2, "--memory-cells", 2, "--modules", 0, "--no-slow")


@pytest.mark.parametrize("stage", ["1", "mg"])
def test_simulate_dark_takes_the_stage_name_or_index(tmp_path, stage):
    code, out, err = run_cli("simulate", "--out", tmp_path, "--dark", stage, *SMALL)
    assert code == 0, err
    run_dir = tmp_path / "r0001"
    (path,) = run_dir.glob("RAW-R0001-AGIPD00-S*.h5")
    with h5py.File(path, "r") as f:
        assert f["METADATA/runType"][0].decode() == "dark-MG"
        digital = f["INSTRUMENT/SPB_DET_AGIPD1M-1/DET/0CH0:xtdf/image/data"][:, 1]
    assert digital.size and str(run_dir) in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (("--dark", "G0"), "AGIPD has no gain stage 'G0'; use one of HG, MG, LG or 0..2"),
        (("--dark", "3"), "AGIPD has no gain stage '3'"),
        (("--detector", "NOPE"), "unknown detector type 'NOPE'; known: "),
    ],
)
def test_simulate_refuses_unknown_stages_and_detectors(tmp_path, argv, message):
    code, _, err = run_cli("simulate", "--out", tmp_path, *SMALL, *argv)
    assert code == 2 and "Traceback" not in err
    assert message in err
    assert not list(tmp_path.glob("r*"))  # nothing started


def test_dark_names_the_runs_the_detector_needs(tmp_path):
    code, _, err = run_cli("dark", "--detector", "AGIPD", tmp_path, "--catalog",
                           tmp_path / "c.sqlite")  # fmt: skip
    assert code == 2 and "Traceback" not in err
    assert "AGIPD needs 3 dark runs (HG, MG, LG, in this order), got 1" in err
    code, _, err = run_cli("dark", "--detector", "NOPE", tmp_path, "--catalog",
                           tmp_path / "c.sqlite")  # fmt: skip
    assert code == 2 and err.startswith(
        "pulsetrain dark: error: detector 'NOPE': not a detector type (AGIPD"
    )
