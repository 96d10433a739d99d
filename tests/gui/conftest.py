"""Fixtures of the GUI tests: a running pipeline (see gui_pipeline.py) and a preview collector."""

from __future__ import annotations

import os

import pytest
from gui_pipeline import PREVIEW, PREVIEW_OUTPUT, Collector, topology_text

from pulsetrain.runtime.supervisor import Supervisor


@pytest.fixture(scope="session")
def pipeline(tmp_path_factory):
    """A running topology: ``(supervisor, topology file)``; the preview is flowing."""
    workdir = tmp_path_factory.mktemp("gui-pipeline")
    path = workdir / "gui-test.toml"
    path.write_text(topology_text(f"gui-test-{os.getpid()}"))
    with Supervisor(path, workdir=workdir) as sup:
        sup.device_client(PREVIEW).wait_for(PREVIEW, "trainsOut", lambda v: v >= 3, timeout=90)
        yield sup, path


@pytest.fixture
def collector(pipeline):
    sup, _ = pipeline
    c = Collector(sup.endpoints()[PREVIEW_OUTPUT])
    yield c
    c.close()
