"""A supervisor killed with SIGKILL leaves no process of its run on any host: its local servers
exit by themselves, the remote servers (started by their hosts, as by systemd) stop the run's
devices when its lease runs out and wait for the next supervisor, which gets them at once."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from services import Service

from waiting import wait_until

pytestmark = pytest.mark.multihost

LEASE_TTL = 10.0  # the supervisor's default


def topology(name: str, net, a: Service, b: Service, b2: Service) -> str:
    return f"""
[topology]
name = "{name}"
[servers.local]
data_host = "{net.control_address}"
[servers.a]
endpoint = "{a.endpoint}"
data_host = "{a.host.address}"
port_base = 7100
[servers.b]
endpoint = "{b.endpoint}"
data_host = "{b.host.address}"
port_base = 7100
[servers.b2]
endpoint = "{b2.endpoint}"
data_host = "{b2.host.address}"
port_base = 7200
[devices.SRC]
class = "TrainSource"
server = "local"
config = {{ rate = 10.0, shape = [4, 128, 128] }}
[devices.PASS]
class = "Passthrough"
server = "a"
[devices.STATS]
class = "ModuleStatistics"
server = "b2"
[devices.PASS_B]
class = "Passthrough"
server = "b"
[[connections]]
from = "SRC:output"
to = "PASS:input"
[[connections]]
from = "PASS:output"
to = "PASS_B:input"
[[connections]]
from = "PASS_B:output"
to = "STATS:input"
"""


def test_killed_supervisor_leaves_no_process_of_its_run_on_any_host(make_hosts, tmp_path):
    from pulsetrain.runtime import runstate
    from pulsetrain.runtime.control import new_token

    net = make_hosts(2)
    token = tmp_path / "token"
    token.write_text(new_token())
    token.chmod(0o600)
    a = Service(net[0], "a", token).start()
    b = Service(net[1], "b", token).start()
    b2 = Service(net[1], "b2", token, port=7001).start()  # a second server on host b
    name = f"sigkill-{os.getpid()}"
    path = tmp_path / "t.toml"
    path.write_text(topology(name, net, a, b, b2))
    sup = subprocess.Popen(
        [sys.executable, "-m", "pulsetrain", "run", str(path), "--token-file", str(token),
         "--workdir", str(tmp_path / "run")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        wait_until(
            lambda: (
                (b2.ping() or {}).get("devices") == ["STATS"]
                and runstate.read_state(runstate.state_path(name))
            ),
            timeout=120,
            what="the run started",
        )
        state = runstate.read_state(runstate.state_path(name))
        local_pid = state["servers"]["local"]["pid"]
        with b2.client() as c:
            wait_until(lambda: c.get("STATS", "processed") > 5, timeout=30, what="data flows")
        # PASS_B -> STATS: two servers on one host, through shared memory
        assert any(n.startswith("pulsetrain-") for n in b.host.shm_files())
        server_pids = {a.host.name: [a.proc.pid], b.host.name: sorted([b.proc.pid, b2.proc.pid])}
        sup.kill()  # SIGKILL: no clean-up of its own
        sup.wait(timeout=10)
    except BaseException:
        if sup.poll() is None:
            sup.kill()
        print(sup.stdout.read())
        raise
    finally:
        if sup.poll() is None:
            sup.kill()
        out = sup.stdout.read()
        sup.stdout.close()
    # The control host: the local server exits by itself.
    wait_until(lambda: not runstate.pid_alive(local_pid), timeout=15, what="local server gone")
    # Each test host: the run's devices are stopped within the lease; only the server that its
    # host started is left, with nothing of the run (no device, no shared memory).
    for svc in (a, b, b2):
        info = wait_until(
            lambda svc=svc: (p := svc.ping()) is not None and not p["devices"] and p,
            timeout=LEASE_TTL + 10,
            what=f"{svc.name}: the run's devices stopped",
        )
        assert info["lease"]["owner"] is None, info
        assert sorted(svc.host.processes()) == server_pids[svc.host.name], [
            svc.host.cmdline(p) for p in svc.host.processes()
        ]
        assert not [n for n in svc.host.shm_files() if n.startswith("pulsetrain-")]
    log = b.log.read_text()
    assert "lease of topology" in log and "expired" in log, log[-2000:]
    # The next supervisor takes the servers at once.
    from pulsetrain.runtime.supervisor import Supervisor
    from pulsetrain.runtime.topology import Topology

    with Supervisor(Topology.load(path), token=token.read_text(), workdir=tmp_path / "run2"):
        assert b.ping()["devices"] == ["PASS_B"] and b2.ping()["devices"] == ["STATS"], out
    assert b.ping()["devices"] == [] == b2.ping()["devices"]  # a clean stop releases at once
