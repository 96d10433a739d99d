"""DetectorCorrection: any step set, even one that needs no constants; raw data it refuses."""

from __future__ import annotations

import numpy as np

from pulsetrain.calibration import AGIPDConstants, correct_agipd
from pulsetrain.devices.correction import DetectorCorrection
from pulsetrain.testing import DeviceHarness

RAW = "SPB_DET_AGIPD1M-1/DET/2CH0:xtdf"
CORR = "SPB_DET_AGIPD1M-1/CORR/2CH0:output"


def test_steps_without_constants_and_a_malformed_module_source(tmp_path):
    rng = np.random.default_rng(3)
    raw = rng.integers(0, 3000, (3, 2, 512, 128)).astype(np.uint16)
    cells = np.array([0, 1, 1], np.uint16)
    config = {"catalog": f"sqlite:///{tmp_path / 'empty.sqlite'}", "detector": "AGIPD",
              "module": 2, "memory_cells": 2, "corrections": "commonmode"}  # fmt: skip
    with DeviceHarness(DetectorCorrection, config, request_timeout=60.0) as dev:
        assert dev.get("constantsLoaded") is True and dev.get("constantIds") == {}
        assert dev.get("appliedCorrections") == "commonmode"
        dev.send({RAW: {"image.data": raw, "image.cellId": cells}}, train_id=10)
        data, meta = dev.receive(timeout=300)  # the first call compiles the kernels (cold cache)
        shape = (3, 2, 512, 128)
        nothing = AGIPDConstants(
            np.zeros(shape, np.float32), np.ones(shape, np.float32),
            np.full((2, 2, 512, 128), np.inf, np.float32), np.zeros(shape, np.uint32),
        )  # fmt: skip
        want = correct_agipd(raw, cells, nothing, common_mode=True)
        np.testing.assert_array_equal(data[CORR]["image.data"], want.data)
        assert not data[CORR]["image.gain"].any() and not data[CORR]["image.mask"].any()
        assert meta[CORR]["source"] == CORR

        dev.send({RAW: {"image.data": raw[:, 0], "image.cellId": cells}}, train_id=11)
        dev.wait_for("state", "ERROR", timeout=120.0)
        status = dev.get("status")
        assert f"{RAW}: not AGIPD raw data (image.data is uint16 (3, 512, 128)" in status
