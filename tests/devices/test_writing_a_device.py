"""docs/writing-a-device.md works as written: its files run in a topology and in the harness.

The page's code blocks marked ``file=NAME`` are written to a plain directory (blocks of the same
file are joined in order).  The topology runs with ``python -m pulsetrain run`` started from
*another* directory and with a ``PYTHONPATH`` that holds only the package, so the device module
is found because it sits next to the topology file, and nothing else.  The page's own test runs
with pytest in that directory.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import pulsetrain
from pulsetrain.runtime.control import TopologyClient
from waiting import wait_until

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "writing-a-device.md"
BLOCK = re.compile(r"^```(\w+) file=(\S+)\n(.*?)^```$", re.DOTALL | re.MULTILINE)
PACKAGE_PATH = str(Path(pulsetrain.__file__).resolve().parents[1])


def guide_files() -> dict[str, str]:
    files: dict[str, str] = {}
    for _lang, name, code in BLOCK.findall(GUIDE.read_text()):
        files[name] = files.get(name, "") + code + "\n"
    return files


@pytest.fixture
def tutorial(tmp_path) -> Path:
    folder = tmp_path / "beamline"
    folder.mkdir()
    for name, text in guide_files().items():
        (folder / name).write_text(text)
    return folder


def plain_env(tmp_path: Path) -> dict[str, str]:
    """The caller's environment, with only the package on PYTHONPATH and its own run state."""
    runtime = tmp_path / "xdg"
    runtime.mkdir(mode=0o700, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(PYTHONPATH=PACKAGE_PATH, XDG_RUNTIME_DIR=str(runtime))
    return env


def test_the_guide_has_the_files_it_talks_about():
    files = guide_files()
    assert set(files) == {"mydevs.py", "pipeline.toml", "mean-scene.toml", "test_mydevs.py"}
    assert "class ImageMean(Device)" in files["mydevs.py"]
    assert "class Ramp(ProducerDevice)" in files["mydevs.py"]
    assert 'class = "mydevs:ImageMean"' in files["pipeline.toml"]


def test_the_scene_is_valid(tutorial):
    from pulsetrain.gui.scene import load_scene

    scene = load_scene(tutorial / "mean-scene.toml")
    assert [p.type for p in scene.panels] == ["trend", "counters", "device_panel"]


def test_the_device_runs_in_its_topology_without_pythonpath(tutorial, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = plain_env(tmp_path)
    assert str(tutorial) not in env["PYTHONPATH"].split(os.pathsep)
    topology = tutorial / "pipeline.toml"
    cmd = [
        sys.executable,
        "-m",
        "pulsetrain",
        "run",
        str(topology),
        "--duration",
        "300",
        "--workdir",
        str(tmp_path / "run"),
    ]
    proc = subprocess.Popen(
        cmd, cwd=elsewhere, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        state = Path(env["XDG_RUNTIME_DIR"]) / f"pulsetrain-{os.getuid()}"
        state = state / "image-mean-tutorial.json"
        wait_until(
            lambda: state.exists() or proc.poll() is not None,
            timeout=120,
            what="the topology to run",
        )
        assert proc.poll() is None, proc.stdout.read()
        topo = TopologyClient(str(state))
        assert topo.devices()["TUTORIAL/MEAN"]["class"] == "mydevs:ImageMean"
        wait_until(
            lambda: topo.get("TUTORIAL/MEAN", "processedTrains") >= 3,
            timeout=60,
            what="ImageMean to average three trains",
        )
        assert topo.get("TUTORIAL/MEAN", "state") == "PROCESSING"
        mean = topo.get("TUTORIAL/MEAN", "mean")
        sent = topo.get("TUTORIAL/SOURCE", "trainId")  # the next ID; frames hold their ID
        assert sent - 100 < mean < sent
        assert topo.get("TUTORIAL/MEAN", "errorCount") == 0
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_the_guides_own_test_passes(tutorial, tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_mydevs.py"],
        cwd=tutorial,
        env=plain_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "3 passed" in out.stdout
