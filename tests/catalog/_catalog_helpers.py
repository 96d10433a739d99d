"""Shared values of the catalogue tests (a uniquely named module: several test folders have a
conftest.py, so tests never import from "conftest")."""

from datetime import datetime, timezone

DETECTOR = "SPB_DET_AGIPD1M-1"
T0 = datetime(2024, 1, 1, tzinfo=timezone.utc)
