"""Where the time to a GUI page's first image goes: a timeline of each opening of a page.

The issue's goal is the first detector image within 3 s of opening a page
(``window.pulsetrain.first``, the page's own clock from the start of the navigation, as in
``benchmarks/gui.py``).  This script starts the topology of ``examples/scenes/gui-topology.toml``
(simulated AGIPD-1M, 16 corrections, matcher, a PreviewAssembler made only while a display
watches), a ``pulsetrain gui`` process with the ``detector`` scene, and opens one chromium page
on that scene several times:

* ``fresh``: as soon as a freshly started GUI process printed its URLs (what an operator and
  ``benchmarks/gui.py`` do);
* ``again``: ``--openings`` more times on the same GUI, closing the page in between;
* ``idle``: a second fresh GUI process left idle ``--idle`` seconds before the page opens (what
  the GUI's own start-up costs, apart from the page's).

For every opening it prints one timeline, in seconds from the start of the navigation, on the
page's clock (``performance.timeOrigin``; the server's events are converted through the common
wall clock of the machine):

page (from an init script: Navigation/Resource Timing, a wrapped ``WebSocket`` and
``console.log``, a 10 ms poll of ``window.Bokeh`` and a long-task observer)
    response start/end of the HTML (the server builds the Bokeh document before answering),
    the BokehJS bundles loaded, DOMContentLoaded, ``window.Bokeh`` defined, websocket created and
    open, the document's ``PULL-DOC-REPLY`` received, ``Bokeh.documents`` non-empty, "Bokeh
    items were rendered" (every root's view built), the first ``PATCH-DOC`` carrying buffers
    (the image) received, the first image handled (``window.pulsetrain.first``); the main
    thread's long tasks (> 50 ms) in between.
server (the GUI process's log at DEBUG level, and its ``/status.json`` polled every 50 ms)
    the page's HTTP request served (tornado's access log: its duration), the tap on the preview
    output opened, the first preview train reaching the GUI process (and its age: the preview is
    ``only_when_watched``, so it is made only once a tap is connected), the first image pushed
    (``image_pushes`` increasing; polled every 0.25 s).

    python benchmarks/gui_first_image.py [--openings 4] [--idle 10] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gui import (  # the benchmark next to this script
    CHROMIUM,
    CHROMIUM_ARGS,
    DETECTOR_SCENE,
    MATCHER,
    PREVIEW,
    PREVIEW_OUTPUT,
    TOPOLOGY,
    GuiProcess,
    _chromium_procs,
    _cpu_seconds,
    _wait,
    prepare_topology,
    run,
)

#: Recorded in the page before any of its own scripts run.
INIT_SCRIPT = r"""
(() => {
  const T = window.__ptT = {marks: {}, ws: [], sent: [], longtasks: []};
  const mark = (k) => { if (T.marks[k] === undefined) T.marks[k] = performance.now(); };
  T.mark = mark;
  const Native = window.WebSocket;
  function Wrapped(...args) {
    const ws = new Native(...args);
    mark('ws_created');
    ws.addEventListener('open', () => mark('ws_open'));
    let current = null;
    ws.addEventListener('message', (ev) => {
      const now = performance.now();
      if (typeof ev.data === 'string' && ev.data.startsWith('{"msgid"')) {
        try {
          const h = JSON.parse(ev.data);
          current = {t: now, type: h.msgtype, buffers: h.num_buffers || 0, bytes: 0};
          if (T.ws.length < 400) T.ws.push(current);
          return;
        } catch (e) { /* not a header */ }
      }
      if (current) current.bytes += (typeof ev.data === 'string') ? ev.data.length : ev.data.byteLength;
    });
    const send = ws.send.bind(ws);
    ws.send = (data) => {
      if (typeof data === 'string' && data.startsWith('{"msgid"') && T.sent.length < 400) {
        try { T.sent.push({t: performance.now(), type: JSON.parse(data).msgtype}); } catch (e) {}
      }
      return send(data);
    };
    return ws;
  }
  Wrapped.prototype = Native.prototype;
  for (const k of ['CONNECTING', 'OPEN', 'CLOSING', 'CLOSED']) Wrapped[k] = Native[k];
  window.WebSocket = Wrapped;
  const log = console.log.bind(console);
  console.log = (...a) => {
    if (typeof a[0] === 'string' && a[0].startsWith('Bokeh items were rendered')) mark('rendered');
    return log(...a);
  };
  document.addEventListener('DOMContentLoaded', () => mark('dcl'));
  try {
    new PerformanceObserver((list) => {
      for (const e of list.getEntries()) T.longtasks.push([e.startTime, e.duration]);
    }).observe({type: 'longtask', buffered: true});
  } catch (e) {}
  const poll = () => {
    if (window.Bokeh) mark('bokeh_defined');
    if (window.Bokeh && Bokeh.documents && Bokeh.documents.length) mark('bokeh_document');
    const pt = window.pulsetrain;
    if (pt && pt.first !== undefined) { T.marks.first = pt.first; return; }
    setTimeout(poll, 10);
  };
  poll();
})();
"""

#: What the page reports once its first image came.
COLLECT = """() => {
  const T = window.__ptT;
  const nav = performance.getEntriesByType('navigation')[0];
  const res = performance.getEntriesByType('resource').map(
    (r) => ({name: r.name, start: r.startTime, end: r.responseEnd, size: r.transferSize}));
  return {origin: performance.timeOrigin, marks: T.marks, ws: T.ws, sent: T.sent,
          longtasks: T.longtasks, resources: res,
          nav: {requestStart: nav.requestStart, responseStart: nav.responseStart,
                responseEnd: nav.responseEnd, domInteractive: nav.domInteractive,
                dclEnd: nav.domContentLoadedEventEnd, load: nav.loadEventEnd}};
}"""

_LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) (\w+) ([\w.]+): (.*)$")


def _log_time(line: str) -> tuple[float, str, str] | None:
    """(unix time, logger, message) of a log line of the GUI process (local time stamps)."""
    m = _LOG_LINE.match(line.strip())
    if m is None:
        return None
    t = time.mktime(time.strptime(m.group(1), "%Y-%m-%d %H:%M:%S")) + int(m.group(2)) / 1000
    return t, m.group(4), m.group(5)


class StatusPoller:
    """Poll the GUI's ``/status.json`` every ``period`` s; note when its counters first move.

    Not more often: every poll costs the GUI's web thread ~4 ms on a loaded machine (py-spy:
    at 50 ms, 0.8 s of its CPU during one opening).
    """

    def __init__(self, base_url: str, period: float = 0.25):
        self.url = base_url.rstrip("/") + "/status.json"
        self.period = period
        self.events: dict[str, float] = {}
        self._stop = threading.Event()
        self._base: dict | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _read(self) -> dict | None:
        try:
            with urllib.request.urlopen(self.url, timeout=5) as r:
                return json.loads(r.read())
        except OSError:
            return None

    def _run(self) -> None:
        while not self._stop.is_set():
            t0 = time.time()
            status = self._read()
            t = (t0 + time.time()) / 2
            if status is not None:
                if self._base is None:
                    self._base = status
                tap = status["taps"].get(PREVIEW_OUTPUT) or {}
                base_tap = self._base["taps"].get(PREVIEW_OUTPUT) or {}
                if status["sessions_opened"] > self._base["sessions_opened"]:
                    self.events.setdefault("session made (status)", t)
                if tap:
                    self.events.setdefault("tap listed (status)", t)
                if tap.get("received", 0) > base_tap.get("received", 0):
                    self.events.setdefault("preview train in GUI (status)", t)
                if status["image_pushes"] > self._base["image_pushes"]:
                    self.events.setdefault("first image pushed (status)", t)
            self._stop.wait(max(0.0, self.period - (time.time() - t0)))

    def close(self) -> dict[str, float]:
        self._stop.set()
        self._thread.join(5)
        return self.events


def open_once(
    browser,
    gui: GuiProcess,
    label: str,
    sup,
    profile: Path | None = None,
    page_name: str = "detector",
    js_profile: bool = False,
) -> dict:
    """Open the detector page once; its timeline (seconds from the navigation's start).

    With ``profile``, py-spy samples the GUI process (all threads, idle ones left out) from the
    navigation to the first image and writes its collapsed stacks there.  With ``js_profile``,
    the page's JavaScript is sampled (CDP ``Profiler``) over the same span and summarised.
    """
    url = gui.urls[page_name]
    base = url.rsplit("/", 1)[0]
    lines_before = len(gui.lines)
    load = os.getloadavg()[0]
    unwatched0 = sup.get(PREVIEW, "unwatchedTrains")
    poller = StatusPoller(base)
    cpu0 = {"GUI": _cpu_seconds([gui.ps]), "chromium": _cpu_seconds(_chromium_procs())}
    page = browser.new_page(viewport={"width": 1600, "height": 1000})
    page.add_init_script(INIT_SCRIPT)
    cdp = None
    if js_profile:
        cdp = page.context.new_cdp_session(page)
        cdp.send("Profiler.enable")
        cdp.send("Profiler.setSamplingInterval", {"interval": 1000})
        cdp.send("Profiler.start")
    spy = None
    if profile is not None:
        spy = subprocess.Popen(
            ["py-spy", "record", "--nonblocking", "--threads", "-r", "200", "-f", "raw"]
            + ["-o", str(profile), "-p", str(gui.proc.pid)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(0.5)
    t_goto = time.time()
    page.goto(url, wait_until="commit", timeout=180000)
    page.wait_for_function(
        "window.__ptT && window.__ptT.marks.first !== undefined", timeout=180000, polling=100
    )
    got = page.evaluate(COLLECT)
    if spy is not None:
        spy.send_signal(signal.SIGINT)
        spy.wait(30)
    js = _js_summary(cdp.send("Profiler.stop")["profile"]) if cdp is not None else []
    cpu = {
        "GUI": _cpu_seconds([gui.ps]) - cpu0["GUI"],
        "chromium": _cpu_seconds(_chromium_procs()) - cpu0["chromium"],
    }
    time.sleep(0.3)  # the last log lines
    server = poller.close()
    unwatched1 = sup.get(PREVIEW, "unwatchedTrains")
    page.close()
    origin = got["origin"] / 1000.0  # unix s of the navigation's start

    def page_t(ms: float | None) -> float | None:
        return None if ms is None else ms / 1000.0

    marks = got["marks"]
    nav = got["nav"]
    events: list[tuple[float, str, str]] = [(t_goto - origin, "script", "page.goto called")]
    events += [
        (page_t(nav["requestStart"]), "page", "HTML request sent"),
        (page_t(nav["responseStart"]), "page", "HTML response start"),
        (page_t(nav["responseEnd"]), "page", "HTML response end"),
        (page_t(nav["domInteractive"]), "page", "DOM interactive"),
        (page_t(marks.get("dcl")), "page", "DOMContentLoaded"),
        (page_t(marks.get("bokeh_defined")), "page", "window.Bokeh defined (seen)"),
        (page_t(marks.get("ws_created")), "page", "websocket created"),
        (page_t(marks.get("ws_open")), "page", "websocket open"),
        (page_t(marks.get("bokeh_document")), "page", "Bokeh.documents non-empty (seen)"),
        (page_t(marks.get("rendered")), "page", "'Bokeh items were rendered'"),
        (page_t(nav["load"]) if nav["load"] else None, "page", "load event end"),
        (page_t(marks.get("first")), "page", "FIRST IMAGE handled (window.pulsetrain.first)"),
    ]
    for r in got["resources"]:
        if r["name"].endswith(".js") or ".js?" in r["name"]:
            name = r["name"].rsplit("/", 1)[-1].split("?")[0]
            took = (r["end"] - r["start"]) / 1e3
            what = f"{name} loaded ({r['size'] / 1e3:.0f} kB, {took:.2f} s)"
            events.append((page_t(r["end"]), "page", what))
    seen: set[str] = set()
    for m in got["ws"]:
        kind = m["type"] + (" with buffers" if m["buffers"] else "")
        if kind not in seen:
            seen.add(kind)
            events.append(
                (page_t(m["t"]), "page", f"first {kind} received ({m['bytes'] / 1e3:.0f} kB)")
            )
    for m in got["sent"]:
        if m["type"] not in seen:
            seen.add(m["type"])
            events.append((page_t(m["t"]), "page", f"first {m['type']} sent"))
    for name, t in server.items():
        events.append((t - origin, "server", name))
    for t_read, line in gui.lines[lines_before:]:
        parsed = _log_time(line)
        if parsed is None:
            continue
        t, _, msg = parsed
        if re.search(r"GET /detector\b", msg):
            events.append((t - origin, "server", f"HTML served: {msg[:80]}"))
        elif "tapping" in msg or "first train from" in msg:
            events.append((t - origin, "server", msg[:110]))
        elif "WebSocket connection opened" in msg or "ServerConnection created" in msg:
            events.append((t - origin, "server", msg[:80]))
    events = sorted((e for e in events if e[0] is not None), key=lambda e: e[0])
    first = page_t(marks.get("first"))
    long_total = sum(d for s, d in got["longtasks"] if s / 1000.0 <= (first or 0)) / 1000.0
    long_big = sorted(got["longtasks"], key=lambda x: -x[1])[:6]
    return {
        "label": label,
        "load": load,
        "cpu": cpu,
        "first": first,
        "events": events,
        "longtasks_before_first": long_total,
        "longest_tasks": [(s / 1000.0, d / 1000.0) for s, d in long_big],
        "unwatched_during": unwatched1 - unwatched0,
        "js_profile": js,
        "received": [(m["t"] / 1000.0, m["type"], m["buffers"], m["bytes"]) for m in got["ws"]],
        "sent": [(m["t"] / 1000.0, m["type"]) for m in got["sent"]],
        "log": [line for _, line in gui.lines[lines_before:]],
    }


def _js_summary(profile: dict, top: int = 25) -> list[tuple[float, str]]:
    """Self time per function (name, script, line) of a CDP CPU profile, largest first."""
    nodes = {n["id"]: n for n in profile["nodes"]}
    deltas = profile.get("timeDeltas", [])
    self_us: dict[str, float] = {}
    for sample, dt in zip(profile.get("samples", []), deltas[1:] + [0]):
        frame = nodes[sample]["callFrame"]
        script = frame["url"].rsplit("/", 1)[-1].split("?")[0]
        name = f"{frame['functionName'] or '(anonymous)'} {script}:{frame['lineNumber'] + 1}"
        self_us[name] = self_us.get(name, 0.0) + dt
    ranked = sorted(self_us.items(), key=lambda kv: -kv[1])[:top]
    return [(us / 1e6, name) for name, us in ranked]


def show(result: dict) -> None:
    print(
        f"\n== {result['label']}: first image {result['first']:.2f} s "
        f"(load average {result['load']:.2f}; main-thread long tasks before it "
        f"{result['longtasks_before_first']:.2f} s; unwatched preview trains meanwhile "
        f"{result['unwatched_during']})",
        flush=True,
    )
    print(
        "  CPU from page.goto to the first image: "
        + ", ".join(f"{k} {v:.2f} s" for k, v in result["cpu"].items()),
        flush=True,
    )
    for t, side, what in result["events"]:
        print(f"  {t:7.3f}  {side:<6} {what}", flush=True)
    before = [m for m in result["received"] if m[0] <= result["first"]]
    patches = [m for m in before if m[1] == "PATCH-DOC"]
    print(
        f"  before the first image the page received {len(before)} messages, "
        f"{len(patches)} PATCH-DOC ({sum(1 for m in patches if m[2])} with buffers, "
        f"{sum(m[3] for m in before) / 1e6:.2f} MB in all)",
        flush=True,
    )
    if result["js_profile"]:
        print("  page JavaScript, self time by function (CDP profile, navigation to first image):")
        for secs, what in result["js_profile"]:
            print(f"    {secs:6.2f} s  {what}", flush=True)
    tasks = ", ".join(f"{d:.2f} s at {s:.2f}" for s, d in result["longest_tasks"])
    print(f"  longest main-thread tasks: {tasks}", flush=True)


def main(argv: list[str] | None = None) -> list[dict]:
    """Run the openings, print their timelines, return them."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--openings", type=int, default=4, help="re-openings on one GUI")
    parser.add_argument("--idle", type=float, default=10.0, help="s a 2nd GUI idles (0: skip)")
    parser.add_argument("--json", type=Path, help="write the timelines to this file")
    parser.add_argument(
        "--profile", type=Path, help="py-spy the GUI process per opening into this directory"
    )
    parser.add_argument(
        "--js-profile", action="store_true", help="sample the page's JavaScript (CDP Profiler)"
    )
    parser.add_argument(
        "--scene",
        type=Path,
        default=DETECTOR_SCENE,
        help="scene file to open (default: examples/scenes/detector.toml)",
    )
    args = parser.parse_args(argv)
    if not os.path.exists(CHROMIUM):
        raise SystemExit(f"needs Debian chromium at {CHROMIUM}")
    from playwright.sync_api import sync_playwright

    from pulsetrain.gui.scene import load_scene
    from pulsetrain.runtime.supervisor import Supervisor

    scene = load_scene(args.scene)
    work = Path(tempfile.mkdtemp(prefix="pulsetrain-bench-first-"))
    topology = prepare_topology(work, f"gui-first-{os.getpid()}", lambda s: None)
    print(
        f"first-image timeline: {TOPOLOGY.name}, scene {scene.name!r}; load average "
        f"{os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs",
        flush=True,
    )
    results = []
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)

    def spy(name: str) -> Path | None:
        return args.profile / f"gui-{name}.txt" if args.profile else None

    with Supervisor(topology, workdir=work) as sup, sync_playwright() as pw:
        _wait(lambda: sup.get(MATCHER, "matchedTrains") >= 20, 180, "corrected trains flowing")
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)

        def opening(gui: GuiProcess, label: str, profile: Path | None) -> dict:
            return open_once(
                browser, gui, label, sup, profile, page_name=scene.name, js_profile=args.js_profile
            )

        try:
            gui = GuiProcess(topology, [args.scene], log_level="DEBUG")
            print(f"GUI process up in {gui.ready - gui.started:.2f} s", flush=True)
            results.append(opening(gui, "fresh GUI, page opened at once", profile=spy("fresh")))
            show(results[-1])
            for k in range(args.openings):
                time.sleep(2.0)
                label = f"again #{k + 1}, same GUI"
                results.append(opening(gui, label, profile=spy(f"again{k + 1}")))
                show(results[-1])
            gui.close()
            if args.idle > 0:
                gui = GuiProcess(topology, [args.scene], log_level="DEBUG")
                time.sleep(args.idle)
                label = f"fresh GUI idle {args.idle:.0f} s"
                results.append(opening(gui, label, profile=spy("idle")))
                show(results[-1])
                gui.close()
        finally:
            browser.close()
    firsts = [r["first"] for r in results]
    print(
        f"\nfirst image: worst {max(firsts):.2f} s, median "
        f"{sorted(firsts)[len(firsts) // 2]:.2f} s over {len(firsts)} openings",
        flush=True,
    )
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str))
    return results


if __name__ == "__main__":
    run(main)
