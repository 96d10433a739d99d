"""The dark workflow (``calibration.darkruns`` and ``pulsetrain dark``): proper dark runs are
characterised and stored; runs that are not dark runs of the stated gain stage are refused,
one line each, with nothing stored."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from pulsetrain.calibration import characterize_dark
from pulsetrain.calibration.darkruns import (
    DarkRunRules,
    DarkRunSample,
    characterize_dark_runs,
    check_dark_runs,
)
from pulsetrain.catalog import Catalog, Conditions
from pulsetrain.cli import main
from pulsetrain.errors import DarkRunError
from pulsetrain.files import iter_run_trains

CELLS = 16
SIM = ["--trains", "3", "--frames", "16", "--memory-cells", str(CELLS), "--modules", "0", "1"]
DARK_TYPES = ("Offset", "Noise", "ThresholdsDark", "BadPixelsDark")


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Simulated dark runs HG, MG, LG (recorded in a catalogue) and an illuminated raw run."""
    root = tmp_path_factory.mktemp("darkruns")
    catalog = root / "runs.sqlite"
    made = {}
    for stage in ("HG", "MG", "LG"):
        argv = ["simulate", "--out", str(root / "dark"), "--dark", stage, *SIM]
        assert main([*argv, "--catalog", str(catalog)]) == 0
    for number, stage in enumerate(("HG", "MG", "LG"), 1):
        made[stage] = root / "dark" / f"r{number:04d}"
    assert main(["simulate", "--out", str(root / "raw"), "--no-slow", "--proposal", "7", *SIM]) == 0
    made["raw"] = root / "raw" / "r0001"
    made["catalog"] = catalog
    return made


def dark(capsys, catalog: Path, *runs) -> tuple[int, str, str]:
    code = main(["dark", *map(str, runs), "--catalog", str(catalog)])
    out, err = capsys.readouterr()
    return code, out, err


def assert_refused(code: int, err: str, catalog: Path, *expected: str) -> list[str]:
    """Exit 2, no traceback, one ``error:`` line per problem matching ``expected`` in order,
    and nothing stored."""
    assert code == 2
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if ": error: " in line]
    assert len(lines) == len(expected), err
    for line, pattern in zip(lines, expected):
        assert re.search(pattern, line), (pattern, line)
    with Catalog(catalog) as cat:
        assert cat.list_constants() == []
    return lines


def module_chunks(run: Path, module: int):
    for _tid, data, _meta in iter_run_trains(run, sources=[f"*/DET/{module}CH0:*"]):
        for props in data.values():
            yield props["image.data"], props["image.cellId"].reshape(-1)


def test_proper_dark_runs_store_the_constants_of_characterize_dark(runs, tmp_path, capsys):
    catalog = runs["catalog"]
    code, out, err = dark(capsys, catalog, runs["HG"], runs["MG"], runs["LG"])
    assert code == 0, err
    assert re.search(
        r"^module 0: stored Offset#\d+, Noise#\d+, ThresholdsDark#\d+, "
        r"BadPixelsDark#\d+; \d+ bad pixels$",
        out,
        re.MULTILINE,
    ), out
    assert f"2 modules, 9 trains, conditions: memory_cells={CELLS}" in out
    with Catalog(catalog) as cat:
        source_ids = sorted(cat.find_runs(path=runs[s])[0].id for s in ("HG", "MG", "LG"))
        for module in (0, 1):
            expected = characterize_dark(
                *(module_chunks(runs[s], module) for s in ("HG", "MG", "LG")), memory_cells=CELLS
            )
            found = cat.find_constants(
                "SPB_DET_AGIPD1M-1",
                module,
                Conditions(memory_cells=CELLS, bias_voltage=300.0),
                types=DARK_TYPES,
            )
            for ctype, attr in zip(DARK_TYPES, ("offset", "noise", "thresholds", "bad_pixels")):
                record = found[ctype]
                assert record.conditions == Conditions(
                    memory_cells=CELLS,
                    bias_voltage=300.0,
                    acquisition_rate=1.1,
                    gain_setting=0,
                    gain_mode=0,
                    integration_time=12,
                )
                assert sorted(record.source_runs) == source_ids
                np.testing.assert_array_equal(cat.load_array(record), getattr(expected, attr))


def test_library_function_stores_relative_gain_and_reports(runs, tmp_path):
    from pulsetrain.calibration.darkruns import RelativeGainSource

    seen = []
    with Catalog(tmp_path / "cat.sqlite") as cat:
        result = characterize_dark_runs(
            [runs["HG"], runs["MG"], runs["LG"]],
            cat,
            Conditions(bias_voltage=300.0),
            modules=[1],
            rel_gain=RelativeGainSource(lambda m, c: np.full((3, 512, 128), 0.1, "f4"), "flat"),
            on_module=seen.append,
        )
        assert [m.module for m in result.modules] == [1] and seen == list(result.modules)
        assert result.conditions.memory_cells == CELLS and result.n_trains == 9
        assert set(result.modules[0].constants) == {*DARK_TYPES, "RelativeGain"}
        assert result.source_runs == ()  # these runs are not in this catalogue
        rel = cat.find_constant("SPB_DET_AGIPD1M-1", 1, "RelativeGain", result.conditions)
        assert rel.comment == "flat" and rel.shape == (3, 512, 128)


def test_refuses_an_illuminated_run(runs, tmp_path, capsys):
    catalog = tmp_path / "cat.sqlite"
    code, _, err = dark(capsys, catalog, runs["raw"], runs["MG"], runs["LG"])
    assert_refused(
        code,
        err,
        catalog,
        rf"run {re.escape(str(runs['raw']))} \(given as HG\): .*illuminated frames, not a dark run",
    )


def test_refuses_the_same_run_twice_by_path(runs, tmp_path, capsys):
    catalog = tmp_path / "cat.sqlite"
    code, _, err = dark(capsys, catalog, runs["raw"], runs["raw"], runs["raw"])
    raw = re.escape(str(runs["raw"]))
    assert_refused(
        code,
        err,
        catalog,
        rf"run {raw} \(given as MG\): the same run directory as the HG run",
        rf"run {raw} \(given as LG\): the same run directory as the HG run",
    )


def test_refuses_the_same_run_twice_by_number(runs, tmp_path, capsys):
    copy = tmp_path / "copy" / "r0001"
    shutil.copytree(runs["HG"], copy)
    catalog = tmp_path / "cat.sqlite"
    code, _, err = dark(capsys, catalog, runs["HG"], copy, runs["LG"])
    lines = assert_refused(
        code,
        err,
        catalog,
        r"\(given as MG\): the same run \(proposal 900001, run 1\) as the HG run",
        r"\(given as MG\): recorded as a dark run of gain stage HG",
    )
    assert str(copy) in lines[0]


def test_refuses_runs_in_the_wrong_order(runs, tmp_path, capsys):
    catalog = tmp_path / "cat.sqlite"
    code, _, err = dark(capsys, catalog, runs["MG"], runs["HG"], runs["LG"])
    assert_refused(
        code,
        err,
        catalog,
        r"\(given as HG\): recorded as a dark run of gain stage MG \(run type 'dark-MG'\)",
        r"\(given as MG\): recorded as a dark run of gain stage HG",
    )


def test_refuses_empty_missing_and_wrong_directories(runs, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    catalog = tmp_path / "cat.sqlite"
    code, _, err = dark(capsys, catalog, empty, tmp_path / "nothing", runs["HG"].parent)
    assert_refused(
        code,
        err,
        catalog,
        rf"run {re.escape(str(empty))} \(given as HG\): not a readable run directory",
        r"\(given as MG\): not a readable run directory",
        rf"run {re.escape(str(runs['HG'].parent))} \(given as LG\): not a readable run directory",
    )


def test_refuses_a_module_the_runs_do_not_have(runs, tmp_path, capsys):
    catalog = tmp_path / "cat.sqlite"
    code = main(
        [
            "dark",
            *(str(runs[s]) for s in ("HG", "MG", "LG")),
            "--catalog",
            str(catalog),
            "--modules",
            "0",
            "5",
        ]
    )
    err = capsys.readouterr().err
    assert_refused(code, err, catalog, *[r"no data of module\(s\) 5 \(it has 0, 1\)"] * 3)


# ------------------------------------------------------------------ the rules, on histograms

LEVELS = (4700, 6300, 7900)


def sample(
    stage: str,
    *,
    level: int,
    spread: float = 100.0,
    noise: float = 6.0,
    other: float = 0.0,
    bright: float = 0.0,
    seed: int = 0,
) -> DarkRunSample:
    """A run sample with digital values around ``level`` (a fraction ``other`` of them 1600
    ADU higher) and frame-to-frame changes of spread ``noise`` (a fraction ``bright`` of
    them 30 times larger)."""
    rng = np.random.default_rng(seed)
    n = 200_000
    digital = rng.normal(level, spread, n)
    digital[: int(other * n)] += 1600
    changes = np.abs(rng.normal(0, noise, n))
    changes[: int(bright * n)] *= 30
    return DarkRunSample(
        path=Path(f"/runs/{stage}"),
        stage=stage,
        proposal=1,
        run_number=("HG", "MG", "LG").index(stage),
        modules=(0,),
        n_trains=1,
        digital=np.bincount(np.rint(digital).astype(np.int64), minlength=1 << 16),
        changes={0: np.bincount(np.rint(changes).astype(np.int64), minlength=1 << 16)},
    )


def proper() -> list[DarkRunSample]:
    return [
        sample(s, level=lv, seed=i) for i, (s, lv) in enumerate(zip(("HG", "MG", "LG"), LEVELS))
    ]


def test_rules_accept_dark_runs_with_noisy_pixels():
    samples = proper()
    samples[0] = sample("HG", level=4700, noise=8.0, bright=0.005)  # 0.5 % noisy pixels
    assert check_dark_runs(samples) == []
    assert samples[1].digital_level == pytest.approx(6300, abs=1)
    assert samples[1].digital_spread == pytest.approx(100, rel=0.05)


def test_rules_refuse_levels_that_do_not_rise():
    samples = proper()
    samples[1] = sample("MG", level=4700, seed=5)
    problems = check_dark_runs(samples)
    assert len(problems) == 1
    assert problems[0].startswith("run /runs/MG (given as MG): its digital gain level (4700 ADU)")
    assert "not clearly above that of the HG run" in problems[0]


def test_rules_refuse_pixels_in_another_stage():
    samples = proper()
    samples[0] = sample("HG", level=4700, other=0.05)
    problems = check_dark_runs(samples)
    assert len(problems) == 1 and problems[0].startswith("run /runs/HG (given as HG): 5.0 %")
    assert re.search(r"outside 0\.\.55\d\d ADU, the band of HG", problems[0])


def test_rules_refuse_illuminated_frames_even_when_all_pixels_are_lit():
    samples = proper()
    samples[0] = sample("HG", level=4700, noise=200.0)  # evenly lit: every change is large
    problems = check_dark_runs(samples)
    assert len(problems) == 1 and "illuminated frames, not a dark run" in problems[0]
    rules = DarkRunRules(max_noise_ratio=100.0)  # judged by its own noise only it would pass
    assert check_dark_runs(samples, rules) == []


def test_library_raises_dark_run_error_before_storing(runs, tmp_path):
    with Catalog(tmp_path / "cat.sqlite") as cat:
        with pytest.raises(DarkRunError) as info:
            characterize_dark_runs([runs["HG"], runs["HG"]], cat, Conditions())
        assert info.value.problems == ["AGIPD needs 3 dark runs (HG, MG, LG, in this order), got 2"]
        assert cat.detectors() == []


def test_refuses_too_few_memory_cells_and_no_modules(runs, tmp_path, capsys):
    catalog = tmp_path / "cat.sqlite"
    three = [str(runs[s]) for s in ("HG", "MG", "LG")]
    code = main(["dark", *three, "--catalog", str(catalog), "--memory-cells", "8"])
    err = capsys.readouterr().err
    pattern = rf"has cellId {CELLS - 1}, but the constants are for memory_cells=8 \(cellIds 0..7\)"
    assert_refused(code, err, catalog, *[pattern] * 3)
    code = main(["dark", *three, "--catalog", str(catalog), "--modules"])
    err = capsys.readouterr().err
    assert_refused(code, err, catalog, r"no modules given to characterise")
