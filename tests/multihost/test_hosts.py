"""The test hosts themselves: separate /dev/shm, TCP between hosts, shared memory within one."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest

import hosts as hosts_module
from waiting import wait_until

pytestmark = pytest.mark.multihost

PRODUCER = textwrap.dedent("""
    import json, sys, time, numpy as np
    from pulsetrain.runtime.channels import OutputChannel
    from pulsetrain.protocol import make_meta
    out = OutputChannel("prod:output", sys.argv[1])
    assert out.wait_for_inputs(2, 30), "inputs did not connect"
    deadline = time.monotonic() + 10
    while not out._shm_inputs and time.monotonic() < deadline:
        time.sleep(0.01)
    for i in range(int(sys.argv[2])):
        a = np.full((4, 128, 128), i, np.float32)  # 256 KiB: large enough for shared memory
        out.write({"S": {"image.data": a, "n": i}}, {"S": make_meta("S", i)})
    out.signal_eos(timeout=30)
    print(json.dumps(out.connections()), flush=True)
    out.close()
""")

CONSUMER = textwrap.dedent("""
    import json, sys
    from pulsetrain.runtime.channels import EndOfStream, InputChannel
    inp = InputChannel(sys.argv[2], on_slowness="wait")
    inp.connect(sys.argv[1])
    got = []
    while True:
        item = inp.get(timeout=60)
        if isinstance(item, EndOfStream):
            break
        assert (item.data["S"]["image.data"] == item.data["S"]["n"]).all()
        got.append(int(item.data["S"]["n"]))
    print(json.dumps({"got": got, "shm_received": inp.shm_received}), flush=True)
    inp.close()
""")


def test_hosts_have_their_own_dev_shm_and_reach_each_other(hosts):
    a, b = hosts
    assert a.address != b.address
    a.run(["sh", "-c", "echo a > /dev/shm/pt-test-only-a"], check=True)
    assert "pt-test-only-a" in a.shm_files()
    assert "pt-test-only-a" not in b.shm_files()
    stat = "import os; s = os.stat('/dev/shm'); print(s.st_dev)"
    devs = {h.run([sys.executable, "-c", stat], check=True).stdout for h in hosts}
    assert len(devs) == 2
    # Two processes of one host share its /dev/shm (one mount namespace per host).
    assert "pt-test-only-a" in a.run(["ls", "/dev/shm"], check=True).stdout
    # b reaches a; the control host (this process) reaches b.
    server = b.popen(
        [
            sys.executable,
            "-c",
            (
                "import socket; s = socket.create_server(('0.0.0.0', 47001));"
                "c, _ = s.accept(); c.sendall(c.recv(10))"
            ),
        ],
    )

    def echo():
        try:
            with socket.create_connection((b.address, 47001), timeout=1) as c:
                c.sendall(b"ping")
                return c.recv(10)
        except OSError:
            return None

    assert wait_until(echo, timeout=20, what="control host reaches host b") == b"ping"
    server.wait(timeout=10)
    assert a.run(["ip", "route", "get", b.address], check=True).stdout.split()[2] == "eth0"


def test_channel_uses_tcp_between_hosts_and_shared_memory_within(hosts):
    a, b = hosts
    endpoint = f"tcp://{a.address}:47002"
    n = 20
    producer = a.popen(
        [sys.executable, "-c", PRODUCER, "tcp://0.0.0.0:47002", str(n)], stdout=-1, text=True
    )
    local = a.popen(
        [sys.executable, "-c", CONSUMER, endpoint, "same-host:input"], stdout=-1, text=True
    )
    remote = b.popen(
        [sys.executable, "-c", CONSUMER, endpoint, "other-host:input"], stdout=-1, text=True
    )
    outs = {}
    for name, proc in [("producer", producer), ("local", local), ("remote", remote)]:
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, (name, out)
        outs[name] = json.loads(out.strip().splitlines()[-1])
    conns = {c["remote_id"]: c for c in outs["producer"]}
    # The output's own statistics: shared memory to the input on its host, the socket to the other.
    assert conns["same-host:input"]["shared_memory"] is True
    assert conns["other-host:input"]["shared_memory"] is False
    assert outs["local"]["got"] == list(range(n)) == outs["remote"]["got"]
    assert outs["local"]["shm_received"] > 0
    assert outs["remote"]["shm_received"] == 0


def test_everything_is_removed_even_after_a_failure(make_hosts):
    net = make_hosts(1)
    (h,) = net
    proc = h.popen(["sleep", "600"])
    holder, veth, bridge = h.holder, h.veth, net.bridge
    with pytest.raises(ZeroDivisionError):
        try:
            raise ZeroDivisionError("a test fails")
        finally:
            net.close()
    assert proc.wait(timeout=10) is not None and holder.wait(timeout=10) is not None
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
    assert veth not in links and bridge not in links


def test_a_killed_creator_leaves_nothing_after_the_next_sweep(make_hosts):
    make_hosts(0)  # skips where namespaces cannot be made
    creator = subprocess.Popen(
        [
            sys.executable,
            "-c",
            (
                "import hosts, sys; net = hosts.HostNetwork(1); p = net[0].popen(['sleep', '600']);"
                " print(net.bridge, net[0].holder.pid, p.pid, flush=True); sys.stdin.read()"
            ),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    bridge, *pids = creator.stdout.readline().split()
    creator.kill()
    creator.wait(timeout=10)

    def gone(pid):
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return True
        return False

    wait_until(lambda: all(gone(p) for p in pids), timeout=10, what="holder and process gone")
    assert (
        bridge
        in subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
    )
    assert bridge in " ".join(hosts_module.sweep_stale())
    assert (
        bridge
        not in subprocess.run(
            ["ip", "-o", "link"], capture_output=True, text=True, check=True
        ).stdout
    )
