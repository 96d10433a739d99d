"""The one way tests wait: poll a condition until it holds, with a timeout.

Importable from every test module as ``from waiting import wait_until`` (``tests/`` is on
``sys.path`` through ``tests/conftest.py``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(
    test: Callable[[], T],
    timeout: float = 20.0,
    what: str = "condition",
    interval: float = 0.02,
) -> T:
    """Poll ``test()`` until it returns something true and return that value.

    Raises ``AssertionError`` naming ``what`` if it is still false after ``timeout`` seconds,
    so ``assert wait_until(...)`` and a bare ``wait_until(...)`` both fail a test with a reason.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = test()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)
