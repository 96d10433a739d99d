"""Every sub-command refuses bad arguments and bad files with one line, never a traceback.

Each case runs ``pulsetrain ARGS`` and checks: the exit code (2 for bad usage or input, 1 for
a command that failed while running), no ``Traceback`` in stdout or stderr, an error line
``pulsetrain COMMAND: error: ...`` naming the bad value, and, where the command would write,
that nothing was written.  Most run in-process through :func:`pulsetrain.cli.main`; a few as
real processes (``python -m pulsetrain``).
"""

from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pulsetrain.cli import main
from pulsetrain.runtime.ports import free_port

# A small valid topology; the cases below break one thing in it each.
GOOD = """
[topology]
name = "cli-bad-input"

[servers.a]

[devices."T/X"]
class = "Passthrough"
server = "a"

[devices."T/Y"]
class = "Passthrough"
server = "a"

[devices."T/CORR"]
class = "AGIPDCorrection"
server = "a"
config = { module = 0, gain_mode = 0, on_missing_constants = "passthrough" }

[[connections]]
from = "T/X:output"
to = "T/Y:input"
"""

BAD_TOPOLOGIES = {
    "unknown_class": GOOD.replace('class = "Passthrough"', 'class = "Pasthrough"', 1),
    "duplicate_device": GOOD + '\n[devices."T/X"]\nclass = "Passthrough"\nserver = "a"\n',
    "bad_channel": GOOD.replace('from = "T/X:output"', 'from = "T/X:outptu"'),
    "bad_policy": GOOD + 'on_slowness = "fast"\n',
    "unknown_server": GOOD.replace('server = "a"', 'server = "nowhere"', 1),
    "cycle": GOOD + '\n[[connections]]\nfrom = "T/Y:output"\nto = "T/X:input"\n',
    "unknown_property": GOOD.replace("gain_mode = 0", "gian_mode = 0"),
    "over_limit": GOOD.replace("gain_mode = 0", "gain_mode = 7"),
    "wrong_type": GOOD.replace("module = 0", 'module = "zero"'),
    "read_only": GOOD.replace("gain_mode = 0", "errorCount = 3"),
    "malformed": GOOD.replace("[servers.a]", "[servers.a\n"),
    "missing_class": GOOD.replace('class = "Passthrough"\n', "", 1),
    "unknown_key": GOOD.replace('server = "a"\n', 'server = "a"\nconfg = {}\n', 1),
    "port_out_of_range": GOOD + '\n[devices."T/B"]\nclass = "Bridge"\nserver = "a"\n'
    'config = { endpoint = "tcp://127.0.0.1:99999" }\n',
    "endpoint_without_scheme": GOOD + '\n[devices."T/B"]\nclass = "Bridge"\nserver = "a"\n'
    'config = { endpoint = "127.0.0.1:4545" }\n',
    "remote_port_base": GOOD + '\n[servers.far]\nendpoint = "tcp://10.0.0.5:7000"\n'
    "port_base = 70000\n",
}


@dataclasses.dataclass
class Case:
    """``argv`` (with ``{placeholders}``), the exit code, and what the error must name."""

    id: str
    argv: str
    names: tuple[str, ...]
    code: int = 2
    absent: str = ""  # a path that must not exist afterwards (nothing half-written)


CASES = [
    # --- bridge-sim
    Case("bridge-sim-port-too-big", "bridge-sim --port 99999", ("99999", "65535")),
    Case("bridge-sim-port-positional", "bridge-sim 70000", ("70000",)),
    Case("bridge-sim-port-negative", "bridge-sim --port -1", ("-1",)),
    Case("bridge-sim-port-busy", "bridge-sim --port {busy} --trains 1", ("{busy}", "in use")),
    Case("bridge-sim-frames-0", "bridge-sim --frames 0", ("--frames", "not 0")),
    Case("bridge-sim-frames-huge", "bridge-sim --frames 100000", ("100000",)),
    Case("bridge-sim-trains-garbage", "bridge-sim --trains garbage", ("--trains", "'garbage'")),
    Case("bridge-sim-trains-0", "bridge-sim --trains 0", ("--trains", "not 0")),
    Case("bridge-sim-rate-negative", "bridge-sim --rate -1", ("--rate", "-1")),
    Case("bridge-sim-rate-nan", "bridge-sim --rate nan", ("--rate", "'nan'")),
    Case("bridge-sim-modules-garbage", "bridge-sim --modules a-b", ("'a-b'",)),
    Case("bridge-sim-module-99", "bridge-sim --modules 99 --port 0 --trains 1", ("99",)),
    Case("bridge-sim-pattern", "bridge-sim --pattern ROUTER", ("'ROUTER'",)),
    Case("bridge-sim-detector", "bridge-sim -d NOPE", ("'NOPE'", "AGIPD")),
    Case("bridge-sim-bind-foreign", "bridge-sim --bind 192.0.2.1 --trains 1", ("192.0.2.1",)),
    # --- monitor
    Case("monitor-no-scheme", "monitor 127.0.0.1:4545", ("'127.0.0.1:4545'", "tcp://")),
    Case("monitor-port-too-big", "monitor tcp://127.0.0.1:99999", ("99999",)),
    Case("monitor-trains-0", "monitor tcp://127.0.0.1:4545 --trains 0", ("--trains", "not 0")),
    Case("monitor-timeout-negative", "monitor tcp://127.0.0.1:4545 --timeout -1", ("-1",)),
    # --- ctl
    Case("ctl-no-scheme", "ctl 127.0.0.1:7000 list", ("'127.0.0.1:7000'", "tcp://")),
    Case("ctl-no-device", "ctl tcp://127.0.0.1:7000 get", ("get needs a device",)),
    Case("ctl-bad-op", "ctl tcp://127.0.0.1:7000 frobnicate", ("'frobnicate'",)),
    Case("ctl-timeout-0", "ctl tcp://127.0.0.1:7000 list --timeout 0", ("--timeout", "not 0")),
    # --- replay
    Case("replay-empty-dir", "replay {empty}", ("{empty}", "no run files")),
    Case("replay-missing-dir", "replay {missing}", ("{missing}", "does not exist")),
    Case("replay-file-not-dir", "replay {file}", ("{file}", "not a directory")),
    Case("replay-not-a-run", "replay {bogus} --port 0", ("{bogus}",), code=1),
    Case("replay-port-too-big", "replay {bogus} --port 99999", ("99999",)),
    Case("replay-port-busy", "replay {bogus} --port {busy}", ("{busy}", "in use")),
    Case("replay-trains-garbage", "replay {bogus} --trains abc", ("'abc'",)),
    Case("replay-rate-negative", "replay {bogus} --rate -3", ("--rate", "-3")),
    # --- dark
    Case("dark-empty-dir", "dark {empty} {empty} {empty}", ("{empty}", "no run files")),
    Case("dark-missing-dir", "dark {missing} {bogus} {bogus}", ("{missing}",)),
    Case(
        "dark-not-a-run",
        "dark {bogus} {bogus} {bogus} --catalog {tmp}/dark.sqlite",
        ("{bogus}",),
    ),
    Case("dark-memory-cells-0", "dark {bogus} {bogus} {bogus} --memory-cells 0", ("not 0",)),
    # --- correct
    Case(
        "correct-empty-dir",
        "correct {empty} --out {tmp}/corr",
        ("{empty}", "no run files"),
        absent="{tmp}/corr",
    ),
    Case("correct-missing-dir", "correct {missing} --out {tmp}/corr", ("{missing}",)),
    Case(
        "correct-not-a-run",
        "correct {bogus} --out {tmp}/corr --catalog {tmp}/c.sqlite --workers 1",
        ("{bogus}",),
        code=1,
    ),
    Case(
        "correct-constants-time",
        "correct {bogus} --out {tmp}/corr --constants-time yesterday",
        ("'yesterday'",),
    ),
    Case("correct-module-negative", "correct {bogus} --out {tmp}/c --modules -1", ("-1",)),
    Case("correct-out-is-file", "correct {bogus} --out {file}", ("{file}", "not a directory")),
    Case("correct-workers-0", "correct {bogus} --out {tmp}/c --workers 0", ("workers", "0")),
    Case("correct-walltime", "correct {bogus} --out {tmp}/c --slurm --walltime 1h", ("'1h'",)),
    # --- reduce
    Case("reduce-empty-dir", "reduce {empty} --out {tmp}/r.h5", ("{empty}",), absent="{tmp}/r.h5"),
    Case("reduce-npt-0", "reduce {bogus} --out {tmp}/r.h5 --npt 0", ("--npt", "not 0")),
    Case("reduce-radial-range", "reduce {bogus} --out {tmp}/r.h5 --radial-range 5 1", ("5", "1")),
    Case("reduce-out-is-dir", "reduce {bogus} --out {empty}", ("{empty}", "directory")),
    Case("reduce-distance-0", "reduce {bogus} --out {tmp}/r.h5 --distance 0", ("--distance",)),
    Case("reduce-workers-negative", "reduce {bogus} --out {tmp}/r.h5 --workers -1", ("-1",)),
    # --- simulate
    Case(
        "simulate-trains-negative",
        "simulate --out {tmp}/sim --trains -5",
        ("--trains", "-5"),
        absent="{tmp}/sim",
    ),
    Case(
        "simulate-trains-0", "simulate --out {tmp}/sim --trains 0", ("not 0",), absent="{tmp}/sim"
    ),
    Case("simulate-trains-garbage", "simulate --out {tmp}/sim --trains many", ("'many'",)),
    Case("simulate-frames-0", "simulate --out {tmp}/sim --trains 1 --frames 0", ("--frames",)),
    Case("simulate-out-is-file", "simulate --out {file} --trains 1", ("{file}",)),
    Case(
        "simulate-module-99",
        "simulate --out {tmp}/sim --trains 1 --modules 99",
        ("99",),
        absent="{tmp}/sim",
    ),
    # --- demo
    Case("demo-frames-0", "demo --frames 0", ("--frames", "not 0")),
    Case("demo-trains-negative", "demo --trains -1", ("--trains", "-1")),
    Case("demo-bridge-port-too-big", "demo --bridge-port 99999", ("99999",)),
    Case(
        "demo-bridge-port-busy",
        "demo --no-gui --bridge-port {busy} --data-dir {tmp}/demo",
        ("--bridge-port {busy}", "in use"),
        absent="{tmp}/demo",
    ),
    Case(
        "demo-gui-port-busy",
        "demo --gui-port {busy} --bridge-port {free} --data-dir {tmp}/demo",
        ("--gui-port {busy}", "in use"),
        absent="{tmp}/demo",
    ),
    # --- gui
    Case("gui-port-too-big", "gui --topology t --port 99999", ("99999",)),
    Case("gui-missing-topology-file", "gui --topology {missing}.toml", ("{missing}.toml",)),
    Case("gui-missing-scene", "gui --topology t --scene {missing}", ("{missing}",)),
    # --- server
    Case("server-bind-no-scheme", "server --name s --bind 127.0.0.1:7000", ("127.0.0.1:7000",)),
    Case("server-memory-negative", "server --name s --memory-limit-mb -5", ("-5",)),
    Case("server-missing-token-file", "server --name s --token-file {missing}", ("{missing}",)),
    # --- catalog
    Case("catalog-limit-0", "catalog constants --limit 0", ("--limit", "not 0")),
    Case("catalog-show-garbage", "catalog show abc", ("'abc'",)),
    # --- run: bad topology files
    Case("run-missing-file", "run {missing}.toml", ("{missing}.toml", "no such")),
    Case("run-duration-negative", "run {topo:good} --duration -1", ("--duration", "-1")),
    Case("run-unknown-class", "run {topo:unknown_class}", ('[devices."T/X"] class', "Pasthrough")),
    Case("run-duplicate-device", "run {topo:duplicate_device}", ('"T/X"', "declared twice")),
    Case("run-bad-channel", "run {topo:bad_channel}", ("'outptu'", "[[connections]] #1")),
    Case("run-bad-policy", "run {topo:bad_policy}", ("on_slowness", "'fast'")),
    Case("run-unknown-server", "run {topo:unknown_server}", ("'nowhere'",)),
    Case("run-cycle", "run {topo:cycle}", ("cycle", "T/X -> T/Y -> T/X")),
    Case("run-unknown-property", "run {topo:unknown_property}", ("gian_mode", "'gain_mode'")),
    Case("run-over-limit", "run {topo:over_limit}", ("config.gain_mode", "7", "maximum 3")),
    Case("run-wrong-type", "run {topo:wrong_type}", ("config.module", "'zero'")),
    Case("run-read-only", "run {topo:read_only}", ("config.errorCount", "read-only")),
    Case("run-malformed", "run {topo:malformed}", ("not valid TOML",)),
    Case("run-missing-class", "run {topo:missing_class}", ("class: missing",)),
    Case("run-unknown-key", "run {topo:unknown_key}", ("confg", "'config'")),
    Case("run-port-out-of-range", "run {topo:port_out_of_range}", ("99999",)),
    Case("run-endpoint-no-scheme", "run {topo:endpoint_without_scheme}", ("'127.0.0.1:4545'",)),
    Case("run-remote-port-base", "run {topo:remote_port_base}", ("port_base", "70000")),
    Case("run-bridge-port-busy", "run {topo:busy_bridge}", ("{busy}", "in use")),
    Case("run-check-bad", "run --check {topo:cycle}", ("cycle",)),
    # --- the command line itself
    Case("unknown-command", "frobnicate", ("'frobnicate'",)),
    Case("bad-log-level", "--log-level LOUD ctl", ("'LOUD'",)),
]


@pytest.fixture(scope="module")
def busy_port():
    """A port another program listens on."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


@pytest.fixture()
def places(tmp_path, busy_port):
    """Values of the ``{placeholders}`` of the cases."""
    empty = tmp_path / "empty-run"
    empty.mkdir()
    bogus = tmp_path / "bogus-run"
    bogus.mkdir()
    (bogus / "RAW-R0001-AGIPD00-S00000.h5").write_text("not HDF5")
    plain = tmp_path / "plain-file"
    plain.write_text("x")
    topologies = dict(BAD_TOPOLOGIES, good=GOOD)
    topologies["busy_bridge"] = (
        GOOD + '\n[devices."T/B"]\nclass = "Bridge"\nserver = "a"\n'
        f'config = {{ endpoint = "tcp://127.0.0.1:{busy_port}" }}\n'
    )
    values = {
        "tmp": str(tmp_path),
        "empty": str(empty),
        "bogus": str(bogus),
        "file": str(plain),
        "missing": str(tmp_path / "no-such-thing"),
        "busy": str(busy_port),
        "free": str(free_port()),
    }
    for name, text in topologies.items():
        path = tmp_path / f"{name}.toml"
        path.write_text(textwrap.dedent(text))
        values[f"topo:{name}"] = str(path)
    return values


def fill(text: str, places: dict[str, str]) -> str:
    for key, value in places.items():
        text = text.replace("{" + key + "}", value)
    return text


def check(case: Case, code: int, out: str, err: str, places: dict[str, str]) -> None:
    both = out + err
    assert "Traceback" not in both, both
    assert code != 0, both
    assert code == case.code, f"exit code {code}, expected {case.code}: {both}"
    command = case.argv.split()[0] if not case.argv.startswith("-") else ""
    errors = [line for line in err.splitlines() if ": error: " in line]
    assert errors, f"no error line in stderr: {err!r}"
    if command in ("run",):
        assert all(line.startswith("pulsetrain run: error: ") for line in errors), err
    for name in case.names:
        name = fill(name, places)
        assert any(name in line for line in errors), f"{name!r} not named in: {err}"
    if case.absent:
        assert not Path(fill(case.absent, places)).exists(), "a bad argument left output behind"


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_in_process(case, places, capsys):
    argv = fill(case.argv, places).split()
    code = main(argv)
    captured = capsys.readouterr()
    check(case, code, captured.out, captured.err, places)


SUBPROCESS_CASES = [
    "bridge-sim-port-too-big",
    "bridge-sim-port-busy",
    "ctl-no-scheme",
    "simulate-trains-negative",
    "replay-empty-dir",
    "run-cycle",
    "run-malformed",
]


@pytest.mark.parametrize("case_id", SUBPROCESS_CASES)
def test_bad_input_as_a_process(case_id, places):
    case = next(c for c in CASES if c.id == case_id)
    argv = fill(case.argv, places).split()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    proc = subprocess.run(
        [sys.executable, "-m", "pulsetrain", *argv],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    check(case, proc.returncode, proc.stdout, proc.stderr, places)


def test_at_least_40_cases_cover_every_command():
    from pulsetrain.cli import build_parser

    assert len(CASES) >= 40
    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    covered = {c.argv.split()[0] for c in CASES}
    assert set(commands) <= covered, set(commands) - covered


def test_debug_shows_the_traceback(places, capsys):
    for argv in (
        ["--debug", "replay", places["empty"] + "x"],
        ["run", places["topo:cycle"], "--debug"],
    ):
        code = main(argv)
        err = capsys.readouterr().err
        assert code == 2
        if argv[0] == "run":
            assert "Traceback" in err and "TopologyError" in err
            assert "pulsetrain run: error: " in err


def test_a_bug_prints_its_traceback_and_says_so(monkeypatch, capsys):
    from pulsetrain.cli import ctl

    def broken(args):
        raise KeyError("oops")

    monkeypatch.setattr(ctl, "run", broken)
    code = main(["ctl", "tcp://127.0.0.1:7000", "list"])
    err = capsys.readouterr().err
    assert code == 70
    assert "Traceback" in err and "KeyError" in err and "this is a bug in pulsetrain" in err


def test_os_errors_of_the_user_are_one_line(monkeypatch, capsys, tmp_path):
    from pulsetrain.cli import ctl

    missing = tmp_path / "gone"

    def no_file(args):
        open(missing)  # noqa: SIM115 - raises FileNotFoundError

    monkeypatch.setattr(ctl, "run", no_file)
    code = main(["ctl", "tcp://127.0.0.1:7000", "list"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip() == f"pulsetrain ctl: error: No such file or directory: '{missing}'"
