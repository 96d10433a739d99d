"""The rapid-feedback experiment of the design's figure 1, on one machine.

simulated AGIPD-1M + sample motor → 16 correction devices (8 servers) → train matcher →
azimuthal integration, hit finding, preview → feedback controller moving the motor; the raw
detector data, slow data and hit results recorded by the DAQ writer; a Karabo bridge and the
web GUI on top.  :func:`run_demo` builds the topology, fills a catalogue with the simulator's
constants, runs it, and returns a summary.

The run is driven by conditions, not by fixed durations, so it shows its point on a slow or
busy machine as well as on an idle one:

1. set-up: the fixed ports are checked first (nothing is started if one is taken), the
   constants are stored, the correction kernel is compiled, the servers are started;
2. the detector starts; the demo waits for the first corrected, matched train;
3. *before*: the hit rate over ``window_trains`` trains with the sample motor where it
   started (the feedback idle);
4. the feedback starts; the demo waits until it tracks (the scan found the sample and the
   motor holds the best position);
5. *after*: the hit rate over ``window_trains`` trains taken after the motor settled there;
6. the detector stops, the DAQ run is closed and validated, and the summary is printed.

Every wait has a generous deadline; the detector feeds the correction devices with
back-pressure (``on_slowness = "wait"``), so a slow machine gets fewer trains per second but
whole ones, never a stream of incomplete trains.

SIGINT, SIGTERM and SIGHUP (see :class:`StopSignals`) stop the demo from any point, during the
set-up too: the open DAQ run is closed, every server process is stopped, a short summary of
what was done is printed and :class:`KeyboardInterrupt` is raised again (the command then exits
with ``128 + signal number``: 130, 143, 129).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np

from pulsetrain.errors import ChannelError, ConfigurationError, PulsetrainError
from pulsetrain.runtime.lifetime import StopSignals
from pulsetrain.runtime.ports import port_problem

__all__ = [
    "DemoOptions",
    "check_ports",
    "demo_succeeded",
    "demo_topology",
    "run_demo",
]

log = logging.getLogger(__name__)

DET = "SPB_DET_AGIPD1M-1"
SIM, MOTOR = f"{DET}/DET/SIM", "SPB_IRU_SAMPLE/MOTOR/X"
MATCHER, BRIDGE = f"{DET}/CAL/MATCHER", f"{DET}/CAL/BRIDGE"
AZIMUTHAL, HITS, PREVIEW = f"{DET}/PROC/AZIMUTHAL", f"{DET}/PROC/HITS", f"{DET}/PROC/PREVIEW"
FEEDBACK, DAQ = "SPB_IRU_SAMPLE/CTRL/FEEDBACK", "SPB_DAQ/DATA/WRITER"

#: Signals that stop the demo cleanly.
#: Seconds the demo allows itself to stop after a signal ...
STOP_BUDGET_S = 4.5
#: ... and the DAQ writer's server more, if it is still closing the open run by then.
DAQ_EXTRA_S = 4.0

Say = Callable[[str], None]


@dataclass
class DemoOptions:
    """What ``pulsetrain demo`` runs.

    Attributes
    ----------
    trains : int or None
        None: as many trains as the demo's steps need (the default); 0: run on after the
        summary's measurements until a stop signal; N: stop after N trains whatever was
        measured by then.
    frames : int
        Frames (pulses) per train.
    data_dir : Path
        Catalogue, raw data (``raw/``), topology and server logs (``run/``).
    bridge_port, gui_port : int
        The fixed ports (checked before anything starts).
    gui : bool
        Start the web GUI.
    seed : int
        Seed of the simulation.
    modules : list of int
        Detector modules simulated and corrected.
    window_trains : int
        Trains in each of the *before* and *after* hit-rate measurements.
    start_timeout : float
        Longest wait (s) for the servers and devices to come up and the first corrected train.
    converge_timeout : float
        Longest wait (s) for the feedback to find the sample.
    detector : str
        Detector type (its plug-in: sources, constants, geometry); the device IDs keep the
        demo's names whatever the detector.
    """

    trains: int | None = None
    frames: int = 8
    data_dir: Path = Path("pulsetrain-demo")
    bridge_port: int = 4545
    gui: bool = True
    gui_port: int = 5006
    seed: int = 0
    modules: list[int] = field(default_factory=lambda: list(range(16)))
    window_trains: int = 20
    start_timeout: float = 180.0
    converge_timeout: float = 240.0
    detector: str = "AGIPD"


def corr_id(m: int) -> str:
    return f"{DET}/CAL/CORR_{m:02d}"


def demo_topology(opts: DemoOptions, catalog_url: str) -> str:
    """The TOML text of the demo's topology."""
    from pulsetrain.detectors import get_detector

    q = '"'
    plugin = get_detector(opts.detector)
    corrected = [plugin.corrected_source(plugin.raw_source(m)) for m in opts.modules]
    data_key, _gain_key, mask_key = list(plugin.corrected_keys)[:3]
    analysis = f'detector = "{plugin.name}", source_pattern = "", data_key = "{data_key}"'
    lines = [
        '[topology]\nname = "pulsetrain-demo"\n',
        "[servers.facility]\n[servers.online]\n[servers.control]\n[servers.daq]\n",
    ]
    lines += [f"[servers.cal{i}]\n" for i in range(8)]
    lines.append(f"""
[devices."{MOTOR}"]
class = "SimulatedMotor"
server = "facility"
config = {{ velocity = 2.0 }}

[devices."{SIM}"]
class = "SimulatedDetector"
server = "facility"
config = {{ detector = "{plugin.sim_name}", frames = {opts.frames}, memory_cells = {opts.frames}, seed = {opts.seed}, rate = 10.0, n_trains = {opts.trains or 0}, autostart = false, motor_device = "{MOTOR}", modules = {opts.modules} }}

[devices."{MATCHER}"]
class = "TrainMatcher"
server = "online"
config = {{ sources = [{", ".join(q + c + q for c in corrected)}], buffer_size = 20 }}

[devices."{BRIDGE}"]
class = "Bridge"
server = "online"
config = {{ endpoint = "tcp://127.0.0.1:{opts.bridge_port}", pattern = "REP" }}

[devices."{HITS}"]
class = "HitFinder"
server = "online"
config = {{ {analysis}, mask_key = "{mask_key}" }}

[devices."{AZIMUTHAL}"]
class = "AzimuthalIntegration"
server = "online"
config = {{ {analysis}, mask_key = "{mask_key}", npt = 256, distance = 0.2 }}

[devices."{PREVIEW}"]
class = "PreviewAssembler"
server = "online"
config = {{ {analysis}, detector_distance = 0.2, max_pulses = 4, downsample = 2 }}

[devices."{FEEDBACK}"]
class = "FeedbackController"
server = "control"
config = {{ motor_device = "{MOTOR}", autostart = false }}

[devices."{DAQ}"]
class = "DAQWriter"
server = "daq"
config = {{ directory = "{opts.data_dir / "raw"}", catalog = "{catalog_url}", autostart = true, sample = "water jet + crystals", gather_trains = 5 }}

[[connections]]
from = "{MATCHER}:output"
to = "{BRIDGE}:input"
[[connections]]
from = "{MATCHER}:output"
to = "{HITS}:input"
[[connections]]
from = "{MATCHER}:output"
to = "{AZIMUTHAL}:input"
[[connections]]
from = "{MATCHER}:output"
to = "{PREVIEW}:input"
[[connections]]
from = "{HITS}:output"
to = "{FEEDBACK}:hits"
[[connections]]
from = "{HITS}:output"
to = "{DAQ}:input"
on_slowness = "queueDrop"
max_queue_length = 2
[[connections]]
from = "{SIM}:slow"
to = "{DAQ}:input"
on_slowness = "queueDrop"
max_queue_length = 2
""")
    # The detector waits for its correction devices (back-pressure): on a slow machine fewer
    # trains per second, but every train reaches the matcher whole.
    for i, m in enumerate(opts.modules):
        lines.append(f"""
[devices."{corr_id(m)}"]
class = "pulsetrain.devices.correction:DetectorCorrection"
server = "cal{i % 8}"
config = {{ catalog = "{catalog_url}", detector = "{plugin.name}", module = {m}, memory_cells = {opts.frames} }}
[[connections]]
from = "{SIM}:module{m}"
to = "{corr_id(m)}:input"
on_slowness = "wait"
[[connections]]
from = "{corr_id(m)}:output"
to = "{MATCHER}:input"
on_slowness = "wait"
[[connections]]
from = "{SIM}:module{m}"
to = "{DAQ}:input"
on_slowness = "queueDrop"
max_queue_length = 2
""")
    return "".join(lines)


# ---------------------------------------------------------------------------- set-up steps
def check_ports(ports: dict[str, int], host: str = "127.0.0.1") -> None:
    """Refuse to start if a fixed port is taken.

    Parameters
    ----------
    ports : dict
        What the port is for (named in the message) → port number.

    Raises
    ------
    ConfigurationError
        Naming the first port that cannot be bound, and why.
    """
    for what, port in ports.items():
        problem = port_problem(host, port)
        if problem:
            raise ConfigurationError(f"{what}: {problem}")


def prepare_catalog(opts: DemoOptions, url: str, say: Say) -> None:
    """Store the simulator's constants unless the catalogue already has them."""
    from pulsetrain.bootstrap import sim_conditions
    from pulsetrain.catalog import Catalog
    from pulsetrain.catalog.detector_constants import store_constants
    from pulsetrain.detectors import get_detector
    from pulsetrain.sim import DetectorSimulator

    plugin = get_detector(opts.detector)
    det_id = plugin.default_detector_id
    required = plugin.required_constants(plugin.default_steps)
    cat = Catalog(url)
    try:
        sim = DetectorSimulator(
            plugin.sim_name, frames=opts.frames, memory_cells=opts.frames, seed=opts.seed
        )
        missing = []
        known = {d.name for d in cat.detectors()}
        for m in opts.modules:
            found = (
                cat.find_constants(
                    det_id, m, sim_conditions(opts.frames), types=required, missing_ok=True
                )
                if det_id in known
                else {}
            )
            if len(found) < len(required):
                missing.append(m)
        if not missing:
            say(f"  constants: all {len(opts.modules)} modules already in the catalogue")
            return
        t0 = time.monotonic()
        say(f"  constants: storing the simulator's constants for {len(missing)} modules in {url}")
        if det_id not in known:
            cat.add_detector(det_id, plugin.name, plugin.n_modules)
        valid_from = datetime.now(timezone.utc) - timedelta(days=1)
        for i, m in enumerate(missing, 1):
            arrays = plugin.truth_constants(sim.truth(m))
            store_constants(cat, det_id, m, arrays, sim_conditions(opts.frames), valid_from)
            if i % 4 == 0 or i == len(missing):
                say(f"    {i}/{len(missing)} modules stored ({time.monotonic() - t0:.0f} s)")
    finally:
        cat.close()


def warm_kernels(frames: int, detector: str = "AGIPD") -> None:
    """Compile (or load from numba's cache) the correction kernel once, before 8 servers do."""
    from pulsetrain.detectors import get_detector

    del frames  # the kernels do not depend on it
    plugin = get_detector(detector)
    cells = 2
    offset = {"Offset": np.zeros((3, cells, *plugin.module_shape), np.float32)}
    prepared = plugin.prepare_constants(offset, ("offset",))
    data = {}
    for rk in plugin.raw_keys:
        data[rk.key] = np.zeros((1, *rk.frame_shape), np.dtype(rk.dtype))
    if plugin.cell_key:
        data[plugin.cell_key] = np.zeros(1, np.uint16)
    plugin.correct(data, prepared, ("offset",))


class _Tap(threading.Thread):
    """Measures detector → matched, corrected train latency from the matcher's output."""

    def __init__(self, endpoint: str):
        super().__init__(daemon=True, name="demo:latency-tap")
        from pulsetrain.runtime.channels import InputChannel

        self.inp = InputChannel("demo:latency-tap", on_slowness="drop")
        self.inp.connect(endpoint)
        self.latencies: list[float] = []
        self.stop = threading.Event()

    def run(self) -> None:
        from pulsetrain.runtime.channels import EndOfStream

        while not self.stop.is_set():
            try:
                item = self.inp.get(timeout=0.5)
            except TimeoutError:
                continue
            except Exception as exc:  # noqa: BLE001 - the channel closed: the tap ends
                log.debug("latency tap stopped: %s", exc)
                return
            if isinstance(item, EndOfStream):
                continue
            ts = max(float(m.get("timestamp", 0)) for m in item.meta.values())
            self.latencies.append(time.time() - ts)

    def close(self) -> None:
        self.stop.set()
        self.join(timeout=1.0)
        with contextlib.suppress(Exception):
            self.inp.close()


class _StartProgress(threading.Thread):
    """Prints how many servers answer and how many devices are up while the supervisor starts
    them (its own control clients, so it never competes with the supervisor's)."""

    def __init__(self, sup: Any, say: Say, interval: float = 2.0):
        super().__init__(daemon=True, name="demo:start-progress")
        self.sup, self.say, self.interval = sup, say, interval
        self.done = threading.Event()

    def run(self) -> None:
        from pulsetrain.runtime.control import Client

        clients = {
            n: Client(sp.control, token=self.sup.token, timeout=0.5)
            for n, sp in self.sup.servers.items()
        }
        n_dev = len(self.sup.topology.devices)
        last = None
        try:
            while not self.done.wait(self.interval):
                up = devices = 0
                for c in clients.values():
                    try:
                        devices += len(c.ping()["devices"])
                        up += 1
                    except (TimeoutError, PulsetrainError):  # not up yet
                        continue
                if (up, devices) != last:
                    last = (up, devices)
                    self.say(
                        f"    {up}/{len(clients)} servers answering, {devices}/{n_dev} devices up"
                    )
        finally:
            for c in clients.values():
                c.close()

    def close(self) -> None:
        self.done.set()
        self.join(timeout=2.0)


# ---------------------------------------------------------------------------- the run
class _Demo:
    """One run of the demo: its steps, what they measured, and the clean stop."""

    def __init__(self, opts: DemoOptions, say: Say, signals: StopSignals | None):
        self.opts, self.say, self.signals = opts, say, signals
        self.t0 = time.monotonic()
        self.step = "set-up"
        self.sup: Any = None
        self.gui: Any = None
        self.tap: _Tap | None = None
        self.progress: _StartProgress | None = None
        self.s: dict[str, Any] = {"data_dir": str(opts.data_dir), "modules": len(opts.modules)}
        self._out_of_trains = False
        self._all_sent_at: float | None = None
        self.t_acquisition: float | None = None
        self.bytes_before = _du(opts.data_dir)

    # -------------------------------------------------------- helpers
    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def get(self, device: str, key: str, timeout: float = 10.0) -> Any:
        return self.sup.device_client(device).request(
            "get", device=device, key=key, timeout=timeout
        )

    def call(self, device: str, slot: str, timeout: float = 30.0) -> Any:
        return self.sup.device_client(device).call(device, slot, timeout=timeout)

    def counters(self) -> dict[str, Any]:
        """Hit finder counters and where the detector and motor are (one poll)."""
        hits = self.sup.get(HITS)
        return {
            "hits": int(hits["hits"]),
            "pulses": int(hits["pulses"]),
            "processed": int(hits["processedTrains"]),
            "last_tid": int(hits["lastTrainId"]),
            "rate": float(hits["hitRate"]),
            "sent": int(self.get(SIM, "sentTrains")),
            "tid": int(self.get(SIM, "trainId")),
            "matched": int(self.get(MATCHER, "matchedTrains")),
            "motor": float(self.get(MOTOR, "actualPosition")),
            "phase": str(self.get(FEEDBACK, "phase")),
        }

    def wait(self, test: Callable[[dict], bool], timeout: float, what: str) -> dict | None:
        """Poll the counters until ``test`` holds; print progress every 5 s.  Returns the
        counters, or None after ``timeout`` or when the detector has sent all its trains."""
        deadline = time.monotonic() + timeout
        last_print = time.monotonic()
        while True:
            try:
                c = self.counters()
            except TimeoutError:
                c = None
            try:
                ok = c is not None and test(c)
            except TimeoutError:
                ok = False
            if ok:
                return c
            now = time.monotonic()
            if c is not None and self.opts.trains and c["sent"] >= self.opts.trains:
                if self._all_sent_at is None:
                    self._all_sent_at = now
                elif now - self._all_sent_at > 10.0:  # the last trains had time to arrive
                    self._out_of_trains = True
                    self.say(f"  all {self.opts.trains} trains sent before {what}")
                    return None
            if now > deadline:
                self.say(f"  gave up waiting for {what} after {timeout:.0f} s")
                return None
            if c is not None and now - last_print >= 5.0:
                last_print = now
                self.say(
                    f"  t={self.elapsed():5.1f} s  trains {c['sent']:5d} simulated, "
                    f"{c['matched']:5d} corrected  hit rate {c['rate']:5.2f}  "
                    f"motor {c['motor']:6.2f} mm  feedback {c['phase']}"
                )
            time.sleep(0.25)

    def measure(self, name: str, after_tid: int) -> dict | None:
        """Hit rate over ``window_trains`` trains of ID > ``after_tid`` seen by the hit finder."""
        n = self.opts.window_trains
        start = self.wait(
            lambda c: c["last_tid"] > after_tid,
            self.opts.start_timeout,
            f"the first train of the '{name}' window",
        )
        if start is None:
            return None
        end = self.wait(
            lambda c: c["processed"] >= start["processed"] + n,
            self.opts.start_timeout,
            f"{n} trains for the '{name}' window",
        )
        if end is None:
            return None
        pulses = end["pulses"] - start["pulses"]
        result = {
            "rate": (end["hits"] - start["hits"]) / pulses if pulses else 0.0,
            "trains": end["processed"] - start["processed"],
            "pulses": pulses,
            "motor_mm": end["motor"],
        }
        self.s[f"hit_rate_{name}"] = result["rate"]
        self.s[f"window_{name}"] = result
        self.say(
            f"  hit rate {name} the feedback: {result['rate']:.2f} "
            f"({end['hits'] - start['hits']} hits in {pulses} pulses of "
            f"{result['trains']} trains, motor at {end['motor']:.2f} mm)"
        )
        return end

    # -------------------------------------------------------- steps
    def run(self) -> dict[str, Any]:
        opts = self.opts
        opts.data_dir = Path(opts.data_dir).resolve()
        self.s["data_dir"] = str(opts.data_dir)
        ports = {"Karabo bridge": opts.bridge_port}
        if opts.gui:
            ports["GUI"] = opts.gui_port
        check_ports(ports)  # before anything is written or started
        opts.data_dir.mkdir(parents=True, exist_ok=True)
        url = f"sqlite:///{opts.data_dir / 'catalog.sqlite'}"
        self.say(
            f"pulsetrain demo: writing to {opts.data_dir} (catalogue catalog.sqlite, raw "
            f"data in raw/, about {_train_bytes(opts) / 2**20:.0f} MiB per train; "
            f"server logs in run/)"
        )
        self.say("set-up:")
        self.step = "storing constants"
        prepare_catalog(opts, url, self.say)
        self.step = "warming kernels"
        t = time.monotonic()
        self.say("  kernels: compiling (or loading from numba's cache) the correction kernel")
        warm_kernels(opts.frames, opts.detector)
        self.say(f"    done in {time.monotonic() - t:.1f} s")
        self.step = "starting servers"
        self._start_servers(url)
        self.step = "waiting for devices"
        self._await_ready()
        self.step = "waiting for the first corrected train"
        self.say("detector: starting; waiting for the first corrected train")
        self.call(SIM, "start_acquisition")
        self.t_acquisition = time.monotonic()
        first = self.wait(
            lambda c: c["matched"] >= 1, opts.start_timeout, "the first corrected train"
        )
        if first is not None:
            self.s["first_corrected_s"] = self.elapsed()
            self.say(f"first corrected train after {self.s['first_corrected_s']:.1f} s")
            self.step = "measuring the hit rate before the feedback"
            if self.measure("before", 0) is not None:
                self._feedback()
        if opts.trains == 0:
            self.step = "running until a stop signal"
            self.say("running on; stop with Ctrl-C (or SIGTERM/SIGHUP)")
            self.wait(lambda c: False, math.inf, "a stop signal")
        return self._finish()

    def _start_servers(self, url: str) -> None:
        from pulsetrain.runtime.supervisor import Supervisor
        from pulsetrain.runtime.topology import Topology

        opts = self.opts
        path = opts.data_dir / "demo-topology.toml"
        path.write_text(demo_topology(opts, url))
        topo = Topology.load(path)
        self.say(
            f"  servers: starting {len(topo.servers)} device servers with "
            f"{len(topo.devices)} devices (topology {path})"
        )
        t = time.monotonic()
        self.sup = Supervisor(topo, workdir=opts.data_dir / "run")
        self.progress = _StartProgress(self.sup, self.say)
        self.progress.start()
        try:
            self.sup.start(timeout=opts.start_timeout)
        finally:
            self.progress.close()
        self.say(f"    all servers and devices up in {time.monotonic() - t:.1f} s")
        bridge = self.get(BRIDGE, "state")
        if bridge == "ERROR":  # e.g. its port was taken since the check
            raise ChannelError(f"Karabo bridge: {self.get(BRIDGE, 'status')}")
        self.say(f"Karabo bridge (REP): tcp://127.0.0.1:{opts.bridge_port}")
        self.say(f"control token file: {self.sup.token_file}")
        if opts.gui:
            self.gui = _start_gui(self.sup, opts, self.say)
        self.tap = _Tap(self.sup.endpoints()[f"{MATCHER}:output"])
        self.tap.start()

    def _await_ready(self) -> None:
        _await_ready(self.sup, self.opts, self.say, self.opts.start_timeout)
        self.say(f"  all devices ready after {self.elapsed():.1f} s")

    def _feedback(self) -> None:
        opts = self.opts
        self.step = "feedback: finding the sample"
        self.s["feedback_started"] = True
        self.say(f"feedback: starting ({self.call(FEEDBACK, 'start_feedback')})")
        t = time.monotonic()

        def converged(c: dict) -> bool:
            if c["phase"] != "TRACKING":
                return False
            best = float(self.get(FEEDBACK, "bestPosition"))
            return (
                self.get(MOTOR, "state") == "ON"
                and abs(float(self.get(MOTOR, "actualPosition")) - best) <= 0.05
            )

        done = self.wait(converged, opts.converge_timeout, "the feedback to find the sample")
        if done is None:
            if self._out_of_trains:
                return
            self.s["feedback_converged"] = False
        else:
            self.s["feedback_converged"] = True
            self.s["converge_s"] = time.monotonic() - t
            self.say(
                f"feedback: tracking at {done['motor']:.2f} mm after "
                f"{self.s['converge_s']:.1f} s "
                f"({self.get(FEEDBACK, 'lastDecision')})"
            )
        self.step = "measuring the hit rate after the feedback"
        c = self.counters()
        self.measure("after", c["tid"])

    def _finish(self) -> dict[str, Any]:
        """Stop the detector, close the DAQ run (all its trains written), validate it."""
        self.step = "closing the run"
        self.say("stopping the detector and closing the DAQ run ...")
        with contextlib.suppress(PulsetrainError):  # already STOPPED after --trains N
            self.call(SIM, "stop_acquisition", timeout=30)
        self._collect_counts(timeout=10.0)
        # let trains in flight reach the writer: wait until its input count stays put
        last, stable_since, deadline = -1, time.monotonic(), time.monotonic() + 20
        while time.monotonic() < deadline and time.monotonic() - stable_since < 1.5:
            with contextlib.suppress(TimeoutError):
                n = int(self.get(DAQ, "trainsIn", timeout=5))
                if n != last:
                    last, stable_since = n, time.monotonic()
            time.sleep(0.25)
        self._close_run(timeout=120.0)
        self._collect_latency()
        run_dir = self.s.get("run_directory")
        if run_dir:
            self.step = "validating the run"
            self.say(f"validating {run_dir} with extra-data-validate ...")
            try:
                out = subprocess.run(
                    ["extra-data-validate", run_dir],
                    check=False,
                    capture_output=True,
                    text=True,
                    timeout=300,
                    stdin=subprocess.DEVNULL,
                )
                self.s["files_valid"] = out.returncode == 0
            except (OSError, subprocess.TimeoutExpired) as exc:
                self.say(f"  extra-data-validate could not run: {exc}")
                self.s["files_valid"] = None
        self.step = "done"
        return self.s

    # -------------------------------------------------------- measurements at the end
    def _collect_counts(
        self, timeout: float, deadline: float = math.inf, drops: bool = True
    ) -> None:
        """Trains, motor and drops; each request waits at most ``timeout``, and none is made
        after ``deadline`` (monotonic)."""
        s = self.s
        if self.t_acquisition is not None:
            s["acquisition_s"] = time.monotonic() - self.t_acquisition
        for key, device, prop in (
            ("trains_sent", SIM, "sentTrains"),
            ("trains_matched", MATCHER, "matchedTrains"),
            ("motor_final_mm", MOTOR, "actualPosition"),
        ):
            if time.monotonic() < deadline:
                with contextlib.suppress(Exception):
                    s[key] = self.get(device, prop, timeout=timeout)
        if not drops:
            return
        n = 0
        for device_id in self.sup.topology.devices:
            if time.monotonic() > deadline:
                break
            with contextlib.suppress(Exception):
                outs = self.get(device_id, "channels", timeout=timeout)["outputs"]
                n += sum(o["dropped"] for o in outs.values())
        s["drops"] = n

    def _close_run(self, timeout: float, report: bool = True) -> None:
        if self.s.get("run_closing"):
            return
        self.s["run_closing"] = True
        try:
            run = self.call(DAQ, "stop_run", timeout=timeout)
        except TimeoutError:
            if report:
                self.say(
                    f"  the DAQ writer did not close its run within {timeout:.0f} s; "
                    "it is closed when its server stops"
                )
            return
        except PulsetrainError as exc:
            if report:
                self.say(f"  closing the DAQ run: {exc}")
            return
        if run:
            self.s.update(
                run_directory=run.get("directory"),
                trains_recorded=run.get("trains"),
                files=run.get("files", []),
                run_bytes=run.get("bytes"),
                run_closed=not run.get("error"),
            )

    def _collect_latency(self) -> None:
        if self.tap is None:
            return
        lat = list(self.tap.latencies)
        lat = lat[3:] if len(lat) > 3 else lat  # the first trains wait for the warm-up
        if lat:
            self.s["latency_p50_s"] = float(np.percentile(lat, 50))
            self.s["latency_p99_s"] = float(np.percentile(lat, 99))
            self.s["latency_trains"] = len(lat)

    # -------------------------------------------------------- stop
    def shutdown(self, interrupted: bool) -> None:
        """Stop everything that was started, from any step; after a signal within
        :data:`STOP_BUDGET_S` seconds (:data:`DAQ_EXTRA_S` more if the DAQ writer is still
        closing its run)."""
        if self.signals is not None:
            self.signals.stopping = True  # no second KeyboardInterrupt in the middle of this
        t = time.monotonic()
        deadline = t + (STOP_BUDGET_S if interrupted else 90.0)
        for part in (self.progress, self.tap):
            if part is not None:
                with contextlib.suppress(Exception):
                    part.close()
        if self.gui is not None:
            with contextlib.suppress(Exception):
                self.gui.stop()
        if self.sup is not None and interrupted:
            # the detector stops and the DAQ writer starts closing its run at once; then
            # what was done so far is read while it does
            with contextlib.suppress(Exception):
                self.call(SIM, "stop_acquisition", timeout=0.5)
            closing = threading.Thread(
                target=self._close_run,
                args=(deadline + DAQ_EXTRA_S - t, False),
                name="demo:close-run",
                daemon=True,
            )
            closing.start()
            self._collect_counts(timeout=0.3, deadline=t + 1.2, drops=False)
            with contextlib.suppress(Exception):
                self.s.setdefault("run_directory", self.get(DAQ, "runDirectory", timeout=0.3))
            self._collect_latency()
        if self.sup is not None:
            killed = _stop_servers(
                self.sup,
                deadline,
                grace=1.0 if interrupted else 60.0,
                last=self.sup.topology.devices[DAQ].server,
                last_extra=DAQ_EXTRA_S,
            )
            self.s["servers_killed"] = killed
            if interrupted and "run_closed" not in self.s:
                # closed by the DAQ writer's shutdown unless its server had to be killed
                daq_server = self.sup.topology.devices[DAQ].server
                self.s["run_closed"] = daq_server not in killed
        _reap_children(timeout=max(0.3, deadline - time.monotonic()))
        with contextlib.suppress(Exception):
            from pulsetrain.runtime import shmem

            shmem.remove_stale_segments()
        self.s["stop_s"] = time.monotonic() - t
        self.s["elapsed_s"] = self.elapsed()
        if self.s.get("run_directory"):
            self.s["run_bytes"] = _du(Path(self.s["run_directory"]))
        self.s["bytes_written"] = max(0, _du(self.opts.data_dir) - self.bytes_before)


def _await_ready(sup: Any, opts: DemoOptions, say: Say, timeout: float = 120.0) -> None:
    """Wait until every device is up and connected, so that the detector's first trains are
    not lost (the correction devices have their constants, the detector its frame banks)."""
    checks = [(corr_id(m), "constantsLoaded", True) for m in opts.modules]
    checks += [(SIM, "prepared", True)]
    checks += [
        (SIM, f"channels.outputs.module{m}.connections", lambda c: len(c) >= 2)
        for m in opts.modules
    ]
    checks += [(MATCHER, "channels.outputs.output.connections", lambda c: len(c) >= 5)]
    deadline = time.monotonic() + timeout
    for device_id, key, expected in checks:
        try:
            sup.device_client(device_id).wait_for(
                device_id, key, expected, timeout=max(1.0, deadline - time.monotonic()), poll=0.1
            )
        except TimeoutError:
            say(f"  warning: {device_id} not ready ({key}); starting anyway")


def _train_bytes(opts: DemoOptions) -> int:
    """Raw bytes of one train as recorded (data uint16 + gain uint8 per pixel and frame)."""
    from pulsetrain.detectors import get_detector

    ss, fs = get_detector(opts.detector).module_shape
    return len(opts.modules) * opts.frames * ss * fs * 3


def _stop_servers(
    sup: Any, deadline: float, grace: float, last: str | None = None, last_extra: float = 0.0
) -> list[str]:
    """``sup.stop()`` (devices, then server processes), bounded by ``deadline`` (monotonic).

    Server processes still there after ``grace`` seconds get SIGTERM (their own clean
    shutdown, all at once), those still there at the deadline SIGKILL, except server ``last``
    (the DAQ writer's, closing its run), which has ``last_extra`` seconds more.  Returns the
    names of the servers that had to be killed.
    """
    done = threading.Event()

    def stop() -> None:
        try:
            sup.stop(timeout=max(1.0, deadline + last_extra - time.monotonic()))
        except Exception:
            log.exception("stopping the supervisor failed")
        finally:
            done.set()

    threading.Thread(target=stop, name="demo:stop", daemon=True).start()
    if done.wait(max(0.0, min(grace, deadline - 1.5 - time.monotonic()))):
        return []
    procs = {
        name: sp.proc
        for name, sp in sup.servers.items()
        if sp.proc is not None and sp.proc.poll() is None
    }
    log.info("the supervisor is still stopping %d servers; sending them SIGTERM", len(procs))
    for proc in procs.values():
        with contextlib.suppress(OSError):
            proc.terminate()
    killed = []
    for name, proc in sorted(procs.items(), key=lambda item: item[0] == last):
        until = deadline + (last_extra if name == last else 0.0)
        try:
            proc.wait(max(0.05, until - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            killed.append(name)
    for proc in procs.values():
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(1.0)
    if killed:
        log.warning("servers killed after the stop deadline: %s", ", ".join(killed))
    return killed


def _reap_children(timeout: float) -> None:
    """End every process this one started that is still there (SIGTERM, then SIGKILL)."""
    import psutil

    try:
        children = psutil.Process().children(recursive=True)
    except psutil.Error:
        return
    if not children:
        return
    for p in children:
        with contextlib.suppress(psutil.Error):
            p.terminate()
    _, alive = psutil.wait_procs(children, timeout=max(0.2, timeout - 0.5))
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(alive, timeout=1.0)


def _du(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, f)).st_size
    return total


def run_demo(
    opts: DemoOptions, say: Say = print, signals: StopSignals | None = None
) -> dict[str, Any]:
    """Run the demo; returns the summary (also printed through ``say``).

    Parameters
    ----------
    opts : DemoOptions
        What to run.
    say : callable
        Where progress and the summary go (one line per call).
    signals : StopSignals, optional
        The active stop-signal handler (it names the signal in the summary).

    Raises
    ------
    ConfigurationError
        A fixed port is taken (nothing was started).
    KeyboardInterrupt
        A stop signal (or Ctrl-C) arrived: everything started was stopped, the summary so far
        printed.
    """
    demo = _Demo(opts, say, signals)
    interrupted = False
    try:
        try:
            demo.run()
        finally:
            if signals is not None:
                signals.stopping = True  # the clean-up below is not interrupted
    except KeyboardInterrupt:
        interrupted = True
        name = signals.name if signals is not None else "SIGINT"
        demo.s["interrupted"] = name
        demo.s["interrupted_during"] = demo.step
        say("")
        say(f"{name} received while {demo.step}: stopping ...")
    finally:
        demo.shutdown(interrupted)
    summary = demo.s
    if signals is not None and signals.signum is not None and not interrupted:
        interrupted = True  # arrived during the clean-up of a finished run
        summary["interrupted"] = signals.name
        summary["interrupted_during"] = "stopping"
    _print_summary(summary, say)
    if interrupted:
        raise KeyboardInterrupt(summary["interrupted"])
    return summary


def demo_succeeded(s: dict[str, Any]) -> bool:
    """Whether a finished run showed its point: trains corrected, the hit rate raised by the
    feedback, and the recorded run valid."""
    before, after = s.get("hit_rate_before"), s.get("hit_rate_after")
    return bool(
        s.get("trains_matched", 0) > 0
        and s.get("files_valid")
        and before is not None
        and after is not None
        and after > before
    )


def _start_gui(sup: Any, opts: DemoOptions, say: Say) -> Any:
    from pulsetrain.gui import GuiServer
    from pulsetrain.runtime.control import TopologyClient

    scenes_dir = Path(__file__).resolve().parents[2] / "examples" / "scenes"
    # demo.toml: the detector page wired to the demo's own devices (the profile comes from the
    # AzimuthalIntegration device; the demo's preview makes none).
    scenes = [p for p in (scenes_dir / "demo.toml", scenes_dir / "operator.yaml") if p.exists()]
    try:
        gui = GuiServer(
            TopologyClient(sup.state()),
            scenes,
            port=opts.gui_port,
            preview_output=f"{PREVIEW}:output",
            nice=10,  # the pipeline fills both cores: its servers first, the GUI after
        ).start()
    except Exception as exc:  # noqa: BLE001 - the demo runs on without a GUI
        say(f"GUI not started: {exc}")
        return None
    say(f"GUI: {gui.url}")
    return gui


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def _print_summary(s: dict[str, Any], say: Say) -> None:
    def rate(key: str) -> str:
        v = s.get(key)
        return "not measured" if v is None else f"{v:.2f}"

    say("")
    if s.get("interrupted"):
        say(f"summary (interrupted by {s['interrupted']} while {s['interrupted_during']})")
    else:
        say("summary")
    if "trains_sent" in s:
        matched = s.get("trains_matched", 0)
        recorded = s.get("trains_recorded")
        say(
            f"  trains: {s['trains_sent']} simulated, {matched} corrected and matched "
            f"(all {s.get('modules', 16)} modules), {'none' if recorded is None else recorded} recorded"
        )
        if s.get("acquisition_s"):
            say(
                f"  rate: {s['trains_sent'] / s['acquisition_s']:.1f} trains/s simulated "
                f"(10 requested; the detector waits for the correction devices)"
            )
        if "drops" in s:
            say(f"  drops (counted on all outputs): {s['drops']}")
    else:
        say("  trains: none (stopped during set-up)")
    if "first_corrected_s" in s:
        say(f"  first corrected train: {s['first_corrected_s']:.1f} s after start")
    if "latency_p50_s" in s:
        say(
            f"  latency detector -> matched corrected train: p50 "
            f"{s['latency_p50_s'] * 1e3:.0f} ms, p99 {s['latency_p99_s'] * 1e3:.0f} ms "
            f"({s['latency_trains']} trains)"
        )
    elif "trains_sent" in s:
        say("  latency detector -> matched corrected train: no corrected train arrived")
    if "trains_sent" in s:
        conv = s.get("feedback_converged")
        how = (
            f"feedback found the sample in {s['converge_s']:.0f} s"
            if conv
            else "feedback did not find the sample"
            if conv is False
            else "feedback stopped while scanning"
            if s.get("feedback_started")
            else "feedback not run"
        )
        motor = s.get("motor_final_mm")
        say(
            f"  hit rate: {rate('hit_rate_before')} before feedback, {rate('hit_rate_after')} "
            f"after ({how}; motor at "
            f"{'?' if motor is None else f'{motor:.2f}'} mm)"
        )
    if s.get("run_directory") and not s.get("interrupted"):
        valid = s.get("files_valid")
        check = "passed" if valid else "not run" if valid is None else "FAILED"
        run_bytes = s.get("run_bytes")
        say(
            f"  files: {len(s.get('files', []))} in {s['run_directory']} "
            f"({'?' if run_bytes is None else _size(run_bytes)}); "
            f"extra-data-validate: {check}"
        )
    elif s.get("run_directory"):
        closed = s.get("run_closed")
        run_bytes = s.get("run_bytes")
        say(
            f"  run: {s['run_directory']} ({'?' if run_bytes is None else _size(run_bytes)}), "
            + (
                "closed by the DAQ writer"
                if closed
                else "its writer was killed: the last file may be incomplete"
            )
        )
    if "bytes_written" in s:
        say(f"  written by this run: {_size(s['bytes_written'])} in {s['data_dir']}")
    if "stop_s" in s:
        say(f"  stopped in {s['stop_s']:.1f} s; elapsed: {s.get('elapsed_s', 0):.0f} s")
