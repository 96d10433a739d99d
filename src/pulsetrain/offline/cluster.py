"""Where offline jobs run: a local Dask cluster, an existing scheduler, or SLURM.

Every offline job (:func:`~pulsetrain.offline.correct_run`,
:func:`~pulsetrain.offline.reduce_run`) runs its tasks on a ``dask.distributed`` client.  The
client comes from one of three back ends, chosen by :class:`ClusterConfig`:

* ``LocalCluster`` (default): worker *processes* with one thread each
  (``processes=True, threads_per_worker=1``) on this machine; ``workers`` of them (default: one
  per CPU core);
* an existing scheduler by address (``tcp://host:8786``), e.g. started by ``dask scheduler`` or
  by a facility's JupyterHub;
* dask-jobqueue's ``SLURMCluster``: ``jobs`` batch jobs of ``cores`` single-threaded worker
  processes each, submitted to ``queue`` with ``memory`` and ``walltime``.

:func:`run_tasks` collects task results in completion order (``as_completed``) and drives a
progress bar.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import logging
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from pulsetrain.errors import BatchJobError, ConfigurationError

__all__ = [
    "ClusterConfig",
    "SlurmOptions",
    "add_cluster_arguments",
    "cancel_jobs_named",
    "check_job_script",
    "cluster_config_from_args",
    "local_cluster_settings",
    "numba_threads",
    "open_client",
    "queued_jobs_named",
    "run_tasks",
    "sbatch_path",
    "set_numba_threads",
    "slurm_cluster",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SlurmOptions:
    """Resources of the SLURM batch jobs that host Dask workers (dask-jobqueue).

    Parameters
    ----------
    queue : str, optional
        SLURM partition (``#SBATCH -p``); None: the cluster's default.
    cores : int
        CPU cores per job; the job runs that many single-threaded worker processes.
    memory : str
        Memory per job, e.g. ``"64GB"`` (shared by its worker processes).
    walltime : str
        Time limit per job, ``HH:MM:SS``.
    jobs : int
        Number of jobs to submit.
    job_extra : tuple of str
        Extra ``#SBATCH`` options, e.g. ``("--reservation=upex_002",)``.
    account : str, optional
        Accounting project (``#SBATCH -A``).
    log_directory : str, optional
        Directory for the jobs' stdout/stderr files.
    """

    queue: str | None = None
    cores: int = 16
    memory: str = "64GB"
    walltime: str = "01:00:00"
    jobs: int = 1
    job_extra: tuple[str, ...] = ()
    account: str | None = None
    log_directory: str | None = None

    def __post_init__(self) -> None:
        if int(self.cores) < 1 or int(self.jobs) < 1:
            raise ConfigurationError(
                f"SLURM cores and jobs must be at least 1, got cores={self.cores} jobs={self.jobs}"
            )
        parts = str(self.walltime).split(":")
        if not 1 <= len(parts) <= 3 or not all(p.isdigit() for p in parts):
            raise ConfigurationError(
                f"SLURM walltime must look like HH:MM:SS, got {self.walltime!r}"
            )


@dataclass(frozen=True)
class ClusterConfig:
    """Which Dask back end an offline job uses.

    Parameters
    ----------
    workers : int, optional
        Worker processes of the local cluster (default: ``os.cpu_count()``).
    scheduler : str, optional
        Address of an existing scheduler; overrides ``workers``.
    slurm : SlurmOptions, optional
        Run the workers as SLURM jobs (dask-jobqueue); overrides ``workers``.
    dashboard : str, optional
        Address of the local scheduler's dashboard (``":8787"``, ``":0"`` for any port);
        None (default) starts none.
    memory_limit : str
        Memory limit per local worker (Dask's ``memory_limit``; ``"auto"`` splits the RAM).
    connect_timeout : float
        Seconds to wait for an existing scheduler to answer.
    extra : dict
        Further keyword arguments of ``LocalCluster`` / ``SLURMCluster``.
    lean : bool
        Start a local cluster with :data:`LOCAL_CLUSTER_SETTINGS` (less background work);
        False: with Dask's configuration as it is (e.g. to see the workers' profiles on the
        dashboard).
    """

    workers: int | None = None
    scheduler: str | None = None
    slurm: SlurmOptions | None = None
    dashboard: str | None = None
    memory_limit: str = "auto"
    connect_timeout: float = 30.0
    extra: dict[str, Any] = field(default_factory=dict)
    lean: bool = True

    def __post_init__(self) -> None:
        if self.scheduler and self.slurm:
            raise ConfigurationError("choose one of a scheduler address and SLURM, not both")
        if self.workers is not None and int(self.workers) < 1:
            raise ConfigurationError(f"workers must be at least 1, got {self.workers}")

    @property
    def kind(self) -> str:
        """``"local"``, ``"scheduler"`` or ``"slurm"``."""
        if self.scheduler:
            return "scheduler"
        if self.slurm is not None:
            return "slurm"
        return "local"


def slurm_cluster(options: SlurmOptions, *, python: str | None = None, **kwargs: Any):
    """Build (but do not scale) a dask-jobqueue ``SLURMCluster`` for ``options``.

    Each job runs ``options.cores`` worker processes with one thread each.  Nothing is
    submitted until ``cluster.scale(jobs=...)`` is called; ``cluster.job_script()`` shows the
    batch script.

    Parameters
    ----------
    options : SlurmOptions
        Queue, cores, memory, walltime, extra directives.
    python : str, optional
        Python executable the jobs start (default: this one, ``sys.executable``).
    **kwargs
        Passed to ``SLURMCluster``.

    Raises
    ------
    ConfigurationError
        dask-jobqueue is not installed (``pip install 'pulsetrain[slurm]'``).
    """
    import signal
    import threading

    sigint = signal.getsignal(signal.SIGINT)
    try:
        from dask_jobqueue import SLURMCluster
    except ImportError as exc:  # pragma: no cover - installed with the slurm extra
        raise ConfigurationError(
            "SLURM needs dask-jobqueue: pip install 'pulsetrain[slurm]'"
        ) from exc
    finally:
        # Importing dask_jobqueue (its runner module) makes Ctrl-C call sys.exit(): the command
        # would end with status 0 as if it had succeeded.  Keep the handler we had.
        if (
            threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGINT) is not sigint
            and sigint is not None
        ):
            signal.signal(signal.SIGINT, sigint)
    extra = list(options.job_extra)
    if options.account:
        extra.append(f"-A {options.account}")
    # The scheduler runs in this process; its HTTP server on any free port, no dashboard.
    kwargs.setdefault("scheduler_options", {"dashboard_address": ":0", "dashboard": False})
    return SLURMCluster(
        queue=options.queue,
        cores=int(options.cores),
        processes=int(options.cores),
        memory=options.memory,
        walltime=options.walltime,
        job_extra_directives=extra,
        log_directory=options.log_directory,
        python=python or sys.executable,
        **{"job_name": "pulsetrain", **kwargs},
    )


#: Seconds ``sbatch --test-only`` may take to answer (it retries an unreachable controller).
SBATCH_CHECK_TIMEOUT = 60.0


def sbatch_path() -> str:
    """Where ``sbatch`` is; raises unless jobs can be submitted from this machine at all.

    Raises
    ------
    ConfigurationError
        No ``sbatch`` on ``PATH`` (not a SLURM submit host).
    """
    import shutil

    sbatch = shutil.which("sbatch")
    if sbatch is None:
        raise ConfigurationError(
            "SLURM: sbatch not found on PATH: run on a SLURM submit host (or without --slurm)"
        )
    return sbatch


def check_job_script(script: str, sbatch: str = "sbatch") -> None:
    """Ask SLURM whether it would accept ``script`` (``sbatch --test-only``), submitting nothing.

    Catches what would otherwise only show as workers that never come: a partition or account
    that does not exist, more memory or cores than any node has, a time limit over the
    partition's.

    Raises
    ------
    ConfigurationError
        SLURM refused the script (its own words, on one line) or did not answer.
    """
    import subprocess

    try:
        done = subprocess.run(
            [sbatch, "--test-only"],
            input=script,
            capture_output=True,
            text=True,
            timeout=SBATCH_CHECK_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise ConfigurationError(
            f"SLURM: sbatch --test-only did not answer within {SBATCH_CHECK_TIMEOUT:.0f} s "
            "(is slurmctld reachable?)"
        ) from None
    except OSError as exc:
        raise ConfigurationError(f"SLURM: cannot run {sbatch}: {exc}") from exc
    if done.returncode != 0:
        lines = [
            line.strip().removeprefix("sbatch: error: ").removeprefix("sbatch: ")
            for line in (done.stderr + done.stdout).splitlines()
            if line.strip()
        ]
        reason = "; ".join(dict.fromkeys(lines)) or f"exit code {done.returncode}"
        raise ConfigurationError(f"SLURM refused the worker job: {reason}")
    log.debug("sbatch --test-only: %s", done.stderr.strip())


def cancel_jobs_named(name: str) -> None:
    """Cancel this user's SLURM jobs called ``name`` (``scancel --name``); errors are logged."""
    import getpass
    import subprocess

    try:
        done = subprocess.run(
            ["scancel", "--name", name, "--user", getpass.getuser()],
            capture_output=True,
            text=True,
            timeout=SBATCH_CHECK_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.warning("could not cancel the SLURM jobs %s: %s", name, exc)
        return
    if done.returncode != 0:
        log.warning("scancel --name %s: %s", name, done.stderr.strip())


def queued_jobs_named(name: str) -> list[str] | None:
    """IDs of this user's jobs called ``name`` in the SLURM queue (any state), or None if
    ``squeue`` did not answer."""
    import getpass
    import subprocess

    try:
        done = subprocess.run(
            ["squeue", "-h", "--name", name, "--user", getpass.getuser(), "-o", "%i"],
            capture_output=True,
            text=True,
            timeout=SBATCH_CHECK_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.split() if done.returncode == 0 else None


class _SlurmWatch:
    """Notices that a command's SLURM jobs are all gone while no Dask worker is connected.

    Jobs end without a worker when SLURM cancels them (an administrator, preemption, the time
    limit) or when their workers cannot start or reach the scheduler; the tasks would then
    wait forever.  Checked every ``interval`` seconds once the jobs are submitted (the
    cluster knows their IDs) or seen in the queue; seen twice in a row, every task of the
    client is cancelled, so :func:`run_tasks` stops with an error, and :attr:`failure` says
    why.
    """

    def __init__(self, client: Any, name: str, cluster: Any = None, interval: float = 5.0):
        import threading

        self.client = client
        self.name = name
        self.cluster = cluster
        self.interval = interval
        self.failure: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"watch:{name}")

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=self.interval + 5)

    def _run(self) -> None:
        import time

        start = time.monotonic()
        seen = False
        strikes = 0
        while not self._stop.wait(self.interval):
            jobs = queued_jobs_named(self.name)
            try:
                workers = len(self.client.scheduler_info().get("workers", {}))
            except Exception:  # noqa: BLE001 - the client is closing: nothing to watch
                return
            if jobs is None:  # squeue did not answer: cannot tell
                continue
            seen = seen or bool(jobs) or self._submitted()
            if jobs or workers or (not seen and time.monotonic() - start < 60):
                strikes = 0
                continue
            strikes += 1
            if strikes < 2:
                continue
            self.failure = (
                f"the SLURM jobs {self.name} ended and no Dask worker is connected (cancelled, "
                "over their time limit, or their workers could not start or reach this host: "
                "see the jobs' output files, slurm-<job>.out)"
            )
            log.info("%s", self.failure)
            self._cancel_all()
            return

    def _submitted(self) -> bool:
        """Whether the cluster has job IDs for all its jobs (sbatch answered)."""
        try:
            jobs = list(self.cluster.workers.values())
            return bool(jobs) and all(getattr(j, "job_id", None) for j in jobs)
        except Exception:  # noqa: BLE001 - not a dask-jobqueue cluster, or closing
            return False

    def _cancel_all(self) -> None:
        from distributed import Future

        try:
            futures = [Future(key, self.client) for key in list(self.client.futures)]
            self.client.cancel(futures, msg=self.failure)
        except Exception:  # the client is closing anyway
            log.debug("cancelling the tasks failed", exc_info=True)


class _Interrupted(KeyboardInterrupt):
    """SIGINT, SIGTERM or SIGHUP arrived while SLURM jobs were out (handled as Ctrl-C)."""


@contextlib.contextmanager
def _signals_interrupt() -> Iterator[None]:
    """While in this block, SIGINT, SIGTERM and SIGHUP interrupt the main thread like Ctrl-C.

    Python's default for SIGTERM and SIGHUP ends the process without unwinding, which would
    leave the SLURM jobs queued or running until their workers' ``--death-timeout`` (60 s
    without a scheduler); raised as :class:`KeyboardInterrupt`, they unwind through the
    cluster's close, which cancels the jobs.  SIGINT too, even when the command was started
    with SIGINT ignored (a background job of a script: Python then keeps ignoring it), so that
    ``kill -INT`` stops it as it stops ``pulsetrain run``.  Only in the main thread (elsewhere
    signals cannot be handled).
    """
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise _Interrupted(signal.Signals(signum).name)

    previous = {
        sig: signal.signal(sig, interrupt) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    }
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def open_client(config: ClusterConfig | None = None, client: Any = None) -> Iterator[Any]:
    """A ``distributed.Client`` for ``config``, closed (with its cluster) on exit.

    Parameters
    ----------
    config : ClusterConfig, optional
        Back end (default: a local cluster with one worker per core).
    client : distributed.Client, optional
        Use this client as it is (it is not closed on exit); ``config`` is then ignored.

    Yields
    ------
    distributed.Client
    """
    if client is not None:
        yield client
        return
    import dask
    from dask.distributed import Client, LocalCluster

    config = config or ClusterConfig()
    if config.kind == "scheduler":
        log.info("connecting to the Dask scheduler at %s", config.scheduler)
        try:
            c = Client(config.scheduler, timeout=f"{float(config.connect_timeout)}s")
        except OSError as exc:
            raise ConfigurationError(
                f"cannot reach the Dask scheduler at {config.scheduler}: {exc}"
            ) from exc
        with c:
            yield c
        return
    if config.kind == "slurm":
        assert config.slurm is not None
        submit = sbatch_path()  # before anything starts
        extra = dict(config.extra)
        if config.dashboard:
            extra.setdefault("scheduler_options", {"dashboard_address": config.dashboard})
        # A name of this command's own, to find every job it submitted.
        extra.setdefault("job_name", f"pulsetrain-{os.getpid()}-{os.urandom(3).hex()}")
        with _quiet_distributed(), _signals_interrupt():
            cluster = slurm_cluster(config.slurm, **extra)
            try:
                log.info("SLURM job script:\n%s", cluster.job_script())
                check_job_script(cluster.job_script(), submit)
                cluster.scale(jobs=int(config.slurm.jobs))
                log.info(
                    "submitting %d SLURM jobs (%s) of %d workers",
                    config.slurm.jobs,
                    extra["job_name"],
                    config.slurm.cores,
                )
                with Client(cluster) as c:
                    watch = _SlurmWatch(c, extra["job_name"], cluster)
                    watch.start()
                    try:
                        yield c
                    except BatchJobError as exc:
                        if watch.failure:  # the tasks were cancelled because of it
                            raise BatchJobError(watch.failure) from exc
                        raise
                    finally:
                        watch.stop()
            finally:
                # Closing the cluster cancels the jobs whose IDs dask-jobqueue has.  Interrupted
                # while the client was still connecting, distributed may fail to close it
                # (asyncio cancellation inside its sync()); that must neither hide why the
                # command ended nor leave jobs: every job of this command's name is cancelled
                # in any case, including one whose sbatch was still under way.
                try:
                    cluster.close()
                except (Exception, asyncio.CancelledError) as exc:  # noqa: BLE001 - see above
                    log.info("closing the SLURM cluster failed: %s: %s", type(exc).__name__, exc)
                finally:
                    cancel_jobs_named(extra["job_name"])
        return
    workers = int(config.workers or os.cpu_count() or 1)
    extra = dict(config.extra)
    settings = local_cluster_settings() if config.lean else {}
    # our own worker processes may freeze their objects out of the GC (see freeze_gc_once)
    extra["env"] = {**extra.get("env", {}), GC_FREEZE_ENV: "1"}
    with _quiet_distributed():
        with dask.config.set(settings):  # read when the scheduler, nannies and workers start
            cluster = LocalCluster(
                n_workers=workers,
                threads_per_worker=1,
                processes=True,
                # The scheduler's HTTP server starts in any case; a free port avoids clashes
                # with other clusters on the machine (":8787" is Dask's default).
                dashboard_address=config.dashboard or ":0",
                memory_limit=config.memory_limit,
                silence_logs=logging.ERROR,
                **extra,
            )
        log.info("local Dask cluster: %d worker processes x 1 thread", workers)
        with cluster, Client(cluster) as c:
            yield c


#: Dask settings of the local clusters :func:`open_client` starts, where a setting still has
#: Dask's default.  Dask's defaults suit long-lived shared clusters watched on a dashboard; on a
#: job's own local cluster they are background work on the cores the job runs on.  Measured on
#: 2 cores with 2 idle workers: the client process's event loop used 54 ms of CPU per second
#: with Dask's defaults and 10 ms with these, each worker 32 ms and 4 ms.
#:
#: * the event-loop health check every 1 s (Dask: 20 ms; it only warns about a blocked loop);
#: * the dashboard's CPU/memory samples every 1 s (500 ms);
#: * the nannies' and workers' memory checks every 500 ms (100 ms): a worker that grows past
#:   its limit is still paused, spilled and restarted, at most 0.4 s later;
#: * no statistical profiler in the workers (it samples the running task's stack every 10 ms
#:   for the dashboard's profile page).
#:
#: A value set in the user's Dask configuration (files, ``DASK_*`` variables,
#: ``dask.config.set``) that differs from Dask's default is kept; ``ClusterConfig(lean=False)``
#: keeps all of them.
LOCAL_CLUSTER_SETTINGS: dict[str, Any] = {
    "distributed.admin.tick.interval": "1s",
    "distributed.admin.system-monitor.interval": "1s",
    "distributed.worker.memory.monitor-interval": "500ms",
    "distributed.worker.profile.enabled": False,
}


def local_cluster_settings() -> dict[str, Any]:
    """The entries of :data:`LOCAL_CLUSTER_SETTINGS` whose key the user has not changed."""
    import dask
    import distributed  # noqa: F401 - registers Dask's distributed defaults

    builtin = dask.config.merge(*dask.config.defaults)
    missing = object()
    return {
        key: value
        for key, value in LOCAL_CLUSTER_SETTINGS.items()
        if dask.config.get(key, missing) == dask.config.get(key, missing, config=builtin)
    }


_GC_FROZEN = False

#: Set in the environment of the worker processes :func:`open_client` starts itself: only those
#: freeze their objects (never the workers of someone else's scheduler or SLURM cluster).
GC_FREEZE_ENV = "PULSETRAIN_WORKER_GC_FREEZE"


def freeze_gc_once(*, only_in_worker: bool = False) -> bool:
    """Move every object this process holds now out of the cyclic garbage collector's sight
    (:func:`gc.freeze`), once per process; returns whether it froze now.

    A Dask worker that has imported numpy, h5py, numba, Dask and pulsetrain holds about 200,000
    objects, and each full collection walks all of them again: ``perf record -a`` during a
    2-worker correction on 2 cores put 8 % of all CPU samples into the workers'
    ``gc_collect_main``, and less than 0.1 % with the freeze.  The task functions call this at
    the end of their first task (``only_in_worker=True``: only in a worker process of a local
    cluster that :func:`open_client` started, never in a caller's own process or in the workers
    of a cluster shared with others), when everything they import is loaded; the command-line
    tools call it for their own process.  Objects made later are collected as usual.
    """
    global _GC_FROZEN
    if _GC_FROZEN:
        return False
    if only_in_worker:
        if os.environ.get(GC_FREEZE_ENV) != "1":
            return False
        try:
            from distributed import get_worker

            get_worker()
        except (ImportError, ValueError):
            return False
    import gc

    gc.collect()
    gc.freeze()
    _GC_FROZEN = True
    return True


@contextlib.contextmanager
def caller_objects_frozen() -> Iterator[None]:
    """For the duration of a job, keep the caller's existing objects out of the cyclic GC.

    The process that submits a job also runs the local cluster's scheduler, whose bookkeeping
    makes Python's garbage collector run full collections; each walks every object the caller
    holds (a notebook or a benchmark: hundreds of thousands).  ``perf`` put about 4 % of all
    CPU samples of a 2-worker correction on 2 cores into that.  On entry the objects that
    exist now are frozen (:func:`gc.freeze`); on exit they are unfrozen, so nothing is kept
    from collection beyond the job.  Does nothing if the process has frozen objects already
    (the command-line tools freeze theirs for good) or has the collector switched off.
    """
    import gc

    if gc.get_freeze_count() or not gc.isenabled():
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def worker_task(func: Callable[..., Any]) -> Callable[..., Any]:
    """Decorate a function run as a Dask task: after its first run in a worker process, that
    worker's objects are frozen out of the garbage collector (:func:`freeze_gc_once`)."""

    @functools.wraps(func)
    def task(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        finally:
            if not _GC_FROZEN:
                freeze_gc_once(only_in_worker=True)

    return task


@contextlib.contextmanager
def _quiet_distributed() -> Iterator[None]:
    """Keep the in-process scheduler's INFO chatter off the terminal unless asked for.

    ``distributed`` configures its own logger at INFO; while a local cluster runs, its level
    follows the root logger's (WARNING by default in the command line), and is restored after.
    """
    logger = logging.getLogger("distributed")
    before = logger.level
    if logging.getLogger().getEffectiveLevel() > logging.INFO:
        logger.setLevel(max(logging.WARNING, logging.getLogger().getEffectiveLevel()))
    try:
        yield
    finally:
        logger.setLevel(before)


def numba_threads(client: Any) -> int:
    """Numba threads each task may use: the worker's thread budget (1 on a local cluster).

    Worker processes with one Dask thread each get one numba thread, so two workers on two
    cores do not fight over the cores with four kernel threads.
    """
    try:
        info = client.scheduler_info()
        nthreads = [w.get("nthreads", 1) for w in info.get("workers", {}).values()]
        return max(1, min(nthreads) if nthreads else 1)
    except Exception:  # noqa: BLE001 - a scheduler that cannot tell: be conservative
        return 1


def set_numba_threads(n: int) -> None:
    """Let numba kernels in this (worker) process use ``n`` threads (within numba's limit)."""
    try:
        import numba

        numba.set_num_threads(max(1, min(int(n), numba.config.NUMBA_NUM_THREADS)))
    except Exception:  # numba missing or refusing: keep its default
        log.debug("could not set numba threads to %s", n, exc_info=True)


def run_tasks(
    client: Any,
    futures: Iterable[Any],
    describe: Callable[[Any], str],
    on_result: Callable[[Any, Any], None],
) -> None:
    """Wait for futures in completion order and hand each result to ``on_result``.

    Parameters
    ----------
    client : distributed.Client
        The client that made the futures.
    futures : iterable of distributed.Future
        The tasks.
    describe : callable
        ``describe(future) -> str`` names a task in error messages.
    on_result : callable
        ``on_result(future, result)``, called on this thread as tasks finish (progress bars).

    Raises
    ------
    BatchJobError
        The first task that failed (the others are cancelled), naming it and the cause.
    """
    from dask.distributed import as_completed

    futures = list(futures)
    try:
        for fut in as_completed(futures):
            if fut.status == "error":
                exc = fut.exception()
                raise BatchJobError(f"{describe(fut)} failed: {type(exc).__name__}: {exc}") from exc
            if fut.status == "cancelled":
                raise BatchJobError(f"{describe(fut)} was cancelled (worker lost?)")
            on_result(fut, fut.result())
    except BaseException:
        client.cancel(futures)
        raise


# ------------------------------------------------------------------------------ command line
def add_cluster_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the back-end options (``--workers``, ``--scheduler``, ``--slurm`` ...) to a parser."""
    g = parser.add_argument_group(
        "where to run (Dask)",
        "default: a local cluster of --workers processes with one thread each",
    )
    x = g.add_mutually_exclusive_group()
    x.add_argument("--workers", type=int, default=None, help="local worker processes")
    x.add_argument(
        "--scheduler",
        default=None,
        metavar="ADDR",
        help="use an existing Dask scheduler, e.g. tcp://host:8786",
    )
    x.add_argument("--slurm", action="store_true", help="run workers as SLURM jobs (dask-jobqueue)")
    g.add_argument("--queue", default=None, help="SLURM partition")
    g.add_argument("--cores", type=int, default=16, help="SLURM: cores (worker processes) per job")
    g.add_argument("--memory", default="64GB", help="SLURM: memory per job")
    g.add_argument("--walltime", default="01:00:00", help="SLURM: time limit per job")
    g.add_argument("--jobs", type=int, default=1, help="SLURM: number of jobs")
    g.add_argument("--account", default=None, help="SLURM: accounting project")
    g.add_argument(
        "--job-extra",
        action="append",
        default=[],
        metavar="OPTION",
        help="SLURM: extra #SBATCH option (repeatable)",
    )
    g.add_argument(
        "--print-job-script",
        action="store_true",
        help="SLURM: print the batch script and exit without submitting",
    )
    g.add_argument(
        "--dashboard",
        default=None,
        metavar="ADDR",
        help="local cluster: serve the Dask dashboard here (e.g. :8787)",
    )


def cluster_config_from_args(args: argparse.Namespace) -> ClusterConfig:
    """The :class:`ClusterConfig` the options of :func:`add_cluster_arguments` describe."""
    slurm = None
    if args.slurm:
        slurm = SlurmOptions(
            queue=args.queue,
            cores=args.cores,
            memory=args.memory,
            walltime=args.walltime,
            jobs=args.jobs,
            job_extra=tuple(args.job_extra),
            account=args.account,
        )
    return ClusterConfig(
        workers=args.workers, scheduler=args.scheduler, slurm=slurm, dashboard=args.dashboard
    )


def print_job_script(config: ClusterConfig) -> int:
    """Print the SLURM batch script of ``config`` without submitting anything."""
    if config.slurm is None:
        print("error: --print-job-script needs --slurm", file=sys.stderr)
        return 2
    cluster = slurm_cluster(config.slurm)
    try:
        print(cluster.job_script())
    finally:
        cluster.close()
    return 0
