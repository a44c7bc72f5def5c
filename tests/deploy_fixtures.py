"""A throwaway OpenSSH server on 127.0.0.1 for the deploy tests, and a deployable test model.

`local_sshd(folder)` starts Debian's `/usr/sbin/sshd` in the foreground on a free port with its own
host key, a client key allowed through an authorized_keys file in `folder`, and a generated
sshd_config; it yields what a client needs (`SshServer`) and stops the server afterwards.
`SshdUnavailable` says, in one line, why a server could not be started here, for `pytest.skip`.
`systemd_analyze_verify` checks one of deploy/'s systemd units. For the fleet playbook
(deploy/ansible): `SshServer.ansible_vars()` (inventory variables that reach the server),
`ansible_env(folder)` (the environment ansible-playbook runs in) and `write_service_stand_in(folder)`
(the stand-in service manager the role calls instead of systemctl).
"""

from __future__ import annotations

import contextlib
import dataclasses
import getpass
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

from deploy.arm64.ssh import SshError, wait_for_banner
from edge_runtime.model_file.manifest import write_manifest

SSHD_PATH = Path("/usr/sbin/sshd")
# sshd running as root insists on this empty directory for its privilege-separated child.
PRIVSEP_DIR = Path("/run/sshd")
PRIVSEP_DIR_MODE = 0o755
LOOPBACK = "127.0.0.1"
START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 5.0
CLIENT_PROGRAMS = ("ssh", "scp", "ssh-keygen")
REPO_ROOT = Path(__file__).resolve().parent.parent
ANSIBLE_CONFIG = REPO_ROOT / "deploy" / "ansible" / "ansible.cfg"
# The settings file the role writes beside the models, which deploy/'s systemd units read.
UNIT_SETTINGS_TEMPLATE = REPO_ROOT / "deploy" / "ansible" / "roles" / "edge_model" / "templates" / "edge-classify.env.j2"
UNIT_SETTINGS_FILE = "/home/pi/edge-models/edge-classify.env"
# Tests leave no ssh master connection behind for long after their server stopped.
TEST_SSH_ARGS = "-o ControlMaster=auto -o ControlPersist=5s -o ConnectTimeout=10"


class SshdUnavailable(Exception):
    """sshd cannot run here; the message is the reason, for a skip."""


@dataclasses.dataclass(frozen=True)
class SshServer:
    """How a client reaches the running test server."""

    host: str
    port: int
    user: str
    identity: Path          # the client's private key
    known_hosts: Path       # holds only this server's host key
    log: Path               # sshd's own log (-e)

    @property
    def device(self) -> str:
        return f"{self.user}@{self.host}"

    def ssh_options(self) -> list[str]:
        """Client options that ignore the user's ~/.ssh entirely and trust only this server's key."""
        return ["-F", "/dev/null",
                "-o", f"UserKnownHostsFile={self.known_hosts}",
                "-o", "GlobalKnownHostsFile=/dev/null",
                "-o", "StrictHostKeyChecking=yes",
                "-o", "IdentitiesOnly=yes",
                "-o", "LogLevel=ERROR"]

    def ansible_vars(self) -> dict[str, Any]:
        """Inventory variables of a host that is this server: address, port, login, key, trusted host key.
        The device's Python is the test's own (the modules need only its standard library)."""
        return {"ansible_host": self.host, "ansible_port": self.port, "ansible_user": self.user,
                "ansible_ssh_private_key_file": str(self.identity),
                "ansible_ssh_common_args": " ".join(self.ssh_options()),
                "ansible_python_interpreter": sys.executable}

    def run(self, command: str, check: bool = True) -> subprocess.CompletedProcess:
        """Run a shell command on the server as the test user."""
        argv = ["ssh", *self.ssh_options(), "-o", "BatchMode=yes", "-p", str(self.port),
                "-i", str(self.identity), self.device, command]
        return subprocess.run(argv, capture_output=True, text=True, check=check,
                              env={k: v for k, v in os.environ.items() if k != "SSH_AUTH_SOCK"})


def free_port() -> int:
    """A TCP port on the loopback that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOOPBACK, 0))
        return probe.getsockname()[1]


def missing_client_programs() -> list[str]:
    return [name for name in CLIENT_PROGRAMS if shutil.which(name) is None]


def _keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "edge-deploy-test", "-f", str(path)],
                   check=True, capture_output=True)


def _sshd_config(folder: Path, port: int, host_key: Path, authorized_keys: Path, user: str) -> str:
    lines = [
        f"Port {port}",
        f"ListenAddress {LOOPBACK}",
        f"HostKey {host_key}",
        f"PidFile {folder / 'sshd.pid'}",
        f"AuthorizedKeysFile {authorized_keys}",
        f"AllowUsers {user}",
        # The key files live in a pytest temporary folder, not in a home with ssh's permissions.
        "StrictModes no",
        "UsePAM no",
        "PubkeyAuthentication yes",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "PermitRootLogin prohibit-password",
        # scp speaks SFTP since OpenSSH 9.0; the in-process server needs no sftp-server binary.
        "Subsystem sftp internal-sftp",
        "LogLevel VERBOSE",
    ]
    return "\n".join(lines) + "\n"


@contextlib.contextmanager
def local_sshd(folder: Path) -> Iterator[SshServer]:
    """Run sshd on 127.0.0.1 for the current user until the block ends; SshdUnavailable if it cannot."""
    if not SSHD_PATH.exists():
        raise SshdUnavailable(f"{SSHD_PATH} not found (apt-get install openssh-server)")
    missing = missing_client_programs()
    if missing:
        raise SshdUnavailable(f"{', '.join(missing)} not found (apt-get install openssh-client)")
    if os.geteuid() == 0 and not PRIVSEP_DIR.is_dir():
        # What Debian's ssh.service does before starting sshd (RuntimeDirectory=sshd).
        PRIVSEP_DIR.mkdir(mode=PRIVSEP_DIR_MODE, parents=True, exist_ok=True)
    folder.mkdir(parents=True, exist_ok=True)
    host_key, client_key = folder / "host_key", folder / "client_key"
    _keygen(host_key)
    _keygen(client_key)
    authorized_keys = folder / "authorized_keys"
    authorized_keys.write_text(Path(f"{client_key}.pub").read_text())
    user = getpass.getuser()
    port = free_port()
    config = folder / "sshd_config"
    config.write_text(_sshd_config(folder, port, host_key, authorized_keys, user))
    known_hosts = folder / "known_hosts"
    host_public = Path(f"{host_key}.pub").read_text().split()
    known_hosts.write_text(f"[{LOOPBACK}]:{port} {host_public[0]} {host_public[1]}\n")
    log = folder / "sshd.log"
    with open(log, "wb") as log_handle:
        # sshd re-executes itself and so must be started by its absolute path.
        process = subprocess.Popen([str(SSHD_PATH), "-D", "-e", "-f", str(config)],
                                   stdout=log_handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        try:
            wait_for_banner(port, process, log, timeout=START_TIMEOUT_S)
        except SshError as error:
            raise SshdUnavailable(str(error)) from error
        yield SshServer(host=LOOPBACK, port=port, user=user, identity=client_key,
                        known_hosts=known_hosts, log=log)
    finally:
        process.terminate()
        try:
            process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def ansible_env(folder: Path) -> dict[str, str]:
    """The environment for ansible-playbook: the repository's ansible.cfg, no ssh-agent, short-lived
    ssh masters, and Ansible's own local files under `folder`."""
    env = {key: value for key, value in os.environ.items() if key != "SSH_AUTH_SOCK"}
    env.update(ANSIBLE_CONFIG=str(ANSIBLE_CONFIG), ANSIBLE_SSH_ARGS=TEST_SSH_ARGS,
               ANSIBLE_LOCAL_TEMP=str(folder / "ansible-local"), ANSIBLE_SSH_CONTROL_PATH_DIR=str(folder / "cp"))
    return env


def write_service_stand_in(folder: Path) -> tuple[Path, Path]:
    """A service manager for devices without systemd: `<script> restart NAME` appends "restart NAME" to
    the log; `<script> is-active NAME` exits 0 unless a file `NAME.down` exists in `folder`, and a
    restart fails while `NAME.broken` exists. Returns (script, log)."""
    folder.mkdir(parents=True, exist_ok=True)
    script, log = folder / "service", folder / "service.log"
    script.write_text(
        "#!/bin/sh\n"
        f"folder={shlex.quote(str(folder))}\n"
        'case "$1" in\n'
        '    restart) echo "restart $2" >> "$folder/service.log"; [ ! -e "$folder/$2.broken" ] ;;\n'
        '    is-active) if [ -e "$folder/$2.down" ]; then echo inactive; exit 3; fi; echo active ;;\n'
        '    *) echo "usage: service restart|is-active NAME" >&2; exit 2 ;;\n'
        "esac\n")
    script.chmod(0o755)
    return script, log


def write_deployable_model(source: Path, folder: Path, name: str) -> Path:
    """Copy a model into `folder` as `name` with a manifest.json listing it, as edge-convert does."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / name
    shutil.copyfile(source, target)
    write_manifest(folder, [name])
    return target


def flip_byte(path: Path, offset: int) -> None:
    """Change one byte of a file in place (xor 0xFF), keeping its size."""
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def remote_edge_classify(repo_root: Path, python: str) -> str:
    """The command that runs this checkout's edge-classify on the (local) test device."""
    return f"PYTHONPATH={shlex.quote(str(repo_root))} {shlex.quote(python)} -m edge_runtime.cli"


def systemd_analyze_verify(unit: Path, unit_program: str, program: str, folder: Path,
                           timeout_s: float) -> subprocess.CompletedProcess | None:
    """`systemd-analyze verify` on a copy of `unit` in `folder` whose ExecStart runs `program` instead
    of `unit_program` (verify checks that the program exists); None where systemd-analyze is missing."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        return None
    copy = folder / unit.name
    copy.write_text(unit.read_text().replace(unit_program, program))
    return subprocess.run([analyze, "verify", "--man=no", str(copy)], capture_output=True, text=True,
                          timeout=timeout_s)


def unit_settings(home: str = "/home/pi", model_name: str = "model_int8.tflite",
                  camera: str = "auto") -> dict[str, str]:
    """The settings the role writes for the systemd units (UNIT_SETTINGS_TEMPLATE rendered for the
    units' example device, a login whose home is `home`, with the role's default folder)."""
    values = {"edge_model_root": f"{home}/edge-models", "edge_model_name": model_name,
              "edge_model_camera_source": camera}
    settings = {}
    for line in UNIT_SETTINGS_TEMPLATE.read_text().splitlines():
        if line.startswith("#") or "=" not in line:
            continue
        name, _, value = line.partition("=")
        settings[name] = re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda match: values[match.group(1)], value)
    return settings


def with_unit_settings(argv: list[str], settings: dict[str, str]) -> list[str]:
    """A unit's command line with each ${NAME} replaced as systemd does (one argument, never split);
    KeyError for a name the settings do not define."""
    return [re.sub(r"\$\{(\w+)\}", lambda match: settings[match.group(1)], word) for word in argv]
