"""The example notebooks: stored without outputs, and each runs from a clean checkout
(it makes its own data in a temporary directory) without an error.

The selected notebooks are executed two at a time (their commands mostly keep one core busy,
so two share a two-core machine well), the longest first; each test checks its own notebook.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import nbformat
import pytest

NOTEBOOK_DIR = Path(__file__).resolve().parents[2] / "examples" / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
#: Notebooks run side by side in the executions fixture.
PARALLEL = 2
#: Longest first (measured), so that the two lanes end at about the same time.
LONGEST_FIRST = ("05-figure-8-lpd", "02-azimuthal-integration")


def test_the_five_notebooks_are_there():
    names = [p.name for p in NOTEBOOKS]
    assert len(names) == 5, names
    for topic in ("open-a-run", "azimuthal-integration", "live-stream", "dark", "figure-8"):
        assert any(topic in n for n in names), (topic, names)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_stored_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, cell.source[:60]
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# ")


class _Stopped(Exception):
    """The test session ended before this notebook was done."""


def _execute(path: Path, workdir: Path, stop: threading.Event) -> nbformat.NotebookNode:
    """Run every cell of the notebook at ``path`` in a fresh kernel working in ``workdir``;
    give up before the next cell once ``stop`` is set (the kernel is shut down)."""
    from nbclient import NotebookClient

    def check_stop(**_):
        if stop.is_set():
            raise _Stopped(path.name)

    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": str(workdir)}},
        on_cell_start=check_stop,
    )
    client.execute()  # raises CellExecutionError naming the cell on any error
    return nb


@pytest.fixture(scope="module")
def executions(request, tmp_path_factory):
    """The notebooks selected for ``test_notebook_executes``, started in the background,
    ``PARALLEL`` at a time, the longest first."""
    selected = [
        item.callspec.params["path"]
        for item in request.session.items
        if item.originalname == "test_notebook_executes" and hasattr(item, "callspec")
    ]
    rank = {stem: i for i, stem in enumerate(LONGEST_FIRST)}
    selected.sort(key=lambda p: (rank.get(p.stem, len(rank)), p.name))
    stop = threading.Event()
    pool = ThreadPoolExecutor(max_workers=PARALLEL, thread_name_prefix="notebook")
    futures: dict[Path, Future] = {
        path: pool.submit(_execute, path, tmp_path_factory.mktemp(path.stem), stop)
        for path in selected
    }
    try:
        yield futures
    finally:
        stop.set()  # after an interruption: no new cell, no new notebook
        pool.shutdown(wait=True, cancel_futures=True)


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_executes(path, executions):
    # waits for this notebook (the others run meanwhile); re-raises its CellExecutionError
    nb = executions[path].result(timeout=850)
    errors = [
        o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"
    ]
    assert not errors
    images = sum(
        "image/png" in o.get("data", {})
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.outputs
    )
    assert images >= 1  # every notebook draws something
