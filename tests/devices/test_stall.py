"""A device busy with one train for seconds is shown as stalled: in `ctl list`, its status and
the log (issue 14: faults the operator can see)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import numpy as np

from pulsetrain.testing import DeviceHarness
from waiting import wait_until

TRAIN_S = 5.0  # the device takes this long per train
TRAINS = (1234, 1235, 1236)  # stalled most of 15 s: `ctl` takes seconds to start on a busy host


def ctl_list(dev: DeviceHarness) -> dict:
    """`pulsetrain ctl ENDPOINT list`, as an operator runs it."""
    out = subprocess.run(
        [sys.executable, "-m", "pulsetrain", "ctl", dev.endpoint, "list", "--token", dev.token],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=os.environ,
    )
    assert out.returncode == 0, out.stderr
    (server,) = json.loads(out.stdout).values()  # {server: {pid, restarts, ..., devices}}
    return server["devices"][dev.device_id]


# `python -m pulsetrain ctl ...` with its imports done before it is told to go: on a loaded
# machine starting Python takes seconds, longer than the stall this test looks at.
WARM_CTL = (
    "import runpy, sys; import pulsetrain.cli, pulsetrain.cli.ctl, pulsetrain.runtime.control; "
    "print('ready', flush=True); sys.stdin.readline(); "
    "runpy.run_module('pulsetrain', run_name='__main__', alter_sys=True)"
)


class WarmCtl:
    """A `pulsetrain ctl ENDPOINT list` process that has imported everything and waits."""

    def __init__(self, dev: DeviceHarness) -> None:
        self.dev = dev
        args = ["ctl", dev.endpoint, "list", "--token", dev.token]
        self.proc = subprocess.Popen(
            [sys.executable, "-c", WARM_CTL, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout.readline().strip() == "ready"

    def list(self) -> dict:
        out, err = self.proc.communicate("go\n", timeout=60)
        assert self.proc.returncode == 0, err
        (server,) = json.loads(out).values()  # {server: {pid, restarts, ..., devices}}
        return server["devices"][self.dev.device_id]


def test_a_device_slow_on_one_train_is_marked_stalled_then_cleared(caplog):
    caplog.set_level(logging.INFO, logger="pulsetrain.runtime.device")
    config = {"fault": "stall", "stall_s": TRAIN_S, "armed": True, "stall_warning": 1.0}
    with DeviceHarness("FaultInjector", config, device_id="TEST/SLOW/1") as dev:
        assert dev.get("stall_timeout") == 30.0  # the ERROR limit is separate and not reached
        before = dev.get("status")
        payload = {"S": {"image.data": np.zeros(4)}}
        for tid in TRAINS:  # queued: the device is busy with one long call after the other
            dev.send(payload, train_id=tid)
        entry = None
        for _ in TRAINS:  # each train stalls the device for TRAIN_S - stall_warning seconds
            ctl = WarmCtl(dev)
            wait_until(lambda: dev.get("stalled"), timeout=4 * TRAIN_S, what="a stall")
            entry = ctl.list()
            if entry["stalled"]:
                break
        assert entry is not None and entry["stalled"], entry
        assert entry["state"] == "PROCESSING"  # a warning, not an error
        assert entry["status"].startswith("stalled: on_data(train 123")
        assert "from input 'input' busy for" in entry["status"]
        busy = float(entry["status"].rsplit("busy for ", 1)[1].split()[0])
        assert 1.0 < busy <= 2 * TRAIN_S
        assert 1.0 <= entry["busyFor"] <= 2 * TRAIN_S
        assert entry["status"].endswith(f"busy for {busy} s")

        wait_until(
            lambda: dev.get("seen") == len(TRAINS), timeout=10 * TRAIN_S, what="every train taken"
        )
        dev.device.run_in_device(lambda: None, timeout=3 * TRAIN_S)  # the last call returned
        assert dev.get("stalled") is False
        assert dev.get("busyFor") == 0.0
        assert dev.get("status") == before
        assert ctl_list(dev)["stalled"] is False
        assert dev.get("state") == "PROCESSING" and dev.get("errorCount") == 0

    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    for tid in TRAINS:
        mine = [m for m in warnings if f"on_data(train {tid})" in m]
        assert len(mine) == 1, warnings  # once per stalled call, not once per watchdog tick
        assert mine[0].startswith("stalled: ")
    cleared = [r for r in caplog.records if r.getMessage() == "no longer stalled"]
    assert len(cleared) == len(TRAINS)
