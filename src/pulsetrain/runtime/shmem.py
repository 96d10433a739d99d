"""Shared-memory transport for large frames between pipeline processes on one host.

Over TCP or ipc, every byte of a train is copied twice by the kernel (into the socket and out
of it) and once more by ZeroMQ's I/O thread bookkeeping; with 16 detector modules at 10 Hz that
alone fills a small machine.  Between two processes on the same host an output channel can
instead put the large frames of a train into a POSIX shared-memory segment (``/dev/shm``) and
send only a small descriptor over its socket.  This is the same idea as calng's
``ShmemTrainMatcher`` at European XFEL; Karabo itself only short-cuts inside one process.

Life cycle, safe by construction (no slot is ever overwritten while anybody can read it):

* The producer (:class:`SegmentPool`, one per output channel) keeps a few *slots*, one segment
  each.  A train's large frames are copied into one free slot (one ``memcpy``).
* A slot is busy while the train is still queued in the output (a Python reference, tracked
  with a weak reference) and while any input holds a *lease* on it: the output takes one lease
  per input it sends the descriptor to.
* The consumer (:class:`SegmentReader`) maps the part of the segment it needs copy-on-write
  (``MAP_PRIVATE``): its arrays are writeable, as arrays received over a socket are, and writing
  to them never changes what other inputs see.  When the last array made from the mapping is
  garbage (a ``weakref.finalize`` on the mapping's base array), the input sends ``free`` and the
  output drops the lease.
* An input that disconnects or times out while holding leases does not get its slots back:
  they are *retired*: never reused, so a frozen consumer that wakes up still reads its own
  data, and unlinked once the other inputs that got the same train (copy distribution) have
  released it too (unlinking earlier would lose that train for an input that has not mapped it
  yet).
* When no slot is free (consumers keep old trains, or the byte budget is used up) the train is
  sent over the socket as usual: slower, never wrong, never blocking.

Segments are named ``pulsetrain-<pid>-<session>-<n>``; :func:`remove_stale_segments` deletes
those of processes that no longer exist (a producer killed with ``kill -9`` cannot clean up);
device servers call it when they start.

Set ``PULSETRAIN_SHM=0`` to switch the transport off (every input then says it cannot use it).
"""

from __future__ import annotations

import logging
import mmap
import os
import re
import threading
import uuid
import weakref
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from pulsetrain.errors import ProtocolError

__all__ = [
    "SHM_DIR",
    "SegmentPool",
    "SegmentReader",
    "ShmMessage",
    "host_id",
    "remove_segments_of",
    "remove_stale_segments",
    "segments_of",
]

log = logging.getLogger(__name__)

SHM_DIR = Path("/dev/shm")
PREFIX = "pulsetrain-"
_NAME_RE = re.compile(r"pulsetrain-(\d+)-[0-9a-f]{1,32}-\d{1,12}")
_ALIGN = 64  # bytes: every frame starts on a cache line
_GRANULE = 1 << 20  # slot sizes are rounded up to whole MiB so slightly larger trains fit
_PAGE = mmap.ALLOCATIONGRANULARITY


def _enabled() -> bool:
    return os.environ.get("PULSETRAIN_SHM", "1").strip().lower() not in ("0", "no", "false", "off")


_HOST_ID: str | None | bool = False  # False: not computed yet


def host_id() -> str | None:
    """What identifies this host's ``/dev/shm`` (None: shared memory not usable here).

    Two processes may exchange segments when their IDs are equal: same kernel boot and the same
    ``/dev/shm`` file system (containers with a private ``/dev/shm`` differ).
    """
    global _HOST_ID
    if not _enabled():
        return None
    if _HOST_ID is False:
        try:
            boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
            st = os.stat(SHM_DIR)
            _HOST_ID = f"{boot}:{st.st_dev}:{st.st_ino}" if os.access(SHM_DIR, os.W_OK) else None
        except OSError:
            _HOST_ID = None
    return _HOST_ID  # type: ignore[return-value]


def _round_up(n: int, to: int) -> int:
    return -(-n // to) * to


class _Hold:
    """Held by a queued train; a slot it was copied into is busy while one is alive."""

    __slots__ = ("__weakref__",)


class _Slot:
    __slots__ = ("addr", "allocated", "gen", "holder", "leases", "mm", "name", "size")

    def __init__(self, name: str, size: int):
        self.name = name
        self.size = size
        path = SHM_DIR / name
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        ok = False
        try:
            # Reserve the memory now: writing to a sparse tmpfs page when /dev/shm is full
            # would kill the process with SIGBUS; posix_fallocate fails cleanly instead.
            os.posix_fallocate(fd, 0, size)
            self.mm = mmap.mmap(
                fd, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE
            )
            ok = True
        finally:
            os.close(fd)  # the mapping keeps the memory: no descriptor is held per slot
            if not ok:
                _unlink(name)
        self.addr = _address(np.frombuffer(self.mm, dtype=np.uint8, count=1))
        self.gen = 0
        self.leases = 0
        self.holder: weakref.ref | None = None
        self.allocated = False  # handed out by allocate() (else: a copy target of pack())

    def free(self) -> bool:
        return self.leases == 0 and (self.holder is None or self.holder() is None)

    def destroy(self) -> None:
        _unlink(self.name)
        try:
            self.mm.close()
        except BufferError:  # a view is still alive: unmapped when it is garbage
            pass


def _address(a: np.ndarray) -> int:
    return a.__array_interface__["data"][0]


def _unlink(name: str) -> None:
    try:
        os.unlink(SHM_DIR / name)
    except FileNotFoundError:
        pass
    except OSError as exc:  # pragma: no cover - permissions changed under us
        log.warning("cannot remove shared-memory segment %s: %s", name, exc)


class ShmMessage:
    """One train's frames as sent to inputs that read shared memory.

    ``frames`` are the train frames with those in shared memory replaced by empty frames;
    ``desc`` is the descriptor sent with them, ``[[frame index, segment, generation, offset,
    nbytes], ...]``; ``keys`` are the ``(segment, generation)`` pairs an input leases;
    ``hold`` keeps a slot the frames were copied into busy while the message is referenced.
    """

    __slots__ = ("desc", "frames", "hold", "keys")

    def __init__(self, frames: list, desc: list, hold: _Hold | None, keys: list):
        self.frames = frames
        self.desc = desc
        self.hold = hold
        self.keys = keys


class SegmentPool:
    """The producer's slots of shared memory (one pool per output channel).

    Parameters
    ----------
    max_slots : int
        Slots (segments) kept at most.
    max_bytes : int
        Bytes of shared memory the pool may hold at most.
    min_frame : int
        Frames smaller than this are sent over the socket (not worth a copy).
    """

    def __init__(self, max_slots: int = 64, max_bytes: int = 2 << 30, min_frame: int = 1 << 16):
        self.max_slots = int(max_slots)
        self.max_bytes = int(max_bytes)
        self.min_frame = int(min_frame)
        self._tag = f"{PREFIX}{os.getpid()}-{uuid.uuid4().hex[:12]}-"
        self._count = 0
        self._slots: dict[str, _Slot] = {}
        self._retired: dict[str, _Slot] = {}  # never reused; unlinked when no lease is left
        self._lock = threading.Lock()
        self.packed = 0  # trains sent through shared memory
        self.copied = 0  # of which some frames had to be copied in (not allocated there)
        self.fallbacks = 0  # trains sent over the socket because no slot was free
        self.failed: str = ""  # why the pool stopped working (e.g. /dev/shm full), if it did

    @property
    def nbytes(self) -> int:
        """Shared memory held by the pool."""
        with self._lock:
            return sum(s.size for s in self._slots.values())

    def _acquire(self, need: int) -> _Slot | None:
        free = [s for s in self._slots.values() if s.free()]
        fitting = [s for s in free if s.size >= need]
        if fitting:
            return min(fitting, key=lambda s: s.size)
        size = _round_up(max(need, 1), _GRANULE)
        total = sum(s.size for s in self._slots.values())
        if len(self._slots) >= self.max_slots or total + size > self.max_bytes:
            if not free:
                return None
            victim = max(free, key=lambda s: s.size)  # too small: replace it by a larger one
            if total - victim.size + size > self.max_bytes:
                return None
            del self._slots[victim.name]
            victim.destroy()
        self._count += 1
        slot = _Slot(f"{self._tag}{self._count}", size)
        self._slots[slot.name] = slot
        return slot

    def _get(self, need: int) -> _Slot | None:
        if self.failed:
            return None
        try:
            return self._acquire(need)
        except OSError as exc:  # /dev/shm full or not writeable: use the socket from now on
            self.failed = f"shared memory unavailable: {exc}"
            log.warning("%s; sending over the socket", self.failed)
            return None

    def allocate(self, specs: list[tuple[tuple[int, ...], Any]]) -> list[np.ndarray] | None:
        """Arrays ``[(shape, dtype), ...]`` in one slot of shared memory (None: none free).

        Written to the output, they are sent without any copy.  The slot is busy while any of
        the arrays (or a view of one) is alive, and while an input holds a train with them.
        """
        layout = []
        total = 0
        for shape, dtype in specs:
            dtype = np.dtype(dtype)
            n = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            layout.append((tuple(shape), dtype, total, n))
            total = _round_up(total + n, _ALIGN)
        if total < self.min_frame:
            return None
        with self._lock:
            slot = self._get(total)
            if slot is None:
                return None
            slot.gen += 1
            slot.allocated = True
            base = np.frombuffer(slot.mm, dtype=np.uint8, count=total)
            slot.holder = weakref.ref(base)
        return [base[off : off + n].view(dt).reshape(shape) for shape, dt, off, n in layout]

    def _slot_of(self, addr: int, n: int) -> _Slot | None:
        for slot in self._slots.values():
            inside = slot.allocated and slot.addr <= addr and addr + n <= slot.addr + slot.size
            if inside and slot.holder is not None and slot.holder() is not None:
                return slot
        return None

    def pack(self, frames: list) -> ShmMessage | None:
        """The train for shared-memory inputs (None: send it over the socket).

        Frames in arrays from :meth:`allocate` are referenced where they are; other large
        frames are copied into one free slot (one ``memcpy``) - or, if none is free, go over
        the socket with the small ones.
        """
        big = []
        for i, frame in enumerate(frames):
            n = frame.nbytes if isinstance(frame, memoryview) else len(frame)
            if n >= self.min_frame:
                big.append((i, n))
        if not big or self.failed:
            return None
        desc: list[list] = []
        copy: list[tuple[int, int, int]] = []
        offset = 0
        hold = None
        with self._lock:
            for i, n in big:
                addr = _address(np.frombuffer(frames[i], dtype=np.uint8))
                slot = self._slot_of(addr, n)
                if slot is not None:
                    desc.append([i, slot.name, slot.gen, addr - slot.addr, n])
                else:
                    copy.append((i, offset, n))
                    offset = _round_up(offset + n, _ALIGN)
            target = self._get(offset) if copy else None
            if target is not None:
                target.gen += 1
                target.allocated = False
                hold = _Hold()
                target.holder = weakref.ref(hold)
                name, gen, mm = target.name, target.gen, target.mm
            elif copy and not desc:
                self.fallbacks += 1
                return None
        local = list(frames)
        if target is not None:
            dst = np.frombuffer(mm, dtype=np.uint8, count=offset)
            for i, off, n in copy:
                dst[off : off + n] = np.frombuffer(frames[i], dtype=np.uint8)
                desc.append([i, name, gen, off, n])
            del dst
            self.copied += 1
        for entry in desc:
            local[entry[0]] = b""
        self.packed += 1
        keys = sorted({(d[1], d[2]) for d in desc})
        return ShmMessage(local, desc, hold, keys)

    def lease(self, keys: list[tuple[str, int]]) -> bool:
        """One more input gets a message with these slots; False if one is gone (do not)."""
        with self._lock:
            slots = [self._slots.get(name) for name, _ in keys]
            if any(s is None or s.gen != gen for s, (_, gen) in zip(slots, keys)):
                return False
            for s in slots:
                s.leases += 1  # type: ignore[union-attr]
            return True

    def release(self, key: tuple[str, int]) -> None:
        """An input is done with slot ``key`` of a message."""
        with self._lock:
            slot = self._slots.get(key[0]) or self._retired.get(key[0])
            if slot is not None and slot.gen == key[1] and slot.leases > 0:
                slot.leases -= 1
                if slot.leases == 0 and slot.name in self._retired:
                    del self._retired[slot.name]
                    slot.destroy()

    def retire(self, key: tuple[str, int]) -> None:
        """An input vanished holding ``key``: never reuse that slot (it may still read it).

        Its lease ends; the segment is unlinked at once if no other input holds the same
        slot, else when the last of them releases it.
        """
        with self._lock:
            slot = self._slots.get(key[0])
            if slot is None or slot.gen != key[1]:
                slot = self._retired.get(key[0])
                if slot is None or slot.gen != key[1]:
                    return
            self._slots.pop(slot.name, None)
            slot.leases = max(0, slot.leases - 1)
            if slot.leases == 0:
                self._retired.pop(slot.name, None)
                slot.destroy()
            else:
                self._retired[slot.name] = slot

    def close(self) -> None:
        """Remove every segment (inputs keep what they have mapped)."""
        with self._lock:
            for slot in [*self._slots.values(), *self._retired.values()]:
                slot.destroy()
            self._slots.clear()
            self._retired.clear()


class SegmentReader:
    """The consumer's side: maps descriptors to frames, and says when they are free again.

    Parameters
    ----------
    on_free : callable
        ``on_free(segment, generation)``, called (from any thread) when no array made from a
        segment's part of a message is alive any more.
    max_open : int
        Segment file descriptors kept open.
    """

    def __init__(self, on_free: Callable[[str, int], None], max_open: int = 64):
        self._on_free = on_free
        self._max_open = max_open
        self._fds: OrderedDict[str, tuple[int, int]] = OrderedDict()
        self._lock = threading.Lock()

    def _fd(self, name: str) -> tuple[int, int]:
        with self._lock:
            hit = self._fds.get(name)
            if hit is not None:
                self._fds.move_to_end(name)
                return hit
        fd = os.open(SHM_DIR / name, os.O_RDONLY)
        size = os.fstat(fd).st_size
        with self._lock:
            self._fds[name] = (fd, size)
            while len(self._fds) > self._max_open:
                _, (old, _) = self._fds.popitem(last=False)
                os.close(old)
        return fd, size

    @staticmethod
    def parse(frames: list, desc: Any) -> dict[tuple[str, int], list[tuple[int, int, int]]]:
        """Check a descriptor against the frames; ``{(segment, gen): [(index, off, n)]}``.

        Raises
        ------
        ProtocolError
            The descriptor is malformed or names a frame that is not empty.
        """
        groups: dict[tuple[str, int], list[tuple[int, int, int]]] = {}
        try:
            for i, name, gen, off, n in desc:
                if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
                    raise ProtocolError(f"bad shared-memory segment name {name!r:.100}")
                i, gen, off, n = int(i), int(gen), int(off), int(n)
                groups.setdefault((name, gen), []).append((i, off, n))
        except (TypeError, ValueError) as exc:
            if isinstance(exc, ProtocolError):
                raise
            raise ProtocolError(f"bad shared-memory descriptor {desc!r:.200}") from exc
        if not groups:
            raise ProtocolError("empty shared-memory descriptor")
        for parts in groups.values():
            for i, off, n in parts:
                if not 0 <= i < len(frames) or off < 0 or n < 0:
                    raise ProtocolError(f"shared-memory frame {i} at {off}+{n} out of range")
                frame = frames[i]
                size = frame.buffer.nbytes if hasattr(frame, "buffer") else len(frame)
                if size:
                    raise ProtocolError(f"frame {i} is both in shared memory and on the socket")
        return groups

    def attach(self, frames: list, desc: Any) -> list:
        """Return ``frames`` with the descriptor's frames filled from shared memory.

        Raises
        ------
        ProtocolError
            The descriptor is malformed or names a frame that is not empty.
        OSError
            A segment cannot be opened or mapped (gone, or another ``/dev/shm``).
        """
        groups = self.parse(frames, desc)
        frames = list(frames)
        for (name, gen), parts in groups.items():
            fd, size = self._fd(name)
            lo = min(off for _, off, _ in parts) // _PAGE * _PAGE
            hi = max(off + n for _, off, n in parts)
            if hi > size:
                raise ProtocolError(f"shared-memory frames end at {hi}, beyond {name} ({size})")
            # Copy-on-write: the arrays are writeable, and writes stay in this process.
            mm = mmap.mmap(
                fd,
                hi - lo,
                flags=mmap.MAP_PRIVATE,
                prot=mmap.PROT_READ | mmap.PROT_WRITE,
                offset=lo,
            )
            base = np.frombuffer(mm, dtype=np.uint8)
            fin = weakref.finalize(base, self._on_free, name, gen)
            fin.atexit = False
            for i, off, n in parts:
                frames[i] = memoryview(base[off - lo : off - lo + n])
        return frames

    def close(self) -> None:
        """Close the cached segment descriptors (mapped frames stay valid)."""
        with self._lock:
            for fd, _ in self._fds.values():
                os.close(fd)
            self._fds.clear()


def segments_of(pid: int) -> list[str]:
    """Names of the segments in :data:`SHM_DIR` that process ``pid`` created."""
    try:
        names = os.listdir(SHM_DIR)
    except OSError:
        return []
    return sorted(
        n for n in names if (m := _NAME_RE.fullmatch(n)) is not None and int(m.group(1)) == pid
    )


def remove_segments_of(pid: int) -> list[str]:
    """Remove the segments process ``pid`` created (it is gone, or it is this process and about
    to exit without closing its channels); returns their names."""
    names = segments_of(pid)
    for name in names:
        _unlink(name)
    return names


def remove_stale_segments() -> int:
    """Remove the segments of pulsetrain processes that no longer exist; returns how many."""
    removed = 0
    try:
        names = os.listdir(SHM_DIR)
    except OSError:
        return 0
    for name in names:
        m = _NAME_RE.fullmatch(name)
        if m is None:
            continue
        pid = int(m.group(1))
        try:
            os.kill(pid, 0)
            continue  # alive (or not ours to signal: leave it)
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        _unlink(name)
        removed += 1
    if removed:
        log.info("removed %d shared-memory segments of processes that are gone", removed)
    return removed
