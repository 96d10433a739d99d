"""Opening a GUI page in the browser and waiting until all of it is there."""

from __future__ import annotations

#: The page's panels are all built and drawn by BokehJS (the server builds the detector images
#: first, the other panels right after the HTML went out, and marks the last root then).
PAGE_BUILT_JS = """() => {
  if (!window.Bokeh || !Bokeh.documents || Bokeh.documents.length == 0) { return false; }
  const last = Bokeh.documents[0].get_model_by_name('pt-download');
  return last != null && last.tags.includes('built') && Bokeh.index.find_one(last) != null;
}"""


def open_scene(page, url: str, timeout: float = 60000) -> None:
    """Open a scene's page and wait until every panel is built (``timeout`` in ms)."""
    page.goto(url)
    page.wait_for_function(PAGE_BUILT_JS, timeout=timeout)
