"""Finding detector plug-ins by name: the ``pulsetrain.detectors`` entry-point group.

A package declares its detector types as entry points::

    [project.entry-points."pulsetrain.detectors"]
    AGIPD = "pulsetrain.detectors.agipd:AGIPD"

The modules of the package :mod:`pulsetrain.detectors` itself are also searched (for a
``DETECTOR`` attribute naming their class), so the built-in types are found even when the
installed package metadata predates them (an editable install).  Nothing here names a detector.
"""

from __future__ import annotations

import functools
import importlib
import logging
import pkgutil
from typing import Any

from pulsetrain.detectors.base import Detector
from pulsetrain.errors import ConfigurationError

__all__ = ["detector_names", "get_detector", "register_detector", "resolve_detector"]

log = logging.getLogger(__name__)

#: The entry-point group of detector plug-ins.
GROUP = "pulsetrain.detectors"

_REGISTERED: dict[str, type[Detector]] = {}


def register_detector(cls: type[Detector]) -> str:
    """Make ``cls`` known by ``cls.name`` in this process (tests, embedding); returns the name."""
    if not (isinstance(cls, type) and issubclass(cls, Detector)):
        raise ConfigurationError(f"{cls!r} is not a Detector class")
    _REGISTERED[cls.name.upper()] = cls
    _instance.cache_clear()
    return cls.name.upper()


@functools.lru_cache(maxsize=1)
def _found() -> dict[str, Any]:
    """``{NAME: loader}``: entry points, then the modules of this package."""
    from importlib.metadata import entry_points

    found: dict[str, Any] = {}
    for ep in entry_points(group=GROUP):
        found[ep.name.upper()] = ep.load
    package = importlib.import_module("pulsetrain.detectors")
    for info in pkgutil.iter_modules(package.__path__):
        if info.name in ("base", "registry") or info.name.startswith("_"):
            continue
        module = f"pulsetrain.detectors.{info.name}"
        found.setdefault(info.name.upper(), functools.partial(_from_module, module))
    return found


def _from_module(module: str) -> type[Detector]:
    return importlib.import_module(module).DETECTOR


def detector_names() -> list[str]:
    """Names of every known detector type, sorted."""
    names = set(_REGISTERED)
    for name, load in _found().items():
        try:
            if name not in names and issubclass(load(), Detector):
                names.add(name)
        except (ImportError, AttributeError, TypeError) as exc:  # a module that is no plug-in
            log.debug("detector %s not loadable: %s", name, exc)
    return sorted(names)


@functools.cache
def _instance(name: str) -> Detector:
    cls = _REGISTERED.get(name)
    if cls is None:
        load = _found().get(name)
        if load is None:
            raise ConfigurationError(
                f"unknown detector type {name!r}; known: {', '.join(detector_names())}"
            )
        cls = load()
    if not (isinstance(cls, type) and issubclass(cls, Detector)):
        raise ConfigurationError(f"detector plug-in {name!r} is not a Detector class: {cls!r}")
    return cls()


def get_detector(name: str | Detector) -> Detector:
    """The plug-in of detector type ``name`` (case-insensitive), e.g. ``get_detector("AGIPD")``.

    Raises
    ------
    ConfigurationError
        No such detector type.
    """
    if isinstance(name, Detector):
        return name
    return _instance(str(name).strip().upper())


def resolve_detector(detector: str, detector_type: str | None = None) -> tuple[Detector, str]:
    """``(plug-in, catalogue name)`` from what a user gives as ``--detector``.

    Parameters
    ----------
    detector
        A detector type (``"LPD"``: its default catalogue name is used) or a catalogue name
        (``"SPB_DET_AGIPD1M-1"``).
    detector_type
        The type of a catalogue name, if known (e.g. from the catalogue); otherwise the type
        whose default catalogue name it is, or whose type name it contains.

    Raises
    ------
    ConfigurationError
        The type cannot be told.
    """
    text = str(detector).strip()
    if not text:
        raise ConfigurationError("detector: must not be empty")
    if detector_type:
        return get_detector(detector_type), text
    names = detector_names()
    if text.upper() in names:
        plugin = get_detector(text)
        return plugin, plugin.default_detector_id
    plugins = [get_detector(n) for n in names]
    for plugin in plugins:
        if plugin.default_detector_id == text:
            return plugin, text
    matches = [p for p in plugins if p.name in text.upper()]
    if len(matches) == 1:
        return matches[0], text
    raise ConfigurationError(
        f"detector {text!r}: not a detector type ({', '.join(names)}) and its type cannot be "
        "told from the name"
    )
