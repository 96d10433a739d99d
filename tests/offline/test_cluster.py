"""Dask back ends: SLURM job scripts (built, never submitted), option checking, CLI wiring."""

from __future__ import annotations

import argparse

import pytest

from pulsetrain.errors import ConfigurationError
from pulsetrain.offline.cluster import (
    ClusterConfig,
    SlurmOptions,
    add_cluster_arguments,
    cluster_config_from_args,
    slurm_cluster,
)


def test_slurm_cluster_job_script_without_submitting():
    options = SlurmOptions(
        queue="upex",
        cores=8,
        memory="32GB",
        walltime="02:30:00",
        jobs=3,
        job_extra=("--reservation=upex_002",),
        account="p900001",
    )
    cluster = slurm_cluster(options)
    try:
        script = cluster.job_script()
        assert "#SBATCH -p upex" in script
        assert "#SBATCH --cpus-per-task=8" in script
        assert "#SBATCH -t 02:30:00" in script
        assert "#SBATCH --mem=30G" in script  # 32 GB = 29.8 GiB, rounded as dask-jobqueue does
        assert "#SBATCH --reservation=upex_002" in script
        assert "#SBATCH -A p900001" in script
        assert "#SBATCH -J pulsetrain" in script
        # one single-threaded worker process per core
        assert "--nworkers 8" in script and "--nthreads 1" in script
        assert cluster.scheduler_address.startswith("tcp://")
        assert len(cluster.worker_spec) == 0  # nothing submitted: scale() was never called
    finally:
        cluster.close()


def test_cli_options_build_the_cluster_config():
    parser = argparse.ArgumentParser()
    add_cluster_arguments(parser)
    args = parser.parse_args(
        [
            "--slurm",
            "--queue",
            "exfel",
            "--cores",
            "4",
            "--memory",
            "8GB",
            "--walltime",
            "00:10:00",
            "--jobs",
            "2",
            "--job-extra=--x=1",
        ]
    )
    config = cluster_config_from_args(args)
    assert config.kind == "slurm"
    assert config.slurm == SlurmOptions(
        queue="exfel", cores=4, memory="8GB", walltime="00:10:00", jobs=2, job_extra=("--x=1",)
    )
    assert cluster_config_from_args(parser.parse_args(["--workers", "3"])).workers == 3
    assert (
        cluster_config_from_args(parser.parse_args(["--scheduler", "tcp://h:8786"])).kind
        == "scheduler"
    )
    assert cluster_config_from_args(parser.parse_args([])).kind == "local"
    with pytest.raises(SystemExit):
        parser.parse_args(["--workers", "2", "--slurm"])


def test_print_job_script_from_the_command_line(capsys):
    from pulsetrain.cli import main

    assert (
        main(
            [
                "correct",
                "raw/r0001",
                "--out",
                "proc/r0001",
                "--slurm",
                "--queue",
                "upex",
                "--cores",
                "2",
                "--walltime",
                "00:05:00",
                "--print-job-script",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "#SBATCH -p upex" in out and "#SBATCH -t 00:05:00" in out


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"cores": 0}, "at least 1"),
        ({"jobs": 0}, "at least 1"),
        ({"walltime": "1 hour"}, "HH:MM:SS"),
    ],
)
def test_bad_slurm_options(kwargs, message):
    with pytest.raises(ConfigurationError, match=message):
        SlurmOptions(**kwargs)


def test_bad_cluster_configs():
    with pytest.raises(ConfigurationError, match="not both"):
        ClusterConfig(scheduler="tcp://h:1", slurm=SlurmOptions())
    with pytest.raises(ConfigurationError, match="at least 1"):
        ClusterConfig(workers=0)


def test_unreachable_scheduler_is_a_clear_error():
    from pulsetrain.offline import open_client

    config = ClusterConfig(scheduler="tcp://127.0.0.1:9", connect_timeout=1)
    with (
        pytest.raises(ConfigurationError, match="cannot reach the Dask scheduler"),
        open_client(config),
    ):
        pass


def test_help_has_examples(capsys):
    from pulsetrain.cli import main

    for command in ("correct", "reduce"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = capsys.readouterr().out
        assert "examples:" in text and f"pulsetrain {command} " in text and "--slurm" in text


def test_workers_freeze_their_objects_out_of_the_gc_after_a_task(dask_client, corr_report):
    """After running a task, each worker keeps its imports out of the cyclic GC; a caller's
    own process is never frozen by the task functions."""
    import gc

    from pulsetrain.offline.cluster import freeze_gc_once

    def frozen() -> int:
        import gc

        return gc.get_freeze_count()

    assert corr_report.frames > 0  # the session's correction ran on these workers
    counts = dask_client.run(frozen)
    assert len(counts) == 2
    assert min(counts.values()) > 10_000
    before = gc.get_freeze_count()
    assert freeze_gc_once(only_in_worker=True) is False
    assert gc.get_freeze_count() == before


def test_caller_objects_are_frozen_for_the_job_only():
    """During a job the caller's objects are out of the GC's sight, afterwards they are back;
    a process that froze its own objects keeps exactly those frozen."""
    import gc

    from pulsetrain.offline.cluster import caller_objects_frozen

    if gc.get_freeze_count():  # another test froze this process: start from none
        gc.unfreeze()
    kept = [object() for _ in range(100)]
    with caller_objects_frozen():
        during = gc.get_freeze_count()
        made = [object()]
    assert during >= len(kept)
    assert gc.get_freeze_count() == 0 and made
    gc.freeze()
    try:
        own = gc.get_freeze_count()  # (other threads may free a few of them meanwhile)
        with caller_objects_frozen():  # neither freezes more nor unfreezes
            assert 0 < gc.get_freeze_count() <= own
        assert 0 < gc.get_freeze_count() <= own
    finally:
        gc.unfreeze()
    with pytest.raises(RuntimeError), caller_objects_frozen():  # the job fails: still undone
        raise RuntimeError("task failed")
    assert gc.get_freeze_count() == 0


def test_local_cluster_runs_with_less_background_work(dask_client):
    """The cluster open_client starts has no stack profiler in its workers and slower health
    checks; the caller's Dask configuration is unchanged, and a user's own setting wins."""
    import dask

    from pulsetrain.offline.cluster import LOCAL_CLUSTER_SETTINGS, local_cluster_settings

    def worker_state(dask_worker) -> tuple:
        import dask

        return (
            "profile" in dask_worker.periodic_callbacks,
            dask.config.get("distributed.worker.memory.monitor-interval"),
        )

    def scheduler_tick(dask_scheduler) -> float:
        return dask_scheduler._tick_interval

    assert set(dask_client.run(worker_state).values()) == {(False, "500ms")}
    assert dask_client.run_on_scheduler(scheduler_tick) == 1.0
    # the caller keeps Dask's defaults
    assert dask.config.get("distributed.admin.tick.interval") == "20ms"
    assert dask.config.get("distributed.worker.profile.enabled") is True
    assert local_cluster_settings() == LOCAL_CLUSTER_SETTINGS
    with dask.config.set({"distributed.admin.tick.interval": "50ms"}):
        kept = local_cluster_settings()
    assert "distributed.admin.tick.interval" not in kept
    assert kept["distributed.worker.memory.monitor-interval"] == "500ms"
    assert kept["distributed.worker.profile.enabled"] is False


def test_lean_false_keeps_dasks_settings():
    from pulsetrain.offline import ClusterConfig, open_client

    with open_client(ClusterConfig(workers=1, lean=False)) as client:
        profiled = client.run(lambda dask_worker: "profile" in dask_worker.periodic_callbacks)
    assert list(profiled.values()) == [True]
