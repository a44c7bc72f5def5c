"""The live view's systemd unit: its command is one edge-classify accepts, as deploy/README.md
describes it, and systemd-analyze accepts the unit."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import pytest

from deploy_fixtures import UNIT_SETTINGS_FILE, systemd_analyze_verify, unit_settings, with_unit_settings

REPO_ROOT = Path(__file__).resolve().parent.parent
LIVE_UNIT = REPO_ROOT / "deploy" / "edge-classify-live.service"
UNIT_EDGE_CLASSIFY = "/home/pi/edge-venv/bin/edge-classify"
ANALYZE_TIMEOUT_S = 60


def exec_start(unit_text: str) -> list[str]:
    """The ExecStart= command line, its backslash continuations joined as systemd joins them."""
    joined = unit_text.replace("\\\n", " ")
    lines = [line for line in joined.splitlines() if line.startswith("ExecStart=")]
    assert len(lines) == 1, lines
    return shlex.split(lines[0].removeprefix("ExecStart="))


def test_live_unit_command_is_one_edge_classify_accepts():
    from edge_runtime.cli import main
    from edge_runtime.cli_live import LIVE_PARAMETERS, check_live_options

    argv = with_unit_settings(exec_start(LIVE_UNIT.read_text()), unit_settings())
    assert argv[0] == UNIT_EDGE_CLASSIFY
    context = main.make_context("edge-classify", argv[1:])  # parses with the real options, runs nothing
    params = context.params
    check_live_options(params["camera"], params["loop"], {name: params[name] for name in LIVE_PARAMETERS})
    assert params["camera"] == "auto" and params["as_json"] is True
    assert params["model_option"] == "/home/pi/edge-models/current/model_int8.tflite"  # through `current`
    assert params["serve"] == ("0.0.0.0", 8080)
    assert params["output"] == "/var/log/edge-classify/live.jsonl"
    assert params["save"] == "/home/pi/edge-frames"
    assert [rule.text for rule in params["save_when"]] == ["unsure:0.6"] and params["save_max"] == 10
    assert params["token"] is None  # from EnvironmentFile=, never on the command line


def test_live_unit_reads_the_token_from_a_file_and_gives_way_to_the_camera_unit():
    unit = LIVE_UNIT.read_text()
    assert "\nEnvironmentFile=/etc/edge-classify/live.env\n" in unit
    assert f"\nEnvironmentFile={UNIT_SETTINGS_FILE}\n" in unit  # the model and camera, from the deploy
    assert "\nConflicts=edge-classify-camera.service\n" in unit
    assert "EDGE_CLASSIFY_TOKEN" in unit
    assert "\nRestart=on-failure\n" in unit


def test_live_unit_passes_systemd_analyze_verify(tmp_path: Path):
    result = systemd_analyze_verify(LIVE_UNIT, UNIT_EDGE_CLASSIFY, sys.executable, tmp_path, ANALYZE_TIMEOUT_S)
    if result is None:
        pytest.skip("systemd-analyze is not installed")
    assert (result.returncode, result.stderr) == (0, "")
