"""Device servers as SLURM jobs (``deploy/pulsetrain-server.sbatch``): figure 2 of the design
(simulated AGIPD -> per-module corrections -> train matcher -> Karabo bridge) on servers that
SLURM started, named in the topology by the control endpoints the jobs announced; a stock
``karabo_bridge.Client`` receives the corrected, matched trains; every job ends with the test."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tomllib
from _slurm_helpers import cancel, jobs_gone, squeue

from waiting import wait_until

pytestmark = pytest.mark.slurm

ROOT = Path(__file__).resolve().parents[2]
SBATCH_SCRIPT = ROOT / "deploy" / "pulsetrain-server.sbatch"
DET = "SPB_DET_AGIPD1M-1"
MODULES = (0, 1)
FRAMES = 4
CELLS = 16
#: ports each server gets: its control port, then its outputs from control + 1
PORTS_PER_SERVER = 40


def _free_block(host: str, n: int) -> int:
    """First of ``n`` consecutive ports free on ``host``, below the ephemeral range (so that no
    other program's outgoing connection takes one meanwhile)."""
    from pulsetrain.runtime.ports import port_problem

    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(20000, 32000 - n)
        if all(port_problem(host, p) is None for p in range(base, base + n)):
            return base
    raise AssertionError(f"no {n} consecutive free ports on {host}")


def _submit(
    name: str, job: str, port: int, *, token: Path, announce: Path, partition: str, catalog: str
):
    preload = str(Path(__file__).with_name("preload"))  # see preload/sitecustomize.py
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [preload, os.environ.get("PYTHONPATH")])),
        "PULSETRAIN_TEST_PRELOAD_CATALOG": catalog,
        "PULSETRAIN_SERVER_NAME": name,
        "PULSETRAIN_SERVER_PORT": str(port),
        "PULSETRAIN_TOKEN_FILE": str(token),
        "PULSETRAIN_ANNOUNCE_DIR": str(announce),
        "PULSETRAIN_PYTHON": sys.executable,
    }
    done = subprocess.run(
        # one core and 2 GB each: the two servers fit the 2-core test node side by side
        ["sbatch", "--parsable", f"--job-name={job}", "-p", partition, "--mem=2G"]
        + ["--time=00:15:00", f"--output={announce}/%x-%j.out", str(SBATCH_SCRIPT)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().split(";")[0]


def _announced(path: Path, job: str, log_dir: Path) -> dict | None:
    """The server table a job announced, or None yet; fails if the job ended without one."""
    if path.exists():
        return tomllib.loads(path.read_text())
    if job not in squeue():
        logs = "".join(p.read_text() for p in log_dir.glob(f"*-{job}.out"))
        raise AssertionError(f"job {job} ended without announcing its server:\n{logs}")
    return None


def _topology(servers: dict[str, dict], catalog: str, bridge: str) -> str:
    lines = ['[topology]\nname = "figure2-slurm"\n']
    for name, table in servers.items():
        lines.append(f"[servers.{name}]")
        lines += [f"{k} = {v!r}" if isinstance(v, str) else f"{k} = {v}" for k, v in table.items()]
        lines.append("")
    sim = f"{DET}/DET/SIM"
    devices = [
        (sim, "SimulatedDetector", "det", {"detector": "AGIPD", "frames": FRAMES}),
        (
            f"{DET}/CAL/MATCHER",
            "TrainMatcher",
            "out",
            {
                "mode": "match",
                "buffer_size": 20,
                "sources": [f"{DET}/CORR/{m}CH0:output" for m in MODULES],
            },
        ),
        (
            f"{DET}/CAL/BRIDGE",
            "Bridge",
            "out",
            {"endpoint": bridge, "pattern": "REP", "max_queue": 2},
        ),
    ]
    devices[0][3].update(memory_cells=CELLS, rate=10.0, modules=list(MODULES))
    connections = [(f"{DET}/CAL/MATCHER:output", f"{DET}/CAL/BRIDGE:input")]
    for m in MODULES:
        corr = f"{DET}/CAL/CORR_{m:02d}"
        config = {"module": m, "memory_cells": CELLS, "catalog": catalog}
        # every module's data crosses from the detector's job to the other one over TCP
        devices.append((corr, "AGIPDCorrection", "out", config))
        connections.append((f"{sim}:module{m}", f"{corr}:input"))
        connections.append((f"{corr}:output", f"{DET}/CAL/MATCHER:input"))
    for device, cls, server, config in devices:
        items = ", ".join(f"{k} = {_toml(v)}" for k, v in config.items())
        lines.append(f'[devices."{device}"]\nclass = "{cls}"\nserver = "{server}"')
        lines.append(f"config = {{ {items} }}\n")
    for a, b in connections:
        lines.append(f'[[connections]]\nfrom = "{a}"\nto = "{b}"')
        lines.append('on_slowness = "queueDrop"\nmax_queue_length = 4\n')
    return "\n".join(lines)


def _toml(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return repr(value)


def test_figure2_on_servers_started_by_slurm(slurm_partition, tmp_path):
    from karabo_bridge import Client

    from pulsetrain.bootstrap import store_truth_constants
    from pulsetrain.catalog import Catalog
    from pulsetrain.demo import warm_kernels
    from pulsetrain.runtime.control import new_token
    from pulsetrain.runtime.supervisor import Supervisor
    from pulsetrain.runtime.topology import Topology
    from pulsetrain.sim import DetectorSimulator

    catalog = f"sqlite:///{tmp_path / 'catalog.sqlite'}"
    cat = Catalog(catalog)
    sim = DetectorSimulator("AGIPD", frames=FRAMES, memory_cells=CELLS, modules=MODULES)
    store_truth_constants(cat, sim, modules=list(MODULES))
    cat.close()
    # Compile the correction kernel into numba's on-disk cache now, as `pulsetrain demo` does,
    # so the two servers load it instead of both compiling it while their devices start.
    warm_kernels(FRAMES)

    token = tmp_path / "token"
    token.write_text(new_token())
    token.chmod(0o600)
    announce = tmp_path / "announce"  # a directory the jobs and this test share
    announce.mkdir()
    base = _free_block("127.0.0.1", 2 * PORTS_PER_SERVER + 1)
    prefix = f"pt-fig2-{os.getpid()}-{random.randrange(16**4):04x}"
    jobs: dict[str, str] = {}
    try:
        for i, name in enumerate(("det", "out")):
            jobs[name] = _submit(
                name,
                f"{prefix}-{name}",
                base + i * PORTS_PER_SERVER,
                token=token,
                announce=announce,
                partition=slurm_partition,
                catalog=catalog,
            )
        servers = {}
        for name, job in jobs.items():
            path = announce / f"{name}.server.toml"
            table = wait_until(
                lambda p=path, j=job: _announced(p, j, announce),
                timeout=180,
                what=f"server {name} (job {job}) announced",
            )["servers"][name]
            assert set(table) == {"endpoint", "data_host", "port_base"}
            assert table["endpoint"] == f"tcp://{table['data_host']}:{table['port_base'] - 1}"
            servers[name] = table
        assert squeue(prefix).keys() == set(jobs.values())  # both servers are running jobs
        host = servers["out"]["data_host"]
        bridge = f"tcp://{host}:{base + 2 * PORTS_PER_SERVER}"
        topology = tmp_path / "figure2-slurm.toml"
        topology.write_text(_topology(servers, catalog, bridge))

        with Supervisor(
            Topology.load(topology), token=token.read_text(), workdir=tmp_path / "run"
        ) as sup:
            for m in MODULES:
                corr = f"{DET}/CAL/CORR_{m:02d}"
                sup.device_client(corr).wait_for(corr, "constantsLoaded", True, 120)
            received = 0
            with Client(bridge, timeout=60) as client:
                while received < 5:
                    data, meta = client.next()
                    modules = sorted(s for s in data if "/CORR/" in s)
                    assert len(modules) == len(MODULES), sorted(data)
                    tids = {int(meta[s]["timestamp.tid"]) for s in modules}
                    assert len(tids) == 1  # matched: both modules of one train
                    for s in modules:
                        image = np.asarray(data[s]["image.data"])
                        assert image.shape == (FRAMES, 512, 128) and image.dtype == np.float32
                        assert data[s]["calibration.corrected"]
                    received += 1
    finally:
        cancel(set(jobs.values()) | set(squeue(prefix)))
    wait_until(lambda: jobs_gone(jobs.values()), timeout=60, what="the server jobs gone")
    # each job withdrew its announcement as it ended
    assert not list(announce.glob("*.server.toml"))
