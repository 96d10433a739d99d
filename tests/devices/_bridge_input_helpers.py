"""An external analysis tool, as a script that uses only the PyPI ``karabo-bridge`` package.

:func:`push_results_with_karabo_bridge` runs that script in a subprocess: it serialises trains
with ``karabo_bridge.serialize`` and pushes them with pyzmq (a dependency of karabo-bridge) over
a CURVE-authenticated PUSH socket to a ``BridgeInput`` device.  Use it to check that results
from outside reach the device's output — and, with a DAQ writer connected to that output, the
recorded run: :func:`expected_results` gives what each pushed train holds.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np

TOOL_SOURCE = "SPB_EXTERNAL/TOOL/RESULTS:output"

#: The tool.  Imports: json, sys, time, numpy, zmq, karabo_bridge — nothing from pulsetrain.
TOOL_SCRIPT = textwrap.dedent("""
    import json, sys, time
    import numpy as np
    import zmq
    from karabo_bridge import serialize

    cfg = json.load(sys.stdin)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PUSH)
    sock.setsockopt(zmq.IMMEDIATE, 1)       # queue only on authenticated connections
    sock.setsockopt(zmq.SNDTIMEO, cfg["send_timeout_ms"])
    sock.setsockopt(zmq.LINGER, 5000)
    if cfg.get("server_key"):
        sock.curve_serverkey = cfg["server_key"].encode()
        sock.curve_publickey = cfg["public_key"].encode()
        sock.curve_secretkey = cfg["secret_key"].encode()
    sock.connect(cfg["endpoint"])
    sent = 0
    for msg in cfg["messages"]:
        if "frames_hex" in msg:
            frames = [bytes.fromhex(h) for h in msg["frames_hex"]]
        else:
            tid, src = msg["train_id"], msg["source"]
            data = {src: {
                "result.score": (np.arange(msg["n"], dtype=np.float32) * tid) % 7,
                "result.label": "score per pulse",
                "result.nPulses": msg["n"],
            }}
            now = time.time()
            sec, frac = divmod(int(now * 1e6), 10**6)
            meta = {src: {"source": src, "timestamp": now, "timestamp.sec": str(sec),
                          "timestamp.frac": f"{frac * 10**12:018d}"}}
            if not msg.get("no_train_id"):
                meta[src]["timestamp.tid"] = tid
            frames = serialize(data, meta, protocol_version=msg.get("protocol", "2.2"))
        try:
            sock.send_multipart(frames)
        except zmq.Again:
            break
        sent += 1
        if cfg.get("interval_s"):
            time.sleep(cfg["interval_s"])
    print(json.dumps({"sent": sent}))
    sock.close()
    ctx.term()
    sys.exit(0 if sent == len(cfg["messages"]) else 3)
""")


def train_message(train_id: int, n: int = 4, source: str = TOOL_SOURCE, **extra) -> dict:
    """A message of the tool: one train of results."""
    return {"train_id": int(train_id), "n": int(n), "source": source, **extra}


def raw_message(frames: list[bytes]) -> dict:
    """A message of the tool made of arbitrary frames (to send malformed data)."""
    return {"frames_hex": [f.hex() for f in frames]}


def expected_results(train_id: int, n: int = 4) -> dict:
    """What the tool puts in ``data[TOOL_SOURCE]`` for a train."""
    return {
        "result.score": (np.arange(n, dtype=np.float32) * train_id) % 7,
        "result.label": "score per pulse",
        "result.nPulses": n,
    }


def push_results_with_karabo_bridge(
    endpoint: str,
    messages: list[dict],
    *,
    server_key: str | None = None,
    public_key: str | None = None,
    secret_key: str | None = None,
    send_timeout_s: float = 3.0,
    interval_s: float = 0.0,
    timeout: float = 60.0,
) -> tuple[int, int]:
    """Run the external tool; return ``(exit code, messages sent)``.

    Without ``server_key`` the tool connects without CURVE (no credentials).  Exit code 3 means
    some messages could not even be queued: no authenticated connection came up within
    ``send_timeout_s``.
    """
    cfg = {
        "endpoint": endpoint,
        "messages": messages,
        "server_key": server_key,
        "public_key": public_key,
        "secret_key": secret_key,
        "send_timeout_ms": int(send_timeout_s * 1000),
        "interval_s": interval_s,
    }
    proc = subprocess.run(
        [sys.executable, "-c", TOOL_SCRIPT],
        check=False,
        input=json.dumps(cfg),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if proc.returncode not in (0, 3):
        raise AssertionError(f"the tool failed ({proc.returncode}): {proc.stderr[-2000:]}")
    sent = json.loads(proc.stdout.strip().splitlines()[-1])["sent"]
    return proc.returncode, sent
