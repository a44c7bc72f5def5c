"""Commands on the emulated device through chroot: the Pi's /proc/cpuinfo, the environment a login has,
the command line around arm64_chroot.sh (beside this module), and the device's folders."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Sequence

from edge_runtime.atomic import write_text

from .errors import RunError
from .rootfs import CA_BUNDLE
from .ssh import remote_command

CHROOT_SCRIPT = Path(__file__).resolve().parent / "arm64_chroot.sh"
# Inside the chroot: the Pi user's home (root here), where README step 1 runs.
DEVICE_HOME = "/root"
DEVICE_WORK = f"{DEVICE_HOME}/arm64-check"


# A Raspberry Pi 4 (Cortex-A72, part 0xd08) and Pi 5 (Cortex-A76, part 0xd0b) /proc/cpuinfo, as the
# kernel prints them, so LiteRT's CPU detection reads an arm64 CPU instead of the host's x86 one.
CPUINFO = {
    "cortex-a72": ("fp asimd evtstrm crc32 cpuid", "0x0", "0xd08", "3", "Raspberry Pi 4 Model B Rev 1.4"),
    "cortex-a76": ("fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop "
                   "asimddp", "0x4", "0xd0b", "1", "Raspberry Pi 5 Model B Rev 1.0"),
}
PI_CORES = 4


def cpuinfo_file(cache: Path, cpu: str) -> Path:
    """A Raspberry Pi style /proc/cpuinfo for this CPU model, written once into the cache."""
    features, variant, part, revision, model = CPUINFO[cpu]
    blocks = [f"processor\t: {core}\nBogoMIPS\t: 108.00\nFeatures\t: {features}\nCPU implementer\t: 0x41\n"
              f"CPU architecture: 8\nCPU variant\t: {variant}\nCPU part\t: {part}\nCPU revision\t: {revision}\n"
              for core in range(PI_CORES)]
    text = "\n".join(blocks) + f"\nRevision\t: 0000\nModel\t\t: {model}\n"
    path = cache / f"cpuinfo-{cpu}"
    if not path.exists() or path.read_text(encoding="utf-8") != text:
        write_text(path, text)
    return path


def device_env(cpu: str) -> list[str]:
    """The environment of every command in the chroot: nothing from the host but what a login would have."""
    return ["env", "-i", f"HOME={DEVICE_HOME}", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "LANG=C.UTF-8", f"QEMU_CPU={cpu}", f"PIP_CERT={CA_BUNDLE}", "PIP_DISABLE_PIP_VERSION_CHECK=1",
            "PIP_DEFAULT_TIMEOUT=120", "PIP_NO_INPUT=1"]


def chroot_prefix(root: Path, cache: Path, cpu: str) -> list[str]:
    """The command line before a program that runs it in the chroot under QEMU_CPU=cpu."""
    return ["sh", str(CHROOT_SCRIPT), str(root), str(cpuinfo_file(cache, cpu)), *device_env(cpu)]


def chroot(root: Path, cache: Path, cpu: str, command: Sequence[str], timeout: float, check: bool = False,
           cwd: str = DEVICE_HOME) -> subprocess.CompletedProcess:
    """Run `command` in the chroot under QEMU_CPU=cpu, from `cwd`; its output is returned, not printed."""
    full = [*chroot_prefix(root, cache, cpu), "/bin/sh", "-c", remote_command(command, cwd)]
    try:
        completed = subprocess.run(full, capture_output=True, text=True, timeout=timeout, errors="replace")
    except subprocess.TimeoutExpired as error:
        raise RunError(f"{' '.join(command[:3])} did not finish within {timeout:.0f} s under emulation") from error
    return checked(completed, command, f"the {root.name} chroot") if check else completed


def device_path(path: str) -> str:
    """A README path such as ~/edge-venv as the chroot's absolute path (commands are passed quoted)."""
    return DEVICE_HOME + path[1:] if path.startswith("~/") else path


def checked(completed: subprocess.CompletedProcess, command: Sequence[str], where: str) -> subprocess.CompletedProcess:
    """`completed`, or RunError naming the command and its last line when it failed."""
    if completed.returncode != 0:
        last = (completed.stderr or completed.stdout).strip().splitlines()[-1:] or ["no message"]
        raise RunError(f"`{' '.join(command)}` failed in {where} (exit {completed.returncode}): {last[0]}")
    return completed
