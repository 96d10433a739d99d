"""Opening a GUI page in the browser and waiting until all of it is there."""

from __future__ import annotations

from pulsetrain.gui.app import PAGE_BUILT_JS


def open_scene(page, url: str, timeout: float = 60000) -> None:
    """Open a scene's page and wait until every panel is built (``timeout`` in ms)."""
    page.goto(url)
    page.wait_for_function(PAGE_BUILT_JS, timeout=timeout)
