"""Load-balanced replicas on two test hosts: one shared output feeds a replica on each host,
the matcher merges them; every train comes out once, and a replica killed half-way loses only
what it held, counted by the matcher.

The source and the matcher run on local servers of the control host (outputs bound on the
test bridge's address); each replica runs in a ``pulsetrain server`` on its own test host, started
there the way a systemd unit starts it.  Between hosts the channels are TCP (asserted from the
source output's own statistics).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

import pytest

from pulsetrain.runtime.control import Client, new_token
from pulsetrain.runtime.supervisor import Supervisor
from pulsetrain.runtime.topology import Topology
from replica_run import replica_pipeline, run_and_check
from waiting import wait_until

pytestmark = pytest.mark.multihost

N = 200
CONTROL_PORT = 7000


def topology_text(name: str, control_address: str, hosts) -> str:
    servers = "\n".join(
        textwrap.dedent(f"""
            [servers.{h.name}]
            endpoint = "tcp://{h.address}:{CONTROL_PORT}"
            data_host = "{h.address}"
            port_base = {CONTROL_PORT + 100}
        """)
        for h in hosts
    )
    head = f'[topology]\nname = "{name}"\n\n'
    head += f'[servers.src]\ndata_host = "{control_address}"\n'
    head += f'[servers.sink]\ndata_host = "{control_address}"\n'
    return head + servers + replica_pipeline(N, 30.0, 0.05, [h.name for h in hosts])


def start_server(host, token_file) -> subprocess.Popen:
    """``pulsetrain server`` on a test host, as a systemd unit would start it."""
    log = open(host.tmp / f"server-{host.name}.log", "ab")  # noqa: SIM115 - closed by the test
    proc = host.popen(
        [sys.executable, "-m", "pulsetrain", "server", "--name", host.name,
         "--bind", f"tcp://{host.address}:{CONTROL_PORT}", "--token-file", str(token_file)],
        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    proc.log = log  # type: ignore[attr-defined]
    return proc


@pytest.mark.parametrize("kill", [False, True], ids=["all-alive", "one-killed"])
def test_two_replicas_on_two_hosts(hosts, tmp_path, kill):
    token = new_token()
    token_file = tmp_path / "token"
    token_file.write_text(token)
    token_file.chmod(0o600)
    procs = [start_server(h, token_file) for h in hosts]
    try:
        for h in hosts:
            with Client(f"tcp://{h.address}:{CONTROL_PORT}", token=token, timeout=2) as c:

                def up(c=c) -> bool:
                    try:
                        return bool(c.request("ping", timeout=1.0))
                    except TimeoutError:
                        return False

                wait_until(up, 60, f"server on {h.name}")
        path = tmp_path / "replicas.toml"
        path.write_text(topology_text(f"mh-replicas-{int(kill)}", hosts.control_address, hosts))
        topo = Topology.load(path)
        assert [topo.devices[r].server for r in topo.replicas_of("R/WORK")] == ["h0", "h1"]
        with Supervisor(topo, token=token, workdir=tmp_path / "run") as sup:

            def source_connections() -> list:
                return sup.get("R/SOURCE", "channels.outputs.output.connections")

            conns = wait_until(lambda: len(source_connections()) == 2 and source_connections(),
                               20, "both replicas read the source")  # fmt: skip
            assert all(c["data_distribution"] == "shared" for c in conns)
            assert not any(c["shared_memory"] for c in conns), "TCP between hosts"

            def kill_h1() -> None:  # replica 2's host's server dies for good
                procs[1].send_signal(signal.SIGKILL)

            run = run_and_check(sup, N, kill_h1 if kill else None, timeout=120)
            if kill:
                assert run.lost <= 4, "a dead replica swallows no more than it held"
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait(10)
            p.log.close()  # type: ignore[attr-defined]
