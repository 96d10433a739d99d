"""Device faults an operator must see: each one asserted through ``pulsetrain ctl`` and the log.

Every device runs in a real device server (in this process, so ``caplog`` sees its log); what an
operator sees is read with ``python -m pulsetrain ctl ENDPOINT get|list`` in a subprocess.

* a Bridge or BridgeInput whose port is taken: ERROR with the bind error, logged once, quiet
  afterwards, no endpoint announced; ``reset`` binds once the port is free;
* BridgeInput: an oversized message is dropped, counted (``oversized``) and explained;
* DAQWriter: ``recording`` is false in ERROR (also when another thread, the stall watchdog,
  sets it), and the run is closed with every accepted train;
* AGIPDCorrection without constants: WARNING once, said in ``status``, ``uncorrectedTrains``.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import extra_data
import numpy as np
import pytest
import zmq

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "devices"))

from _bridge_input_helpers import push_results_with_karabo_bridge, train_message
from _live_helpers import TOKEN, LiveServer, wait_until

from pulsetrain.catalog import Catalog
from pulsetrain.devices.bridge_input import write_key_pair
from pulsetrain.protocol import make_meta

#: Input policy of the devices under test: every train fed by the test reaches them.
WAIT = {"input": {"on_slowness": "wait"}}


def ctl(live: LiveServer, *args: str) -> object:
    """Run ``pulsetrain ctl`` against the live server; return its JSON answer."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pulsetrain",
            "ctl",
            live.server.control_endpoint,
            *args,
            "--token",
            TOKEN,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=os.environ.copy(),
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    answer = json.loads(proc.stdout)
    if args[0] == "list":  # {server: {pid, restarts, last_restart, control, devices}}
        (server,) = answer.values()
        return server["devices"]
    return answer


def log_lines(caplog, device_id: str, level: int) -> list[str]:
    """Messages of one device at exactly ``level``."""
    return [
        r.getMessage()
        for r in caplog.records
        if getattr(r, "device_id", None) == device_id and r.levelno == level
    ]


@pytest.fixture
def live():
    server = LiveServer()
    yield server
    server.close()


@pytest.fixture
def taken_port():
    """A port another program listens on (a plain TCP listener)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)
    yield sock
    sock.close()


def feed(live: LiveServer, src, device_id: str, trains: list, what: str) -> None:
    """Write trains to ``device_id``'s input until it has received them all."""
    target = live.client.get(device_id, "trainsIn") + len(trains)
    assert src.wait_for_inputs(1, 20)
    for data, meta in trains:
        src.write(data, meta, timeout=20)
    wait_until(lambda: live.client.get(device_id, "trainsIn") >= target, 30, what)


def slow_train(tid: int) -> tuple[dict, dict]:
    src = "TEST/SLOW/SOURCE"
    return {src: {"value": np.float64(tid)}}, {src: make_meta(src, tid, 1.7e9 + 0.1 * tid)}


# ---------------------------------------------------------------- bind first
def test_bridge_with_its_port_taken_is_in_error_once_and_quiet(live, taken_port, caplog):
    caplog.set_level(logging.INFO)
    port = taken_port.getsockname()[1]
    endpoint = f"tcp://127.0.0.1:{port}"
    dev = live.add("Bridge", "BRIDGE", {"endpoint": endpoint, "pattern": "PUB", "inputs": WAIT})
    src = live.source()
    live.connect(src.endpoints[0], dev)
    feed(live, src, dev, [slow_train(100 + i) for i in range(25)], "25 trains at the bridge")

    conf = ctl(live, "get", dev)
    assert conf["state"] == "ERROR"
    assert conf["status"] == f"cannot bind {endpoint}: Address already in use"
    assert conf["boundEndpoint"] == ""  # nothing announced that is not bound
    assert conf["dropped"] == 25 and conf["errorCount"] == 0
    listed = ctl(live, "list")[dev]
    assert listed["state"] == "ERROR" and str(port) in listed["status"]
    errors = log_lines(caplog, dev, logging.ERROR)
    assert errors == [f"cannot bind {endpoint}: Address already in use"]  # once, not per train
    assert not any("AttributeError" in r.getMessage() for r in caplog.records)

    taken_port.close()  # the other program went away: reset binds
    ctl(live, "call", dev, "reset")
    conf = ctl(live, "get", dev)
    assert conf["state"] == "ON" and conf["boundEndpoint"] == endpoint
    assert conf["status"] == f"serving PUB on {endpoint}"


def test_bridge_input_with_its_port_taken_is_in_error_once(live, taken_port, caplog, tmp_path):
    caplog.set_level(logging.INFO)
    port = taken_port.getsockname()[1]
    endpoint = f"tcp://127.0.0.1:{port}"
    dev = live.add("BridgeInput", "INPUT", {"endpoint": endpoint})
    wait_until(lambda: live.client.get(dev, "state") == "ERROR", 10, "ERROR")
    conf = ctl(live, "get", dev)
    assert f"cannot bind {endpoint}: Address already in use" in conf["status"]
    assert conf["boundEndpoint"] == "" and conf["serverPublicKey"] == ""
    errors = log_lines(caplog, dev, logging.ERROR)
    assert len(errors) == 1 and f"cannot bind {endpoint}" in errors[0]

    taken_port.close()
    ctl(live, "call", dev, "reset")
    conf = ctl(live, "get", dev)
    assert conf["state"] == "MONITORING" and conf["boundEndpoint"] == endpoint
    assert len(conf["serverPublicKey"]) == 40


# ---------------------------------------------------------------- BridgeInput: oversize
def test_bridge_input_counts_and_explains_an_oversized_message(live, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    _, server_secret = write_key_pair(tmp_path / "server", "bridge-input")
    tool_pub, tool_secret = write_key_pair(tmp_path / "tool", "analysis-tool")
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    (allowed / "analysis-tool.key").write_bytes(Path(tool_pub).read_bytes())
    public, secret = zmq.auth.load_certificate(tool_secret)
    dev = live.add(
        "BridgeInput",
        "INPUT",
        {
            "server_key_file": str(server_secret),
            "authorized_keys_dir": str(allowed),
            "max_message_bytes": 1024,
            "max_rate": 0.0,
        },
    )
    tap = live.tap(live.output(dev))
    wait_until(lambda: live.client.get(dev, "channels.outputs.output.connections"), 10)
    code, sent = push_results_with_karabo_bridge(
        live.client.get(dev, "boundEndpoint"),
        [train_message(7, n=400), train_message(8, n=4)],  # 1600 bytes of data, then 16
        server_key=live.client.get(dev, "serverPublicKey"),
        public_key=public.decode(),
        secret_key=secret.decode(),
    )
    assert (code, sent) == (0, 2)
    wait_until(lambda: live.client.get(dev, "received") == 1, 20, "the small train")
    item = tap.get(timeout=20)
    assert next(iter(item.meta.values()))["timestamp.tid"] == 8

    conf = ctl(live, "get", dev)
    assert conf["oversized"] == 1 and conf["received"] == 1
    assert conf["malformed"] == conf["rejected"] == conf["dropped"] == 0
    assert conf["state"] == "MONITORING"
    assert conf["lastError"].startswith("oversized message from analysis-tool dropped: ")
    assert conf["lastError"].endswith("bytes > max_message_bytes 1024")
    size = int(conf["lastError"].split(": ")[1].split()[0])
    assert size > 1600
    warnings = log_lines(caplog, dev, logging.WARNING)
    assert warnings == [conf["lastError"]]
    # the tool closed its connection when it exited: seen, counted (not an error)
    wait_until(lambda: live.client.get(dev, "disconnects") >= 1, 20, "the disconnect")
    assert live.client.get(dev, "lastError") == conf["lastError"]


# ---------------------------------------------------------------- DAQWriter
def test_daq_writer_stops_recording_in_error_and_keeps_what_it_accepted(live, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    dev = live.add(
        "DAQWriter",
        "DAQ",
        {"directory": str(tmp_path / "raw"), "autostart": True, "gather_trains": 3},
    )
    assert ctl(live, "get", dev, "recording") is True
    src = live.source()
    live.connect(src.endpoints[0], dev)
    feed(live, src, dev, [slow_train(1000 + i) for i in range(10)], "10 trains")
    assert live.client.get(dev, "trainsWritten") == 7  # three wait for late sources

    data, meta = slow_train(1010)
    del meta["TEST/SLOW/SOURCE"]["timestamp.tid"]
    feed(live, src, dev, [(data, meta)], "a train without train ID")
    wait_until(lambda: live.client.get(dev, "lastRun").get("trains") == 10, 20, "the run closed")

    conf = ctl(live, "get", dev)
    assert conf["state"] == "ERROR" and conf["recording"] is False
    assert "no train ID" in conf["status"]
    assert conf["lastRun"]["trains"] == 10 and conf["lastRun"]["error"] is None
    run = extra_data.RunDirectory(conf["lastRun"]["directory"])
    assert list(run.train_ids) == list(range(1000, 1010))  # nothing accepted was lost
    errors = log_lines(caplog, dev, logging.ERROR)
    assert len(errors) == 1 and "no train ID" in errors[0]

    feed(live, src, dev, [slow_train(1011)], "a train while in ERROR")
    conf = ctl(live, "get", dev)
    assert conf["recording"] is False and conf["notRecorded"] == 1
    assert ctl(live, "call", dev, "stop_run")["trains"] == 10  # the closed run's summary

    assert ctl(live, "call", dev, "start_run") == 2  # a new run leaves ERROR
    conf = ctl(live, "get", dev)
    assert conf["state"] == "ACQUIRING" and conf["recording"] is True


# ---------------------------------------------------------------- correction without constants
def test_correction_without_constants_warns_once_and_counts(live, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    url = f"sqlite:///{tmp_path / 'empty.sqlite'}"
    Catalog(url).close()
    dev = live.add(
        "AGIPDCorrection",
        "CORR3",
        {
            "catalog": url,
            "module": 3,
            "memory_cells": 16,
            "on_missing_constants": "passthrough",
            "inputs": WAIT,
        },
    )
    src = live.source()
    live.connect(src.endpoints[0], dev)
    raw = "SPB_DET_AGIPD1M-1/DET/3CH0:xtdf"
    trains = []
    for i in range(6):
        image = np.full((2, 2, 512, 128), i, dtype=np.uint16)
        trains.append(
            (
                {raw: {"image.data": image, "image.cellId": np.arange(2, dtype=np.uint16)}},
                {raw: make_meta(raw, 500 + i, 1.7e9 + 0.1 * i)},
            )
        )
    feed(live, src, dev, trains, "6 raw trains")

    wait_until(lambda: "(6 trains uncorrected" in live.client.get(dev, "status"), 10, "status")
    conf = ctl(live, "get", dev)
    assert conf["state"] == "PROCESSING"
    assert conf["uncorrectedTrains"] == 6 and conf["correctedTrains"] == 0
    assert conf["constantsLoaded"] is False
    assert conf["status"].startswith("no constants, passing raw data through (6 trains")
    assert conf["status"].endswith(
        "is not in the catalogue at " + url + " (known: none; add it with add_detector)"
    )
    assert ctl(live, "list")[dev]["status"] == conf["status"]
    warnings = log_lines(caplog, dev, logging.WARNING)
    assert len(warnings) == 1, warnings  # once, not per train
    assert warnings[0].startswith("module 3: no constants, raw data will pass through uncorrected")


def test_daq_writer_error_from_another_thread_stops_recording_at_once(live, tmp_path):
    """The stall watchdog sets ERROR from its own thread: ``recording`` is false at once, and
    the run is closed on the device's thread (its timer) with every accepted train."""
    dev = live.add(
        "DAQWriter",
        "DAQ",
        {"directory": str(tmp_path / "raw"), "autostart": True, "gather_trains": 2},
    )
    src = live.source()
    live.connect(src.endpoints[0], dev)
    feed(live, src, dev, [slow_train(100 + i) for i in range(5)], "5 trains")
    device = live.server.devices[dev]
    device.set_error("device code stalled (as the watchdog says it)")
    assert device.recording is False and device.state == "ERROR"
    summary = wait_until(lambda: live.client.get(dev, "lastRun") or None, 10, "the run closed")
    assert summary["trains"] == 5 and summary["error"] is None
    assert list(extra_data.RunDirectory(summary["directory"]).train_ids) == list(range(100, 105))
