"""The x86 host: whether it can emulate arm64 (root, the tools, qemu's binfmt handler, the mirrors), its
commands that must succeed, and what the report says about it (its CPU, qemu's version)."""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Sequence

from .errors import Unavailable

PYPI_PROBE = "https://pypi.org/simple/ai-edge-litert/"
NETWORK_TIMEOUT_S = 20
BINFMT_DIR = Path("/proc/sys/fs/binfmt_misc")
BINFMT_ENTRY = BINFMT_DIR / "qemu-aarch64"
TOOLS_HINT = "apt-get install qemu-user-static binfmt-support debootstrap"


def check_host(need_mirror: bool, mirror: str) -> None:
    """Root, the tools, qemu's binfmt handler with the fix-binary flag, and the mirrors; Unavailable if not."""
    if os.geteuid() != 0:
        raise Unavailable("must run as root (debootstrap, chroot and mounts need it): try `sudo make arm64-check`")
    missing = [tool for tool in ("debootstrap", "unshare", "chroot", "mount") if shutil.which(tool) is None]
    if missing:
        raise Unavailable(f"{', '.join(missing)} not found: install them with `{TOOLS_HINT}`")
    enable_binfmt()
    if need_mirror:
        probe_url(f"{mirror.rstrip('/')}/dists/bookworm/Release", "the Debian mirror")
    probe_url(PYPI_PROBE, "PyPI (the device install's pip needs it)")


def enable_binfmt() -> None:
    """Make the kernel run aarch64 programs through qemu-aarch64-static, as the issue's steps do."""
    if not (BINFMT_DIR / "status").exists():
        run_host(["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT_DIR)], "mounting binfmt_misc")
    if not BINFMT_ENTRY.exists() and shutil.which("update-binfmts"):
        subprocess.run(["update-binfmts", "--enable", "qemu-aarch64"], capture_output=True, check=False)
    if not BINFMT_ENTRY.exists():
        raise Unavailable(f"no binfmt handler for aarch64 ({BINFMT_ENTRY} is missing): install `{TOOLS_HINT}`")
    entry = BINFMT_ENTRY.read_text(encoding="utf-8", errors="replace")
    if not entry.startswith("enabled"):
        raise Unavailable("the aarch64 binfmt handler is disabled: run `update-binfmts --enable qemu-aarch64`")
    flags = next((line.split(":", 1)[1].strip() for line in entry.splitlines() if line.startswith("flags:")), "")
    if "F" not in flags:
        raise Unavailable("the aarch64 binfmt handler lacks the F (fix-binary) flag, so qemu cannot start inside "
                          f"a chroot: use Debian's qemu-user-static ({TOOLS_HINT})")


def probe_url(url: str, what: str) -> None:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=NETWORK_TIMEOUT_S):
            pass
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise Unavailable(f"{what} cannot be reached ({url}: {reason})") from error


def run_host(command: Sequence[str], what: str, **kwargs: Any) -> subprocess.CompletedProcess:
    """A host command that must succeed; Unavailable with its last error line if it does not."""
    try:
        completed = subprocess.run(list(command), capture_output=True, text=True, **kwargs)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise Unavailable(f"{what} failed: {error}") from error
    if completed.returncode != 0:
        last = (completed.stderr or completed.stdout).strip().splitlines()[-1:] or ["no message"]
        raise Unavailable(f"{what} failed (exit {completed.returncode}): {last[0]}")
    return completed


def host_cpu_model() -> str:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        for line in subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def qemu_version() -> str:
    for name in ("qemu-aarch64-static", "qemu-aarch64"):
        if shutil.which(name):
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                first = subprocess.run([name, "--version"], capture_output=True, text=True, timeout=10).stdout
                return first.splitlines()[0] if first else name
    return "unknown"
