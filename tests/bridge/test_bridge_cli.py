"""The ``monitor``, ``bridge-sim`` and ``demo`` commands."""

from __future__ import annotations

import contextlib
import queue
import threading

import numpy as np
import pytest
from _bridge_helpers import SOURCE, pulsetrain_cmd, small_train, wait_until

from pulsetrain.bridge import BridgeServer, Client
from pulsetrain.cli import main
from pulsetrain.cli.bridge_sim import parse_modules
from pulsetrain.errors import ConfigurationError
from pulsetrain.files.naming import corrected_source_name


def test_monitor_prints_trains_structure_and_summary(capsys):
    with BridgeServer("tcp://127.0.0.1:0", "PUSH") as server:
        for i in range(3):
            server.feed(*small_train(i, nbytes=1 << 20))
        code = main(
            ["monitor", server.endpoint, "--sock", "PULL", "--trains", "3", "--timeout", "20"]
        )
    out = capsys.readouterr().out
    assert code == 0
    for i in range(3):
        assert f"train {i} |   1 sources |      1.05 MB | latency" in out
    assert SOURCE in out
    assert out.count("image.data") == 1  # structure printed once: it did not change
    assert "float32    (262144,)" in out
    assert "label" in out and "str" in out
    assert "received 3 train(s)" in out and "0 malformed message(s)" in out


def test_monitor_times_out_with_exit_code_1(capsys):
    with BridgeServer("tcp://127.0.0.1:0", "REP") as server:
        code = main(["monitor", server.endpoint, "--trains", "1", "--timeout", "0.2"])
    assert code == 1
    assert "timeout: no data received" in capsys.readouterr().out


def test_monitor_reports_malformed_messages(context, capsys):
    import zmq

    from pulsetrain.protocol import serialize

    rogue = context.socket(zmq.PUSH)
    rogue.setsockopt(zmq.SNDTIMEO, 20_000)  # PUSH waits for a peer: the monitor
    port = rogue.bind_to_random_port("tcp://127.0.0.1")

    def send() -> None:
        rogue.send(b"\xc1 garbage")
        rogue.send_multipart(serialize(*small_train(4)))

    sender = threading.Thread(target=send)
    sender.start()
    code = main(
        ["monitor", f"tcp://127.0.0.1:{port}", "--sock", "PULL", "--trains", "1", "--timeout", "20"]
    )
    sender.join(20)
    out = capsys.readouterr().out
    assert code == 0
    assert "malformed message: protocol 1.0 message is not valid msgpack" in out
    assert "train 4 |" in out and "1 malformed message(s)" in out


def test_bridge_sim_rate_limits(processes):
    rate, n = 20.0, 5
    proc = processes(
        *pulsetrain_cmd(
            "bridge-sim",
            "--port",
            "0",
            "--pattern",
            "PUSH",
            "--raw",
            "--frames",
            "1",
            "--modules",
            "0",
            "--rate",
            str(rate),
            "--trains",
            str(n),
        )
    )
    endpoint = proc.wait_for_line(r"serving on (tcp://\S+)").group(1)
    with Client(endpoint, "PULL", timeout=60) as client:
        stamps = [next(iter(client.next()[1].values()))["timestamp"] for _ in range(n)]
    # Trains are stamped when fed, so the stamps show the feeding rate (clients may lag).
    gaps = np.diff(stamps)
    assert np.all(gaps >= 0.8 / rate), gaps
    assert np.median(gaps) < 3 / rate, gaps
    assert proc.wait(60) == 0


def test_bridge_sim_help_and_option_errors(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["bridge-sim", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for option in (
        "--pattern",
        "--protocol",
        "--detector",
        "--frames",
        "--raw",
        "--corrected",
        "--rate",
        "--trains",
        "--bind",
        "examples:",
    ):
        assert option in out
    assert main(["bridge-sim", "--pattern", "ROUTER"]) == 2
    assert main(["bridge-sim", "--frames", "0"]) == 2
    assert "--frames/-f: must be at least 1, not 0" in capsys.readouterr().err
    assert parse_modules("0,3-5") == [0, 3, 4, 5]
    with pytest.raises(ConfigurationError, match="module list"):
        parse_modules("a-b")
    assert corrected_source_name("SPB_DET_AGIPD1M-1/DET/3CH0:xtdf") == (
        "SPB_DET_AGIPD1M-1/CORR/3CH0:output"
    )


def test_sigterm_stops_bridge_sim_cleanly(processes):
    proc = processes(
        *pulsetrain_cmd("bridge-sim", "--port", "0", "--raw", "--frames", "1", "--modules", "0")
    )
    endpoint = proc.wait_for_line(r"serving on (tcp://\S+)").group(1)
    with Client(endpoint, timeout=60) as client:
        client.next()
    proc.proc.terminate()
    assert proc.wait(30) == 0
    assert "stopped after" in proc.output


def test_monitor_while_server_feeds(capsys):
    """The monitor's rate and latency lines come from trains fed while it runs."""
    with BridgeServer("tcp://127.0.0.1:0", "REP", maxlen=1) as server:
        stop = threading.Event()

        def feed() -> None:
            i = 0
            while not stop.is_set():
                with contextlib.suppress(queue.Full):
                    server.feed(*small_train(i), timeout=0.1)
                    i += 1

        feeder = threading.Thread(target=feed)
        feeder.start()
        try:
            assert main(["monitor", server.endpoint, "--trains", "5", "--timeout", "20"]) == 0
        finally:
            stop.set()
            feeder.join(10)
    out = capsys.readouterr().out
    assert wait_until(lambda: "received 5 train(s) in" in out, 1)
    assert "trains/s" in out and "latency median" in out


def test_bridge_sim_binds_only_when_its_first_train_is_ready(processes):
    """The first train (JUNGFRAU corrected: per-cell constants first) is made before the port
    is bound: a client connecting once the endpoint is printed gets it at once (it used to
    wait 13-36 s on a bound port)."""
    import time

    from karabo_bridge import Client as KaraboClient

    proc = processes(
        *pulsetrain_cmd(
            "bridge-sim", "--port", "0", "-d", "JUNGFRAU", "--modules", "0", "--frames", "2",
            "--rate", "0", "--trains", "1",
        )
    )  # fmt: skip
    endpoint = proc.wait_for_line(r"serving on (tcp://\S+)", timeout=300).group(1)
    t0 = time.monotonic()
    with KaraboClient(endpoint, timeout=30) as client:
        data, _ = client.next()
    assert time.monotonic() - t0 < 5.0  # 1 s on an idle machine; this one is shared
    assert any("JNGFR" in src for src in data)
