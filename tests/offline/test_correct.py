"""``correct_run`` / ``pulsetrain correct``: CORR runs equal the online correction, pass
``extra-data-validate``, keep the raw sequence split, re-runs skip verified outputs, and the
catalogue records the run and its constants."""

from __future__ import annotations

import os
import shutil
import subprocess

import h5py
import numpy as np
import pytest
from _offline_helpers import CELLS, MODULES, simulate

from pulsetrain.catalog import Catalog
from pulsetrain.errors import BatchJobError, ConfigurationError, ConstantNotFoundError
from pulsetrain.files import iter_run_trains, run_info
from pulsetrain.offline import ClusterConfig, CorrectionOptions, correct_run, scan_run
from pulsetrain.offline.runfiles import file_sha256


def online_outputs(raw_run, module, catalog_url, at, **config):
    """Feed the raw trains of one module to the online AGIPDCorrection device (in-process)
    and collect what it writes: ``{train_id: (data, meta)}`` of the CORR source."""
    from pulsetrain.devices.correction import AGIPDCorrection

    dev = AGIPDCorrection(
        f"CORR{module}",
        {
            "catalog": catalog_url,
            "module": module,
            "memory_cells": CELLS,
            "constants_time": at.isoformat(),
            **config,
        },
    )
    written = []
    dev.write = lambda output, data, meta, timeout=None: written.append((data, meta))
    # no output channel to allocate in: plain arrays
    dev.allocate = lambda output, *specs: [np.empty(shape, dtype) for shape, dtype in specs]
    dev.initialize()
    try:
        assert dev.constantsLoaded, dev.status
        for _tid, data, meta in iter_run_trains(raw_run, sources=[f"*/DET/{module}CH0:xtdf"]):
            dev.on_data(data, meta, "input")
    finally:
        dev._stopping.set()
    out = {}
    for data, meta in written:
        (src,) = data
        out[meta[src]["timestamp.tid"]] = data[src]
    return out


def offline_outputs(corr_dir, module):
    out = {}
    for tid, data, _meta in iter_run_trains(corr_dir, sources=[f"*/CORR/{module}CH0:output"]):
        (src,) = data
        out[tid] = {k: np.array(v) for k, v in data[src].items()}
    return out


def assert_same_as_online(online, offline):
    assert sorted(online) == sorted(offline) and online
    for tid, on in online.items():
        off = offline[tid]
        assert set(off) == set(on), (sorted(off), sorted(on))
        np.testing.assert_array_equal(off["image.gain"], on["image.gain"])
        np.testing.assert_array_equal(off["image.mask"], on["image.mask"])
        assert off["image.data"].dtype == np.float32
        np.testing.assert_allclose(off["image.data"], on["image.data"], rtol=0, atol=1e-6)
        np.testing.assert_array_equal(np.isnan(off["image.data"]), np.isnan(on["image.data"]))
        for key in ("image.cellId", "image.pulseId", "image.trainId"):
            np.testing.assert_array_equal(off[key], on[key])
        assert bool(off["calibration.corrected"]) is True


def test_corr_run_equals_online_device(raw_run, catalog_url, corr_report):
    at = scan_run(raw_run).start_time
    for module in MODULES:
        assert_same_as_online(
            online_outputs(raw_run, module, catalog_url, at),
            offline_outputs(corr_report.out_dir, module),
        )
    assert corr_report.frames == len(MODULES) * 6 * 8
    assert not corr_report.skipped


def test_options_reach_the_correction(raw_run, catalog_url, dask_client, tmp_path):
    """Common mode, NaN for bad pixels and forced thresholds: still identical to online."""
    options = CorrectionOptions(
        bad_to_nan=True, common_mode=True, force_mg_threshold=500.0, force_hg_threshold=300.0
    )
    report = correct_run(
        raw_run,
        tmp_path / "proc",
        catalog=catalog_url,
        conditions={"memory_cells": CELLS},
        options=options,
        modules=[1],
        copy_other=False,
        client=dask_client,
        progress=False,
        record=False,
    )
    at = scan_run(raw_run).start_time
    online = online_outputs(
        raw_run,
        1,
        catalog_url,
        at,
        bad_to_nan=True,
        common_mode=True,
        force_mg_threshold=500.0,
        force_hg_threshold=300.0,
    )
    offline = offline_outputs(report.out_dir, 1)
    assert_same_as_online(online, offline)
    assert any(np.isnan(v["image.data"]).any() for v in offline.values())
    assert [p.name for p in report.output_files] == [
        "CORR-R0001-AGIPD01-S00000.h5",
        "CORR-R0001-AGIPD01-S00001.h5",
    ]


def test_corr_run_is_valid_and_keeps_the_sequence_split(raw_run, corr_report):
    out = corr_report.out_dir
    proc = subprocess.run(
        ["extra-data-validate", str(out)], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    raw_files = sorted(p.name for p in raw_run.glob("*.h5"))
    corr_files = sorted(p.name for p in out.glob("*.h5"))
    assert corr_files == [n.replace("RAW-", "CORR-") for n in raw_files]
    for name in raw_files:
        with h5py.File(raw_run / name) as r, h5py.File(out / name.replace("RAW-", "CORR-")) as c:
            np.testing.assert_array_equal(c["INDEX/trainId"][:], r["INDEX/trainId"][:])
            assert c["METADATA/sequenceNumber"][0] == r["METADATA/sequenceNumber"][0]
            assert c["METADATA/runNumber"][0] == r["METADATA/runNumber"][0]
    info = run_info(out)
    assert info.n_trains == run_info(raw_run).n_trains
    assert {f"SPB_DET_AGIPD1M-1/CORR/{m}CH0:output" for m in MODULES} <= set(info.sources)
    assert "SPB_IRU_SAMPLE/MOTOR/X" in info.control_sources  # slow data copied
    for name in raw_files:
        if "DA01" in name:
            assert file_sha256(raw_run / name) == file_sha256(out / name.replace("RAW", "CORR"))


def test_catalogue_records_the_corr_run_and_its_constants(raw_run, catalog_url, corr_report):
    from pulsetrain.bootstrap import sim_conditions
    from pulsetrain.catalog.agipd import REQUIRED_TYPES

    cat = Catalog(catalog_url)
    try:
        (run,) = cat.find_runs(900001, 1, data_category="CORR")
        assert run.id == corr_report.run_record.id
        assert run.run_type == "corr" and run.n_trains == 6
        assert sorted(f.name for f in run.files) == sorted(
            p.name for p in corr_report.out_dir.glob("*.h5")
        )
        linked = {c.id for c in cat.constants_of_run(run)}
        expected = set()
        for m in MODULES:
            recs = cat.find_constants(
                "SPB_DET_AGIPD1M-1", m, sim_conditions(CELLS), types=REQUIRED_TYPES
            )
            expected |= {r.id for r in recs.values()}
            assert corr_report.constants[m] == {t: r.id for t, r in recs.items()}
        assert linked == expected
    finally:
        cat.close()


def _flip_a_byte(path, keep_mtime=False):
    """Change one byte in the middle of a file (same size); optionally restore its mtime."""
    st = path.stat()
    with open(path, "r+b") as f:
        f.seek(st.st_size // 2)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0xFF]))
    if keep_mtime:
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def _same_data(a, b, name):
    src = "SPB_DET_AGIPD1M-1/CORR/{}CH0:output".format(int(name.split("-")[2][5:]))
    with h5py.File(a / name) as new, h5py.File(b / name) as orig:
        for key in ("data", "gain", "mask", "cellId"):
            np.testing.assert_array_equal(
                new[f"INSTRUMENT/{src}/image/{key}"][:], orig[f"INSTRUMENT/{src}/image/{key}"][:]
            )


def test_rerun_skips_verified_outputs_and_remakes_damaged_ones(
    raw_run, catalog_url, dask_client, tmp_path, corr_report
):
    out = tmp_path / "r0001"
    shutil.copytree(corr_report.out_dir, out)  # copy2: sizes and mtimes kept
    before = {p.name: (p.stat().st_mtime_ns, file_sha256(p)) for p in out.glob("*.h5")}
    kwargs = {
        "catalog": catalog_url,
        "conditions": {"memory_cells": CELLS},
        "client": dask_client,
        "progress": False,
        "record": False,
    }
    again = correct_run(raw_run, out, **kwargs)
    assert len(again.skipped) == len(before) and not again.corrected
    assert {p.name: (p.stat().st_mtime_ns, file_sha256(p)) for p in out.glob("*.h5")} == before

    # A modified output (its mtime changes), a missing one and an incomplete one (its INDEX
    # lists more frames than it holds, size and mtime restored) are remade; nothing else.
    _flip_a_byte(out / "CORR-R0001-AGIPD00-S00001.h5")
    (out / "CORR-R0001-AGIPD01-S00000.h5").unlink()
    cut = out / "CORR-R0001-AGIPD01-S00001.h5"
    st = cut.stat()
    with h5py.File(cut, "r+") as f:
        f["INDEX/SPB_DET_AGIPD1M-1/CORR/1CH0:output/image/count"][0] += 1
    os.truncate(cut, st.st_size)
    os.utime(cut, ns=(st.st_atime_ns, st.st_mtime_ns))
    third = correct_run(raw_run, out, **kwargs)
    remade = sorted(r["output"] for r in third.corrected)
    assert remade == [
        "CORR-R0001-AGIPD00-S00001.h5",
        "CORR-R0001-AGIPD01-S00000.h5",
        "CORR-R0001-AGIPD01-S00001.h5",
    ]
    assert len(third.skipped) == len(before) - 3
    for name in remade:  # same data as the original (file dates differ, so not the bytes)
        _same_data(out, corr_report.out_dir, name)
    for name, (_mtime, digest) in before.items():
        if name not in remade:
            assert file_sha256(out / name) == digest

    # Other options mean other outputs: nothing is skipped.
    fourth = correct_run(raw_run, out, options=CorrectionOptions(common_mode=True), **kwargs)
    assert len(fourth.corrected) == 2 * len(MODULES) and not [
        r for r in fourth.skipped if r["kind"] == "module"
    ]


def test_checksum_verification_catches_silent_corruption(
    raw_run, catalog_url, dask_client, tmp_path
):
    kwargs = {
        "catalog": catalog_url,
        "conditions": {"memory_cells": CELLS},
        "client": dask_client,
        "progress": False,
        "record": False,
        "modules": [0],
        "copy_other": False,
    }
    out = tmp_path / "r0001"
    first = correct_run(raw_run, out, verify="checksum", **kwargs)
    assert len(first.corrected) == 2
    name = "CORR-R0001-AGIPD00-S00000.h5"
    _flip_a_byte(out / name, keep_mtime=True)  # same size, same mtime: only the CRC differs
    lenient = correct_run(raw_run, out, verify="index", **kwargs)
    assert len(lenient.skipped) == 2  # the index check cannot see it
    strict = correct_run(raw_run, out, verify="checksum", **kwargs)
    assert [r["output"] for r in strict.corrected] == [name]
    assert len(strict.skipped) == 1


def test_cli_correct_uses_an_existing_scheduler(
    raw_run, catalog_url, dask_client, tmp_path, capsys
):
    from pulsetrain.cli import main

    address = dask_client.scheduler.address
    out = tmp_path / "cli"
    argv = [
        "correct",
        str(raw_run),
        "--out",
        str(out),
        "--catalog",
        catalog_url,
        "--memory-cells",
        str(CELLS),
        "--scheduler",
        address,
        "--no-progress",
        "--modules",
        "0",
        "--no-record",
    ]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "2 module files corrected, 0 skipped" in text
    assert "module 0: BadPixelsDark#" in text
    assert main(argv) == 0
    assert "0 module files corrected, 4 skipped" in capsys.readouterr().out


def test_missing_constants_fail_before_any_worker_starts(raw_run, tmp_path):
    from pulsetrain.bootstrap import store_truth_constants
    from pulsetrain.sim import DetectorSimulator

    empty = f"sqlite:///{tmp_path / 'half.sqlite'}"  # constants of module 1 only
    cat = Catalog(empty)
    store_truth_constants(
        cat, DetectorSimulator("AGIPD", frames=8, memory_cells=CELLS, modules=(1,)), modules=[1]
    )
    cat.close()
    unreachable = ClusterConfig(scheduler="tcp://127.0.0.1:9")  # would fail if contacted
    with pytest.raises(ConstantNotFoundError, match="module 0.*Offset"):
        correct_run(raw_run, tmp_path / "out", catalog=empty, cluster=unreachable, progress=False)
    assert not (tmp_path / "out").exists()  # nothing made


def test_output_must_not_be_the_raw_run(raw_run, catalog_url):
    with pytest.raises(ConfigurationError, match="raw run directory"):
        correct_run(raw_run, raw_run, catalog=catalog_url, progress=False)


def test_a_failing_task_names_its_file(catalog_url, dask_client, tmp_path):
    raw = simulate(tmp_path / "raw", trains=2, modules=(0,), sequence_trains=1)
    bad = raw / "RAW-R0001-AGIPD00-S00001.h5"
    with h5py.File(bad, "r+") as f:  # INDEX points past the data
        f["INDEX/SPB_DET_AGIPD1M-1/DET/0CH0:xtdf/image/count"][0] = 999
    with pytest.raises(BatchJobError, match="RAW-R0001-AGIPD00-S00001.h5"):
        correct_run(
            raw,
            tmp_path / "out",
            catalog=catalog_url,
            conditions={"memory_cells": CELLS},
            client=dask_client,
            progress=False,
            record=False,
        )


def module0_tasks(raw, out, catalog_url, **kwargs):
    """The planned tasks that correct module 0 of *raw* into *out* (nothing else copied)."""
    from pulsetrain.offline.correct import plan_correction

    _layout, tasks, _q = plan_correction(
        raw,
        out,
        catalog=catalog_url,
        conditions={"memory_cells": CELLS},
        modules=[0],
        copy_other=False,
        **kwargs,
    )
    return tasks


def test_planned_train_counts_are_the_files_trains(raw_run, catalog_url, tmp_path):
    """The train count of each task (progress bar, skipped outputs) is the non-zero train IDs
    of its file, taken from the run's map without opening the file again."""
    import h5py
    import numpy as np

    from pulsetrain.offline.correct import plan_correction

    layout, tasks, _q = plan_correction(
        raw_run, tmp_path / "out", catalog=catalog_url, conditions={"memory_cells": CELLS}
    )
    assert len(tasks) == len(layout.file_trains) > 2
    for task in tasks:
        with h5py.File(task.input_path, "r") as f:
            assert task.trains == np.count_nonzero(f["INDEX/trainId"][:]) > 0


def test_constants_are_loaded_once_per_worker_and_module(raw_run, catalog_url, tmp_path):
    """In one process (as in one worker) the second file of a module reuses the constants."""
    from pulsetrain.offline import correct as mod
    from pulsetrain.offline.correct import correct_module_file

    tasks = module0_tasks(raw_run, tmp_path / "out", catalog_url)
    mod._CACHE.clear()
    mod.LOAD_COUNTS.clear()
    results = [correct_module_file(t) for t in tasks]
    assert len(results) == 2 and all(not r["skipped"] for r in results)
    assert sum(mod.LOAD_COUNTS.values()) == 1


@pytest.mark.parametrize("block_bytes", [1, 32 << 20], ids=["train-blocks", "file-blocks"])
def test_rows_out_of_train_order_give_the_same_output(
    raw_run, catalog_url, corr_report, tmp_path, block_bytes
):
    """A raw file whose rows are not in train order (its INDEX points back and forth), read a
    train per block or all at once: the corrected frames land in the rows of their trains."""
    from pulsetrain.offline.correct import correct_module_file

    raw = tmp_path / "raw"
    shutil.copytree(raw_run, raw)
    src = "SPB_DET_AGIPD1M-1/DET/0CH0:xtdf"
    with h5py.File(raw / "RAW-R0001-AGIPD00-S00000.h5", "r+") as f:
        first = f[f"INDEX/{src}/image/first"]
        count = f[f"INDEX/{src}/image/count"][:]
        assert count[0] == count[1] > 0
        n = int(count[0])
        for ds in f[f"INSTRUMENT/{src}/image"].values():  # swap the rows of trains 0 and 1
            rows = ds[: 2 * n]
            ds[: 2 * n] = np.concatenate([rows[n:], rows[:n]])
        first[0], first[1] = n, 0
    tasks = module0_tasks(raw, tmp_path / "out", catalog_url, max_block_bytes=block_bytes)
    results = [correct_module_file(t) for t in tasks]
    assert [r["frames"] for r in results] == [3 * n, 3 * n]
    for r in results:
        _same_data(tmp_path / "out", corr_report.out_dir, r["output"])


def test_modules_are_dealt_to_workers():
    from pulsetrain.offline.correct import module_placement

    workers = ["tcp://b:2", "tcp://a:1"]
    assert module_placement([3, 0, 2, 1], workers) == {
        0: "tcp://a:1",
        1: "tcp://b:2",
        2: "tcp://a:1",
        3: "tcp://b:2",
    }
    assert module_placement([5], workers) == {}  # fewer modules than workers: no preference
    assert module_placement([0, 1], ["tcp://a:1"]) == {}


def test_frame_datasets_get_their_blocks_before_the_writes(tmp_path):
    """The frames' bytes are allocated on disk before they are written (fallocate), and the
    file stays a valid HDF5 file with the data written afterwards."""
    import os

    import h5py
    import numpy as np

    from pulsetrain.offline.correct import _fallocate, _reserve_blocks

    if _fallocate() is None:
        pytest.skip("no fallocate(2) here")
    path = tmp_path / "f.h5"
    values = np.arange(64 * 512 * 128, dtype=np.float32).reshape(64, 512, 128)
    with h5py.File(path, "w") as f:
        dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
        dcpl.set_fill_time(h5py.h5d.FILL_TIME_NEVER)
        ds = f.create_dataset("data", shape=values.shape, dtype=values.dtype, dcpl=dcpl)
        f.flush()
        before = os.stat(path).st_blocks * 512
        _reserve_blocks(str(path), [ds])
        after = os.stat(path).st_blocks * 512
        assert before < values.nbytes <= after - before + 4096
        ds.write_direct(values)
    with h5py.File(path, "r") as f:
        np.testing.assert_array_equal(f["data"][:], values)
    assert os.path.getsize(path) < values.nbytes + (1 << 20)
