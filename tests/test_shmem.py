"""Shared-memory transport: zero-copy between processes, never overwriting what is held."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from pulsetrain.errors import ProtocolError
from pulsetrain.runtime import shmem
from pulsetrain.runtime.channels import EndOfStream, InputChannel, free_tcp_endpoint

pytestmark = pytest.mark.skipif(shmem.host_id() is None, reason="no usable /dev/shm here")

PRODUCER = textwrap.dedent("""
    import sys, numpy as np
    from pulsetrain.runtime.channels import OutputChannel
    from pulsetrain.protocol import make_meta
    endpoint, n, allocate = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
    out = OutputChannel("prod:output", endpoint, shm_slots=6)
    assert out.wait_for_inputs(1, 20)
    while not out._shm_inputs:  # the input's first credit says it reads shared memory
        import time; time.sleep(0.01)
    for i in range(n):
        shape = (8, 256, 128)
        a = out.allocate((shape, np.float32))[0] if allocate else np.empty(shape, np.float32)
        a[...] = i
        m = np.full((300, 128), i, np.uint32)  # copied into a slot by write()
        out.write({"S": {"image.data": a, "image.mask": m, "n": i}}, {"S": make_meta("S", i)})
    out.signal_eos(timeout=30)
    print("packed", out._pool.packed, "fallbacks", out._pool.fallbacks, flush=True)
    out.close()
""")


def run_producer(endpoint: str, n: int, allocate: bool) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", PRODUCER, endpoint, str(n), "1" if allocate else "0"],
        stdout=subprocess.PIPE,
        text=True,
    )


def segments() -> set[str]:
    return {n for n in os.listdir(shmem.SHM_DIR) if n.startswith(shmem.PREFIX)}


@pytest.mark.parametrize("allocate", [True, False], ids=["allocated", "copied"])
def test_other_process_data_arrives_through_shared_memory_and_held_data_stays(allocate):
    endpoint = free_tcp_endpoint()
    inp = InputChannel("cons:input", on_slowness="wait")
    inp.connect(endpoint)
    proc = run_producer(endpoint, 60, allocate)
    held = []
    got = []
    try:
        while True:
            item = inp.get(timeout=30)
            if isinstance(item, EndOfStream):
                break
            d = item.data["S"]
            got.append(d["n"])
            assert (d["image.data"] == d["n"]).all() and (d["image.mask"] == d["n"]).all()
            d["image.data"][0, 0, 0] = -1.0  # writeable, and private to this process
            if d["n"] % 10 == 0:
                held.append(d)  # keep some trains: their slots must never be reused
        out, _ = proc.communicate(timeout=30)
    finally:
        inp.close()
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0
    assert got == list(range(60))  # 'wait': nothing lost, in order
    assert inp.shm_received > 0, out
    for d in held:  # still exactly what was sent, long after the producer went on and closed
        assert d["image.data"][0, 0, 0] == -1.0
        assert (d["image.data"].ravel()[1:] == d["n"]).all()
        assert (d["image.mask"] == d["n"]).all()
    # held trains pinned slots, so some trains went over the socket instead: counted, not lost
    packed, fallbacks = (int(x) for x in out.split()[1::2])
    assert packed + fallbacks >= 1 and packed == inp.shm_received


def test_pool_reuses_a_slot_only_when_nobody_holds_it():
    pool = shmem.SegmentPool(max_slots=2, max_bytes=8 << 20)
    try:
        (a,) = pool.allocate([((1024, 256), np.float32)])  # 1 MiB
        (b,) = pool.allocate([((1024, 256), np.float32)])
        assert pool.allocate([((1024, 256), np.float32)]) is None  # both slots held by arrays
        msg = pool.pack([b"head", a.data])  # no copy: a lives in the pool
        assert msg is not None and pool.copied == 0
        assert pool.lease(msg.keys)  # an input received it
        del a
        assert pool.allocate([((1024, 256), np.float32)]) is None  # the input still holds a
        for key in msg.keys:
            pool.release(key)
        del msg
        c = pool.allocate([((512, 256), np.float32), ((1024, 256), np.uint16)])
        assert c is not None  # now the slot is free again: both arrays in it
        assert c[0].shape == (512, 256) and c[1].dtype == np.uint16
        assert len(pool._slots) == 2  # reused, not a third segment
    finally:
        pool.close()
    assert not any(n.startswith(pool._tag) for n in os.listdir(shmem.SHM_DIR))


def test_retired_slot_is_never_handed_out_again():
    pool = shmem.SegmentPool(max_slots=1, max_bytes=4 << 20)
    try:
        frame = np.ones(1 << 18, np.float32)
        msg = pool.pack([b"h", frame.data])
        assert msg is not None and pool.copied == 1
        assert pool.lease(msg.keys)
        name = msg.keys[0][0]
        pool.retire(msg.keys[0])  # the input vanished while holding it
        assert not (shmem.SHM_DIR / name).exists()
        del msg
        again = pool.pack([b"h", frame.data])
        assert again is not None and again.keys[0][0] != name
    finally:
        pool.close()


def test_a_retired_slot_stays_readable_for_the_other_inputs_of_its_train():
    pool = shmem.SegmentPool(max_slots=2, max_bytes=4 << 20)
    try:
        frame = np.ones(1 << 18, np.float32)
        msg = pool.pack([b"h", frame.data])
        assert msg is not None
        assert pool.lease(msg.keys) and pool.lease(msg.keys)  # copied to two inputs
        name = msg.keys[0][0]
        pool.retire(msg.keys[0])  # one input vanished before the other mapped the train
        assert (shmem.SHM_DIR / name).exists()  # the other one can still map it
        again = pool.pack([b"h", frame.data])
        assert again is not None and again.keys[0][0] != name  # but it is never reused
        pool.release(msg.keys[0])  # the other input is done: now it goes
        assert not (shmem.SHM_DIR / name).exists()
    finally:
        pool.close()


def test_unusable_shared_memory_falls_back_to_the_socket(monkeypatch, tmp_path):
    monkeypatch.setattr(shmem, "SHM_DIR", tmp_path / "missing")
    pool = shmem.SegmentPool()
    assert pool.pack([b"h", np.ones(1 << 18, np.float32).data]) is None
    assert "unavailable" in pool.failed
    assert pool.allocate([((1 << 18,), np.float32)]) is None


@pytest.mark.parametrize(
    "desc, message",
    [
        ([[1, "../../etc/passwd", 1, 0, 10]], "segment name"),
        ([[9, "pulsetrain-1-ab-1", 1, 0, 10]], "out of range"),
        ([[0, "pulsetrain-1-ab-1", 1, 0, 10]], "both in shared memory"),
        ([[1, "pulsetrain-1-ab-1", "x", 0, 10]], "descriptor"),
        ("nonsense", "descriptor"),
        ([], "empty"),
    ],
)
def test_malformed_descriptors_are_refused(desc, message):
    reader = shmem.SegmentReader(lambda name, gen: None)
    with pytest.raises(ProtocolError, match=message):
        reader.attach([b"header", b""], desc)


def test_segments_of_dead_processes_are_removed():
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    stale = shmem.SHM_DIR / f"{shmem.PREFIX}{int(dead.stdout)}-abc123-1"
    alive = shmem.SHM_DIR / f"{shmem.PREFIX}{os.getpid()}-abc123-1"
    stale.write_bytes(b"x")
    alive.write_bytes(b"x")
    try:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and stale.exists():
            shmem.remove_stale_segments()
        assert not stale.exists()
        assert alive.exists()
    finally:
        for p in (stale, alive):
            p.unlink(missing_ok=True)
