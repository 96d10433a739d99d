"""Scene files: the shipped examples load, TOML and YAML agree, mistakes are named."""

from __future__ import annotations

from pathlib import Path

import pytest

from pulsetrain.errors import ConfigurationError
from pulsetrain.gui.scene import auto_scene, key_label, load_scene, scene_from_dict, short_device

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "scenes"


def test_shipped_scenes_load():
    detector = load_scene(EXAMPLES / "detector.toml")
    operator = load_scene(EXAMPLES / "operator.yaml")
    assert detector.name == "detector" and operator.name == "operator"
    assert [p.type for p in detector.panels][:4] == [
        "detector_image",
        "roi",
        "histogram",
        "correlation",
    ]
    assert {p.type for p in operator.panels} >= {"device_panel", "trend", "counters"}
    assert detector.outputs() == {
        f"SPB_DET_AGIPD1M-1/PROC/{d}:output" for d in ("PREVIEW", "ROI", "HISTOGRAM", "CORRELATION")
    }
    assert detector.panels[0]["roi_device"] == "SPB_DET_AGIPD1M-1/PROC/ROI"
    demo = load_scene(EXAMPLES / "demo.toml")
    assert demo.panels[1]["source"] == "SPB_DET_AGIPD1M-1/PROC/AZIMUTHAL:output"
    motor = operator.panels[0]["devices"][0]
    assert motor["id"] == "SPB_IRU_SAMPLE/MOTOR/X" and "targetPosition" in motor["properties"]
    rates = detector.panels[5]["series"]
    assert [s["rate"] for s in rates] == [False, True, False]


def test_toml_and_yaml_give_the_same_scene(tmp_path):
    (tmp_path / "a.toml").write_text(
        '[scene]\ntitle = "T"\ncolumns = 1\n'
        '[[panel]]\ntype = "line"\nsource = "D/X:output"\ny = ["a", "b"]\nrow = 2\n'
        '[[panel]]\ntype = "trend"\ndevice = "D/X"\nkey = "rate"\nrate = true\n'
    )
    (tmp_path / "a.yaml").write_text(
        "scene: {title: T, columns: 1}\n"
        "panel:\n"
        "  - {type: line, source: 'D/X:output', y: [a, b], row: 2}\n"
        "  - {type: trend, device: D/X, key: rate, rate: true}\n"
    )
    a, b = load_scene(tmp_path / "a.toml"), load_scene(tmp_path / "a.yaml")
    assert a.name == b.name == "a"  # from the file name
    assert [p.options for p in a.panels] == [p.options for p in b.panels]
    assert a.panels[1]["series"] == [
        {
            "device": "D/X",
            "key": "rate",
            "label": "D/X rate",
            "rate": True,
            "axis": "auto",
            "unit": None,
        }
    ]
    assert a.panels[0]["y"] == ["a", "b"] and a.panels[0]["x"] == ""


@pytest.mark.parametrize(
    "doc, message",
    [
        ({"panel": [{"type": "heatmap"}]}, "unknown panel type 'heatmap'"),
        ({"panel": [{"type": "counters", "devics": []}]}, r"unknown keys \['devics'\]"),
        ({"panel": [{"type": "line", "source": "D/X:output"}]}, "needs 'y'"),
        ({"panel": [{"type": "line", "source": "D/X", "y": "a"}]}, "DEVICE_ID:output"),
        ({"panel": [{"type": "detector_image", "palette": "Rainbow"}]}, "unknown palette"),
        ({"panel": [{"type": "trend"}]}, "needs 'series'"),
        ({"panel": [{"type": "trend", "series": [{"device": "D"}]}]}, "needs 'device' and 'key'"),
        (
            {"panel": [{"type": "trend", "device": "D", "key": "k", "window": "long"}]},
            "'window' must be a number",
        ),
        ({"panel": [{"type": "counters", "width": -5}]}, "'width' must be >= 0"),
        ({"scene": {"update_rate": 25}, "panel": [{"type": "counters"}]}, "update_rate"),
        ({"scene": {"name": "a b"}, "panel": [{"type": "counters"}]}, "URL path"),
        ({"scene": {"colour": 1}, "panel": [{"type": "counters"}]}, r"unknown \[scene\] keys"),
        ({"scene": {}}, "at least one"),
        ({"panel": [{"type": "line", "source": "D/X:o", "y": "a", "row": "middle"}]}, "'row'"),
        (
            {"panel": [{"type": "line", "source": "D/X:o", "y": "a", "labels": ["x", "y"]}]},
            "'labels'",
        ),
        ({"panel": [{"type": "detector_image", "axes": "inch"}]}, "'axes' must be 'mm' or 'px'"),
        ({"panel": [{"type": "roi", "source": "D/R:output", "stat": "median"}]}, "'stat'"),
        ({"panel": [{"type": "roi"}]}, "needs 'source'"),
        ({"panel": [{"type": "histogram", "source": "D/H:output", "kind": "q"}]}, "'kind'"),
        (
            {"panel": [{"type": "correlation", "source": "D/C:output", "update_rate": 0}]},
            "update_rate",
        ),
        (
            {"panel": [{"type": "trend", "series": [{"device": "D", "key": "k", "axis": "top"}]}]},
            "'axis' must be",
        ),
    ],
)
def test_mistakes_are_named(doc, message):
    with pytest.raises(ConfigurationError, match=message):
        scene_from_dict(doc)


def test_file_errors(tmp_path):
    with pytest.raises(ConfigurationError, match="cannot read scene file"):
        load_scene(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[[panel]\ntype=")
    with pytest.raises(ConfigurationError, match="not valid TOML"):
        load_scene(bad)
    other = tmp_path / "scene.json"
    other.write_text("{}")
    with pytest.raises(ConfigurationError, match=r"\.toml, \.yaml"):
        load_scene(other)
    wrong = tmp_path / "wrong.toml"
    wrong.write_text('[[panel]]\ntype = "line"\nsource = "D:o"\n')
    with pytest.raises(ConfigurationError, match=r"wrong\.toml panel 0"):
        load_scene(wrong)


def test_auto_scene_finds_the_preview():
    devices = {"A/DET": {"class": "SimulatedDetector"}, "A/PREV": {"class": "PreviewAssembler"}}
    scene = auto_scene(devices)
    assert [p.type for p in scene.panels] == ["detector_image", "counters", "device_panel"]
    assert scene.panels[0]["source"] == "A/PREV:output"
    assert [p.type for p in auto_scene({"A/DET": {"class": "X"}}).panels] == [
        "counters",
        "device_panel",
    ]


def test_readable_names():
    assert short_device("SPB_DET_AGIPD1M-1/PROC/PREVIEW") == "PROC/PREVIEW"
    assert short_device("SPB_IRU_SAMPLE/MOTOR/X") == "MOTOR/X"
    assert short_device("LOCAL") == "LOCAL"
    assert key_label("profile.intensity") == "intensity"
    assert key_label("hits.hitRateWindow") == "hit rate window"
    line = scene_from_dict({"panel": [{"type": "line", "source": "D/X:o", "y": ["a.b", "c"]}]})
    assert line.panels[0]["labels"] == ["b", "c"]
