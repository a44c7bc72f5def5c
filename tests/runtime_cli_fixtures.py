"""What the `edge-classify` tests share: running the command in this process, its one-line errors,
and a test photo.

Test modules use it with `pytest_plugins = ("runtime_fixtures", "runtime_cli_fixtures")` for the
`photo` fixture, and import `run` and `one_line_error` from it, so it opts out of assertion
rewriting (imported before pytest could rewrite it; its assertions carry their own messages where
it matters): PYTEST_DONT_REWRITE
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from edge_runtime.cli import main


def run(*args: str | os.PathLike, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(main, [str(arg) for arg in args], env=env)


def one_line_error(result: Result) -> str:
    """The single stderr line of a fatal error (asserting there is exactly one, and no traceback)."""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.output
    return lines[0]


@pytest.fixture
def photo(split_dataset: Path) -> tuple[Path, str]:
    """One test image and its class name."""
    return split_dataset / "test" / "cross" / "0003.png", "cross"
