"""``pulsetrain replay`` sends what EXtra-data's ``karabo-bridge-serve-files`` sends.

For every mock-run generator of ``extra_data.tests.make_examples`` the two streams are diffed
train by train: sources (empty ones included), keys, value types and values, ``metadata``
inside each source's data.  serve-files' trains are made in-process by its own installed code
(``extra_data.export``: the selection, train assembly and object-array dropping it runs, and
karabo-bridge-py's serialiser); ours by :class:`pulsetrain.files.reader.BridgeRun` and our
serialiser; both decoded by karabo-bridge-py.  Over the wire, both command-line servers (REP)
are diffed for two runs.  Mock detector runs are large: for them a glob picks two modules
and the first train (the same selection on both sides); runs of small trains are compared
whole or over their first trains.
"""

from __future__ import annotations

import itertools
import sys

import pytest
from _bridge_helpers import Process, pulsetrain_cmd
from _serve_files_ref import diff_trains, generators, make_run, our_trains, reference_trains

from pulsetrain.errors import ConfigurationError
from pulsetrain.runtime.ports import free_port

TWO_MODULES = "*/DET/[01]CH0*"

# generator: (generator kwargs, source glob, key glob, trains compared: None = all)
CASES = {
    "make_agipd1m_run": ({}, "SPB_DET_AGIPD1M-1/DET/[01]CH0*", "*", 1),
    "make_agipd1m_run:control": ({}, "SPB_IRU*", "*", None),
    "make_agipd500k_run": ({}, TWO_MODULES, "*", 1),
    "make_agipd_example_file": ({}, "*", "*", 2),
    "make_agipd_file": ({}, "*", "*", 3),
    "make_da_file_with_empty_source": ({"ntrains": 50}, "*", "*", 10),
    "make_data_file_bad_device_name": ({}, "*", "*", 5),
    "make_fxe_da_file": ({}, "*", "*", 20),
    "make_fxe_run": ({}, TWO_MODULES, "*", 1),
    "make_fxe_run:xgm": ({}, "*XGM*", "*", None),
    "make_lpd_file": ({}, "*", "*", 1),
    "make_lpd_parallelgain_run": ({}, TWO_MODULES, "*", 1),
    "make_lpd_run_mini_missed_train": ({}, "*", "*", None),
    "make_modern_spb_proc_run": ({}, "SPB_DET_AGIPD1M-1/*/[01]CH0*", "*", 1),
    "make_reduced_spb_run": ({}, "*", "*", 3),
    "make_remi_run": ({}, "*", "rec.trainId", None),
    "make_sa3_da_file": ({"ntrains": 50}, "SA3_XTD10*", "*", 5),
    "make_scs_run": ({}, TWO_MODULES, "*", 1),
    "make_spb_run": ({}, TWO_MODULES, "*", 1),
    "make_spb_run:da": ({}, "SPB_[IX]*", "*", 5),
}
# serve-files cannot serve these at all: its train iterator fails on keys whose HDF5 names
# contain '.' (KeyError 'component not found'); pulsetrain replay serves them.
NOT_SERVED = {"make_jungfrau_run", "make_fxe_jungfrau_run"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("mockruns")

    def get(case: str):
        name = case.partition(":")[0]
        return make_run(name, base, **CASES[case][0])

    return get


def test_every_generator_is_covered():
    assert set(generators()) == {c.partition(":")[0] for c in CASES} | NOT_SERVED


@pytest.mark.parametrize("case", sorted(CASES))
def test_replay_sends_what_serve_files_sends(runs, case):
    _, source, key, n = CASES[case]
    run_dir = runs(case)
    ref = reference_trains(run_dir, source, key, n)
    ours = our_trains(run_dir, [source], [key], n)
    assert ref, "the reference sent no train"
    assert diff_trains(ref, ours) == []
    # metadata inside each source's data, as serve-files sends it
    data, _ = ours[0]
    for src, props in data.items():
        assert props["metadata"]["source"] == src


def test_empty_source_sent_with_its_metadata(runs):
    data, _ = our_trains(runs("make_da_file_with_empty_source"), n=1)[0]
    empty = data["SA3_XTD10_VAC/GAUGE/G30520C"]
    assert set(empty) == {"metadata"}
    assert empty["metadata"] == {"source": "SA3_XTD10_VAC/GAUGE/G30520C", "timestamp.tid": 10000}


def test_strings_stay_bytes(runs):
    data, _ = our_trains(runs("make_fxe_da_file"), n=1)[0]
    assert isinstance(data["SA1_XTD2_XGM/DOOCS/MAIN"]["state.value"], bytes)


def test_timestamps_only_from_the_files(runs):
    """Format 0.5 mock files have no INDEX/timestamp: no timestamp is invented."""
    _, meta = our_trains(runs("make_fxe_da_file"), n=1)[0]
    assert all("timestamp" not in m for m in meta.values())
    # EXDF 1.0 files have them: they are passed on in the header metadata
    _, meta = our_trains(runs("make_lpd_run_mini_missed_train"), n=1)[0]
    assert all(m["timestamp"] > 1e9 for m in meta.values())


@pytest.mark.parametrize("case", ["make_remi_run", "make_sa3_da_file"])
def test_compound_dtypes_refused_at_start_naming_the_keys(runs, case):
    from pulsetrain.files.reader import BridgeRun

    with pytest.raises(ConfigurationError, match=r"compound.*rec\.hits, rec\.signals.*--key"):
        BridgeRun(runs(case))


def test_source_and_key_globs(runs):
    run_dir = runs("make_fxe_da_file")
    ours = our_trains(run_dir, ["*XGM*"], ["pulseEnergy.*", "data.intensityTD"], 2)
    ref = [reference_trains(run_dir, "*XGM*", k, 2) for k in ("pulseEnergy.*", "data.intensityTD")]
    merged = []
    for (d1, m1), (d2, _) in zip(*ref):
        data = {s: {**d1.get(s, {}), **d2.get(s, {})} for s in {*d1, *d2}}
        merged.append((data, m1))
    assert diff_trains(merged, ours) == []
    with pytest.raises(ConfigurationError, match="no source .* matches 'nothing'"):
        our_trains(run_dir, ["nothing"])
    with pytest.raises(ConfigurationError, match="no key .* matches 'zzz'"):
        our_trains(run_dir, ["*XGM*"], ["zzz"])


def _stream(cmd: list[str], port: int, n: int) -> list:
    from karabo_bridge import Client

    proc = Process(cmd)
    try:
        with Client(f"tcp://127.0.0.1:{port}", sock="REQ", timeout=60) as client:
            return [client.next() for _ in range(n)]
    finally:
        proc.stop()


@pytest.mark.parametrize(
    ("case", "extra"),
    [("make_da_file_with_empty_source", []), ("make_fxe_da_file", ["--source", "*XGM*"])],
)
def test_over_the_wire_both_command_lines_rep(runs, case, extra):
    """Both real servers as processes, REP, the stock client: the same trains."""
    run_dir = runs(case)
    n = 10
    port = free_port()
    serve_files = [sys.executable, "-m", "extra_data.cli.serve_files", str(run_dir), str(port)]
    ref = _stream([*serve_files, *extra], port, n)
    port = free_port()
    ours = _stream(pulsetrain_cmd("replay", str(run_dir), str(port), *extra), port, n)
    assert diff_trains(ref, ours) == []
    # the header metadata agrees too (no timestamps in these files)
    assert [m for _, m in ref] == [m for _, m in ours]


def test_trains_are_yielded_lazily(runs):
    from pulsetrain.files.reader import BridgeRun

    with BridgeRun(runs("make_fxe_da_file")) as run:
        first = list(itertools.islice(run.trains(), 2))
        assert [t for t, _, _ in first] == [10000, 10001]
        assert run.count(slice(5, 9)) == 4
