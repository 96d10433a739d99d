"""``pulsetrain gui``: help with examples, and a clear error when the topology is not running."""

from __future__ import annotations

import subprocess
import sys

from pulsetrain.cli import main


def test_help_lists_options_and_examples(capsys):
    try:
        main(["gui", "--help"])
    except SystemExit as exc:
        assert exc.code == 0
    out = capsys.readouterr().out
    for option in ("--topology", "--scene", "--port", "--bind", "--read-only", "--preview-output"):
        assert option in out
    assert "examples:" in out and "127.0.0.1" in out


def test_topology_not_running_is_an_error(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pulsetrain",
            "gui",
            "--topology",
            "no-such-topology-xyz",
            "--port",
            "0",
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert "not running" in proc.stderr and "Traceback" not in proc.stderr


def test_bad_scene_file_is_an_error(pipeline, tmp_path):
    _, path = pipeline
    scene = tmp_path / "bad.toml"
    scene.write_text('[[panel]]\ntype = "heatmap"\n')
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pulsetrain",
            "gui",
            "--topology",
            str(path),
            "--port",
            "0",
            "--scene",
            str(scene),
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "unknown panel type 'heatmap'" in proc.stderr and "Traceback" not in proc.stderr
