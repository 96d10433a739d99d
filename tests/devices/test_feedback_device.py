"""The FeedbackController device, live: simulated detector + motor + hit finder + feedback.

Light set-up: 4 raw modules with 8 pulses per train at 10 Hz, the hit finder on its raw
fallback.  The motor runs at 5 mm/s so that a scan takes seconds of wall time.
"""

from __future__ import annotations

import time

import pytest
from _live_helpers import LiveServer, wait_until

from pulsetrain.sim import hit_probability

MODULES = [0, 1, 2, 3]
RAW = "SPB_DET_AGIPD1M-1/DET/{m}CH0:xtdf"


@pytest.fixture
def pipeline():
    live = LiveServer()
    c = live.client
    live.add("SimulatedMotor", "MOTOR", {"velocity": 5.0})
    det = live.add(
        "SimulatedDetector",
        "SIM",
        {"frames": 8, "modules": MODULES, "seed": 1, "rate": 10.0, "motor_device": "MOTOR"},
    )
    match = live.add(
        "TrainMatcher", "MATCH", {"sources": [RAW.format(m=m) for m in MODULES], "buffer_size": 10}
    )
    live.add(
        "HitFinder",
        "HITS",
        {
            "data_kind": "raw",
            "source_pattern": RAW,
            "threshold": 1000.0,
            "min_peaks": 5,
            "dark_frames": 16,
            "window_trains": 10,
        },
    )
    for m in MODULES:
        live.connect(live.output(det, f"module{m}"), match)
    live.connect(live.output(match), "HITS")
    live.add(
        "FeedbackController",
        "FEEDBACK",
        {"motor_device": "MOTOR", "hit_device": "HITS", "dither_interval": 2.0},
    )
    wait_until(
        lambda: c.get("FEEDBACK", "channels.inputs.hits.connected"),
        10,
        "the feedback to connect to the hit finder",
    )
    wait_until(lambda: c.get("HITS", "processedTrains") >= 5, 30, "hit finding to run")
    yield live
    live.close()


@pytest.mark.slow
def test_feedback_raises_the_hit_rate_and_obeys_manual_override(pipeline):
    c = pipeline.client
    assert c.get("MOTOR", "actualPosition") == 0.0
    assert c.get("HITS", "hitRate") < 0.05  # sample out of the beam
    assert c.get("FEEDBACK", "phase") == "IDLE"

    t0 = time.monotonic()
    assert c.call("FEEDBACK", "start_feedback") == "scanning from 0.0000 mm"
    wait_until(lambda: c.get("FEEDBACK", "phase") == "TRACKING", 40, "tracking")
    wait_until(lambda: c.get("HITS", "hitRate") >= 0.8 * 0.6 * 0.8, 15, "a high hit rate")
    elapsed = time.monotonic() - t0
    position = c.get("MOTOR", "actualPosition")
    best = c.get("FEEDBACK", "bestPosition")
    assert hit_probability(best) >= 0.8 * 0.6, best
    assert abs(position - 2.5) < 0.6  # at the best position, or on a dither probe
    assert elapsed < 45.0
    log = c.get("FEEDBACK", "decisionLog")
    assert any("peak" in line for line in log)
    assert c.get("FEEDBACK", "lastDecision") == log[-1]
    assert c.get("FEEDBACK", "moves") == c.get("MOTOR", "moves") > 3
    assert len(c.get("FEEDBACK", "scanPositions")) == len(c.get("FEEDBACK", "scanRates")) >= 3
    assert c.get("FEEDBACK", "state") == "MONITORING"

    # Manual override: the motor goes there and stays; no automatic move meanwhile.
    assert c.call("FEEDBACK", "manual_override", -3.0).startswith("moving to -3.0")
    assert c.get("FEEDBACK", "phase") == "MANUAL"
    wait_until(
        lambda: c.get("MOTOR", "actualPosition") == -3.0 and c.get("MOTOR", "state") == "ON",
        10,
        "the manual position",
    )
    moves = c.get("MOTOR", "moves")
    time.sleep(3.0)  # long enough for dither cycles (2 s) had the feedback been tracking
    assert c.get("MOTOR", "moves") == moves
    assert c.get("MOTOR", "actualPosition") == -3.0
    assert c.get("HITS", "hitRate") < 0.05

    reply = c.call("FEEDBACK", "manual_override", 50.0)
    assert reply.startswith("refused") and "outside the limits" in reply
    assert c.get("FEEDBACK", "phase") == "MANUAL" and c.get("FEEDBACK", "state") == "MONITORING"
    c.call("FEEDBACK", "stop_feedback")
    assert c.get("FEEDBACK", "phase") == "IDLE"
    assert c.get("FEEDBACK", "state") == "ON"
    c.set("FEEDBACK", "enabled", False)
    assert c.call("FEEDBACK", "start_feedback").startswith("refused: feedback is disabled")
    assert c.get("FEEDBACK", "phase") == "IDLE" and c.get("FEEDBACK", "state") == "ON"
