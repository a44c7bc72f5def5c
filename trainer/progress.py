"""Progress: telling the person what long work is doing, on stderr.

Loading a data set, training and converting all report through it: messages, throttled counts,
warnings, and on a terminal a status line redrawn in place.
"""

from __future__ import annotations

import sys
import time

import click

PROGRESS_INTERVAL_SECONDS = 2.0


class Progress:
    """Tells the person what long work is doing, on stderr: messages, throttled counts, warnings, and
    on a terminal a status line redrawn in place.

    `quiet` hides messages, counts and status; warnings are always shown, one line each. `live`
    (default: whether stderr is a terminal) decides whether `status` draws anything: a log file
    gets whole lines only.
    """

    def __init__(self, quiet: bool = False, interval_seconds: float = PROGRESS_INTERVAL_SECONDS,
                 live: bool | None = None) -> None:
        self.quiet = quiet
        self.interval_seconds = interval_seconds
        self._last_count_time: float | None = None
        self._live = live
        self._status_width = 0

    @property
    def live(self) -> bool:
        """Whether a status line can be redrawn in place (not quiet, and stderr is a terminal)."""
        if self.quiet:
            return False
        if self._live is None:
            self._live = bool(getattr(sys.stderr, "isatty", lambda: False)())
        return self._live

    def status(self, text: str) -> None:
        """Redraw the one-line status in place (a terminal only; nothing elsewhere)."""
        if not self.live:
            return
        padding = " " * max(0, self._status_width - len(text))
        click.echo(f"\r{text}{padding}", err=True, nl=False)
        self._status_width = len(text)

    def end_status(self) -> None:
        """Erase the status line, if one is shown, so the next message starts on a clean line."""
        if self._status_width:
            click.echo("\r" + " " * self._status_width + "\r", err=True, nl=False)
            self._status_width = 0

    def message(self, text: str) -> None:
        """One line about what is happening."""
        if not self.quiet:
            self.end_status()
            click.echo(text, err=True)

    def warning(self, text: str) -> None:
        """One line about something skipped or suspicious; shown even when quiet."""
        self.end_status()
        click.echo(f"warning: {text}", err=True)

    def count(self, label: str, done: int, total: int) -> None:
        """`label: done/total`, at most every `interval_seconds` and always at the end."""
        now = time.monotonic()
        recent = self._last_count_time is not None and now - self._last_count_time < self.interval_seconds
        if done < total and recent:
            return
        self._last_count_time = now
        self.message(f"{label}: {done:,}/{total:,}")
