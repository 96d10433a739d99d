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
import threading

import pytest

from pulsetrain.errors import ChannelError, PulsetrainError
from pulsetrain.runtime.channels import EndOfStream, InputChannel
from pulsetrain.runtime.control import Client, new_token
from pulsetrain.runtime.supervisor import Supervisor
from pulsetrain.runtime.topology import Topology
from waiting import wait_until

pytestmark = pytest.mark.multihost

FIRST = 10_000_000  # TrainSource's first train ID
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
    names = ", ".join(f'"{h.name}"' for h in hosts)
    return textwrap.dedent(f"""
        [topology]
        name = "{name}"

        [servers.src]
        data_host = "{control_address}"
        [servers.sink]
        data_host = "{control_address}"
        {{servers}}

        [devices."R/SOURCE"]
        class = "TrainSource"
        server = "src"
        config = {{ rate = 30.0, n_trains = {N}, shape = [4, 32], source_prefix = "MOD", autostart = false }}

        [devices."R/WORK"]
        class = "Passthrough"
        replicas = {len(hosts)}
        servers = [{names}]
        config = {{ delay = 0.05 }}

        [devices."R/MATCH"]
        class = "TrainMatcher"
        server = "sink"
        config = {{ sources = ["MOD0"], buffer_size = 50 }}

        [[connections]]
        from = "R/SOURCE:output"
        to = "R/WORK:input"
        data_distribution = "shared"
        on_slowness = "wait"

        [[connections]]
        from = "R/WORK:output"
        to = "R/MATCH:input"
        on_slowness = "wait"
    """).replace("{servers}", servers)


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


class Reader:
    """Reads train IDs from the matcher's output in a thread (the pipeline waits for it)."""

    def __init__(self, endpoint: str, last: int):
        self.tap = InputChannel("test:tap", on_slowness="wait", window=8)
        self.tap.connect(endpoint)
        self.last = last
        self.got: list[int] = []
        self.done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self.done.is_set():
            try:
                item = self.tap.get(timeout=0.2)
            except TimeoutError:
                continue
            except ChannelError:
                return
            if isinstance(item, EndOfStream):
                break
            (tid,) = {m["timestamp.tid"] for m in item.meta.values()}
            self.got.append(tid)
            if tid >= self.last:
                break
        self.done.set()

    def close(self) -> None:
        self.done.set()
        self._thread.join(5)
        self.tap.close()


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
            reader = Reader(sup.endpoints()["R/MATCH:output"], FIRST + N - 1)
            try:
                wait_until(
                    lambda: len(sup.get("R/MATCH", "channels.outputs.output.connections")) == 1,
                    20,
                    "the test reads the matcher",
                )
                conns = sup.get("R/SOURCE", "channels.outputs.output.connections")
                assert len(conns) == 2 and all(c["data_distribution"] == "shared" for c in conns)
                assert not any(c["shared_memory"] for c in conns), "TCP between hosts"
                sup.call("R/SOURCE", "start_acquisition")
                killed_at = None
                if kill:
                    wait_until(
                        lambda: sup.get("R/SOURCE", "sentTrains") >= N // 2, 60, "half the trains"
                    )

                    def busy() -> bool:  # replica 2 holds a train: killing it loses that one
                        values = sup.get("R/WORK/2")
                        return values["trainsIn"] > values["processed"]

                    wait_until(busy, 20, "replica 2 busy with a train")
                    procs[1].send_signal(signal.SIGKILL)  # its host's server dies for good
                    killed_at = sup.get("R/SOURCE", "sentTrains")
                wait_until(reader.done.is_set, 120, f"train {FIRST + N - 1} out of the matcher")
            finally:
                reader.close()
            got = reader.got
            assert len(got) == len(set(got)), "a train came out twice"
            assert got == sorted(got), "trains out of order"
            assert set(got) <= set(range(FIRST, FIRST + N)) and got[-1] == FIRST + N - 1
            lost = N - len(got)

            def counted() -> bool:
                m = sup.get("R/MATCH")
                return (
                    m["matchedTrains"] == len(got)
                    and m["trainGaps"] + m["incompleteTrains"] == lost
                    and m["sourceMissing"].get("MOD0", 0) == lost
                )

            wait_until(counted, 20, "the matcher's statistics count the lost trains")
            assert sup.get("R/MATCH", "lateData") == 0
            assert sup.get("R/MATCH", "duplicateData") == 0
            if kill:
                print(f"\nreplica on h1 killed after {killed_at} trains: {lost} lost, "
                      f"{len(got)} of {N} out")  # fmt: skip
                assert lost >= 1, "the killed replica held a train"
                assert lost <= 4, "a dead replica swallows no more than it held"
                assert sum(1 for t in got if t >= FIRST + killed_at + 10) > 0
            else:
                assert lost == 0
                try:
                    shares = [sup.get(r, "processed") for r in ("R/WORK/1", "R/WORK/2")]
                except PulsetrainError as exc:  # pragma: no cover - with the reason
                    pytest.fail(str(exc))
                assert sum(shares) == N and min(shares) > N // 5, f"load not shared: {shares}"
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait(10)
            p.log.close()  # type: ignore[attr-defined]
