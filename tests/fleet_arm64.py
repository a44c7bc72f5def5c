"""The emulated arm64 device of the fleet tests: `make arm64-check`'s cached Bookworm root filesystem, reached
over its own aarch64 sshd.

Where that root filesystem is cached (and qemu-user's binfmt handler can run it, as deploy/arm64/host.py
checks), the fleet gets one more device: the root filesystem's sshd under qemu-user on a loopback port, in a
private mount namespace, with `SetEnv QEMU_CPU=cortex-a72` (deploy/arm64/ssh.py, as `make arm64-check`
starts it), logged into as root with the fleet's own known_hosts and a throwaway key. Everything of the
device lives in one folder of the root filesystem, /root/edge-fleet-test-PID (its home with edge-models and
edge-venv, its stand-in service manager, its wheelhouse, Ansible's temporary files), given to the role as
absolute paths; that folder and the sshd's configuration files are removed afterwards, and folders of
earlier runs whose process is gone are removed first, so the shared cache is left as it was found.

The role really installs the runtime there. Its dependencies come from a wheelhouse of aarch64 wheels
that `pip download` makes on this machine (pip's cache or the registry, about 40 MB, seconds), placed in
the device folder and read with `--no-index --find-links`: installing from the registry inside the
emulated device would take minutes and need the network there, and copying the wheelhouse over the
emulated sshd would be slower than writing it to the shared disk.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator, Sequence

from deploy.arm64.chroot import DEVICE_HOME, chroot, chroot_prefix
from deploy.arm64.cli import DEFAULT_CACHE, DEFAULT_MIRROR
from deploy.arm64.errors import RunError, Unavailable
from deploy.arm64.host import enable_binfmt
from deploy.arm64.install import SSH_CPU, SSH_DISTRO
from deploy.arm64.rootfs import cached_rootfs
from deploy.arm64.ssh import HOST_KEY_PATH, LOGIN, SSHD, SshError, running_sshd, session_files
from deploy_fixtures import LOOPBACK
from fleet_fixtures import (COMMAND_TIMEOUT_S, DOWNLOAD_TIMEOUT_S, OFFLINE_SIGNS, Device, Fleet, descendants,
                            device_environment, write_service_script)

ARM64_DEVICE_NAME = "arm64"
# A Pi 4 on Bookworm: the CPU model and distro `make arm64-check` runs its SSH check on.
CPU = SSH_CPU
DISTRO = SSH_DISTRO
FOLDER_PREFIX = "edge-fleet-test-"
# Bookworm's glibc is 2.36: pip download takes every manylinux tag it runs (pip does not widen --platform).
GLIBC_MINOR = 36
OLDEST_MANYLINUX_MINOR = 17
SYSTEM_PACKAGES = "usr/lib/python3/dist-packages"
# The emulated sshd answers a command in a second or two; a deploy's pip install takes about a minute.
SSHD_COMMAND_TIMEOUT_S = 600
# pip's progress and its notes for root, on the device.
PIP_DEVICE_ARGS = "--no-cache-dir --root-user-action=ignore --progress-bar=off"
HOST_TOOLS = ("unshare", "chroot", "mount")
# What the device's sshd and sessions change in the root filesystem besides the device folder and the sshd
# files: the login records sshd keeps (it has no option to stop), and the dates of the folders written in.
LOGIN_RECORDS = ("var/log/wtmp", "var/log/lastlog", "var/log/btmp")
TOUCHED_FOLDERS = ("root", "etc/ssh", "tmp")


class Arm64Unavailable(Exception):
    """The emulated device cannot join the fleet here: the message says why, for the test output."""


class Arm64Sshd:
    """The emulated device's sshd as the fleet sees a device's sshd: its port, log and host key line."""

    def __init__(self, port: int, log: Path, host_key: Path) -> None:
        self.port = port
        self.log = log
        self.host_key = host_key
        self.running = True

    def known_hosts_line(self) -> str:
        kind, key = Path(f"{self.host_key}.pub").read_text().split()[:2]
        return f"[{LOOPBACK}]:{self.port} {kind} {key}\n"

    def stop(self) -> None:
        raise NotImplementedError("the fault tests that stop a device's sshd use the x86 devices only")


class Arm64Device(Device):
    """A device whose files live in the root filesystem `root`: the test reads them there, the role and
    edge-classify see them as the device's own paths."""

    def __init__(self, root: Path, folder: Path, services: Sequence[str], sshd: Arm64Sshd, wheelhouse: Path,
                 key: Path, known_hosts: Path) -> None:
        super().__init__(name=ARM64_DEVICE_NAME, user=LOGIN, home=folder / "home", own_user=False,
                         sshd=sshd, services=list(services))  # type: ignore[arg-type]
        self.root = root
        self.folder = folder
        self.wheelhouse = wheelhouse
        self.key = key
        self.known_hosts = known_hosts

    def device_path(self, path: Path) -> str:
        return "/" + str(path.relative_to(self.root))

    def host_vars(self) -> dict[str, Any]:
        # Its own key, and Ansible's temporary files in the device folder instead of the cached /root/.ansible.
        return {**super().host_vars(), "ansible_ssh_private_key_file": str(self.key),
                "ansible_remote_tmp": self.device_path(self.folder / "ansible-tmp")}

    def runtime_vars(self) -> dict[str, Any]:
        return {"edge_model_pip_extra_args":
                f"--no-index --find-links {self.device_path(self.wheelhouse)} {PIP_DEVICE_ARGS}"}

    def edge_classify(self, *arguments: str) -> subprocess.CompletedProcess:
        """The device venv's edge-classify under emulation (through chroot, QEMU_CPU set), from its home."""
        command = [f"{self.device_path(self.venv)}/bin/edge-classify", *arguments]
        try:
            return chroot(self.root, DEFAULT_CACHE, CPU, command, timeout=COMMAND_TIMEOUT_S,
                          cwd=self.device_path(self.home))
        except RunError as error:
            return subprocess.CompletedProcess(command, 124, "", str(error))

    def over_ssh(self, command: str) -> subprocess.CompletedProcess:
        """A shell command on the device over its sshd, in the environment its login gets there."""
        ssh = ["ssh", "-F", "/dev/null", "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-i", str(self.key),
               "-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={self.known_hosts}",
               "-o", "GlobalKnownHostsFile=/dev/null", "-p", str(self.sshd.port), f"{LOGIN}@{LOOPBACK}", command]
        return subprocess.run(ssh, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S,
                              env=device_environment())


def bookworm_rootfs() -> Path:
    """make arm64-check's cached Bookworm root filesystem, ready to emulate; Arm64Unavailable saying why not."""
    if os.geteuid() != 0:
        raise Arm64Unavailable("the emulated arm64 device needs root (chroot and mount namespaces)")
    root = cached_rootfs(DEFAULT_CACHE, DISTRO, DEFAULT_MIRROR)
    if root is None:
        raise Arm64Unavailable(f"make arm64-check's {DISTRO} root filesystem is not cached in {DEFAULT_CACHE} "
                               "(`sudo make arm64-check` builds it)")
    missing = [tool for tool in HOST_TOOLS if shutil.which(tool) is None]
    if missing:
        raise Arm64Unavailable(f"{', '.join(missing)} not found")
    try:
        enable_binfmt()
    except Unavailable as reason:
        raise Arm64Unavailable(str(reason)) from reason
    if not (root / SSHD.lstrip("/")).exists():
        raise Arm64Unavailable(f"the cached {DISTRO} root filesystem has no sshd yet (`sudo make arm64-check` "
                               "installs it for its SSH run)")
    return root


def _system_numpy(root: Path) -> str | None:
    """The version of the root filesystem's Debian numpy (the role pins the venv's numpy to it)."""
    for entry in (root / SYSTEM_PACKAGES).glob("numpy-*.egg-info"):
        return entry.name.removeprefix("numpy-").removesuffix(".egg-info")
    return None


def _device_python_version(root: Path) -> str:
    """X.Y of the root filesystem's python3 (/usr/bin/python3 -> python3.11)."""
    target = os.readlink(root / "usr" / "bin" / "python3")
    match = re.fullmatch(r"python(\d+\.\d+)", target)
    if match is None:
        raise Arm64Unavailable(f"cannot tell the device's Python version from /usr/bin/python3 -> {target}")
    return match.group(1)


def download_arm64_wheelhouse(folder: Path, project_wheel: Path, root: Path) -> None:
    """The aarch64 wheels of the project wheel's [edge] dependencies for the root filesystem's Python, with
    numpy pinned to its system numpy as the role pins it; Arm64Unavailable where the registry is unreachable."""
    platforms = [f"manylinux_2_{minor}_aarch64" for minor in range(OLDEST_MANYLINUX_MINOR, GLIBC_MINOR + 1)]
    numpy = _system_numpy(root)
    argv = [sys.executable, "-m", "pip", "download", "--quiet", "-d", str(folder), "--only-binary=:all:",
            "--implementation", "cp", "--python-version", _device_python_version(root),
            *[argument for platform in ["manylinux2014_aarch64", *platforms] for argument in ("--platform", platform)],
            f"{project_wheel}[edge]", *([f"numpy=={numpy}"] if numpy else [])]
    folder.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(argv, capture_output=True, text=True, timeout=DOWNLOAD_TIMEOUT_S,
                            env=device_environment())
    if result.returncode != 0:
        output = (result.stdout + result.stderr).strip()
        if any(sign in output for sign in OFFLINE_SIGNS):
            raise Arm64Unavailable(f"pip download of the aarch64 wheels: the package registry is unreachable: "
                                   f"{output.splitlines()[-1]}")
        raise AssertionError(f"pip download of the aarch64 wheels failed:\n{output}")


def remove_stale_folders(root: Path) -> None:
    """Device folders (and sshd files) of earlier runs whose test process is gone: a run killed before its
    teardown. Folders of runs still going are left alone."""
    pattern = re.compile(rf"^{FOLDER_PREFIX}(\d+)$")
    home = root / DEVICE_HOME.lstrip("/")
    for entry in home.iterdir():
        match = pattern.match(entry.name)
        if match and not Path(f"/proc/{match.group(1)}").exists():
            shutil.rmtree(entry, ignore_errors=True)
            for path in session_files(entry.name):
                (root / path.lstrip("/")).unlink(missing_ok=True)


def _sshd_listener(config_path: str) -> int | None:
    """The process id of the sshd started with `config_path` (its command line names it), or None."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if config_path in (entry / "cmdline").read_bytes().decode(errors="replace").split("\0"):
                    return int(entry.name)
    return None


def _kill_sessions(config_path: str) -> None:
    """Kill every process the device's sshd started: its sessions start their own process groups, which
    stopping sshd's group would leave running in the root filesystem."""
    listener = _sshd_listener(config_path)
    if listener is None:
        return
    for pid in descendants(listener):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@contextlib.contextmanager
def login_records_kept(root: Path) -> Iterator[None]:
    """Put the root filesystem's login records back as they were, and the dates of the folders the device
    writes in, when the block ends."""
    records = {name: (root / name).read_bytes() for name in LOGIN_RECORDS if (root / name).is_file()}
    dates = {name: os.stat(root / name) for name in (*LOGIN_RECORDS, *TOUCHED_FOLDERS) if (root / name).exists()}
    try:
        yield
    finally:
        for name, content in records.items():
            (root / name).write_bytes(content)
        for name in set(LOGIN_RECORDS) - set(records):
            (root / name).unlink(missing_ok=True)
        for name, before in dates.items():
            with contextlib.suppress(OSError):
                os.utime(root / name, ns=(before.st_atime_ns, before.st_mtime_ns))


@contextlib.contextmanager
def arm64_device(fleet: Fleet, root: Path, services: Sequence[str], project_wheel: Path) -> Iterator[Arm64Device]:
    """The emulated device, added to `fleet` (its devices and known_hosts) while the block runs: the device
    folder in `root` with the stand-in service manager and the aarch64 wheelhouse, and the root filesystem's
    sshd. Everything written into `root` is removed afterwards, whatever happens."""
    remove_stale_folders(root)
    name = f"{FOLDER_PREFIX}{os.getpid()}"
    folder = root / DEVICE_HOME.lstrip("/") / name
    host_folder = fleet.folder / ARM64_DEVICE_NAME
    host_folder.mkdir()
    with login_records_kept(root), _device_folder(folder):
        wheelhouse = folder / "wheelhouse"
        download_arm64_wheelhouse(wheelhouse, project_wheel, root)
        try:
            with running_sshd(root, chroot_prefix(root, DEFAULT_CACHE, CPU), CPU, host_folder,
                              host_folder / "sshd.log", SSHD_COMMAND_TIMEOUT_S, name=name) as session:
                sshd = Arm64Sshd(session.port, host_folder / "sshd.log", root / HOST_KEY_PATH.lstrip("/"))
                device = Arm64Device(root, folder, services, sshd, wheelhouse, session.key, fleet.known_hosts)
                write_service_script(device)
                with open(fleet.known_hosts, "a") as known_hosts:
                    known_hosts.write(sshd.known_hosts_line())
                fleet.devices.append(device)
                try:
                    yield device
                finally:
                    fleet.devices.remove(device)
                    _kill_sessions(session_files(name)[0])
        except SshError as error:
            raise Arm64Unavailable(f"the {DISTRO} root filesystem's sshd did not start: {error}") from error


@contextlib.contextmanager
def _device_folder(folder: Path) -> Iterator[None]:
    """The device folder with its home, removed with everything in it when the block ends."""
    try:
        (folder / "home").mkdir(parents=True)
        yield
    finally:
        shutil.rmtree(folder, ignore_errors=True)
