"""Benchmark: the live GUI's cost to the pipeline, and Bokeh against a hand-written canvas page.

One run, on the demo topology of ``examples/scenes/gui-topology.toml`` (simulated AGIPD-1M,
16 modules, 4 pulses per train at 10 Hz -> 16 corrections -> TrainMatcher on one server, the
analysis devices — ROIs, pixel histogram, average, correlator — on a second, the
PreviewAssembler for the displays on a third), measured side by side:

1. **Pipeline train rate with and without the GUI attached.**  Windows alternate between
   "no GUI" (no GUI process, no browser) and "GUI" (``pulsetrain gui`` in its own process with
   the ``detector`` scene — image with 4 ROIs, ROI trends, histogram, correlation, profile,
   trends, counters — open in **two** Debian chromium pages and updating).  Also measured: the
   image updates reaching each page (goal >= 9.5 per second at 10 Hz) and the time from
   opening a page to its first image (goal < 3 s).  The rate is the change of the matcher's ``matchedTrains`` and of the preview
   device's ``trainsIn`` over each window (after a warm-up window, and 5 s after starting or
   stopping the GUI so that the pipeline is in its steady state).  Goal: with the GUI, >= 98 %
   of the rate without.  For information, the trains lost on the way (drop counters of the
   source outputs, incomplete trains of the matcher, drops towards the preview).
2. **Display transport.**  The same preview output shown in the browser (a) by the pulsetrain
   GUI's image-only page (Bokeh server, uint8 binary buffers, colour-mapped in BokehJS) and
   (b) by a minimal page written by hand for this comparison (tornado WebSocket sending the raw
   uint8 image, a 256-entry LUT and ``putImageData`` on a canvas), both pushing at most 10 images
   per second, latest train wins.  Figures: image updates per second reaching the page, and CPU
   of the browser and of the serving process.

Windows alternate (A/B/A/B) because the machine is shared: load from other users moves the
absolute figures, the ratios within one run are the stable part.

    python benchmarks/gui.py [--quick] [--window S] [--rounds N]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parents[1]
TOPOLOGY = ROOT / "examples" / "scenes" / "gui-topology.toml"
DETECTOR_SCENE = ROOT / "examples" / "scenes" / "detector.toml"
DETECTOR = "SPB_DET_AGIPD1M-1/DET/SIM"
MATCHER = "SPB_DET_AGIPD1M-1/CAL/MATCHER"
PREVIEW = "SPB_DET_AGIPD1M-1/PROC/PREVIEW"
PREVIEW_OUTPUT = f"{PREVIEW}:output"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
GOAL_RATE_RATIO = 0.98
GOAL_PAGE_RATE = 9.5
GOAL_FIRST_IMAGE_S = 3.0
ROI = "SPB_DET_AGIPD1M-1/PROC/ROI"
#: Four ROIs (full-resolution pixels) over the simulated modules.
ROIS = ([700, 120, 120, 120], [850, 300, 100, 200], [300, 700, 200, 100], [600, 600, 150, 150])
#: Device classes named by module path when the installed entry points do not list them yet.
MODULE_PATHS = {
    "RoiAnalysis": "pulsetrain.devices.roi:RoiAnalysis",
    "PixelHistogram": "pulsetrain.devices.pixel_histogram:PixelHistogram",
    "ImageAverage": "pulsetrain.devices.averaging:ImageAverage",
    "Correlator": "pulsetrain.devices.correlation:Correlator",
}

LIVE_SCENE = f"""
[scene]
name = "live"
title = "Live (image only)"
[[panel]]
type = "detector_image"
source = "{PREVIEW_OUTPUT}"
controls = false
width = 560
"""

CANVAS_PAGE = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>canvas peer</title></head>
<body><canvas id="c" width="470" height="408"></canvas>
<script>
// viridis-like LUT (256 RGBA entries), made once
const lut = new Uint32Array(256);
for (let i = 0; i < 256; i++) {
  const t = i / 255;
  const r = Math.round(255 * Math.min(1, Math.max(0, -0.3 + 1.6 * t * t)));
  const g = Math.round(255 * Math.min(1, Math.max(0, 0.1 + 0.85 * t)));
  const b = Math.round(255 * Math.min(1, Math.max(0, 0.35 + 0.6 * Math.sin(3.1 * t))));
  lut[i] = (255 << 24) | (b << 16) | (g << 8) | r;
}
window.frames = 0;
const canvas = document.getElementById('c');
const ctx = canvas.getContext('2d');
const off = document.createElement('canvas');
const octx = off.getContext('2d');
const ws = new WebSocket(`ws://${location.host}/ws`);
ws.binaryType = 'arraybuffer';
ws.onmessage = (ev) => {
  const head = new Uint32Array(ev.data, 0, 2);
  const h = head[0], w = head[1];
  const px = new Uint8Array(ev.data, 8, h * w);
  if (off.width !== w || off.height !== h) { off.width = w; off.height = h; }
  const img = octx.createImageData(w, h);
  const out = new Uint32Array(img.data.buffer);
  for (let i = 0; i < px.length; i++) out[i] = lut[px[i]];
  octx.putImageData(img, 0, 0);
  ctx.drawImage(off, 0, 0, canvas.width, canvas.height);
  window.frames += 1;
};
</script></body></html>
"""


def _chromium_procs() -> list[psutil.Process]:
    return [
        p for p in psutil.Process().children(recursive=True) if "chrom" in (p.name() or "").lower()
    ]


def _cpu_seconds(procs: list[psutil.Process]) -> float:
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


class CanvasPeer:
    """A minimal WebSocket + canvas display of the same preview output (the comparison peer)."""

    def __init__(self, endpoint: str):
        from pulsetrain.gui.backend import OutputTap

        self.tap = OutputTap(PREVIEW_OUTPUT, endpoint)
        self.port = 0
        self.sent = 0
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()
        self._ready.wait(10)

    def _serve(self) -> None:
        import tornado.httpserver
        import tornado.ioloop
        import tornado.netutil
        import tornado.web
        import tornado.websocket

        peer = self
        clients: set = set()

        class Page(tornado.web.RequestHandler):
            def get(self) -> None:
                self.write(CANVAS_PAGE)

        class Socket(tornado.websocket.WebSocketHandler):
            def open(self) -> None:
                clients.add(self)

            def on_close(self) -> None:
                clients.discard(self)

        asyncio.set_event_loop(asyncio.new_event_loop())
        app = tornado.web.Application([(r"/", Page), (r"/ws", Socket)])
        sockets = tornado.netutil.bind_sockets(0, "127.0.0.1")
        tornado.httpserver.HTTPServer(app).add_sockets(sockets)
        self.port = sockets[0].getsockname()[1]
        self.loop = tornado.ioloop.IOLoop.current()
        state = {"seq": 0, "tokens": 2.0, "t": time.monotonic()}

        def tick() -> None:  # same policy as the GUI: <= 10/s on average, latest train wins
            now = time.monotonic()
            state["tokens"] = min(2.0, state["tokens"] + (now - state["t"]) * 10.0)
            state["t"] = now
            frame = peer.tap.latest
            if frame is None or frame.seq == state["seq"] or state["tokens"] < 1 or not clients:
                return
            state["tokens"] -= 1
            state["seq"] = frame.seq
            img = next(iter(frame.data.values()))["preview.images"][0]
            msg = np.array(img.shape, dtype=np.uint32).tobytes() + img.tobytes()
            for c in list(clients):
                c.write_message(msg, binary=True)
            peer.sent += 1

        tornado.ioloop.PeriodicCallback(tick, 25).start()
        self._ready.set()
        self.loop.start()

    def close(self) -> None:
        self.loop.add_callback(self.loop.stop)
        self._thread.join(5)
        self.tap.close()


#: GUI processes started by this run (stopped at the end even when the run fails).
_STARTED: list[GuiProcess] = []
#: Work directories of this run (catalogue of constants: a few hundred MB), removed at the end.
_WORKDIRS: list[Path] = []


class GuiProcess:
    """``pulsetrain gui`` as an operator starts it; knows its page URLs.

    With ``log_level``, the process logs at that level and :attr:`lines` keeps every line it
    wrote, with the time (``time.time()``) it was read.
    """

    def __init__(self, topology: Path, scenes: list[Path], log_level: str | None = None):
        self.started = time.time()
        self.lines: list[tuple[float, str]] = []
        cmd = [
            sys.executable,
            "-m",
            "pulsetrain",
            *(["--log-level", log_level] if log_level else []),
            "gui",
            "--topology",
            str(topology),
            "--port",
            "0",
        ]
        for s in scenes:
            cmd += ["--scene", str(s)]
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self.urls: dict[str, str] = {}
        deadline = time.monotonic() + 60
        keep = self.lines.append if log_level else lambda item: None
        for line in self.proc.stdout:
            keep((time.time(), line))
            m = re.search(r"(http://\S+/([\w-]+))\s*$", line)
            if m:
                self.urls[m.group(2)] = m.group(1)
            if "Ctrl-C" in line or time.monotonic() > deadline:
                break
        self.ready = time.time()
        if not self.urls:
            self.proc.kill()
            raise RuntimeError("pulsetrain gui did not start")
        threading.Thread(
            target=lambda: [keep((time.time(), line)) for line in self.proc.stdout], daemon=True
        ).start()
        self.ps = psutil.Process(self.proc.pid)
        _STARTED.append(self)

    def close(self) -> None:
        if self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def _losses(sup) -> dict[str, int]:
    """Counters of trains lost on the way: source outputs, matcher, preview input."""
    det = sup.get(DETECTOR, "channels.outputs")
    return {
        "source dropped": sum(o["dropped"] for o in det.values()),
        "incomplete": sup.get(MATCHER, "incompleteTrains"),
        "preview dropped": sup.get(MATCHER, "channels.outputs.output.dropped"),
        "sent": sup.get(DETECTOR, "sentTrains"),
    }


def _timed(read) -> tuple[object, float]:
    """``read()`` and the time it was taken (the middle of the call: requests take a while
    when the machine is loaded, and that time must not count as part of the window)."""
    ta = time.monotonic()
    value = read()
    return value, (ta + time.monotonic()) / 2


def _rates(sup, window: float, pages=()) -> dict[str, float]:
    """Trains per second through the pipeline (and image updates of the slowest page) over one
    window; ``pages`` are ``(page, counter expression)`` pairs."""
    l0 = _losses(sup)
    m0, tm0 = _timed(lambda: sup.get(MATCHER, "matchedTrains"))
    p0, tp0 = _timed(lambda: sup.get(PREVIEW, "trainsIn"))
    n0 = [_timed(lambda p=p, c=c: p.evaluate(c)) for p, c in pages]
    deadline = time.monotonic() + window
    while time.monotonic() < deadline:  # the measurement window itself
        time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
    m1, tm1 = _timed(lambda: sup.get(MATCHER, "matchedTrains"))
    p1, tp1 = _timed(lambda: sup.get(PREVIEW, "trainsIn"))
    n1 = [_timed(lambda p=p, c=c: p.evaluate(c)) for p, c in pages]
    l1 = _losses(sup)
    page_rates = [(b[0] - a[0]) / (b[1] - a[1]) for a, b in zip(n0, n1)]
    return {
        "matched": (m1 - m0) / (tm1 - tm0),
        "previewed": (p1 - p0) / (tp1 - tp0),
        "page": min(page_rates) if page_rates else 0.0,
        "dt": tp1 - tp0,
        **{k: l1[k] - l0[k] for k in l0},
    }


def _wait(test, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not test():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} not reached within {timeout} s")
        time.sleep(0.1)


def prepare_topology(work: Path, name: str, say) -> Path:
    """The benchmark topology in ``work`` (named ``name``), with a catalogue of its own.

    The correction devices' constants are the simulator's truth, stored in ``work`` (what
    ``examples/scenes/store_constants.py`` does for the default catalogue); the device processes
    find it through ``PULSETRAIN_CATALOG``.
    """
    from pulsetrain.runtime.device import device_classes

    topology = work / "topology.toml"
    text = TOPOLOGY.read_text().replace('name = "gui-demo"', f'name = "{name}"')
    known = device_classes()
    for cls, module_path in MODULE_PATHS.items():
        if cls not in known:
            text = text.replace(f'class = "{cls}"', f'class = "{module_path}"')
    topology.write_text(text)
    os.environ["PULSETRAIN_CATALOG"] = str(work / "catalog.sqlite")
    sys.path.insert(0, str(TOPOLOGY.parent))
    from store_constants import store

    store(str(work / "catalog.sqlite"), say=say)
    return topology


def main(argv: list[str] | None = None) -> list[dict]:
    """Run the benchmark, print the tables, return the result dicts."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short windows, one round")
    parser.add_argument(
        "--window",
        type=float,
        default=None,
        help="seconds per measurement window (default 20; quick 8)",
    )
    parser.add_argument("--rounds", type=int, default=None, help="A/B rounds (default 2; quick 1)")
    args = parser.parse_args(argv)
    window = args.window or (8.0 if args.quick else 20.0)
    rounds = args.rounds or (1 if args.quick else 2)
    settle = 3.0 if args.quick else 5.0
    if not os.path.exists(CHROMIUM):
        raise SystemExit(f"needs Debian chromium at {CHROMIUM}")

    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import sync_playwright

    from pulsetrain.runtime.supervisor import Supervisor

    work = Path(tempfile.mkdtemp(prefix="pulsetrain-bench-gui-"))
    _WORKDIRS.append(work)
    topology = prepare_topology(work, f"gui-bench-{os.getpid()}", lambda s: print(s, flush=True))
    (work / "live.toml").write_text(LIVE_SCENE)
    print(
        f"GUI benchmark: {topology.name} ({TOPOLOGY.relative_to(ROOT)}), windows of "
        f"{window:.0f} s, {rounds} round(s); load average {os.getloadavg()[0]:.1f} "
        f"on {os.cpu_count()} CPUs",
        flush=True,
    )
    results: list[dict] = []
    with Supervisor(topology, workdir=work) as sup, sync_playwright() as pw:
        _wait(lambda: sup.get(MATCHER, "matchedTrains") >= 20, 180, "corrected trains flowing")
        for k, rect in enumerate(ROIS, 1):
            sup.set(ROI, f"roi{k}", rect)
        servers = {
            name: psutil.Process(sup.pid(name)) for name in ("pipeline", "analysis", "display")
        }
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        # ---------------------------------------------------------------- 1. rate
        _rates(sup, min(window, 10.0))  # warm-up window, not counted
        rows = {"no GUI": [], "GUI": []}
        first: list[float] = []
        cpu = {"no GUI": [], "GUI": []}
        for _ in range(rounds):
            for phase in ("no GUI", "GUI"):
                gui = None
                pages = []
                if phase == "GUI":
                    gui = GuiProcess(topology, [DETECTOR_SCENE])
                    for _ in range(2):  # two pages, as two operators would
                        page = browser.new_page(viewport={"width": 1600, "height": 1000})
                        # the time to the first image is the page's own clock (from the start
                        # of the navigation), so waiting here may take as long as it takes
                        page.goto(gui.urls["detector"], wait_until="commit", timeout=180000)
                        page.wait_for_function(
                            "window.pulsetrain && window.pulsetrain.total >= 1", timeout=180000
                        )
                        first.append(page.evaluate("window.pulsetrain.first") / 1000.0)
                        pages.append(page)
                    for page in pages:
                        try:
                            page.wait_for_function("window.pulsetrain.total >= 20", timeout=60000)
                        except PlaywrightTimeout:  # measured as it is: a slow page is a result
                            print("  a page did not reach 20 images within 60 s", flush=True)
                time.sleep(settle)  # let the pipeline reach its steady state (backlog, latency)
                groups = {name: [proc] for name, proc in servers.items()}
                if gui is not None:
                    groups["gui"] = [gui.ps]
                    groups["chromium"] = _chromium_procs()
                c0 = {k: _cpu_seconds(v) for k, v in groups.items()}
                t_cpu = time.monotonic()
                counters = [(p, "window.pulsetrain.total") for p in pages]
                r = _rates(sup, window, counters)
                dt_cpu = time.monotonic() - t_cpu
                cpu[phase].append(
                    {k: (_cpu_seconds(v) - c0[k]) / dt_cpu for k, v in groups.items()}
                )
                rows[phase].append(r)
                for page in pages:
                    page.close()
                if gui is not None:
                    gui.close()
                print(
                    f"  {phase:>6}: matched {r['matched']:.2f}/s, previewed "
                    f"{r['previewed']:.2f}/s"
                    + (f", page {r['page']:.2f} updates/s" if phase == "GUI" else "")
                    + f"; source sent {r['sent']}, module items dropped {r['source dropped']}"
                    f", incomplete {r['incomplete']}, preview dropped {r['preview dropped']}",
                    flush=True,
                )
        base = {k: float(np.mean([r[k] for r in rows["no GUI"]])) for k in ("matched", "previewed")}
        with_gui = {
            k: float(np.mean([r[k] for r in rows["GUI"]])) for k in ("matched", "previewed")
        }
        page_rate = float(np.mean([r["page"] for r in rows["GUI"]]))
        for key, label in (("matched", "matched trains"), ("previewed", "previewed trains")):
            ratio = with_gui[key] / base[key] if base[key] else float("nan")
            results.append(
                {
                    "name": f"pipeline rate with GUI ({label})",
                    "value": with_gui[key],
                    "unit": "trains/s",
                    "peer": f"no GUI: {base[key]:.2f} trains/s",
                    "ratio": ratio,
                    "goal": GOAL_RATE_RATIO,
                }
            )
        # Trains lost on the way (exact counters, unlike rates over windows, which move with the
        # backlog in the queues and with the simulated source falling behind on a loaded box).
        lost = {
            phase: 1000.0
            * sum(r["source dropped"] / 16 + r["incomplete"] + r["preview dropped"] for r in rs)
            / max(1, sum(r["sent"] for r in rs))
            for phase, rs in rows.items()
        }
        results.append(
            {
                "name": "trains lost per 1000 produced, with GUI",
                "value": lost["GUI"],
                "unit": "",
                "peer": f"no GUI: {lost['no GUI']:.1f}",
                "ratio": None,
                "goal": None,
            }
        )
        results.append(
            {
                "name": "image updates reaching each of 2 detector pages (slowest)",
                "value": page_rate,
                "unit": "updates/s",
                "peer": f"goal {GOAL_PAGE_RATE}/s; train rate {with_gui['previewed']:.2f}/s",
                "ratio": page_rate / GOAL_PAGE_RATE,
                "goal": 1.0,
            }
        )
        results.append(
            {
                "name": "first image after opening a page (worst of all openings)",
                "value": max(first),
                "unit": "s",
                "peer": f"goal < {GOAL_FIRST_IMAGE_S} s; median {float(np.median(first)):.2f} s",
                "ratio": GOAL_FIRST_IMAGE_S / max(first),
                "goal": 1.0,
            }
        )
        for key, label in (
            ("pipeline", "pipeline server CPU (detector, corrections, matcher)"),
            ("analysis", "analysis server CPU (ROI, histogram, average, correlation)"),
            ("display", "display server CPU (preview)"),
            ("gui", "GUI server CPU (2 detector pages)"),
            ("chromium", "chromium CPU (2 detector pages)"),
        ):
            with_gui_cpu = 100 * float(np.mean([c.get(key, 0.0) for c in cpu["GUI"]]))
            without = 100 * float(np.mean([c.get(key, 0.0) for c in cpu["no GUI"]]))
            results.append(
                {
                    "name": label,
                    "value": with_gui_cpu,
                    "unit": "% of a core",
                    "peer": f"no GUI: {without:.0f} %",
                    "ratio": with_gui_cpu / without if without else None,
                    "goal": None,
                }
            )
        # ---------------------------------------------------------------- 2. transport
        gui = GuiProcess(topology, [work / "live.toml"])
        peer = CanvasPeer(sup.endpoints()[PREVIEW_OUTPUT])
        me = psutil.Process()
        disp: dict[str, list[dict]] = {"Bokeh (pulsetrain GUI)": [], "WebSocket canvas": []}
        try:
            for _ in range(rounds):
                for label, measured in disp.items():
                    page = browser.new_page(viewport={"width": 900, "height": 800})
                    if label.startswith("Bokeh"):
                        page.goto(gui.urls["live"], timeout=180000)
                        counter, serving = (
                            "window.pulsetrain ? window.pulsetrain.total : 0",
                            [gui.ps],
                        )
                    else:
                        page.goto(f"http://127.0.0.1:{peer.port}/")
                        counter, serving = "window.frames", [me]
                    page.wait_for_function(f"({counter}) >= 20", timeout=180000)
                    chrome = _chromium_procs()
                    c0, s0, t0 = _cpu_seconds(chrome), _cpu_seconds(serving), time.monotonic()
                    r = _rates(sup, window, [(page, counter)])
                    dt = time.monotonic() - t0
                    measured.append(
                        {
                            "page": r["page"],
                            "chrome": (_cpu_seconds(chrome) - c0) / dt,
                            "server": (_cpu_seconds(serving) - s0) / dt,
                        }
                    )
                    page.close()
        finally:
            peer.close()
            gui.close()
            browser.close()
    summary = {
        k: {m: float(np.mean([v[m] for v in vals])) for m in ("page", "chrome", "server")}
        for k, vals in disp.items()
    }
    bokeh, canvas = summary["Bokeh (pulsetrain GUI)"], summary["WebSocket canvas"]
    for metric, unit, label in (
        ("page", "updates/s", "image updates reaching the page"),
        ("chrome", "% of a core", "browser CPU"),
        ("server", "% of a core", "serving process CPU"),
    ):
        scale = 100.0 if unit.startswith("%") else 1.0
        results.append(
            {
                "name": f"{label} (Bokeh)",
                "value": scale * bokeh[metric],
                "unit": unit,
                "peer": f"WebSocket canvas: {scale * canvas[metric]:.1f}",
                "ratio": bokeh[metric] / canvas[metric] if canvas[metric] else None,
                "goal": None,
            }
        )

    print()
    print(f"{'figure':<52}{'value':>10} {'unit':<12}{'ratio':>7}  {'goal':<6} peer")
    for r in results:
        ratio = f"{r['ratio']:.3f}" if isinstance(r["ratio"], float) else "–"
        goal = f">={r['goal']}" if r["goal"] else ""
        ok = "" if r["goal"] is None else ("  ok" if r["ratio"] >= r["goal"] else "  MISSED")
        print(
            f"{r['name']:<52}{r['value']:>10.2f} {r['unit']:<12}{ratio:>7}  {goal:<6} "
            f"{r['peer']}{ok}"
        )
    return results


def run(main) -> None:
    """Run a benchmark's ``main``; whatever happens, stop the processes it started."""
    try:
        main()
    finally:
        for started in _STARTED:
            started.close()
        for work in _WORKDIRS:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    run(main)
