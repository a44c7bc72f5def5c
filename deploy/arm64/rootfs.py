"""The arm64 root filesystems: built with debootstrap into the cache, reused while what they were built from
is unchanged, and given the host's name resolution and CA certificates before each use.

In the cache (CI keeps it warm): rootfs/DISTRO (with its stamp file), debs/DISTRO (debootstrap's .deb
files) and logs/DISTRO-debootstrap.log.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

from edge_runtime.atomic import write_text

from .errors import Unavailable

DISTROS = ("bookworm", "trixie")
DEBOOTSTRAP_TIMEOUT_S = 40 * 60
# Debian packages of the device's system: python3-venv from README step 1, and the numpy and
# Pillow that python3-picamera2 pulls in on Raspberry Pi OS (picamera2 itself is not in Debian).
ROOTFS_PACKAGES = ("python3", "python3-venv", "python3-pip", "python3-numpy", "python3-pil", "ca-certificates")
ROOTFS_STAMP = ".arm64-check-rootfs"
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
HOST_CA_FOLDER = Path("/usr/local/share/ca-certificates")


def rootfs_key(distro: str, mirror: str) -> str:
    """What a cached root filesystem was built from: a change rebuilds it."""
    return json.dumps({"distro": distro, "arch": "arm64", "variant": "minbase", "include": ROOTFS_PACKAGES,
                       "mirror": mirror}, sort_keys=True)


def cached_rootfs(cache: Path, distro: str, mirror: str) -> Path | None:
    root = cache / "rootfs" / distro
    stamp = root / ROOTFS_STAMP
    if stamp.is_file() and stamp.read_text(encoding="utf-8") == rootfs_key(distro, mirror):
        return root
    return None


def build_rootfs(cache: Path, distro: str, mirror: str) -> Path:
    """debootstrap a minbase arm64 root filesystem into a temporary folder, then rename it into the cache."""
    final = cache / "rootfs" / distro
    final.parent.mkdir(parents=True, exist_ok=True)
    partial = final.parent / f".{distro}.partial-{os.getpid()}"
    for stale in final.parent.glob(f".{distro}.partial-*"):
        shutil.rmtree(stale, ignore_errors=True)
    debs = cache / "debs" / distro
    debs.mkdir(parents=True, exist_ok=True)
    log_path = cache / "logs" / f"{distro}-debootstrap.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    command = ["unshare", "--mount", "--propagation", "private", "debootstrap", "--arch=arm64",
               "--variant=minbase", f"--cache-dir={debs}", f"--include={','.join(ROOTFS_PACKAGES)}",
               distro, str(partial), mirror]
    with open(log_path, "w", encoding="utf-8") as log_file:
        try:
            completed = subprocess.run(command, stdout=log_file, stderr=subprocess.STDOUT,
                                       timeout=DEBOOTSTRAP_TIMEOUT_S, env={**os.environ, "LC_ALL": "C"})
        except subprocess.TimeoutExpired as error:
            shutil.rmtree(partial, ignore_errors=True)
            raise Unavailable(f"debootstrap {distro} took over {DEBOOTSTRAP_TIMEOUT_S // 60} min "
                              f"(log: {log_path})") from error
    if completed.returncode != 0:
        shutil.rmtree(partial, ignore_errors=True)
        last = last_lines(log_path, 1)
        raise Unavailable(f"debootstrap {distro} failed (exit {completed.returncode}): {last} (log: {log_path})")
    (partial / ROOTFS_STAMP).write_text(rootfs_key(distro, mirror), encoding="utf-8")
    shutil.rmtree(final, ignore_errors=True)
    os.replace(partial, final)
    return final


def last_lines(path: Path, count: int) -> str:
    lines = [line for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    return " | ".join(lines[-count:]) if lines else "no output"


def prepare_rootfs(root: Path) -> None:
    """Name resolution and the host's extra CA certificates (a proxy's, where there is one) inside the chroot.

    The certificates go where update-ca-certificates looks for them and are appended to the bundle pip
    reads; running update-ca-certificates itself under emulation costs about 90 s for the same result.
    """
    shutil.copyfile("/etc/resolv.conf", root / "etc" / "resolv.conf")
    extra = sorted(HOST_CA_FOLDER.glob("*.crt")) if HOST_CA_FOLDER.is_dir() else []
    target = root / "usr" / "local" / "share" / "ca-certificates"
    target.mkdir(parents=True, exist_ok=True)
    bundle = root / CA_BUNDLE.lstrip("/")
    text = bundle.read_text(encoding="ascii", errors="replace") if bundle.exists() else ""
    added = []
    for certificate in extra:
        shutil.copyfile(certificate, target / certificate.name)
        pem = certificate.read_text(encoding="ascii", errors="replace").strip()
        if pem and pem not in text:
            added.append(pem)
    if added:
        write_text(bundle, text.rstrip("\n") + "\n" + "\n".join(added) + "\n")
