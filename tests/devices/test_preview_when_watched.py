"""PreviewAssembler ``only_when_watched``: no preview work while no display is connected."""

from __future__ import annotations

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
