"""The rapid-feedback experiment of the design's figure 1, on one machine.

simulated AGIPD-1M + sample motor → 16 correction devices (8 servers) → train matcher →
azimuthal integration, hit finding, preview → feedback controller moving the motor; the raw
detector data, slow data and hit results recorded by the DAQ writer; a Karabo bridge and the
web GUI on top.  :func:`run_demo` builds the topology, fills a catalogue with the simulator's
constants, runs it, and returns a summary.
"""

from __future__ import annotations

import logging
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["DemoOptions", "run_demo", "demo_topology"]

log = logging.getLogger(__name__)

DET = "SPB_DET_AGIPD1M-1"
SIM, MOTOR = f"{DET}/DET/SIM", "SPB_IRU_SAMPLE/MOTOR/X"
MATCHER, BRIDGE = f"{DET}/CAL/MATCHER", f"{DET}/CAL/BRIDGE"
AZIMUTHAL, HITS, PREVIEW = f"{DET}/PROC/AZIMUTHAL", f"{DET}/PROC/HITS", f"{DET}/PROC/PREVIEW"
FEEDBACK, DAQ = "SPB_IRU_SAMPLE/CTRL/FEEDBACK", "SPB_DAQ/DATA/WRITER"


@dataclass
class DemoOptions:
    """What ``pulsetrain demo`` runs."""

    trains: int | None = 100
    frames: int = 8
    data_dir: Path = Path("pulsetrain-demo")
    bridge_port: int = 4545
    gui: bool = True
    gui_port: int = 5006
    seed: int = 0
    modules: list[int] = field(default_factory=lambda: list(range(16)))


def corr_id(m: int) -> str:
    return f"{DET}/CAL/CORR_{m:02d}"


def demo_topology(opts: DemoOptions, catalog_url: str) -> str:
    """The TOML text of the demo's topology."""
    q = '"'
    lines = ['[topology]\nname = "pulsetrain-demo"\n',
             "[servers.facility]\n[servers.online]\n[servers.control]\n[servers.daq]\n"]
    lines += [f"[servers.cal{i}]\n" for i in range(8)]
    lines.append(f"""
[devices."{MOTOR}"]
class = "SimulatedMotor"
server = "facility"
config = {{ velocity = 2.0 }}

[devices."{SIM}"]
class = "SimulatedDetector"
server = "facility"
config = {{ frames = {opts.frames}, memory_cells = {opts.frames}, seed = {opts.seed}, rate = 10.0, n_trains = {opts.trains or 0}, autostart = false, motor_device = "{MOTOR}", modules = {opts.modules} }}

[devices."{MATCHER}"]
class = "TrainMatcher"
server = "online"
config = {{ sources = [{", ".join(q + f"{DET}/CORR/{m}CH0:output" + q for m in opts.modules)}], buffer_size = 20 }}

[devices."{BRIDGE}"]
class = "Bridge"
server = "online"
config = {{ endpoint = "tcp://127.0.0.1:{opts.bridge_port}", pattern = "REP" }}

[devices."{HITS}"]
class = "HitFinder"
server = "online"

[devices."{AZIMUTHAL}"]
class = "AzimuthalIntegration"
server = "online"
config = {{ npt = 256, distance = 0.2 }}

[devices."{PREVIEW}"]
class = "PreviewAssembler"
server = "online"
config = {{ detector_distance = 0.2, max_pulses = 4, downsample = 2 }}

[devices."{FEEDBACK}"]
class = "FeedbackController"
server = "control"
config = {{ motor_device = "{MOTOR}", autostart = true }}

[devices."{DAQ}"]
class = "DAQWriter"
server = "daq"
config = {{ directory = "{opts.data_dir / 'raw'}", catalog = "{catalog_url}", autostart = true, sample = "water jet + crystals", gather_trains = 20 }}

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
max_queue_length = 8
[[connections]]
from = "{SIM}:slow"
to = "{DAQ}:input"
on_slowness = "queueDrop"
max_queue_length = 8
""")
    for i, m in enumerate(opts.modules):
        lines.append(f"""
[devices."{corr_id(m)}"]
class = "AGIPDCorrection"
server = "cal{i % 8}"
config = {{ catalog = "{catalog_url}", module = {m}, memory_cells = {opts.frames} }}
[[connections]]
from = "{SIM}:module{m}"
to = "{corr_id(m)}:input"
on_slowness = "queueDrop"
max_queue_length = 2
[[connections]]
from = "{corr_id(m)}:output"
to = "{MATCHER}:input"
on_slowness = "queueDrop"
max_queue_length = 4
[[connections]]
from = "{SIM}:module{m}"
to = "{DAQ}:input"
on_slowness = "queueDrop"
max_queue_length = 8
""")
    return "".join(lines)


def prepare_catalog(opts: DemoOptions, url: str, say) -> None:
    """Store the simulator's constants unless the catalogue already has them."""
    from pulsetrain.bootstrap import sim_conditions, store_truth_constants
    from pulsetrain.catalog import Catalog
    from pulsetrain.catalog.agipd import REQUIRED_TYPES
    from pulsetrain.sim import DetectorSimulator

    cat = Catalog(url)
    try:
        sim = DetectorSimulator("AGIPD", frames=opts.frames, memory_cells=opts.frames,
                                seed=opts.seed)
        missing = []
        for m in opts.modules:
            found = cat.find_constants(DET, m, sim_conditions(opts.frames), types=REQUIRED_TYPES,
                                       missing_ok=True) if cat.detectors() else {}
            if len(found) < len(REQUIRED_TYPES):
                missing.append(m)
        if missing:
            say(f"storing the simulator's constants for {len(missing)} modules in {url} ...")
            store_truth_constants(cat, sim, modules=missing, detector=DET)
    finally:
        cat.close()


def warm_kernels(frames: int) -> None:
    """Compile (or load from numba's cache) the correction kernel once, before 8 servers do."""
    from pulsetrain.calibration import AGIPDConstants, correct_agipd

    cells = 2
    c = AGIPDConstants(
        offset=np.zeros((3, cells, 512, 128), np.float32),
        rel_gain=np.ones((3, cells, 512, 128), np.float32),
        thresholds=np.ones((2, cells, 512, 128), np.float32),
        bad_pixels=np.zeros((3, cells, 512, 128), np.uint32),
    )
    correct_agipd(np.zeros((1, 2, 512, 128), np.uint16), np.zeros(1, np.uint16), c)


class _Tap(threading.Thread):
    """Measures detector → matched, corrected train latency from the matcher's output."""

    def __init__(self, endpoint: str):
        super().__init__(daemon=True)
        from pulsetrain.channels import InputChannel

        self.inp = InputChannel("demo:latency-tap", on_slowness="drop")
        self.inp.connect(endpoint)
        self.latencies: list[float] = []
        self.stop = threading.Event()

    def run(self) -> None:
        from pulsetrain.channels import EndOfStream

        while not self.stop.is_set():
            try:
                item = self.inp.get(timeout=0.5)
            except TimeoutError:
                continue
            except Exception:
                return
            if isinstance(item, EndOfStream):
                continue
            ts = max(float(m.get("timestamp", 0)) for m in item.meta.values())
            self.latencies.append(time.time() - ts)


def run_demo(opts: DemoOptions, say=print) -> dict[str, Any]:
    """Run the demo; returns the summary (also printed through ``say``)."""
    from pulsetrain.supervisor import Supervisor
    from pulsetrain.topology import Topology

    t_start = time.monotonic()
    opts.data_dir = Path(opts.data_dir).resolve()
    opts.data_dir.mkdir(parents=True, exist_ok=True)
    url = f"sqlite:///{opts.data_dir / 'catalog.sqlite'}"
    prepare_catalog(opts, url, say)
    warm_kernels(opts.frames)
    path = opts.data_dir / "demo-topology.toml"
    path.write_text(demo_topology(opts, url))
    say(f"starting {len(Topology.load(path).servers)} device servers ...")
    sup = Supervisor(Topology.load(path), workdir=opts.data_dir / "run")
    gui = None
    tap = None
    summary: dict[str, Any] = {}
    try:
        sup.start(timeout=120)
        say(f"Karabo bridge (REP): tcp://127.0.0.1:{opts.bridge_port}")
        say(f"control token file: {sup.token_file}; topology: {path}")
        if opts.gui:
            gui = _start_gui(sup, opts, say)
        tap = _Tap(sup.endpoints()[f"{MATCHER}:output"])
        tap.start()
        _await_ready(sup, opts, say)
        sup.call(SIM, "start_acquisition")
        rates = _wait(sup, opts, say)
        summary = _summary(sup, tap, rates, opts, time.monotonic() - t_start)
    finally:
        if tap is not None:
            tap.stop.set()
        if gui is not None:
            gui.stop()
        sup.stop()
    _print_summary(summary, say)
    return summary


def _await_ready(sup, opts: DemoOptions, say, timeout: float = 120.0) -> None:
    """Start the detector only once every device is up and connected (no lost first trains)."""
    checks = [(corr_id(m), "constantsLoaded", True) for m in opts.modules]
    checks += [(SIM, "prepared", True)]
    checks += [(SIM, f"channels.outputs.module{m}.connections", lambda c: len(c) >= 2)
               for m in opts.modules]
    checks += [(MATCHER, "channels.outputs.output.connections", lambda c: len(c) >= 5)]
    for device_id, key, expected in checks:
        try:
            sup.device_client(device_id).wait_for(device_id, key, expected, timeout=timeout)
        except TimeoutError:
            say(f"warning: {device_id} not ready ({key}); starting anyway")
    say("all devices ready: starting the detector")


def _start_gui(sup, opts: DemoOptions, say):
    from pulsetrain.control import TopologyClient
    from pulsetrain.gui import GuiServer

    scenes_dir = Path(__file__).resolve().parents[2] / "examples" / "scenes"
    scenes = [p for p in (scenes_dir / "detector.toml", scenes_dir / "operator.yaml")
              if p.exists()]
    try:
        gui = GuiServer(TopologyClient(sup.state()), scenes, port=opts.gui_port,
                        preview_output=f"{PREVIEW}:output").start()
    except Exception as exc:  # the demo runs on without a GUI
        say(f"GUI not started: {exc}")
        return None
    say(f"GUI: {gui.url}")
    return gui


def _wait(sup, opts: DemoOptions, say) -> list[tuple[float, float, float]]:
    """Run until the detector sent its trains (or Ctrl-C); sample hit rate and motor."""
    rates: list[tuple[float, float, float]] = []
    t0 = time.monotonic()
    last_print = 0.0
    try:
        while True:
            time.sleep(0.5)
            t = time.monotonic() - t0
            try:
                rate = float(sup.get(HITS, "hitRate"))
                pos = float(sup.get(MOTOR, "actualPosition"))
                sent = int(sup.get(SIM, "sentTrains"))
            except Exception:
                continue
            rates.append((t, rate, pos))
            if t - last_print >= 5:
                last_print = t
                say(f"  t={t:5.1f} s  trains {sent:5d}  hit rate {rate:5.2f}  motor {pos:6.2f} mm"
                    f"  feedback {sup.get(FEEDBACK, 'phase')}")
            if opts.trains and sent >= opts.trains:
                sup.device_client(DAQ).wait_for(  # let the last trains reach the files
                    DAQ, "trainsIn", lambda n: n >= sent - 5, timeout=15)
                time.sleep(1.0)
                break
    except KeyboardInterrupt:
        say("stopping ...")
    except TimeoutError:
        pass
    return rates


def _summary(sup, tap, rates, opts: DemoOptions, elapsed: float) -> dict[str, Any]:
    drops = 0
    for device_id in sup.topology.devices:
        try:
            outs = sup.get(device_id, "channels")["outputs"]
            drops += sum(o["dropped"] for o in outs.values())
        except Exception:
            pass
    run = sup.call(DAQ, "stop_run")
    lat = np.array(tap.latencies[3:] or [np.nan])
    n = max(1, len(rates) // 5)
    before = float(np.mean([r for _, r, _ in rates[:n]])) if rates else float("nan")
    after = float(np.mean([r for _, r, _ in rates[-n:]])) if rates else float("nan")
    valid = None
    if run.get("directory"):
        out = subprocess.run(["extra-data-validate", run["directory"]], capture_output=True,
                             text=True)
        valid = out.returncode == 0
    return {
        "trains_sent": sup.get(SIM, "sentTrains"),
        "trains_matched": sup.get(MATCHER, "matchedTrains"),
        "trains_recorded": run.get("trains", 0),
        "drops": drops,
        "latency_p50_s": float(np.nanpercentile(lat, 50)),
        "latency_p99_s": float(np.nanpercentile(lat, 99)),
        "hit_rate_before": before,
        "hit_rate_after": after,
        "motor_final_mm": rates[-1][2] if rates else float("nan"),
        "run_directory": run.get("directory"),
        "files": run.get("files", []),
        "files_valid": valid,
        "elapsed_s": elapsed,
    }


def _print_summary(s: dict[str, Any], say) -> None:
    if not s:
        return
    say("")
    say("summary")
    say(f"  trains: {s['trains_sent']} simulated, {s['trains_matched']} corrected and matched "
        f"(all 16 modules), {s['trains_recorded']} recorded")
    say(f"  drops (counted on all outputs): {s['drops']}")
    say(f"  latency detector -> matched corrected train: p50 {s['latency_p50_s'] * 1e3:.0f} ms, "
        f"p99 {s['latency_p99_s'] * 1e3:.0f} ms")
    say(f"  hit rate: {s['hit_rate_before']:.2f} before feedback, {s['hit_rate_after']:.2f} after "
        f"(motor at {s['motor_final_mm']:.2f} mm)")
    say(f"  files: {len(s['files'])} in {s['run_directory']}; extra-data-validate: "
        f"{'passed' if s['files_valid'] else 'FAILED'}")
    say(f"  elapsed: {s['elapsed_s']:.0f} s")
