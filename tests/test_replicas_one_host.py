"""Load-balanced replicas: topology expansion and checks, the matcher's reordering, and a run on
one host (several local servers) where a replica is killed half-way.

The same run across two test hosts (network namespaces) is ``tests/multihost/test_replicas.py``
(this file has another name: two test modules of one basename cannot be collected together).
"""

from __future__ import annotations

import os
import signal
import textwrap

import numpy as np
import pytest

from pulsetrain.errors import PulsetrainError
from pulsetrain.runtime.supervisor import Supervisor
from pulsetrain.runtime.topology import Topology
from pulsetrain.testing import DeviceHarness
from replica_run import replica_pipeline, run_and_check, tid_of


def replicated_text(name: str, n: int = 200, rate: float = 30.0, delay: float = 0.05) -> str:
    """A source, two replicas of ``R/WORK`` on servers h1 and h2, and a matcher."""
    servers = "[servers.src]\n[servers.h1]\n[servers.h2]\n[servers.sink]\n"
    return f'[topology]\nname = "{name}"\n\n{servers}' + replica_pipeline(
        n, rate, delay, ["h1", "h2"]
    )


def write(tmp_path, text, name="t.toml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def replicated(tmp_path, name="replicas", n=200, rate=30.0, delay=0.05):
    return Topology.load(write(tmp_path, replicated_text(name, n, rate, delay)))


# ------------------------------------------------------------------ topology
def test_replicas_expand_into_devices_and_connections(tmp_path):
    topo = replicated(tmp_path)
    assert topo.check() == []
    work = {d: (s.server, s.replica_of, s.replica) for d, s in topo.devices.items()}
    assert work["R/WORK/1"] == ("h1", "R/WORK", 1)
    assert work["R/WORK/2"] == ("h2", "R/WORK", 2)
    assert "R/WORK" not in topo.devices
    assert topo.replicas_of("R/WORK") == ["R/WORK/1", "R/WORK/2"]
    pairs = sorted((c.output, c.input, c.number) for c in topo.connections)
    assert pairs == [
        ("R/SOURCE:output", "R/WORK/1:input", 1),
        ("R/SOURCE:output", "R/WORK/2:input", 1),
        ("R/WORK/1:output", "R/MATCH:input", 2),
        ("R/WORK/2:output", "R/MATCH:input", 2),
    ]
    configs = topo.resolve()
    # one output feeds both replicas (shared); the matcher reads both replicas' outputs
    src = configs["R/SOURCE"]["outputs"]["output"]["bind"][0]
    for rid in ("R/WORK/1", "R/WORK/2"):
        entry = configs[rid]["inputs"]["input"]
        assert entry["connect"] == [src] and entry["data_distribution"] == "shared"
    outs = {configs[r]["outputs"]["output"]["bind"][0] for r in ("R/WORK/1", "R/WORK/2")}
    # a (restarted) replica reads its input only once the matcher reads its output
    assert all(
        configs[r]["outputs"]["output"]["expect_inputs"] == 1 for r in topo.replicas_of("R/WORK")
    )
    assert set(configs["R/MATCH"]["inputs"]["input"]["connect"]) == outs and len(outs) == 2
    assert configs["R/MATCH"]["max_reorder"] == 8  # 4 per replica, unless configured


WORK_TABLE = '[devices."R/WORK"]'


def line_of(text: str, table: str) -> int:
    return 1 + text.splitlines().index(table)


def problems(tmp_path, text):
    return Topology.load(write(tmp_path, text)).check(ports=False)


def test_replica_mistakes_are_one_line_each_naming_the_table(tmp_path):
    base = replicated_text("bad", n=0, rate=10.0, delay=0.0)
    copy = base.replace('data_distribution = "shared"', 'data_distribution = "copy"')
    (line,) = problems(tmp_path, copy)
    assert line.startswith(f"{tmp_path / 't.toml'}:{line_of(copy, '[[connections]]')}: ")
    assert "[[connections]] #1 data_distribution: 'copy' would give every train to each " in line
    assert "replicas of 'R/WORK': feed replicas with data_distribution = \"shared\"" in line

    cases = {
        'servers = ["h1", "h1"]': "servers: 'h1' listed twice: each replica runs on its own server",
        'servers = ["h1", "nowhere"]': "servers: 'nowhere' is not in [servers]",
        'servers = ["h1"]': "replicas: 2 replicas but 1 servers: give one server per replica",
        'server = "h1"': "servers: missing: replicas = 2 run each on its own server",
        'servers = ["h1", "h2"]\nserver = "h1"': "give either server (one device) or servers",
        'servers = "h1"': "servers: must be a non-empty array of server names",
    }
    for replacement, expected in cases.items():
        text = base.replace('servers = ["h1", "h2"]', replacement)
        found = problems(tmp_path, text)
        assert len(found) == 1 and expected in found[0], (replacement, found)
        where = f"{tmp_path / 't.toml'}:{line_of(text, WORK_TABLE)}"
        assert found[0].startswith(f'{where}: [devices."R/WORK"] ')
    (found,) = problems(tmp_path, base.replace("replicas = 2", "replicas = 0"))
    assert "replicas: 0 must be an integer 1-64" in found
    # a property problem is reported once, not once per replica
    (found,) = problems(tmp_path, base.replace("delay = 0.0", "delay = -1.0"))
    assert '[devices."R/WORK"] config.delay: -1.0 is below the minimum' in found


# ------------------------------------------------------------------ matcher
A, B = "SRC/A:out", "SRC/B:out"


def send(dev, source, tid):
    dev.send({source: {"v": np.array([float(tid)]), "trainId": tid}}, train_id=tid)


def test_matcher_reorders_replicated_sources_and_counts_gaps():
    """Replicas deliver out of order: trains still go out in order, each once; a train no
    source delivered is given up once a train more than ``max_reorder`` newer is complete."""
    with DeviceHarness(
        "TrainMatcher", {"sources": [A], "max_reorder": 3}, device_id="TEST/MATCH/R"
    ) as dev:
        for tid in (1, 3, 2):  # replica 2 finished 3 before replica 1 finished 2
            send(dev, A, tid)
        assert [tid_of(dev.receive()[1]) for _ in range(3)] == [1, 2, 3]
        for tid in (5, 6, 7):  # train 4 was lost (a replica died with it): held back ...
            send(dev, A, tid)
        send(dev, A, 8)  # ... until 8 - 4 > 3: 4 is given up
        assert [tid_of(dev.receive()[1]) for _ in range(4)] == [5, 6, 7, 8]
        dev.wait_for("trainGaps", 1)
        dev.wait_for("sourceMissing", {A: 1})
        send(dev, A, 4)  # it turns up after all: late, never sent twice
        dev.wait_for("lateData", 1)
        for tid in (10, 11):  # 9 lost, and then the stream pauses: no train is held for ever
            send(dev, A, tid)
        assert [tid_of(dev.receive(timeout=10)[1]) for _ in range(2)] == [10, 11]
        dev.wait_for("trainGaps", 2)
        assert dev.get("matchedTrains") == 9 and dev.get("incompleteTrains") == 0
        assert dev.get("duplicateData") == 0


def test_matcher_gives_up_an_incomplete_train_only_beyond_max_reorder():
    with DeviceHarness(
        "TrainMatcher", {"sources": [A, B], "max_reorder": 2}, device_id="TEST/MATCH/R2"
    ) as dev:
        send(dev, A, 1)  # B of train 1 is still on its way (another replica)
        for tid in (2, 3):
            send(dev, A, tid)
            send(dev, B, tid)
        send(dev, B, 1)
        assert [tid_of(dev.receive()[1]) for _ in range(3)] == [1, 2, 3]
        send(dev, A, 4)  # B of 4 never comes
        for tid in (5, 6, 7):
            send(dev, A, tid)
            send(dev, B, tid)
        assert [tid_of(dev.receive()[1]) for _ in range(3)] == [5, 6, 7]
        dev.wait_for("incompleteTrains", 1)
        dev.wait_for("sourceMissing", {B: 1})


# ------------------------------------------------------------------ a run
@pytest.mark.parametrize("kill", [False, True], ids=["all-alive", "one-killed"])
def test_two_replicas_every_train_once_and_a_killed_replica_is_counted(tmp_path, kill):
    n = 200
    topo = replicated(tmp_path, name=f"replicas-{int(kill)}", n=n)
    sup = Supervisor(topo, workdir=tmp_path / "run", supervise_interval=0.2)
    with sup:
        run = run_and_check(
            sup, n, (lambda: os.kill(sup.pid("h2"), signal.SIGKILL)) if kill else None
        )
        if kill:
            # the replica died holding trains: lost, counted, and the others carried on
            print(f"restarts of h2: {sup.servers['h2'].restarts}")
            assert run.lost <= 8
            assert sup.get("R/WORK/1", "processed") > n // 2 - 20


def test_replica_ids_are_what_ctl_and_the_state_file_show(tmp_path):
    """``ctl list`` shows each replica under its server as ``<ID>/<k>``; get/set reach it."""
    topo = replicated(tmp_path, name="replicas-ids", n=0)
    with Supervisor(topo, workdir=tmp_path / "run") as sup:
        state = sup.state()
        assert state["devices"]["R/WORK/1"] == {"class": "Passthrough", "server": "h1"}
        assert state["devices"]["R/WORK/2"] == {"class": "Passthrough", "server": "h2"}
        assert "R/WORK" not in state["devices"]
        listing = sup.client("h2").list()
        assert list(listing) == ["R/WORK/2"]
        try:
            assert sup.get("R/WORK/2", "delay") == 0.05
        except PulsetrainError as exc:  # pragma: no cover - reported with the reason
            pytest.fail(str(exc))
