"""Every train of a REP replay reaches ``pulsetrain monitor`` exactly once.

The monitor's client used to ask again when the server's disconnection arrived together with
the reply to its last request (a replay closing after its last train), and ZeroMQ then dropped
that reply: 19 of 20 trains in 2 runs of 3.  Here 50 runs of replay -> monitor, both commands
in this process (the monitor connecting first, as when it is started before the replay), and a
few as separate processes.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import threading

import pytest
from _bridge_helpers import Process, pulsetrain_cmd

from pulsetrain.cli import build_parser
from pulsetrain.runtime.ports import free_port

TRAINS = 20
RUNS = 50


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from extra_data.tests.make_examples import make_fxe_da_file

    path = tmp_path_factory.mktemp("fxe") / "r0001"
    path.mkdir()
    make_fxe_da_file(str(path / "RAW-R0001-DA01-S00000.h5"))
    return path


def _args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(list(argv))


def test_50_replays_to_monitor_every_train_once(run_dir):
    from pulsetrain.cli import monitor, replay

    counts = []
    for _ in range(RUNS):
        port = free_port()
        out = io.StringIO()
        mon_args = _args(
            "monitor", f"tcp://127.0.0.1:{port}", "--trains", str(TRAINS), "--timeout", "30"
        )
        codes = []
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
            mon = threading.Thread(target=lambda a=mon_args, c=codes: c.append(monitor.run(a)))
            mon.start()
            rep_args = _args(
                "replay", str(run_dir), str(port), "--source", "*XGM*", "--trains", f"#0:{TRAINS}"
            )
            assert replay.run(rep_args) == 0
            mon.join(60)
        assert not mon.is_alive()
        text = out.getvalue()
        got = re.search(r"received (\d+) train\(s\)", text)
        assert got, text
        counts.append(int(got.group(1)))
        tids = re.findall(r"^train (\d+) \|", text, re.MULTILINE)
        assert tids == [str(10000 + i) for i in range(TRAINS)], text
        assert codes == [0]
    assert counts == [TRAINS] * RUNS


def test_replay_to_monitor_as_processes(run_dir):
    for _ in range(3):
        port = free_port()
        mon = Process(
            pulsetrain_cmd(
                "monitor", f"tcp://127.0.0.1:{port}", "--trains", str(TRAINS), "--timeout", "60"
            )
        )
        rep = Process(
            pulsetrain_cmd("replay", str(run_dir), "--port", str(port), "--trains", f"#0:{TRAINS}")
        )
        try:
            assert mon.wait(120) == 0, mon.output
            assert rep.wait(60) == 0, rep.output
        finally:
            mon.stop()
            rep.stop()
        assert f"received {TRAINS} train(s)" in mon.output, mon.output
