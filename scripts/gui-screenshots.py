"""Regenerate the GUI screenshots in ``docs/`` (1600 × 1000 and 1280 × 800), from a live run.

Starts ``examples/scenes/gui-topology.toml`` (simulated AGIPD-1M at 10 Hz, corrected, with the
analysis devices; the correction constants go to a catalogue of the run), serves the example scenes with ``pulsetrain gui``'s server, opens each page in
Debian's chromium (Playwright, never a downloaded browser) and saves

    docs/gui-<scene>-1600x1000.png      docs/gui-<scene>-1280x800.png

(the visible viewport: what an operator sees without scrolling), and prints for each page the
page width and the controls beyond the viewport's right edge (there should be none).

    python scripts/gui-screenshots.py [--out DIR] [--settle SECONDS]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOPOLOGY = ROOT / "examples" / "scenes" / "gui-topology.toml"
SCENES = [
    ROOT / "examples" / "scenes" / "detector.toml",
    ROOT / "examples" / "scenes" / "operator.yaml",
]
CHROMIUM = "/usr/bin/chromium"
SIZES = ((1600, 1000), (1280, 800))
ROI = "SPB_DET_AGIPD1M-1/PROC/ROI"
MOTOR = "SPB_IRU_SAMPLE/MOTOR/X"


def topology_text(name: str) -> str:
    """The example topology under a name of its own; device classes that this installation
    does not list as entry points yet (a source checkout newer than the installed metadata)
    are named by module path instead."""
    from pulsetrain.runtime.device import device_classes

    known = device_classes()
    modules = {
        "RoiAnalysis": "pulsetrain.devices.roi:RoiAnalysis",
        "PixelHistogram": "pulsetrain.devices.pixel_histogram:PixelHistogram",
        "ImageAverage": "pulsetrain.devices.averaging:ImageAverage",
        "Correlator": "pulsetrain.devices.correlation:Correlator",
    }
    text = TOPOLOGY.read_text().replace('name = "gui-demo"', f'name = "{name}"')
    for cls, path in modules.items():
        if cls not in known:
            text = text.replace(f'class = "{cls}"', f'class = "{path}"')
    return text


def controls_outside(page, width: int) -> int:
    """Controls (inputs, selects, buttons) whose right edge lies beyond ``width`` (one call into
    the page, which walks Bokeh's shadow roots)."""
    return page.evaluate(
        """(width) => {
      let n = 0;
      const walk = (root) => {
        for (const el of root.querySelectorAll('*')) {
          if (['INPUT', 'SELECT', 'BUTTON', 'TEXTAREA'].includes(el.tagName)) {
            const r = el.getBoundingClientRect();
            if (r.width > 0 && r.right > width) n += 1;
          }
          if (el.shadowRoot) walk(el.shadowRoot);
        }
      };
      walk(document);
      return n;
    }""",
        width,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs", help="where the PNGs go")
    parser.add_argument("--settle", type=float, default=8.0, help="seconds of live data first")
    args = parser.parse_args(argv)
    if not os.path.exists(CHROMIUM):
        print(f"needs Debian chromium at {CHROMIUM}", file=sys.stderr)
        return 1
    from playwright.sync_api import sync_playwright

    from pulsetrain.gui import GuiServer
    from pulsetrain.gui.app import PAGE_BUILT_JS
    from pulsetrain.runtime.supervisor import Supervisor

    work = Path(tempfile.mkdtemp(prefix="pulsetrain-screenshots-"))
    topology = work / "topology.toml"
    topology.write_text(topology_text(f"gui-screenshots-{os.getpid()}"))
    args.out.mkdir(parents=True, exist_ok=True)
    # the example's correction constants (the simulator's truth), in a catalogue of this run
    os.environ["PULSETRAIN_CATALOG"] = str(work / "catalog.sqlite")
    sys.path.insert(0, str(TOPOLOGY.parent))
    from store_constants import store

    store(str(work / "catalog.sqlite"), say=lambda s: None)
    with Supervisor(topology, workdir=work) as sup:
        client = sup.device_client(ROI)
        client.wait_for(ROI, "lastTrainId", lambda v: v > 0, timeout=180)
        sup.set(MOTOR, "targetPosition", 3.0)  # something for the correlation to show
        sup.call(MOTOR, "move")
        gui = GuiServer(str(topology), SCENES).start()
        try:
            with sync_playwright() as pw:
                browser = pw.chromium.launch(
                    executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"]
                )
                for scene in gui.scenes:
                    for width, height in SIZES:
                        page = browser.new_page(viewport={"width": width, "height": height})
                        page.set_default_timeout(120000)
                        page.goto(gui.scene_url(scene.name))
                        page.wait_for_function(PAGE_BUILT_JS)
                        page.wait_for_timeout(args.settle * 1000)
                        path = args.out / f"gui-{scene.name}-{width}x{height}.png"
                        page.screenshot(path=str(path))
                        scroll = page.evaluate("() => document.documentElement.scrollWidth")
                        outside = controls_outside(page, width)
                        print(
                            f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}: "
                            f"page {scroll} px wide, {outside} controls beyond {width} px"
                        )
                        page.close()
                browser.close()
        finally:
            gui.stop()
    return 0


if __name__ == "__main__":
    started = time.monotonic()
    code = main()
    print(f"done in {time.monotonic() - started:.0f} s")
    raise SystemExit(code)
