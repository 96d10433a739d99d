"""Results pushed by an external tool (only karabo-bridge + pyzmq) appear in the recorded run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zmq
from _bridge_input_helpers import (
    TOOL_SOURCE,
    expected_results,
    push_results_with_karabo_bridge,
    train_message,
)
from _live_helpers import LiveServer, wait_until

from pulsetrain.devices.bridge_input import write_key_pair


@pytest.mark.slow
def test_pushed_results_are_recorded_and_unauthenticated_ones_are_not(tmp_path):
    from extra_data import RunDirectory

    _, server_secret = write_key_pair(tmp_path / "server", "bridge-input")
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    tool_pub, tool_secret = write_key_pair(tmp_path / "tool", "tool")
    (allowed / "tool.key").write_bytes(Path(tool_pub).read_bytes())
    public, secret = zmq.auth.load_certificate(tool_secret)
    live = LiveServer()
    try:
        dev = live.add("BridgeInput", "INPUT", {
            "server_key_file": str(server_secret), "authorized_keys_dir": str(allowed),
            "max_rate": 0.0, "max_queue": 100})
        daq = live.add("DAQWriter", "DAQ", {"directory": str(tmp_path / "raw"),
                                            "autostart": True, "gather_trains": 0})
        live.connect(live.output(dev), daq)
        wait_until(lambda: live.client.get(dev, "channels.outputs.output.connections"), 10)
        endpoint = live.client.get(dev, "boundEndpoint")
        server_key = live.client.get(dev, "serverPublicKey")
        # without credentials: refused, nothing recorded
        code, _ = push_results_with_karabo_bridge(
            endpoint, [train_message(500)], send_timeout_s=1.0)
        assert code == 3
        tids = list(range(1000, 1010))
        code, sent = push_results_with_karabo_bridge(
            endpoint, [train_message(t) for t in tids], server_key=server_key,
            public_key=public.decode(), secret_key=secret.decode())
        assert code == 0 and sent == len(tids)
        try:
            wait_until(lambda: live.client.get(daq, "trainsIn") >= len(tids), 30)
        except AssertionError:
            raise AssertionError({k: live.client.get(d, k) for d, k in [(dev, "received"), (dev, "lastError"), (daq, "state"), (daq, "status"), (daq, "trainsIn"), (dev, "channels")]})
        summary = live.client.call(daq, "stop_run")
        assert live.client.get(dev, "refused") >= 1
    finally:
        live.close()
    run = RunDirectory(summary["directory"])
    assert list(run.train_ids) == tids  # train 500 (unauthenticated) is not there
    score = run[TOOL_SOURCE, "result.score"].ndarray()
    for i, tid in enumerate(tids):
        np.testing.assert_array_equal(score[i], expected_results(tid)["result.score"])
