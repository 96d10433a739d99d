"""PreviewAssembler ``only_when_watched``: no preview work while no display is connected."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

from pulsetrain.devices.preview import PreviewAssembler
from pulsetrain.testing import DeviceHarness

CORR = "SPB_DET_AGIPD1M-1/CORR/{}CH0:output"


def _train(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {
        CORR.format(m): {"image.data": rng.gamma(2.0, 5.0, (2, 512, 128)).astype(np.float32)}
        for m in range(16)
    }


def test_unwatched_preview_does_no_work():
    with DeviceHarness(PreviewAssembler, {"only_when_watched": True}, outputs=()) as dev:
        for k in range(3):
            dev.send(_train(k), train_id=100 + k)
        dev.wait_for("unwatchedTrains", 3)
        assert dev.get("trainsOut") == 0
        assert dev.get("pulsesOut") == 0


def test_watched_preview_is_made():
    with DeviceHarness(PreviewAssembler, {"only_when_watched": True}) as dev:
        dev.send(_train(1), train_id=200)
        data, _ = dev.receive()
        images = data["SPB_DET_AGIPD1M-1/PREVIEW"]["preview.images"]
        assert images.shape[0] == 2 and images.dtype == np.uint8
        assert dev.get("unwatchedTrains") == 0


WARM_UP_CHECK = """
import sys
sys.path.insert(0, {tests!r})
from waiting import wait_until
from pulsetrain.analysis import azimuthal
from pulsetrain.devices.preview import PreviewAssembler
from pulsetrain.geometry import preview as kernels
from pulsetrain.testing import DeviceHarness

needed = [kernels._gather_uint8, kernels._gather_mean, azimuthal._hist_frame]
with DeviceHarness(PreviewAssembler, {{"only_when_watched": True, "profile_bins": 50}}, outputs=()) as dev:
    assert dev.get("trainsIn") == 0
    wait_until(lambda: all(k.signatures for k in needed), timeout=30.0, what="kernels loaded")
print("ready")
"""


def test_kernels_are_ready_before_the_first_train():
    """The numba kernels of a preview are loaded (or compiled) when the device starts, not at
    the first train a display waits for (a second, or several on a loaded machine, added to a
    page's first image).  In a fresh interpreter: the kernels are shared by the whole process."""
    tests = str(Path(__file__).resolve().parents[1])
    code = WARM_UP_CHECK.format(tests=tests)
    done = subprocess.run(
        [sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0 and "ready" in done.stdout, done.stderr[-2000:]
