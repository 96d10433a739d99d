"""Recording and replay: simulate → files → replay to a stock Karabo bridge client, and the
FileReplay → correction → DAQWriter (CORR) pipeline of the design's figure 4."""

from __future__ import annotations

import itertools
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import zmq

from pulsetrain.runtime.ports import free_port


def run_cli(*args, timeout=300):
    out = subprocess.run(
        [sys.executable, "-m", "pulsetrain", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


@pytest.fixture(scope="module")
def sim_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("sim")
    run_cli(
        "simulate",
        "--out",
        str(base),
        "--trains",
        "8",
        "--frames",
        "4",
        "--modules",
        "0",
        "5",
        "--memory-cells",
        "16",
    )
    return base / "r0001"


def assert_equal_values(a, b, where):
    # Replay sends what EXtra-data reads (strings as the bytes stored), as serve-files does.
    if isinstance(b, bytes):
        assert type(a) is bytes, where
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        a, b = np.asarray(a), np.asarray(b)
        assert a.shape == b.shape, where
        np.testing.assert_array_equal(a, b, err_msg=where)
    else:
        assert a == b, where


SOCKETS = {"REP": "REQ", "PUSH": "PULL"}


def start_replay(run_dir, port: int, *args: str, output=subprocess.DEVNULL) -> subprocess.Popen:
    """``pulsetrain replay RUN_DIR --port PORT *args`` in a new process (stdout and stderr
    together into *output*, no standard input)."""
    return subprocess.Popen(
        [sys.executable, "-m", "pulsetrain", "replay", str(run_dir), "--port", str(port), *args],
        stdout=output,
        stderr=subprocess.STDOUT,
        text=True,
        stdin=subprocess.DEVNULL,
    )


def check_replay_equals_extra_data(
    run_dir, tmp_path, *extra, positions=None, select=None, pattern="REP"
):
    """Replay *run_dir* with the options *extra*; a stock karabo_bridge client must receive
    exactly the trains EXtra-data reads (``select(run)`` narrows the run), once, in order."""
    from extra_data import RunDirectory
    from karabo_bridge import Client

    port = free_port()
    proc = start_replay(run_dir, port, "--pattern", pattern, *extra, output=subprocess.PIPE)
    try:
        run = RunDirectory(str(run_dir))
        if positions is not None:
            run = run.select_trains(positions)
        if select is not None:
            run = select(run)
        expected = list(run.trains())
        got = []
        sock = SOCKETS[pattern]
        with Client(f"tcp://127.0.0.1:{port}", sock=sock, timeout=30) as client:
            for _ in expected:
                try:
                    got.append(client.next())
                except TimeoutError:
                    raise AssertionError(f"train {len(got)} of {len(expected)} did not arrive")
            # nothing more: every train exactly once
            with pytest.raises(TimeoutError):
                if sock == "REQ":
                    Client(f"tcp://127.0.0.1:{port}", timeout=1).next()
                else:
                    client._socket.setsockopt(zmq.RCVTIMEO, 1000)
                    client.next()
        assert [m[next(iter(m))]["timestamp.tid"] for _, m in got] == [t for t, _ in expected]
        for (tid, ref), (data, meta) in zip(expected, got):
            assert set(data) == set(ref), tid
            for src, props in ref.items():
                for key, value in props.items():
                    if key == "metadata":
                        continue
                    assert key in data[src], (tid, src, key)
                    assert_equal_values(data[src][key], value, f"{tid} {src} {key}")
        assert proc.wait(30) == 0
        return len(expected)
    finally:
        if proc.poll() is None:
            proc.kill()
        print(proc.stdout.read()[-3000:])


@pytest.mark.slow
def test_simulated_run_validates_and_replays_exactly(sim_run, tmp_path):
    out = subprocess.run(
        ["extra-data-validate", str(sim_run)], capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert check_replay_equals_extra_data(sim_run, tmp_path) == 8


@pytest.mark.slow
def test_extra_data_mock_run_replays_exactly(tmp_path):
    from extra_data.tests.make_examples import make_spb_run

    run_dir = tmp_path / "spb"
    run_dir.mkdir()
    make_spb_run(str(run_dir), format_version="1.2")
    n = check_replay_equals_extra_data(run_dir, tmp_path, "--trains", "#0:5", positions=np.s_[0:5])
    assert n > 0


@pytest.mark.slow
def test_replay_push_protocol_1_with_source_and_train_id_selection(sim_run, tmp_path):
    from extra_data import by_id

    from pulsetrain.files import run_info

    tids = run_info(sim_run).train_ids
    first, stop = int(tids[2]), int(tids[6])
    n = check_replay_equals_extra_data(
        sim_run,
        tmp_path,
        "--protocol",
        "1.0",
        "--source",
        "*/DET/*",
        "--source",
        "*XGM*",
        "--trains",
        f"{first}:{stop}",
        "--read-ahead",
        "0",
        pattern="PUSH",
        select=lambda run: run.select(["*/DET/*", "*XGM*"], "*").select_trains(by_id[first:stop]),
    )
    assert n == 4


@pytest.mark.slow
def test_replay_without_zero_copy_equals_extra_data(sim_run, tmp_path):
    assert (
        check_replay_equals_extra_data(
            sim_run, tmp_path, "--no-zero-copy", "--trains", "#5:", positions=np.s_[5:]
        )
        == 3
    )


@pytest.mark.slow
def test_replay_pub_repeats_the_run_at_the_rate_asked(sim_run):
    from karabo_bridge import Client

    from pulsetrain.files import run_info

    tids = [int(t) for t in run_info(sim_run).train_ids]
    rate = 20.0
    port = free_port()
    proc = start_replay(
        sim_run, port, "--pattern", "PUB", "--rate", str(rate), "--repeat",
        "--source", "*XGM/DOOCS/MAIN",
    )  # fmt: skip
    try:
        received = []
        with Client(f"tcp://127.0.0.1:{port}", sock="SUB", timeout=60) as client:
            data, meta = client.next()
            t0 = time.monotonic()
            received.append(meta[next(iter(meta))]["timestamp.tid"])
            while len(received) < 2 * len(tids) + 1:
                data, meta = client.next()
                assert set(data) == {"SPB_XTD9_XGM/DOOCS/MAIN"}
                received.append(meta["SPB_XTD9_XGM/DOOCS/MAIN"]["timestamp.tid"])
            elapsed = time.monotonic() - t0
    finally:
        proc.kill()
        proc.wait()
    positions = [tids.index(t) for t in received]
    # in run order, starting again from the first train after the last (PUB may drop trains)
    wraps = sum(b < a for a, b in itertools.pairwise(positions))
    assert wraps >= 1, received
    assert all(b != a for a, b in itertools.pairwise(positions)), received
    # never faster than the rate asked (trains paced at 1/rate; a dropped one only adds time)
    assert elapsed >= (len(received) - 1) / rate * 0.9


@pytest.mark.slow
def test_replay_through_correction_writes_a_valid_corr_run(sim_run, tmp_path):
    """Figure 4: a raw run replayed through the correction pipeline becomes a CORR run."""
    from extra_data import RunDirectory

    from pulsetrain.bootstrap import store_truth_constants
    from pulsetrain.catalog import Catalog
    from pulsetrain.runtime.supervisor import Supervisor
    from pulsetrain.runtime.topology import Topology
    from pulsetrain.sim import DetectorSimulator

    url = f"sqlite:///{tmp_path / 'cat.sqlite'}"
    cat = Catalog(url)
    store_truth_constants(
        cat, DetectorSimulator("AGIPD", frames=4, memory_cells=16, modules=(0, 5)), modules=[0, 5]
    )
    cat.close()
    text = textwrap.dedent(f"""
        [servers.a]
        [servers.b]
        [devices."REPLAY"]
        class = "FileReplay"
        server = "a"
        config = {{ run_dir = "{sim_run}", rate = 0.0, sources = ["*/DET/*"], autostart = false }}
        [devices."MATCH"]
        class = "TrainMatcher"
        server = "b"
        config = {{ sources = ["SPB_DET_AGIPD1M-1/CORR/0CH0:output", "SPB_DET_AGIPD1M-1/CORR/5CH0:output"] }}
        [devices."DAQ"]
        class = "DAQWriter"
        server = "b"
        config = {{ directory = "{tmp_path / "proc"}", data_category = "CORR", autostart = true, catalog = "{url}" }}
        [[connections]]
        from = "MATCH:output"
        to = "DAQ:input"
        on_slowness = "wait"
    """)
    for m in (0, 5):
        text += textwrap.dedent(f"""
            [devices."CORR{m}"]
            class = "AGIPDCorrection"
            server = "a"
            config = {{ catalog = "{url}", module = {m}, memory_cells = 16 }}
            [[connections]]
            from = "REPLAY:module{m}"
            to = "CORR{m}:input"
            on_slowness = "wait"
            [[connections]]
            from = "CORR{m}:output"
            to = "MATCH:input"
            on_slowness = "wait"
        """)
    path = tmp_path / "fig4.toml"
    path.write_text(text)
    with Supervisor(Topology.load(path), workdir=tmp_path / "run") as sup:
        sup.call("REPLAY", "start_replay")  # the supervisor returned with all connected
        sup.device_client("DAQ").wait_for("DAQ", "trainsWritten", 8, timeout=120)
        summary = sup.call("DAQ", "stop_run")
    assert summary["trains"] == 8
    corr = tmp_path / "proc" / "r0001"
    out = subprocess.run(
        ["extra-data-validate", str(corr)], capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert all(p.name.startswith("CORR-R0001-") for p in corr.glob("*.h5"))
    run = RunDirectory(str(corr))
    data = run["SPB_DET_AGIPD1M-1/CORR/5CH0:output", "image.data"].ndarray()
    assert data.dtype == np.float32 and data.shape == (8 * 4, 512, 128)
    cat = Catalog(url)
    assert [r.data_category for r in cat.find_runs()] == ["CORR"]
    cat.close()
