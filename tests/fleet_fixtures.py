"""A local fleet for the Ansible deploy tests and benchmark: devices that are OpenSSH servers on loopback ports.

Each device is a real `/usr/sbin/sshd` on its own 127.0.0.1 port with its own host key. As root, each device
also gets its own Unix user whose home is a folder of this run (created with useradd, removed with userdel
at the end, and left-overs of a killed earlier run are removed when their creating process is gone); as
any other user every device is the current user, and its model folder and venv are absolute paths under a
per-device folder instead of the login's home (the inventory says so). A device's "service manager" is a
stand-in script (`edge-service restart|is-active NAME`) that logs every restart, with the version `current`
points to, into a file the test reads, and answers is-active from a file the test writes: the service
"fails to start" while `current` points to the version named there.

The devices' runtime comes from a wheelhouse built once per session: the project's wheel
(`pip wheel --no-deps` of a copy of the checkout) and its [edge] dependencies (`pip download`, from pip's
cache or the registry), so the devices never reach the package index.

Everything here is a plain context manager or function, so benchmarks/bench_fleet.py uses it outside pytest.
"""

from __future__ import annotations

import contextlib
import dataclasses
import getpass
import json
import os
import pwd
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from deploy.arm64.ssh import SshError, wait_for_banner
from deploy_fixtures import (ANSIBLE_CONFIG, LOOPBACK, PRIVSEP_DIR, PRIVSEP_DIR_MODE, REPO_ROOT, SSHD_PATH,
                             SshdUnavailable, _keygen, _sshd_config, ansible_env, free_port,
                             missing_client_programs)
from edge_runtime.model_file.manifest import sha256_file, write_manifest
from edge_runtime.model_file.metadata import ModelMetadata, embed_metadata
from edge_runtime.preprocess import DEFAULT_SPEC
# What the wheel is built from and pip's words for an unreachable registry, as the wheel install test has them.
from test_wheel_install import NOT_SOURCES, OFFLINE_SIGNS

ANSIBLE_DIR = REPO_ROOT / "deploy" / "ansible"
DEPLOY_PLAYBOOK = ANSIBLE_DIR / "deploy.yml"
ROLLBACK_PLAYBOOK = ANSIBLE_DIR / "rollback.yml"
ANSIBLE_PLAYBOOK = Path(sys.executable).parent / "ansible-playbook"

# The device side of the contract (deploy/ansible/roles/edge_model/defaults/main.yml).
MODEL_DIR_NAME = "edge-models"
VENV_NAME = "edge-venv"
VERSION_PREFIX_LENGTH = 12
DEVICE_PYTHON = "/usr/bin/python3"
SERVICE_SCRIPT_NAME = "edge-service"
SERVICE_LOG_NAME = "service.log"
BROKEN_VERSION_NAME = "broken-version"
# The exit status `systemctl is-active` gives for a unit that is not running.
SERVICE_INACTIVE_STATUS = 3

USER_PREFIX = "efleet"
USER_SHELL = "/bin/sh"
STOP_TIMEOUT_S = 5.0
COMMAND_TIMEOUT_S = 60
BUILD_TIMEOUT_S = 300
DOWNLOAD_TIMEOUT_S = 600
RECAP_COUNTERS = ("ok", "changed", "unreachable", "failed", "skipped", "rescued", "ignored")
WATCH_INTERVAL_S = 0.05

SERVICE_SCRIPT = """#!/bin/sh
# Stand-in for systemctl on a test device: `restart NAME` logs the restart and the version `current`
# points to; `is-active NAME` fails while `current` points to the version in the broken-version file.
models={model_dir}
control={control}
now=$(readlink "$models/current" 2>/dev/null)
case "$1" in
    restart) printf 'restart %s %s\\n' "$2" "${{now##*/}}" >> {log}; exit 0 ;;
    is-active)
        broken=$(cat "$control/{broken}" 2>/dev/null)
        if [ -n "$broken" ] && [ "${{now##*/}}" = "$broken" ]; then echo failed; exit {inactive}; fi
        echo active; exit 0 ;;
    *) echo "edge-service: unknown command $1" >&2; exit 2 ;;
esac
"""


class FleetUnavailable(Exception):
    """The fleet cannot run here (no sshd, no ansible-playbook, no registry): the message says why, for a skip."""


@dataclasses.dataclass(frozen=True)
class ModelVersion:
    """A deployable model: the file, with manifest.json beside it, and its sha256."""

    path: Path
    sha256: str

    @property
    def prefix(self) -> str:
        return self.sha256[:VERSION_PREFIX_LENGTH]


@dataclasses.dataclass(frozen=True)
class Wheelhouse:
    folder: Path
    wheel: Path


class DeviceSshd:
    """sshd for one device user, on a fixed loopback port, that the test can stop (as a device that drops
    off the network: every session killed) and start again."""

    def __init__(self, folder: Path, user: str, authorized_key: str) -> None:
        self.folder = folder
        self.user = user
        self.port = free_port()
        self.host_key = folder / "host_key"
        self.log = folder / "sshd.log"
        folder.mkdir(parents=True, exist_ok=True)
        # The device user reads authorized_keys (sshd opens it with the user's ids).
        folder.chmod(0o755)
        _keygen(self.host_key)
        authorized_keys = folder / "authorized_keys"
        authorized_keys.write_text(authorized_key)
        authorized_keys.chmod(0o644)
        self.config = folder / "sshd_config"
        self.config.write_text(_sshd_config(folder, self.port, self.host_key, authorized_keys, user))
        self.process: subprocess.Popen | None = None

    def known_hosts_line(self) -> str:
        kind, key = Path(f"{self.host_key}.pub").read_text().split()[:2]
        return f"[{LOOPBACK}]:{self.port} {kind} {key}\n"

    def start(self) -> None:
        with open(self.log, "ab") as log_handle:
            # sshd re-executes itself and so must be started by its absolute path.
            self.process = subprocess.Popen([str(SSHD_PATH), "-D", "-e", "-f", str(self.config)],
                                            stdout=log_handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            wait_for_banner(self.port, self.process, self.log)
        except SshError as error:
            self.stop()
            raise SshdUnavailable(str(error)) from error

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        """Kill the listener and every session it started (by their process ids)."""
        if self.process is None:
            return
        sessions = descendants(self.process.pid)
        self.process.kill()
        for pid in sessions:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.process.wait(timeout=STOP_TIMEOUT_S)
        self.process = None


def descendants(pid: int) -> list[int]:
    """Process ids of every descendant of `pid` (read from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            # The command name in field 2 may hold spaces and parentheses; the ppid follows the last ')'.
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(parent, []).append(int(entry.name))
    found, queue = [], [pid]
    while queue:
        for child in children.get(queue.pop(), []):
            found.append(child)
            queue.append(child)
    return found


@dataclasses.dataclass
class Device:
    """One test device: its login, its folders, its sshd and its stand-in service manager."""

    name: str
    user: str
    home: Path
    own_user: bool
    sshd: DeviceSshd
    services: list[str]

    @property
    def model_dir(self) -> Path:
        return self.home / MODEL_DIR_NAME

    @property
    def versions_dir(self) -> Path:
        return self.model_dir / "models"

    @property
    def current(self) -> Path:
        return self.model_dir / "current"

    @property
    def venv(self) -> Path:
        return self.home / VENV_NAME

    @property
    def control(self) -> Path:
        return self.home.parent / "control"

    @property
    def service_command(self) -> Path:
        return self.control / SERVICE_SCRIPT_NAME

    @property
    def service_log(self) -> Path:
        return self.control / "log" / SERVICE_LOG_NAME

    def device_path(self, path: Path) -> str:
        """`path` (on this machine) as the device names it: the same path here, where the devices share the disk."""
        return str(path)

    def host_vars(self) -> dict[str, Any]:
        """The inventory variables that reach this device and describe it."""
        variables: dict[str, Any] = {
            "ansible_host": LOOPBACK,
            "ansible_port": self.sshd.port,
            "ansible_user": self.user,
            "edge_model_services": list(self.services),
            "edge_model_service_manager": "command",
            "edge_model_service_command": self.device_path(self.service_command),
        }
        if not self.own_user:
            variables.update(edge_model_dir=self.device_path(self.model_dir),
                             edge_model_venv=self.device_path(self.venv))
        return variables

    def runtime_vars(self) -> dict[str, Any] | None:
        """Where this device installs the runtime's dependencies from, when it has its own wheelhouse; None:
        the fleet session decides (FleetSession.runtime_vars)."""
        return None

    def current_version(self) -> str | None:
        """The version folder name `current` points to, or None without a `current` link."""
        if not self.current.is_symlink():
            return None
        return Path(os.readlink(self.current)).name

    def restarts(self) -> list[str]:
        """The stand-in's log: one `restart NAME VERSION` line per restart."""
        if not self.service_log.exists():
            return []
        return self.service_log.read_text().splitlines()

    def break_service_for(self, version: str | None) -> None:
        """Make is-active fail while `current` points to `version` (None: the service always comes up)."""
        path = self.control / BROKEN_VERSION_NAME
        if version is None:
            path.unlink(missing_ok=True)
        else:
            path.write_text(version + "\n")
            path.chmod(0o644)

    def version_folders(self) -> list[str]:
        if not self.versions_dir.is_dir():
            return []
        return sorted(entry.name for entry in self.versions_dir.iterdir())

    def edge_classify(self, *arguments: str) -> subprocess.CompletedProcess:
        """The device venv's edge-classify, run here as the device user would (files by absolute path)."""
        return subprocess.run([str(self.venv / "bin" / "edge-classify"), *arguments], capture_output=True,
                              text=True, timeout=COMMAND_TIMEOUT_S, cwd=self.home, env=device_environment())

    def working_model(self, name: str) -> tuple[str, str] | str:
        """(version, sha256) of the model `current` resolves to when it is whole and edge-classify --verify and
        --info accept it through the link; else one line saying what is wrong."""
        version = self.current_version()
        if version is None:
            return f"{self.name}: no {self.current} link"
        model = self.current / name
        if not model.is_file():
            return f"{self.name}: {model} does not resolve to a file (current -> {os.readlink(self.current)})"
        digest = sha256_file(model)
        if version != digest[:VERSION_PREFIX_LENGTH]:
            return f"{self.name}: current -> {version} but its {name} has sha256 {digest}"
        for mode in ("--verify", "--info"):
            result = self.edge_classify(mode, self.device_path(model))
            if result.returncode != 0:
                return f"{self.name}: edge-classify {mode} {model} exited {result.returncode}: {result.stderr.strip()}"
        return version, digest


def device_environment() -> dict[str, str]:
    """A clean environment: nothing of this checkout or its venv may leak into a device's commands."""
    return {key: value for key, value in os.environ.items()
            if key not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME", "SSH_AUTH_SOCK")}


def _run(argv: Sequence[str], timeout: float = COMMAND_TIMEOUT_S) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)


def can_create_users() -> bool:
    return os.geteuid() == 0 and shutil.which("useradd") is not None and shutil.which("userdel") is not None


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_user(user: str) -> None:
    """Kill the user's processes (by id) and remove the user, its group and its home."""
    try:
        uid = pwd.getpwnam(user).pw_uid
    except KeyError:
        return
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if entry.stat().st_uid == uid:
                    os.kill(int(entry.name), signal.SIGKILL)
    _run(["userdel", "--force", "--remove", user])


def remove_stale_users() -> None:
    """Remove the device users of earlier runs whose test process no longer exists (a run killed before its
    teardown); users of a run still going are left alone."""
    pattern = re.compile(rf"^{USER_PREFIX}(\d+)d\d+$")
    for entry in pwd.getpwall():
        match = pattern.match(entry.pw_name)
        if match and not _process_alive(int(match.group(1))):
            remove_user(entry.pw_name)


def _create_user(user: str, home: Path) -> None:
    # Password "*": no password login, but not a locked account, which sshd would refuse without PAM.
    result = _run(["useradd", "--create-home", "--home-dir", str(home), "--shell", USER_SHELL, "--user-group",
                   "--password", "*", user])
    if result.returncode != 0:
        raise FleetUnavailable(f"useradd {user} failed: {result.stderr.strip()}")


def write_service_script(device: Device) -> None:
    """The device's stand-in service manager and its log folder, in the device's control folder."""
    device.control.mkdir(parents=True)
    device.control.chmod(0o755)
    log_folder = device.service_log.parent
    log_folder.mkdir()
    if device.own_user:
        shutil.chown(log_folder, device.user, device.user)
    script = SERVICE_SCRIPT.format(model_dir=device.device_path(device.model_dir),
                                   control=device.device_path(device.control),
                                   log=device.device_path(device.service_log),
                                   broken=BROKEN_VERSION_NAME, inactive=SERVICE_INACTIVE_STATUS)
    device.service_command.write_text(script)
    device.service_command.chmod(0o755)


@dataclasses.dataclass
class Fleet:
    """The running devices and what a client needs to reach them."""

    folder: Path
    devices: list[Device]
    identity: Path
    known_hosts: Path

    def device(self, name: str) -> Device:
        return next(device for device in self.devices if device.name == name)

    def connection_vars(self) -> dict[str, Any]:
        """Group variables: the controller's key, this fleet's known_hosts and nothing from ~/.ssh."""
        options = ["-F", "/dev/null", "-o", f"UserKnownHostsFile={self.known_hosts}",
                   "-o", "GlobalKnownHostsFile=/dev/null", "-o", "StrictHostKeyChecking=yes",
                   "-o", "IdentitiesOnly=yes"]
        return {"ansible_ssh_private_key_file": str(self.identity),
                "ansible_ssh_common_args": " ".join(options),
                "ansible_python_interpreter": DEVICE_PYTHON}


@contextlib.contextmanager
def local_fleet(folder: Path, names: Sequence[str], services: dict[str, list[str]]) -> Iterator[Fleet]:
    """Start one sshd device per name (own users where this runs as root); FleetUnavailable if it cannot.

    `folder` must be a fresh folder that every device user can traverse (tempfile.mkdtemp, made 0755, not
    pytest's root-only tmp_path)."""
    if not SSHD_PATH.exists():
        raise FleetUnavailable(f"{SSHD_PATH} not found (apt-get install openssh-server)")
    missing = missing_client_programs()
    if missing:
        raise FleetUnavailable(f"{', '.join(missing)} not found (apt-get install openssh-client)")
    if not Path(DEVICE_PYTHON).exists():
        raise FleetUnavailable(f"{DEVICE_PYTHON} (the devices' Python) not found")
    own_users = can_create_users()
    if own_users:
        remove_stale_users()
        if not PRIVSEP_DIR.is_dir():
            PRIVSEP_DIR.mkdir(mode=PRIVSEP_DIR_MODE, parents=True, exist_ok=True)
    folder.chmod(0o755)
    identity = folder / "controller_key"
    _keygen(identity)
    authorized_key = Path(f"{identity}.pub").read_text()
    devices: list[Device] = []
    try:
        for index, name in enumerate(names, start=1):
            device_folder = folder / name
            device_folder.mkdir()
            device_folder.chmod(0o755)
            home = device_folder / "home"
            if own_users:
                user = f"{USER_PREFIX}{os.getpid()}d{index}"
                _create_user(user, home)
            else:
                user = getpass.getuser()
                home.mkdir()
            device = Device(name=name, user=user, home=home, own_user=own_users,
                            sshd=DeviceSshd(device_folder / "sshd", user, authorized_key),
                            services=list(services.get(name, [])))
            devices.append(device)
            write_service_script(device)
            device.sshd.start()
        known_hosts = folder / "known_hosts"
        known_hosts.write_text("".join(device.sshd.known_hosts_line() for device in devices))
        yield Fleet(folder=folder, devices=devices, identity=identity, known_hosts=known_hosts)
    except SshdUnavailable as error:
        raise FleetUnavailable(f"cannot start a local OpenSSH server: {error}") from error
    finally:
        for device in devices:
            device.sshd.stop()
            if device.own_user:
                remove_user(device.user)


@contextlib.contextmanager
def fleet_folder() -> Iterator[Path]:
    """A fresh folder under the system's temporary folder that device users can traverse, removed afterwards."""
    folder = Path(tempfile.mkdtemp(prefix="edge-fleet-"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def build_wheelhouse(folder: Path) -> Wheelhouse:
    """The project's wheel and its [edge] dependencies in `folder`; FleetUnavailable with pip's reason when
    the registry cannot be reached."""
    source = folder.parent / f"{folder.name}-source" / "edge-image-toolkit"
    shutil.copytree(REPO_ROOT, source, ignore=shutil.ignore_patterns(*NOT_SOURCES))
    folder.mkdir(parents=True, exist_ok=True)
    pip = [sys.executable, "-m", "pip"]
    built = subprocess.run([*pip, "wheel", "--no-deps", "-w", str(folder), str(source)], capture_output=True,
                           text=True, timeout=BUILD_TIMEOUT_S, cwd=folder, env=device_environment())
    _check_pip(built, "pip wheel")
    shutil.rmtree(source.parent)
    wheels = list(folder.glob("edge_image_toolkit-*.whl"))
    if len(wheels) != 1:
        raise AssertionError(f"pip wheel left {wheels} in {folder}")
    downloaded = subprocess.run([*pip, "download", "-d", str(folder), f"{wheels[0]}[edge]"], capture_output=True,
                                text=True, timeout=DOWNLOAD_TIMEOUT_S, cwd=folder, env=device_environment())
    _check_pip(downloaded, "pip download")
    return Wheelhouse(folder=folder, wheel=wheels[0])


def _check_pip(result: subprocess.CompletedProcess, what: str) -> None:
    if result.returncode == 0:
        return
    output = result.stdout + result.stderr
    if any(sign in output for sign in OFFLINE_SIGNS):
        raise FleetUnavailable(f"{what}: the package registry is unreachable: {output.strip().splitlines()[-1]}")
    raise AssertionError(f"{what} failed:\n{output}")


def write_model_version(model_bytes: bytes, folder: Path, name: str, version: str) -> ModelVersion:
    """A distinct, working copy of a model: `model_bytes` (a TFLite model without metadata) with the test
    labels and preprocessing embedded and `version` in its info, so every version has its own sha256."""
    from synthetic import CLASS_NAMES

    metadata = ModelMetadata(labels=list(CLASS_NAMES), preprocess=DEFAULT_SPEC,
                             info={"source": "fleet test", "version": version})
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_bytes(embed_metadata(model_bytes, metadata))
    write_manifest(folder, [name])
    return ModelVersion(path=path, sha256=sha256_file(path))


def write_inventory(path: Path, fleet: Fleet, groups: dict[str, Sequence[str]],
                    host_overrides: dict[str, dict[str, Any]] | None = None,
                    group_vars: dict[str, Any] | None = None) -> Path:
    """An inventory (JSON is YAML) with the given groups of devices in the given order, every device's
    connection and service variables, and per-host overrides."""
    overrides = host_overrides or {}
    children = {}
    for group, names in groups.items():
        children[group] = {"hosts": {name: {**fleet.device(name).host_vars(), **overrides.get(name, {})}
                                     for name in names}}
    inventory = {"all": {"vars": {**fleet.connection_vars(), **(group_vars or {})}, "children": children}}
    path.write_text(json.dumps(inventory, indent=2) + "\n")
    return path


def ansible_environment(folder: Path) -> dict[str, str]:
    """deploy_fixtures.ansible_env (the repository's ansible.cfg, no agent, SSH control sockets in `folder`:
    short paths, a socket path has at most 107 bytes) without this checkout's Python settings, colours or
    retry files."""
    env = {key: value for key, value in ansible_env(folder).items() if key in device_environment()}
    env.update(ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0", ANSIBLE_RETRY_FILES_ENABLED="0",
               PYTHONWARNINGS="ignore")
    return env


def run_playbook(playbook: Path, inventory: Path, extra_vars: dict[str, Any], folder: Path,
                 timeout: float, limit: str | None = None) -> subprocess.CompletedProcess:
    """ansible-playbook PLAYBOOK -i INVENTORY -e @vars.json, from the repository root."""
    if not ANSIBLE_PLAYBOOK.exists():
        raise FleetUnavailable(f"{ANSIBLE_PLAYBOOK} not found: pip install -e '.[fleet]'")
    variables = folder / f"extra-vars-{time.monotonic_ns()}.json"
    variables.write_text(json.dumps(extra_vars))
    argv = [str(ANSIBLE_PLAYBOOK), "-i", str(inventory), str(playbook), "-e", f"@{variables}"]
    if limit is not None:
        argv += ["--limit", limit]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=REPO_ROOT,
                          env=ansible_environment(folder))


def play_recap(output: str) -> dict[str, dict[str, int]]:
    """Ansible's PLAY RECAP as {host: {ok, changed, unreachable, failed, skipped, rescued, ignored}}."""
    recap_at = output.rfind("PLAY RECAP")
    if recap_at < 0:
        return {}
    recap = {}
    for line in output[recap_at:].splitlines()[1:]:
        match = re.match(r"^(\S+)\s+:\s+(.*)$", line)
        if not match:
            break
        counters = dict(re.findall(r"(\w+)=(\d+)", match.group(2)))
        recap[match.group(1)] = {name: int(counters.get(name, 0)) for name in RECAP_COUNTERS}
    return recap


@contextlib.contextmanager
def stop_device_when(device: Device, condition: Callable[[], bool], timeout_s: float) -> Iterator[dict[str, Any]]:
    """While the block runs, watch `condition` for at most `timeout_s` and stop the device's sshd (every
    session killed) the first time it holds. Yields a dict whose "stopped_after_s" says when, or None."""
    state: dict[str, Any] = {"stopped_after_s": None}
    done = threading.Event()

    def watch() -> None:
        started = time.monotonic()
        while not done.is_set() and time.monotonic() - started < timeout_s:
            if condition():
                device.sshd.stop()
                state["stopped_after_s"] = time.monotonic() - started
                return
            done.wait(WATCH_INTERVAL_S)

    watcher = threading.Thread(target=watch, name=f"stop-{device.name}", daemon=True)
    watcher.start()
    try:
        yield state
    finally:
        done.set()
        watcher.join(timeout=timeout_s)


@contextlib.contextmanager
def tmpfs_versions(device: Device, size_bytes: int) -> Iterator[Path]:
    """Mount a tmpfs of `size_bytes` over the device's models folder holding a copy of its version folders
    (so `current` keeps resolving), and unmount it afterwards, which brings the original folder back.
    FleetUnavailable where mount is not permitted."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        raise FleetUnavailable("mounting a tmpfs needs root and mount(8)")
    staging = device.home.parent / "tmpfs-staging"
    shutil.copytree(device.versions_dir, staging, symlinks=True)
    owner = pwd.getpwnam(device.user)
    options = f"size={size_bytes},mode=0755,uid={owner.pw_uid},gid={owner.pw_gid}"
    mounted = _run(["mount", "-t", "tmpfs", "-o", options, "edge-fleet-test", str(device.versions_dir)])
    if mounted.returncode != 0:
        shutil.rmtree(staging)
        raise FleetUnavailable(f"mount -t tmpfs is not permitted here: {mounted.stderr.strip()}")
    try:
        for entry in staging.iterdir():
            _copy_as_owner(entry, device.versions_dir / entry.name, owner)
        yield device.versions_dir
    finally:
        result = _run(["umount", str(device.versions_dir)])
        if result.returncode != 0:
            # Busy (a process of the device still inside): detach it now, it goes once unused.
            _run(["umount", "--lazy", str(device.versions_dir)])
        shutil.rmtree(staging, ignore_errors=True)


def _copy_as_owner(source: Path, target: Path, owner: pwd.struct_passwd) -> None:
    if source.is_dir():
        shutil.copytree(source, target, symlinks=True)
    else:
        shutil.copy2(source, target, follow_symlinks=False)
    for path in [target, *target.rglob("*")] if target.is_dir() else [target]:
        os.chown(path, owner.pw_uid, owner.pw_gid, follow_symlinks=False)


def _link_or_copy(source: str, target: str) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def folder_usage(folder: Path) -> int:
    """Bytes used by the regular files under `folder`."""
    return sum(path.stat().st_size for path in folder.rglob("*") if stat.S_ISREG(path.lstat().st_mode))


def read_summary(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def devices_by_host(summary: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {entry["host"]: entry for entry in summary["devices"]}


@dataclasses.dataclass(frozen=True)
class SmokeImage:
    """An image and the top-1 label the test model gives it."""

    path: Path
    label: str


def pick_smoke_image(model: Path, images: Any, classes: Any, folder: Path) -> SmokeImage:
    """The first of `images` (arrays) that `model` classifies as its class, saved as a PNG in `folder`."""
    from PIL import Image

    from edge_runtime.classify import Classifier
    from synthetic import CLASS_NAMES

    classifier = Classifier(model)
    index = next(i for i, image in enumerate(images) if classifier.classify(image)[0].index == classes[i])
    path = folder / "smoke.png"
    Image.fromarray(images[index]).save(path)
    return SmokeImage(path=path, label=CLASS_NAMES[classes[index]])


class FleetSession:
    """A fleet, its wheelhouse, its test image and a source of fresh model versions: deploys and rolls back
    with the repository's playbooks, each run with its own summary file.

    The runtime reaches the devices in `wheelhouse_copied_to` as the role's copied wheelhouse
    (edge_model_wheelhouse); the others install from a copy of it in the fleet's folder, which they can read
    as a wheelhouse already on the device (edge_model_pip_extra_args "--no-index --find-links FOLDER"): both
    ways are used, and the 46 MB are copied over SSH once, not once per device."""

    def __init__(self, fleet: Fleet, wheelhouse: Wheelhouse, smoke: SmokeImage, model_bytes: bytes,
                 model_name: str, groups: dict[str, Sequence[str]], wheelhouse_copied_to: Sequence[str] = ()) -> None:
        self.fleet = fleet
        self.device_wheelhouse = fleet.folder / "device-wheelhouse"
        shutil.copytree(wheelhouse.folder, self.device_wheelhouse, copy_function=_link_or_copy)
        self.wheelhouse_copied_to = set(wheelhouse_copied_to)
        self.folder = fleet.folder
        self.wheelhouse = wheelhouse
        self.smoke = smoke
        self.model_bytes = model_bytes
        self.model_name = model_name
        self.groups = groups
        self.runs = 0
        # Every model version made by new_model, by its folder name on a device.
        self.models: dict[str, ModelVersion] = {}

    @property
    def hosts(self) -> list[str]:
        return [name for names in self.groups.values() for name in names]

    def common_vars(self) -> dict[str, Any]:
        """What every device of the tests shares: the runtime's wheel, the smoke test."""
        return {"edge_model_wheel": str(self.wheelhouse.wheel),
                "edge_model_smoke_image": str(self.smoke.path),
                "edge_model_smoke_label": self.smoke.label}

    def runtime_vars(self, name: str) -> dict[str, Any]:
        """Where the device `name` installs the runtime's dependencies from."""
        own = self.fleet.device(name).runtime_vars()
        if own is not None:
            return own
        if name in self.wheelhouse_copied_to:
            return {"edge_model_wheelhouse": str(self.wheelhouse.folder)}
        return {"edge_model_pip_extra_args": f"--no-index --find-links {self.device_wheelhouse}"}

    def new_model(self, version: str, padding: int = 0) -> ModelVersion:
        """A fresh model version (its own sha256) in its own folder with its manifest; `padding` zero bytes
        after the model make it bigger."""
        model = write_model_version(self.model_bytes, self.folder / "models" / version, self.model_name, version)
        if padding:
            with open(model.path, "ab") as handle:
                handle.write(bytes(padding))
            write_manifest(model.path.parent, [self.model_name])
            model = ModelVersion(path=model.path, sha256=sha256_file(model.path))
        self.models[model.prefix] = model
        return model

    def inventory(self, host_overrides: dict[str, dict[str, Any]] | None = None,
                  groups: dict[str, Sequence[str]] | None = None) -> Path:
        self.runs += 1
        groups = groups or self.groups
        overrides = {name: {**self.runtime_vars(name), **(host_overrides or {}).get(name, {})}
                     for names in groups.values() for name in names}
        return write_inventory(self.folder / f"inventory-{self.runs}.json", self.fleet, groups, overrides,
                               self.common_vars())

    def summary_path(self) -> Path:
        self.runs += 1
        return self.folder / f"summary-{self.runs}.json"

    def deploy(self, model: ModelVersion, inventory: Path | None = None, timeout: float = 600,
               **extra_vars: Any) -> tuple[subprocess.CompletedProcess, Path]:
        """Run deploy.yml with `model`; returns the result and where its summary is."""
        inventory = inventory or self.inventory()
        summary = self.summary_path()
        variables = {"edge_model_src": str(model.path), "edge_fleet_summary": str(summary), **extra_vars}
        return run_playbook(DEPLOY_PLAYBOOK, inventory, variables, self.folder, timeout), summary
