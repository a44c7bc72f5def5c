"""An OpenSSH server inside an emulated arm64 root filesystem, so the deploy playbook can reach it like a Pi.

`make arm64-check` uses it after the chroot runs on Bookworm: it starts the root filesystem's own
aarch64 sshd (under qemu-user, in the same private mount namespace as every chroot command) on a free
loopback port, lets a throwaway key log in as root, deploys the models with deploy/ansible/deploy.yml
(what `make deploy` and `make deploy-fleet` run), and then runs every edge-classify command over SSH,
as a person would on a Pi.

qemu-user reads QEMU_CPU from the environment of each program it starts. sshd gives a session only
what its configuration says, so `SetEnv QEMU_CPU=...` carries the CPU model into every command run
over SSH; without it qemu's default model (`max`) would run them, whose SME makes XNNPACK's int8
kernels wrong (issue 12).
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

LOOPBACK = "127.0.0.1"
LOGIN = "root"
# Files written into the root filesystem for one session and removed after it (arm64-check's names).
DEFAULT_SESSION_NAME = "arm64-check"
CONFIG_PATH = "/etc/ssh/arm64-check_sshd_config"
AUTHORIZED_KEYS_PATH = "/etc/ssh/arm64-check_authorized_keys"
PRIVSEP_DIR = "/run/sshd"
HOST_KEY_PATH = "/etc/ssh/ssh_host_ed25519_key"
SSHD = "/usr/sbin/sshd"
SFTP_SERVER = "/usr/lib/openssh/sftp-server"
# An emulated sshd takes a few seconds to start on a loaded 2-core machine; a minute means it will not.
START_TIMEOUT_S = 60
BANNER_PREFIX = b"SSH-2.0-"
STOP_TIMEOUT_S = 10
# The Debian packages that make the root filesystem an SSH server (ssh-keygen -A makes its host keys).
SERVER_PACKAGES = ("openssh-server",)
# The one deploy path: the fleet playbook, with the repository's Ansible settings.
ANSIBLE_FOLDER = Path(__file__).resolve().parent.parent / "ansible"
PLAYBOOK = ANSIBLE_FOLDER / "deploy.yml"
ANSIBLE_CONFIG = ANSIBLE_FOLDER / "ansible.cfg"
ANSIBLE_PLAYBOOK = Path(sys.executable).parent / "ansible-playbook"
# Debian's python3 runs Ansible's modules on the device (Bookworm's 3.11).
DEVICE_PYTHON = "/usr/bin/python3"
DEVICE_NAME = "arm64-device"


class SshError(Exception):
    """The server could not be started or reached: the message says which step and why."""


def sshd_config(port: int, cpu: str, authorized_keys: str = AUTHORIZED_KEYS_PATH) -> str:
    """The whole sshd configuration: loopback only, key login as root (the keys in `authorized_keys`, a path
    in the root filesystem), the CPU model passed to sessions."""
    return "\n".join([
        f"ListenAddress {LOOPBACK}",
        f"Port {port}",
        f"HostKey {HOST_KEY_PATH}",
        "PermitRootLogin prohibit-password",
        "PubkeyAuthentication yes",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "UsePAM no",
        f"AuthorizedKeysFile {authorized_keys}",
        f"SetEnv QEMU_CPU={cpu}",
        # scp speaks SFTP since OpenSSH 9.0, as a Pi's own configuration allows.
        f"Subsystem sftp {SFTP_SERVER}",
        "PidFile none",
        "",
    ])


def free_port() -> int:
    """A TCP port on the loopback interface that nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOOPBACK, 0))
        return int(probe.getsockname()[1])


def client_options(known_hosts: Path) -> list[str]:
    """ssh and scp options: no user configuration, only the given key, this session's own known_hosts."""
    return ["-F", "/dev/null", "-o", "IdentitiesOnly=yes", "-o", "StrictHostKeyChecking=accept-new",
            "-o", f"UserKnownHostsFile={known_hosts}"]


def remote_command(command: Sequence[str], cwd: str) -> str:
    """One shell line for the device: change to `cwd`, then run `command` with every word quoted."""
    return f"cd {shlex.quote(cwd)} && exec " + " ".join(shlex.quote(word) for word in command)


def wait_for_banner(port: int, process: subprocess.Popen, log_path: Path, timeout: float = START_TIMEOUT_S) -> None:
    """Return once an SSH server greets on `port`; SshError with its last log line if it exits or stays silent."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SshError(f"sshd exited with status {process.returncode} before listening: {last_line(log_path)}")
        try:
            with socket.create_connection((LOOPBACK, port), timeout=2) as connection:
                if connection.recv(len(BANNER_PREFIX)).startswith(BANNER_PREFIX):
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise SshError(f"sshd did not answer on {LOOPBACK}:{port} within {timeout:.0f} s: {last_line(log_path)}")


def last_line(path: Path) -> str:
    try:
        lines = [line for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    except OSError:
        return "no log"
    return lines[-1].strip() if lines else "no output"


class Session:
    """A running sshd in the root filesystem and how to reach it: `run` a command, `deploy` a model."""

    def __init__(self, port: int, key: Path, known_hosts: Path, timeout: float) -> None:
        self.port = port
        self.key = key
        self.known_hosts = known_hosts
        self.timeout = timeout
        self.destination = f"{LOGIN}@{LOOPBACK}"

    def run(self, command: Sequence[str], cwd: str) -> subprocess.CompletedProcess:
        """`command` on the device over SSH, from `cwd`; its output is returned, not printed."""
        ssh = ["ssh", *client_options(self.known_hosts), "-i", str(self.key), "-o", "BatchMode=yes", "-p", str(self.port),
               self.destination, remote_command(command, cwd)]
        try:
            return subprocess.run(ssh, capture_output=True, text=True, timeout=self.timeout, errors="replace")
        except subprocess.TimeoutExpired as error:
            raise SshError(f"`{' '.join(command[:3])}` over SSH did not finish within {self.timeout:.0f} s") from error

    def inventory_vars(self) -> dict[str, Any]:
        """Ansible's inventory variables for this server: the login, port, key and this session's known_hosts."""
        return {"ansible_host": LOOPBACK, "ansible_port": self.port, "ansible_user": LOGIN,
                "ansible_ssh_private_key_file": str(self.key),
                "ansible_ssh_common_args": " ".join(client_options(self.known_hosts)),
                "ansible_python_interpreter": DEVICE_PYTHON}

    def deploy(self, model: Path, dest: str, folder: Path) -> subprocess.CompletedProcess:
        """deploy/ansible/deploy.yml for this server alone, as `make deploy` runs it, with the runtime the
        chroot install made (~/edge-venv) and no service; its inventory, variables and summary go in `folder`."""
        inventory = folder / "hosts.yml"
        inventory.write_text(json.dumps({"all": {"hosts": {DEVICE_NAME: self.inventory_vars()}}}), encoding="utf-8")
        variables = folder / "vars.json"
        variables.write_text(json.dumps({"edge_model_src": str(model), "edge_model_dir": dest,
                                         "edge_model_runtime_install": False, "edge_model_services": [],
                                         "edge_fleet_summary": str(folder / f"summary-{model.stem}.json")}),
                             encoding="utf-8")
        env = {key: value for key, value in os.environ.items() if key != "SSH_AUTH_SOCK"}
        env["ANSIBLE_CONFIG"] = str(ANSIBLE_CONFIG)
        command = [str(ANSIBLE_PLAYBOOK), "-i", str(inventory), "-e", f"@{variables}", str(PLAYBOOK)]
        try:
            return subprocess.run(command, capture_output=True, text=True, timeout=self.timeout, env=env,
                                  errors="replace")
        except FileNotFoundError as error:
            raise SshError(f"{ANSIBLE_PLAYBOOK} not found: install the fleet extra (make install)") from error
        except subprocess.TimeoutExpired as error:
            raise SshError(f"the deploy playbook for {model.name} did not finish within {self.timeout:.0f} s") from error


def session_files(name: str) -> tuple[str, str]:
    """The sshd configuration and authorized_keys paths (in the root filesystem) of a session named `name`:
    arm64-check's own, or another user's (the fleet tests'), so that two sessions never share them."""
    if name == DEFAULT_SESSION_NAME:
        return CONFIG_PATH, AUTHORIZED_KEYS_PATH
    return f"/etc/ssh/{name}_sshd_config", f"/etc/ssh/{name}_authorized_keys"


@contextlib.contextmanager
def running_sshd(root: Path, launch: Sequence[str], cpu: str, folder: Path, log_path: Path,
                 timeout: float, name: str = DEFAULT_SESSION_NAME) -> Iterator[Session]:
    """Start the root filesystem's sshd through `launch` (the chroot command prefix) and stop it afterwards.

    `folder` (on the host) receives the throwaway client key and known_hosts. The configuration and
    authorized key written into `root` (named after `name`, see session_files) are removed when the block
    ends, whatever happens in it.
    """
    key = folder / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(key)],
                   check=True, capture_output=True)
    port = free_port()
    config_path, authorized_keys_path = session_files(name)
    written = [root / config_path.lstrip("/"), root / authorized_keys_path.lstrip("/")]
    written[0].write_text(sshd_config(port, cpu, authorized_keys_path), encoding="utf-8")
    written[1].write_text(key.with_suffix(".pub").read_text(encoding="utf-8"), encoding="utf-8")
    written[1].chmod(0o600)
    (root / PRIVSEP_DIR.lstrip("/")).mkdir(parents=True, exist_ok=True)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w", encoding="utf-8") as log:
        process = subprocess.Popen([*launch, SSHD, "-D", "-e", "-f", config_path], stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for_banner(port, process, log_path)
        yield Session(port, key, folder / "known_hosts", timeout)
    finally:
        stop(process)
        for path in written:
            path.unlink(missing_ok=True)


def stop(process: subprocess.Popen) -> None:
    """End sshd and anything it started (its process group); the chroot's mounts go with them."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
