"""Helpers for the bridge tests: waiting on conditions, small trains, subprocesses."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import threading

import numpy as np

from pulsetrain.protocol import make_meta
from waiting import wait_until

SOURCE = "TEST_DET/DET/0CH0:output"


def small_train(i: int, nbytes: int = 4096) -> tuple[dict, dict]:
    """Train ``i``: one source with an array whose values encode ``i``."""
    n = max(1, nbytes // 4)
    data = {
        SOURCE: {
            "image.data": np.full(n, i, np.float32),
            "image.trainId": np.uint64(i),
            "label": f"train {i}",
        }
    }
    return data, {SOURCE: make_meta(SOURCE, i)}


def tid_of(meta: dict) -> int:
    return int(meta[SOURCE]["timestamp.tid"])


def check_train(data: dict, meta: dict, i: int) -> None:
    assert tid_of(meta) == i
    assert data[SOURCE]["label"] == f"train {i}"
    assert np.all(data[SOURCE]["image.data"] == i)


class Process:
    """A command-line process whose stdout lines are collected by a thread."""

    def __init__(self, args: list[str]):
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for_line(self, pattern: str, timeout: float = 90.0) -> re.Match:
        regex = re.compile(pattern)
        found: list[re.Match] = []

        def seen() -> bool:
            for line in list(self.lines):
                m = regex.search(line)
                if m:
                    found.append(m)
                    return True
            return self.proc.poll() is not None and not self._reader.is_alive()

        with contextlib.suppress(AssertionError):  # the output is the better report
            wait_until(seen, timeout, what=f"a line matching {pattern!r}")
        if not found:
            raise AssertionError(f"no line matching {pattern!r}; output so far:\n{self.output}")
        return found[0]

    def wait(self, timeout: float = 60.0) -> int:
        code = self.proc.wait(timeout)
        self._reader.join(5)
        return code

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def pulsetrain_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "pulsetrain", *args]
