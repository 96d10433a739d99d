"""``Topology.validate``: the whole topology is checked before anything starts, every problem on
one line naming the file, the table and the key; ``pulsetrain run --check`` reports them."""

from __future__ import annotations

import socket
import textwrap
from pathlib import Path

import pytest

from pulsetrain.cli import main
from pulsetrain.errors import TopologyError
from pulsetrain.runtime.topology import Topology

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

HEAD = """\
[topology]
name = "check-me"

[servers.a]

[devices."T/SRC"]
class = "TrainSource"
server = "a"
config = { rate = 10.0 }

[devices."T/WORK"]
class = "Passthrough"
server = "a"

[devices."T/CORR"]
class = "AGIPDCorrection"
server = "a"
config = { module = 3 }

[[connections]]
from = "T/SRC:output"
to = "T/WORK:input"
"""


def write(tmp_path: Path, text: str, name: str = "calib.toml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def problems_of(tmp_path: Path, text: str, **kwargs) -> list[str]:
    path = write(tmp_path, text)
    with pytest.raises(TopologyError) as info:
        Topology.load(path).validate(**kwargs)
    assert str(info.value) == "\n".join(info.value.problems)
    return info.value.problems


def line_of(text: str, fragment: str) -> int:
    """1-based number of the first line of ``text`` containing ``fragment``."""
    return next(i for i, line in enumerate(text.splitlines(), 1) if fragment in line)


def test_a_good_topology_has_no_problem(tmp_path):
    assert Topology.load(write(tmp_path, HEAD)).check() == []
    Topology.load(write(tmp_path, HEAD)).validate()


@pytest.mark.parametrize("example", ["calibration-pipeline.toml", "scenes/gui-topology.toml"])
def test_the_examples_are_valid(example):
    # ports=False: another program may hold the example bridge's port 4545 on a shared machine
    assert Topology.load(EXAMPLES / example).check(ports=False) == []


KINDS = [
    # (what, replace, by, table, key, words in the message)
    (
        "unknown class",
        'class = "Passthrough"',
        'class = "Pasthrough"',
        '[devices."T/WORK"]',
        "class",
        ["'Pasthrough'", "did you mean 'Passthrough'"],
    ),
    (
        "unimportable class",
        'class = "Passthrough"',
        'class = "no_such_module:Thing"',
        '[devices."T/WORK"]',
        "class",
        ["no_such_module", "No module named"],
    ),
    (
        "unknown property",
        "module = 3",
        "modul = 3",
        '[devices."T/CORR"]',
        "config.modul",
        ["has no property 'modul'", "did you mean 'module'"],
    ),
    (
        "over the maximum",
        "module = 3",
        "module = 16",
        '[devices."T/CORR"]',
        "config.module",
        ["16 is above the maximum 15"],
    ),
    (
        "below the minimum",
        "rate = 10.0",
        "rate = -1.0",
        '[devices."T/SRC"]',
        "config.rate",
        ["-1.0 is below the minimum"],
    ),
    (
        "wrong type",
        "module = 3",
        'module = "three"',
        '[devices."T/CORR"]',
        "config.module",
        ["expected a value of type int", "'three'"],
    ),
    (
        "not an option",
        "module = 3",
        'module = 3, on_missing_constants = "ignore"',
        '[devices."T/CORR"]',
        "config.on_missing_constants",
        ["'ignore' is not one of"],
    ),
    (
        "read-only",
        "module = 3",
        "module = 3, constantsLoaded = true",
        '[devices."T/CORR"]',
        "config.constantsLoaded",
        ["read-only"],
    ),
    (
        "unknown server",
        'server = "a"\nconfig = { rate',
        'server = "b"\nconfig = { rate',
        '[devices."T/SRC"]',
        "server",
        ["'b' is not in [servers]"],
    ),
    (
        "unknown device key",
        'server = "a"\nconfig = { rate',
        'server = "a"\nconf = 1\nconfig = { rate',
        '[devices."T/SRC"]',
        "conf",
        ["unknown key", "did you mean 'config'"],
    ),
    (
        "bad output",
        'from = "T/SRC:output"',
        'from = "T/SRC:outptu"',
        "[[connections]] #1",
        "from",
        ["no output 'outptu'", "did you mean 'output'"],
    ),
    (
        "bad input",
        'to = "T/WORK:input"',
        'to = "T/WORK:inptu"',
        "[[connections]] #1",
        "to",
        ["no input 'inptu'"],
    ),
    (
        "unknown device",
        'to = "T/WORK:input"',
        'to = "T/WROK:input"',
        "[[connections]] #1",
        "to",
        ["no device 'T/WROK'", "did you mean 'T/WORK'"],
    ),
    (
        "no channel",
        'to = "T/WORK:input"',
        'to = "T/WORK"',
        "[[connections]] #1",
        "to",
        ["'DEVICE_ID:channel'"],
    ),
    (
        "bad policy",
        'to = "T/WORK:input"',
        'to = "T/WORK:input"\non_slowness = "fast"',
        "[[connections]] #1",
        "on_slowness",
        ["'fast'"],
    ),
    (
        "bad distribution",
        'to = "T/WORK:input"',
        'to = "T/WORK:input"\ndata_distribution = "x"',
        "[[connections]] #1",
        "data_distribution",
        ["'x'"],
    ),
    (
        "bad queue length",
        'to = "T/WORK:input"',
        'to = "T/WORK:input"\nmax_queue_length = 0',
        "[[connections]] #1",
        "max_queue_length",
        ["not 0"],
    ),
    (
        "server key",
        "[servers.a]",
        "[servers.a]\nmemory_limit = 3",
        "[servers.a]",
        "memory_limit",
        ["unknown key", "did you mean 'memory_limit_mb'"],
    ),
    (
        "port_base",
        "[servers.a]",
        '[servers.a]\n[servers.far]\nendpoint = "tcp://h:7000"\nport_base = 0',
        "[servers.far]",
        "port_base",
        ["0 is not a TCP port"],
    ),
]


@pytest.mark.parametrize("kind", KINDS, ids=[k[0] for k in KINDS])
def test_each_problem_is_one_line_with_file_table_and_key(tmp_path, kind):
    _, old, new, table, key, words = kind
    assert old in HEAD
    text = HEAD.replace(old, new, 1)
    problems = problems_of(tmp_path, text)
    assert len(problems) == 1, problems
    line = problems[0]
    header = table.split(" #")[0]
    number = line_of(text, header) if "#" not in table else line_of(text, "[[connections]]")
    assert line.startswith(f"{tmp_path / 'calib.toml'}:{number}: {table} {key}: "), line
    for word in words:
        assert word in line, line
    assert "\n" not in line


def test_several_problems_are_reported_together_in_file_order(tmp_path):
    text = (
        HEAD.replace('class = "Passthrough"', 'class = "Nope"')
        .replace("module = 3", "module = 99, gain = 1")
        .replace('to = "T/WORK:input"', 'to = "T/WORK:input"\non_slowness = "later"')
    )
    problems = problems_of(tmp_path, text)
    assert len(problems) == 4, problems
    assert "class: unknown device class 'Nope'" in problems[0]
    assert "config.module: 99 is above the maximum 15" in problems[1]
    assert "config.gain: class AGIPDCorrection has no property 'gain'" in problems[2]
    assert "on_slowness" in problems[3]
    numbers = [int(p.split(":")[1]) for p in problems]
    assert numbers == sorted(numbers)


def test_cycles_are_refused_one_line_each(tmp_path):
    text = HEAD + textwrap.dedent("""
        [[connections]]
        from = "T/WORK:output"
        to = "T/SRC:input"

        [[connections]]
        from = "T/CORR:output"
        to = "T/CORR:input"
    """)
    problems = problems_of(tmp_path, text)
    # TrainSource has no input: that is one problem; the self-loop of T/CORR is a cycle
    assert any("[[connections]] #2 to: 'T/SRC:input'" in p for p in problems), problems
    cycles = [p for p in problems if "closes a cycle" in p]
    assert len(cycles) == 1 and "T/CORR -> T/CORR" in cycles[0], problems

    looped = (
        HEAD.replace('class = "TrainSource"', 'class = "Passthrough"').replace(
            "config = { rate = 10.0 }", ""
        )
        + '\n[[connections]]\nfrom = "T/WORK:output"\nto = "T/SRC:input"\n'
    )
    problems = problems_of(tmp_path, looped)
    assert len(problems) == 1 and "closes a cycle T/SRC -> T/WORK -> T/SRC" in problems[0]
    assert problems[0].startswith(
        f"{tmp_path / 'calib.toml'}:{line_of(looped, '[[connections]]') + 4}:"
    )


def test_two_policies_for_one_input_and_a_duplicate_connection(tmp_path):
    text = HEAD + textwrap.dedent("""
        [[connections]]
        from = "T/SRC:output"
        to = "T/WORK:input"
        on_slowness = "wait"
    """)
    problems = problems_of(tmp_path, text)
    assert any("two different policies" in p for p in problems), problems
    assert any("connected twice" in p for p in problems), problems


def test_duplicate_device_ids_and_bad_toml_are_one_line_with_the_line_number(tmp_path):
    text = HEAD + '\n[devices."T/WORK"]\nclass = "Passthrough"\nserver = "a"\n'
    with pytest.raises(TopologyError) as info:
        Topology.load(write(tmp_path, text))
    second = len(text.splitlines()) - 2
    expected = (
        f'{tmp_path / "calib.toml"}:{second}: [devices."T/WORK"] is declared twice: '
        "a device ID must be unique"
    )
    assert info.value.problems == [expected]
    with pytest.raises(TopologyError, match=r"calib.toml:2: not valid TOML"):
        Topology.load(write(tmp_path, "[servers.a]\nname = = 1\n"))
    with pytest.raises(TopologyError, match="no such topology file"):
        Topology.load(tmp_path / "nothing.toml")


def test_fixed_ports_are_valid_distinct_and_free(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        busy = s.getsockname()[1]
        text = HEAD + textwrap.dedent(f"""
            [devices."T/B1"]
            class = "Bridge"
            server = "a"
            config = {{ endpoint = "tcp://127.0.0.1:{busy}" }}

            [devices."T/B2"]
            class = "Bridge"
            server = "a"
            config = {{ endpoint = "tcp://127.0.0.1:{busy}" }}

            [devices."T/B3"]
            class = "Bridge"
            server = "a"
            config = {{ endpoint = "tcp://127.0.0.1:70000" }}

            [devices."T/B4"]
            class = "Bridge"
            server = "a"
            config = {{ endpoint = "tcp://127.0.0.1:0" }}
        """)
        problems = problems_of(tmp_path, text)
        assert Topology.load(tmp_path / "calib.toml").check(ports=False) == problems[1:]
    assert len(problems) == 3, problems
    assert f'[devices."T/B1"] config.endpoint: tcp://127.0.0.1:{busy}: port {busy}' in problems[0]
    assert "in use" in problems[0]
    assert f"port {busy} on 127.0.0.1 is also bound by T/B1" in problems[1]
    assert "70000 is not a TCP port" in problems[2]


def test_resolve_refuses_a_topology_with_problems(tmp_path):
    topology = Topology.load(write(tmp_path, HEAD.replace('server = "a"', 'server = "z"', 1)))
    with pytest.raises(TopologyError, match="'z' is not in"):
        topology.resolve()


def test_run_check_exit_codes_and_nothing_started(tmp_path, monkeypatch, capsys):
    from pulsetrain.runtime.supervisor import Supervisor

    def no_process(self, *args, **kwargs):
        raise AssertionError("a server process was started")

    monkeypatch.setattr(Supervisor, "_spawn", no_process)
    good = EXAMPLES / "scenes" / "gui-topology.toml"
    assert main(["run", "--check", str(good)]) == 0
    out = capsys.readouterr().out
    example = Topology.load(good)
    assert out.startswith(
        f"{good}: ok ({len(example.servers)} servers, {len(example.devices)} devices"
    )

    bad = write(
        tmp_path, HEAD.replace("module = 3", "module = 30").replace('"T/WORK:input"', '"T/WORK:in"')
    )
    assert main(["run", "--check", str(bad)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and all(line.startswith("pulsetrain run: error: ") for line in err)
    assert "config.module: 30 is above the maximum 15" in err[0]
    assert "no input 'in'" in err[1]

    workdir = tmp_path / "work"
    assert main(["run", str(bad), "--workdir", str(workdir)]) == 2  # validated before start
    assert "Traceback" not in capsys.readouterr().err
    assert not workdir.exists()
