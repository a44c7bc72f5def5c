"""deploy/README.md's install paths in the emulated userland: which extra goes into which virtual environment
and the backend it must end up using, the script that installs the wheel, the wheel itself, and
openssh-server for the SSH run."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from .answers import COMMAND_TIMEOUT_S, first_error
from .chroot import DEVICE_HOME, DEVICE_WORK, chroot
from .errors import RunError, Unavailable, log
from .parity import RunOutcome
from .rootfs import DISTROS
from .ssh import SERVER_PACKAGES, SSHD

INSTALL_TIMEOUT_S = 15 * 60


@dataclasses.dataclass(frozen=True)
class Install:
    """One of deploy/README.md's install paths: which extra goes into which virtual environment."""

    name: str
    extra: str
    venv: str
    distros: tuple[str, ...]


INSTALLS = (
    Install("edge", "edge", "~/edge-venv", DISTROS),
    # README: "On Bookworm it [tflite-runtime] could replace ai-edge-litert (the tflite extra instead of edge)".
    Install("tflite", "tflite", "~/edge-venv-tflite", ("bookworm",)),
)
# The device workflow end to end on one distro and CPU model (a Pi 4 on Bookworm): the [edge] install,
# its sshd, the deploy playbook of every model (each in its own models folder, since one folder has one
# current version), every command over SSH on the deployed copies.
SSH_INSTALL = Install("ssh", "edge", "~/edge-venv", ("bookworm",))
SSH_DISTRO = "bookworm"
SSH_CPU = "cortex-a72"
SSH_DEST = DEVICE_WORK.removeprefix(DEVICE_HOME + "/") + "/deployed"  # edge_model_dir's parent, from the home


def ssh_model_dir(model_name: str) -> str:
    """The playbook's edge_model_dir for one model, relative to the home: one folder (and `current`) per model."""
    return f"{SSH_DEST}/{Path(model_name).stem}"


def ssh_model_path(model_name: str) -> str:
    """Where the SSH run reads a deployed model, relative to the work folder: through its folder's `current`."""
    return f"deployed/{Path(model_name).stem}/current/{model_name}"
# The backend each install path must end up using, as edge-classify --info names it.
INSTALL_BACKENDS = {"edge": "ai_edge_litert", "tflite": "tflite_runtime", "ssh": "ai_edge_litert"}
BACKEND_PACKAGES = {"ai_edge_litert": "ai-edge-litert", "tflite_runtime": "tflite-runtime"}


def readme_install_script(wheel_name: str, install: Install) -> str:
    """deploy/README.md step 1, as typed on the Pi (apt's part is in the root filesystem already)."""
    return "\n".join([
        "set -e",
        f"rm -rf {install.venv}",
        f"python3 -m venv --system-site-packages {install.venv}",
        "SYSTEM_NUMPY=$(/usr/bin/python3 -c 'import numpy; print(numpy.__version__)')",
        f'{install.venv}/bin/pip install "./{wheel_name}[{install.extra}]" "numpy==$SYSTEM_NUMPY"',
        f"{install.venv}/bin/edge-classify --help >/dev/null",
    ])


def find_wheel(dist: Path) -> Path:
    wheels = sorted(dist.glob("edge_image_toolkit-*.whl"), key=lambda p: p.stat().st_mtime)
    if not wheels:
        raise Unavailable(f"no wheel in {dist}: run `make wheel` first (make arm64-check does)")
    return wheels[-1]


def failed_install(distro: str, install: Install, reason: str, seconds: float, log_path: Path) -> RunOutcome:
    outcome = RunOutcome(distro=distro, install=install.name, cpu="-", machine="", python="",
                         backend=INSTALL_BACKENDS[install.name], backend_version="", numpy_version="",
                         pillow_version="", tensorflow_installed=False, seconds=seconds)
    outcome.problems.append(f"pip install of the wheel with [{install.extra}] failed: {reason} (log: {log_path})")
    return outcome


def ensure_ssh_server(root: Path, cache: Path) -> None:
    """openssh-server in the root filesystem (installed with apt once, then kept in the cache), with host keys."""
    if not (root / SSHD.lstrip("/")).exists():
        log(f"{root.name}: installing {', '.join(SERVER_PACKAGES)} in the root filesystem for the SSH "
            "run (once; apt under emulation takes a few minutes)")
        script = ("apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "
                  f"--no-install-recommends {' '.join(SERVER_PACKAGES)}")
        completed = chroot(root, cache, SSH_CPU, ["/bin/sh", "-c", script], timeout=INSTALL_TIMEOUT_S)
        if completed.returncode != 0:
            raise RunError(f"apt-get install {' '.join(SERVER_PACKAGES)} failed in the {root.name} root "
                           f"filesystem: {first_error(completed)}")
    chroot(root, cache, SSH_CPU, ["ssh-keygen", "-A"], timeout=COMMAND_TIMEOUT_S, check=True)
