"""Fault injection: a faulty analysis never harms control, other devices or recorded data.

One topology per fault: a 10 Hz source feeds an unaffected ``Passthrough`` (its own server), the
faulty ``FaultInjector`` (its own server, policy ``drop``) and a ``DAQWriter`` (``wait``: must not
lose what it accepted).  A ``SimulatedMotor`` on a control server is the control path.  For each
fault the test checks:

* control keeps answering within its normal latency (get/set/move round trips);
* the unaffected device keeps its train rate;
* the faulty part ends in ERROR or is restarted;
* drops are counted;
* every train the DAQ accepted is in the files it wrote.
"""

from __future__ import annotations

import itertools
import os
import signal
import statistics
import textwrap
import time

import numpy as np
import pytest

from pulsetrain.errors import PulsetrainError
from pulsetrain.runtime.supervisor import Supervisor
from pulsetrain.runtime.topology import Topology
from waiting import wait_until

pytestmark = pytest.mark.slow

RATE = 10.0


def make_topology(tmp_path, fault: str, extra_fault_cfg: str = "", memory_limit: str = ""):
    text = textwrap.dedent(f"""
        [servers.ctl]
        [servers.src]
        [servers.good]
        [servers.bad]
        {memory_limit}
        [servers.daq]
        [servers.sink]

        [devices."F/MOTOR"]
        class = "SimulatedMotor"
        server = "ctl"

        [devices."F/SOURCE"]
        class = "TrainSource"
        server = "src"
        config = {{ rate = {RATE}, shape = [4, 256, 128], dtype = "float32" }}

        [devices."F/GOOD"]
        class = "Passthrough"
        server = "good"

        [devices."F/BAD"]
        class = "FaultInjector"
        server = "bad"
        config = {{ fault = "{fault}", stall_timeout = 3.0 {extra_fault_cfg} }}

        [devices."F/SINK"]
        class = "Passthrough"
        server = "sink"

        [devices."F/DAQ"]
        class = "DAQWriter"
        server = "daq"
        config = {{ directory = "{tmp_path / "raw"}", autostart = true, gather_trains = 0 }}

        [[connections]]
        from = "F/SOURCE:output"
        to = "F/GOOD:input"
        [[connections]]
        from = "F/SOURCE:output"
        to = "F/BAD:input"
        [[connections]]
        from = "F/BAD:output"
        to = "F/SINK:input"
        [[connections]]
        from = "F/SOURCE:output"
        to = "F/DAQ:input"
        on_slowness = "wait"
    """)
    path = tmp_path / f"{fault}.toml"
    path.write_text(text)
    return Topology.load(path)


def control_latencies(sup, n=20) -> list[float]:
    out = []
    for i in range(n):
        t0 = time.perf_counter()
        sup.get("F/MOTOR", "actualPosition")
        sup.set("F/MOTOR", "targetPosition", 0.1 * (i % 3))
        out.append((time.perf_counter() - t0) / 2)
    return out


def rate_of(sup, device, seconds=3.0) -> float:
    n0 = sup.get(device, "processed")
    t0 = time.monotonic()
    time.sleep(seconds)  # measuring a rate over a fixed interval, not waiting for a condition
    return (sup.get(device, "processed") - n0) / (time.monotonic() - t0)


def wait(cond, timeout, what):
    """:func:`wait_until` for a condition read from servers that may be restarting: a control
    error or timeout counts as "not yet"."""

    def test():
        try:
            return cond()
        except (PulsetrainError, TimeoutError):
            return False

    wait_until(test, timeout, what)


def check_daq_lost_nothing(sup, tmp_path):
    from extra_data import RunDirectory

    received = sup.get("F/DAQ", "trainsIn")
    summary = sup.call("F/DAQ", "stop_run")
    daq = sup.get("F/DAQ")
    assert summary["trains"] >= received - 1  # at most the train arriving during stop
    run = RunDirectory(summary["directory"])
    assert len(run.train_ids) == summary["trains"]
    ids = np.array(run.train_ids)
    gaps = [(int(a), int(b)) for a, b in itertools.pairwise(ids) if b - a != 1]
    assert not gaps, (
        f"the DAQ lost trains it had accepted: gaps {gaps[:5]}; trainsIn {daq['trainsIn']}, "
        f"notRecorded {daq['notRecorded']}, lateData {daq['lateData']}, status {daq['status']!r}, "
        f"input {daq['channels']['inputs']}"
    )


def run_fault(tmp_path, fault, arm, check_faulty, extra="", memory_limit=""):
    topo = make_topology(tmp_path, fault, extra, memory_limit)
    with Supervisor(topo, workdir=tmp_path / "run", supervise_interval=0.2) as sup:
        wait(lambda: sup.get("F/GOOD", "processed") > 10, 60, "data flowing")
        baseline_ctl = control_latencies(sup)
        baseline_rate = rate_of(sup, "F/GOOD")
        assert baseline_rate == pytest.approx(RATE, rel=0.15)
        arm(sup)
        check_faulty(sup)
        during_ctl = control_latencies(sup)
        during_rate = rate_of(sup, "F/GOOD")
        # control answers within its normal latency (generous bound for a loaded 2-core CI box)
        assert statistics.median(during_ctl) < max(0.05, 5 * statistics.median(baseline_ctl))
        assert max(during_ctl) < 1.0
        # the motor still moves
        sup.set("F/MOTOR", "targetPosition", 0.5)
        sup.call("F/MOTOR", "move")
        wait(
            lambda: (
                sup.get("F/MOTOR", "actualPosition") == 0.5 and sup.get("F/MOTOR", "state") == "ON"
            ),
            10,
            "motor move",
        )
        # the unaffected device keeps its rate
        assert during_rate == pytest.approx(baseline_rate, rel=0.15)
        check_daq_lost_nothing(sup, tmp_path)
        return sup


def arm(sup):
    sup.call("F/BAD", "arm")


def test_raising_analysis(tmp_path):
    def check(sup):
        wait(lambda: sup.get("F/BAD", "state") == "ERROR", 10, "ERROR state")
        assert "injected fault" in sup.get("F/BAD", "status")
        assert sup.get("F/BAD", "errorCount") >= 1

    run_fault(tmp_path, "raise", arm, check)


def test_segfaulting_analysis(tmp_path):
    def check(sup):
        wait(lambda: sup.servers["bad"].restarts >= 1, 10, "the crashed server restarted")
        # restarted device is back (disarmed: fresh configuration) and processing again
        wait(lambda: sup.get("F/BAD", "seen") > 3, 20, "restarted device processing")

    sup = run_fault(tmp_path, "segfault", arm, check)
    assert any(r[1] == "bad" for r in sup.restarts)


def test_leaking_analysis_is_stopped_by_the_memory_limit(tmp_path):
    def check(sup):
        wait(lambda: sup.servers["bad"].restarts >= 1, 60, "memory limit restart")

    sup = run_fault(
        tmp_path,
        "leak",
        arm,
        check,
        extra=", leak_mb = 100.0",
        memory_limit="memory_limit_mb = 800",
    )
    assert "exited" in sup.restarts[0][2]


def test_flooding_analysis(tmp_path):
    def check(sup):
        # the flood is throttled by credits: the sink drops, nothing piles up, drops counted
        wait(lambda: sup.get("F/BAD", "channels.outputs.output.dropped") > 100, 20, "drops")

    run_fault(tmp_path, "flood", arm, check)


def test_stalling_analysis(tmp_path):
    def check(sup):
        wait(lambda: sup.get("F/BAD", "state") == "ERROR", 15, "stall detected")
        assert "stalled" in sup.get("F/BAD", "status")
        # the stalled device is not read: the source counts the drops for it
        wait(lambda: sup.get("F/SOURCE", "channels.outputs.output.dropped") > 5, 10, "drops")

    run_fault(tmp_path, "stall", arm, check, extra=", stall_s = 30.0")


def test_peer_vanishing_mid_message(tmp_path):
    """kill -9 of the source server while it sends: the consumers recover after the restart."""
    topo = make_topology(tmp_path, "none")
    with Supervisor(topo, workdir=tmp_path / "run", supervise_interval=0.2) as sup:
        wait(lambda: sup.get("F/GOOD", "processed") > 10, 60, "data flowing")
        before = sup.get("F/GOOD", "processed")
        os.kill(sup.pid("src"), signal.SIGKILL)
        wait(lambda: sup.servers["src"].restarts >= 1, 10, "source restarted")
        wait(lambda: sup.get("F/GOOD", "processed") > before + 10, 30, "data flowing again")
        assert sup.get("F/GOOD", "state") == "PROCESSING"
        assert control_latencies(sup, 5)
