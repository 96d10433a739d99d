"""Scenes: pages of the GUI laid out from a TOML or YAML file, so a beamline composes its own.

A scene file has a ``[scene]`` table and a list of ``[[panel]]`` tables, shown in order, flowed
into ``columns`` columns::

    [scene]
    name = "detector"            # URL path /detector (default: the file name)
    title = "AGIPD-1M live view"
    columns = 2
    update_rate = 10             # image/line pushes per second, at most (1..10)
    poll_interval = 0.5          # s between device property polls

    [[panel]]
    type = "detector_image"      # assembled preview with pulse slider and colour controls
    source = "SPB_DET_AGIPD1M-1/PROC/PREVIEW:output"

    [[panel]]
    type = "line"                # a profile from a pipeline output
    source = "SPB_DET_AGIPD1M-1/PROC/PREVIEW:output"
    x = "profile.radial"
    y = "profile.intensity"

    [[panel]]
    type = "trend"               # device properties over time
    series = [{ device = "SPB_DET_AGIPD1M-1/DET/SIM", key = "actualRate", label = "train rate" }]

    [[panel]]
    type = "counters"            # trains in/out, drops and latency per device

    [[panel]]
    type = "device_panel"        # states, properties (reconfigurable ones editable), slots
    devices = ["SPB_IRU_SAMPLE/MOTOR/X"]

The same structure in YAML uses ``scene:`` and ``panel:`` (a list).  Unknown keys are errors, so
typos are caught when the GUI starts, not when someone looks at the page.
"""

from __future__ import annotations

import copy
import dataclasses
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pulsetrain.errors import ConfigurationError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = [
    "PALETTES",
    "PANEL_TYPES",
    "Panel",
    "Scene",
    "auto_scene",
    "key_label",
    "load_scene",
    "scene_from_dict",
    "short_device",
]

#: Colour palettes a detector image may use (Bokeh's 256-colour palettes).
PALETTES = (
    "Viridis256",
    "Inferno256",
    "Magma256",
    "Plasma256",
    "Cividis256",
    "Greys256",
    "Turbo256",
)

_COMMON = {"type": None, "title": "", "width": 0, "height": 0}

#: Panel type → allowed keys and their defaults (``...`` marks a required key).
PANEL_TYPES: dict[str, dict[str, Any]] = {
    "detector_image": {
        **_COMMON,
        "source": "",
        "data_source": "",
        "palette": "Viridis256",
        "controls": True,
        "axes": "mm",
        "roi_device": "",
        "average_device": "",
        "save": True,
    },
    "line": {
        **_COMMON,
        "source": ...,
        "data_source": "",
        "x": "",
        "y": ...,
        "row": "mean",
        "x_label": "",
        "y_label": "",
        "labels": [],
        "log_y": False,
        "update_rate": 1.0,
    },
    "trend": {
        **_COMMON,
        "series": [],
        "device": "",
        "key": "",
        "label": "",
        "rate": False,
        "window": 300.0,
        "y_label": "",
    },
    "roi": {
        **_COMMON,
        "source": ...,
        "data_source": "",
        "stat": "sum",
        "normalised": False,
        "window": 300,
        "update_rate": 1.0,
    },
    "histogram": {
        **_COMMON,
        "source": ...,
        "data_source": "",
        "kind": "pixels",
        "log_y": False,
        "update_rate": 1.0,
    },
    "correlation": {**_COMMON, "source": ..., "data_source": "", "update_rate": 1.0},
    "counters": {**_COMMON, "devices": []},
    "device_panel": {**_COMMON, "devices": [], "properties": []},
}

_SCENE_KEYS = {"name": "", "title": "", "columns": 2, "update_rate": 10.0, "poll_interval": 0.5}
_SERIES_KEYS = {"device", "key", "label", "rate", "axis", "unit"}
_NAME_RE = re.compile(r"^[A-Za-z0-9_-]+$")


@dataclasses.dataclass
class Panel:
    """One panel of a scene.

    Attributes
    ----------
    type : str
        One of :data:`PANEL_TYPES`.
    index : int
        Position in the scene (also used to name its widgets).
    options : dict
        The panel's settings, every allowed key present (defaults filled in).
    """

    type: str
    index: int
    options: dict[str, Any]

    def __getitem__(self, key: str) -> Any:
        return self.options[key]

    @property
    def title(self) -> str:
        """The title shown above the panel."""
        return str(self.options.get("title") or self.type.replace("_", " "))


@dataclasses.dataclass
class Scene:
    """A page of the GUI: a title, layout settings and panels."""

    name: str
    title: str
    panels: list[Panel]
    columns: int = 2
    update_rate: float = 10.0
    poll_interval: float = 0.5
    path: Path | None = None

    def outputs(self) -> set[str]:
        """The pipeline outputs (``DEVICE:channel``) the scene's panels read."""
        return {
            p["source"]
            for p in self.panels
            if p.type in ("detector_image", "line", "roi", "histogram", "correlation")
            and p["source"]
        }


def short_device(device_id: str) -> str:
    """A device ID shortened for a tab or a legend: its last two parts (``"PROC/PREVIEW"``).

    Karabo device IDs are ``DOMAIN/TYPE/MEMBER``; the domain is usually the same for every
    device of a page, while the member alone (``"X"``, ``"SIM"``) says too little.
    """
    parts = [p for p in device_id.split("/") if p]
    return "/".join(parts[-2:]) if len(parts) >= 2 else device_id


def key_label(key: str) -> str:
    """A readable legend label for an output key: ``"profile.intensity"`` → ``"intensity"``."""
    last = key.rsplit(".", 1)[-1]
    return re.sub(r"(?<=[a-z])(?=[A-Z])", " ", last).replace("_", " ").lower() or key


def _fail(where: str, message: str) -> ConfigurationError:
    return ConfigurationError(f"{where}: {message}")


def _check_type(where: str, key: str, value: Any, default: Any) -> Any:
    if key in ("y", "row"):  # y: a key or a list of keys; row: a number or a word
        return value
    if default is ... or default is None:
        if not isinstance(value, str):
            raise _fail(where, f"{key!r} must be a string, not {value!r}")
        return value
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise _fail(where, f"{key!r} must be true or false, not {value!r}")
        return value
    if isinstance(default, (int, float)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _fail(where, f"{key!r} must be a number, not {value!r}")
        return type(default)(value) if isinstance(default, float) else value
    if isinstance(default, list):
        if not isinstance(value, list):
            raise _fail(where, f"{key!r} must be a list, not {value!r}")
        return value
    if isinstance(default, str) and not isinstance(value, str):
        raise _fail(where, f"{key!r} must be a string, not {value!r}")
    return value


def _panel(where: str, index: int, spec: Any) -> Panel:
    if not isinstance(spec, Mapping):
        raise _fail(where, "a panel must be a table of settings")
    kind = spec.get("type")
    if kind not in PANEL_TYPES:
        raise _fail(where, f"unknown panel type {kind!r} (known: {', '.join(PANEL_TYPES)})")
    allowed = PANEL_TYPES[kind]
    unknown = set(spec) - set(allowed)
    if unknown:
        raise _fail(
            where,
            f"unknown keys {sorted(unknown)} for a {kind} panel "
            f"(allowed: {', '.join(sorted(k for k in allowed if k != 'type'))})",
        )
    options: dict[str, Any] = {}
    for key, default in allowed.items():
        if key in spec:
            options[key] = _check_type(where, key, spec[key], default)
        elif default is ...:
            raise _fail(where, f"a {kind} panel needs {key!r}")
        else:
            options[key] = copy.deepcopy(default)
    for key in ("width", "height"):
        if options[key] < 0:
            raise _fail(where, f"{key!r} must be >= 0")
    for key in ("source",):
        if key in options and options[key] and ":" not in options[key]:
            raise _fail(where, f"{key!r} must look like 'DEVICE_ID:output', not {options[key]!r}")
    if kind == "detector_image" and options["palette"] not in PALETTES:
        raise _fail(where, f"unknown palette {options['palette']!r} (known: {', '.join(PALETTES)})")
    if kind == "detector_image" and options["axes"] not in ("mm", "px"):
        raise _fail(where, f"'axes' must be 'mm' or 'px', not {options['axes']!r}")
    if "update_rate" in options and not 0 < options["update_rate"] <= 10:
        raise _fail(where, "'update_rate' must be in (0, 10] pushes per second")
    if kind == "roi":
        if options["stat"] not in ("sum", "mean", "max"):
            raise _fail(where, f"'stat' must be 'sum', 'mean' or 'max', not {options['stat']!r}")
        if options["window"] < 1:
            raise _fail(where, "'window' must be >= 1 train")
    if kind == "histogram" and options["kind"] not in ("pixels", "roi"):
        raise _fail(where, f"'kind' must be 'pixels' or 'roi', not {options['kind']!r}")
    if kind == "line":
        ys = options["y"]
        options["y"] = [ys] if isinstance(ys, str) else ys
        if not options["y"] or not all(isinstance(y, str) and y for y in options["y"]):
            raise _fail(where, "'y' must be a key or a list of keys")
        labels = options["labels"]
        if labels and (
            len(labels) != len(options["y"]) or not all(isinstance(x, str) for x in labels)
        ):
            raise _fail(where, "'labels' must be one legend label per key of 'y'")
        options["labels"] = labels or [key_label(y) for y in options["y"]]
        row = options["row"]
        if not (
            row in ("mean", "first", "last") or (isinstance(row, int) and not isinstance(row, bool))
        ):
            raise _fail(where, f"'row' must be 'mean', 'first', 'last' or an index, not {row!r}")
    if kind == "trend":
        series = list(options["series"])
        if options["device"] or options["key"]:
            series.append({k: options[k] for k in ("device", "key", "label", "rate")})
        if not series:
            raise _fail(where, "a trend panel needs 'series' (or 'device' and 'key')")
        checked = []
        for i, s in enumerate(series):
            if not isinstance(s, Mapping) or set(s) - _SERIES_KEYS:
                raise _fail(
                    where, f"series {i} must be a table with keys among {sorted(_SERIES_KEYS)}"
                )
            if not s.get("device") or not s.get("key"):
                raise _fail(where, f"series {i} needs 'device' and 'key'")
            checked.append(
                {
                    "device": str(s["device"]),
                    "key": str(s["key"]),
                    "label": str(s.get("label") or f"{short_device(s['device'])} {s['key']}"),
                    "rate": bool(s.get("rate", False)),
                    "axis": str(s.get("axis", "auto")),
                    "unit": None if s.get("unit") is None else str(s["unit"]),
                }
            )
            if checked[-1]["axis"] not in ("auto", "left", "right"):
                raise _fail(where, f"series {i}: 'axis' must be 'auto', 'left' or 'right'")
        options["series"] = checked
        if options["window"] <= 0:
            raise _fail(where, "'window' must be > 0 seconds")
    if kind in ("counters", "device_panel"):
        devices = []
        for d in options["devices"]:
            if isinstance(d, str):
                devices.append({"id": d, "properties": []})
            elif isinstance(d, Mapping) and "id" in d and set(d) <= {"id", "properties"}:
                devices.append({"id": str(d["id"]), "properties": list(d.get("properties", []))})
            else:
                raise _fail(
                    where,
                    f"'devices' entries must be device IDs or {{id, properties}} tables, not {d!r}",
                )
        options["devices"] = devices
    return Panel(kind, index, options)


def scene_from_dict(
    doc: Mapping[str, Any], *, default_name: str = "scene", path: Path | None = None
) -> Scene:
    """Build a scene from a parsed document (``{'scene': {...}, 'panel': [...]}``).

    Raises
    ------
    ConfigurationError
        Naming the file, panel and key that is wrong.
    """
    where = str(path) if path else "scene"
    if not isinstance(doc, Mapping):
        raise _fail(where, "a scene file must be a table/mapping")
    unknown = set(doc) - {"scene", "panel", "panels"}
    if unknown:
        raise _fail(where, f"unknown top-level keys {sorted(unknown)} (expected scene, panel)")
    head = dict(doc.get("scene") or {})
    bad = set(head) - set(_SCENE_KEYS)
    if bad:
        raise _fail(where, f"unknown [scene] keys {sorted(bad)} (allowed: {sorted(_SCENE_KEYS)})")
    settings = {
        k: _check_type(f"{where} [scene]", k, head.get(k, d), d) for k, d in _SCENE_KEYS.items()
    }
    name = settings["name"] or default_name
    if not _NAME_RE.match(name):
        raise _fail(
            where,
            f"scene name {name!r} may only use letters, digits, '_' and '-' "
            "(it is the page's URL path)",
        )
    if not 1 <= settings["columns"] <= 6:
        raise _fail(where, "'columns' must be 1..6")
    if not 0 < settings["update_rate"] <= 10:
        raise _fail(where, "'update_rate' must be in (0, 10] pushes per second")
    if not 0.05 <= settings["poll_interval"] <= 60:
        raise _fail(where, "'poll_interval' must be 0.05..60 s")
    specs = doc.get("panel", doc.get("panels")) or []
    if not isinstance(specs, list) or not specs:
        raise _fail(where, "a scene needs at least one [[panel]]")
    panels = [_panel(f"{where} panel {i} ", i, s) for i, s in enumerate(specs)]
    return Scene(
        name=name,
        title=settings["title"] or name,
        panels=panels,
        columns=int(settings["columns"]),
        update_rate=float(settings["update_rate"]),
        poll_interval=float(settings["poll_interval"]),
        path=path,
    )


def load_scene(path: str | Path) -> Scene:
    """Read a scene from a ``.toml``, ``.yaml`` or ``.yml`` file.

    Raises
    ------
    ConfigurationError
        If the file is missing, not parseable, or describes an invalid scene.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigurationError(f"cannot read scene file {path}: {exc.strerror}") from None
    suffix = path.suffix.lower()
    if suffix == ".toml":
        try:
            doc = tomllib.loads(raw.decode())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigurationError(f"scene file {path} is not valid TOML: {exc}") from None
    elif suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:  # pragma: no cover
            raise ConfigurationError("YAML scenes need PyYAML (pip install pyyaml)") from None
        try:
            doc = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise ConfigurationError(f"scene file {path} is not valid YAML: {exc}") from None
    else:
        raise ConfigurationError(f"scene file {path}: use .toml, .yaml or .yml")
    return scene_from_dict(doc or {}, default_name=_safe_name(path.stem), path=path)


def _safe_name(stem: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", stem).strip("-") or "scene"


def auto_scene(devices: Mapping[str, Mapping[str, Any]], preview_output: str = "") -> Scene:
    """A default scene for a topology: the preview (if any), counters and every device.

    Parameters
    ----------
    devices : mapping
        Device ID → ``{'class': ...}`` (as in a running topology's state).
    preview_output : str
        The preview to show; by default the first ``PreviewAssembler``'s output.
    """
    if not preview_output:
        preview_output = next(
            (
                f"{d}:output"
                for d, info in sorted(devices.items())
                if info.get("class") == "PreviewAssembler"
            ),
            "",
        )
    panels: list[dict[str, Any]] = []
    if preview_output:
        panels.append({"type": "detector_image", "source": preview_output})
    panels.append({"type": "counters"})
    panels.append({"type": "device_panel"})
    return scene_from_dict(
        {
            "scene": {"name": "overview", "title": "pulsetrain overview", "columns": 2},
            "panel": panels,
        }
    )
