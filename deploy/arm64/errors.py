"""What stops `make arm64-check` or one of its runs, and its progress lines on stderr."""

from __future__ import annotations

import click


class Unavailable(Exception):
    """Emulation cannot run here: exit 2 with this reason."""


class CheckFailed(Exception):
    """Something other than a difference stops the check (edge-classify fails on x86): exit 1."""


class RunError(Exception):
    """One step inside a chroot failed: recorded in its run, the others still run."""


def log(message: str) -> None:
    click.echo(f"arm64-check: {message}", err=True)
