"""The SSH half of `make arm64-check` without emulation: the sshd configuration it writes into the root
filesystem, the commands it sends, how it waits for the server, and that a failure becomes a named
problem of the run instead of stopping the check. The real server runs in CI through `make arm64-check`.
"""

from __future__ import annotations

import shlex
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from deploy.arm64 import chroot, errors, install, runs, ssh


def test_sshd_listens_on_loopback_only_takes_keys_only_and_passes_the_cpu_model() -> None:
    lines = ssh.sshd_config(2345, "cortex-a76").splitlines()
    assert "ListenAddress 127.0.0.1" in lines and "Port 2345" in lines
    assert "PasswordAuthentication no" in lines and "PermitRootLogin prohibit-password" in lines
    assert f"AuthorizedKeysFile {ssh.AUTHORIZED_KEYS_PATH}" in lines
    # qemu-user reads QEMU_CPU from each program's environment: every session must get it.
    assert "SetEnv QEMU_CPU=cortex-a76" in lines
    assert "Subsystem sftp /usr/lib/openssh/sftp-server" in lines  # scp uses SFTP since OpenSSH 9.0


def test_remote_commands_quote_every_word() -> None:
    line = ssh.remote_command(["edge-classify", "-m", "models/a b.tflite", "it's.jpg"], "/root/arm64-check")
    assert line.startswith("cd /root/arm64-check && exec ")
    assert shlex.split(line.split(" && exec ", 1)[1]) == ["edge-classify", "-m", "models/a b.tflite", "it's.jpg"]


def test_the_deploy_playbook_reaches_the_server_and_each_model_has_its_own_folder(tmp_path: Path) -> None:
    session = ssh.Session(2345, tmp_path / "id_ed25519", tmp_path / "known_hosts", timeout=5)
    host = session.inventory_vars()
    assert (host["ansible_host"], host["ansible_port"], host["ansible_user"]) == ("127.0.0.1", 2345, "root")
    assert host["ansible_ssh_private_key_file"] == str(tmp_path / "id_ed25519")
    assert f"UserKnownHostsFile={tmp_path / 'known_hosts'}" in host["ansible_ssh_common_args"].split()
    assert "StrictHostKeyChecking=accept-new" in host["ansible_ssh_common_args"].split()
    assert session.destination == "root@127.0.0.1"
    # Each model is deployed into its own folder under the work folder, and read through its `current`.
    assert install.ssh_model_dir("model_int8.tflite") == "arm64-check/deployed/model_int8"
    assert (f"{chroot.DEVICE_HOME}/{install.ssh_model_dir('model_int8.tflite')}/current/model_int8.tflite"
            == f"{chroot.DEVICE_WORK}/{install.ssh_model_path('model_int8.tflite')}")


def serve_once(greeting: bytes) -> int:
    """A one-connection TCP server on the loopback that sends `greeting`; its port."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)

    def answer() -> None:
        with server:
            connection, _ = server.accept()
            with connection:
                connection.sendall(greeting)

    threading.Thread(target=answer, daemon=True).start()
    return server.getsockname()[1]


@pytest.fixture
def running() -> subprocess.Popen:
    """A process that stays up, standing in for an sshd that has not exited."""
    process = subprocess.Popen(["sleep", "30"])
    yield process
    process.kill()
    process.wait()


def test_waiting_ends_when_an_ssh_server_greets(tmp_path: Path, running: subprocess.Popen) -> None:
    port = serve_once(b"SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u7\r\n")
    ssh.wait_for_banner(port, running, tmp_path / "sshd.log", timeout=10)


def test_a_server_that_exits_is_reported_with_its_last_log_line(tmp_path: Path) -> None:
    log = tmp_path / "sshd.log"
    log.write_text("Server listening...\n/etc/ssh/ssh_host_ed25519_key: No such file or directory\n")
    process = subprocess.Popen(["sh", "-c", "exit 255"])
    process.wait()
    with pytest.raises(ssh.SshError, match=r"exited with status 255 .*ssh_host_ed25519_key: No such file"):
        ssh.wait_for_banner(ssh.free_port(), process, log, timeout=10)


def test_a_silent_port_is_reported_after_the_timeout(tmp_path: Path, running: subprocess.Popen) -> None:
    port = serve_once(b"HTTP/1.1 400 Bad Request\r\n")
    with pytest.raises(ssh.SshError, match=f"did not answer on 127.0.0.1:{port} within 1 s"):
        ssh.wait_for_banner(port, running, tmp_path / "missing.log", timeout=1)


def test_stopping_ends_the_whole_process_group(tmp_path: Path) -> None:
    child_pid = tmp_path / "child.pid"
    process = subprocess.Popen(["sh", "-c", f"sleep 60 & echo $! > {child_pid}; wait"], start_new_session=True)
    deadline = time.monotonic() + 10
    while not child_pid.exists() or not child_pid.read_text().strip():
        assert time.monotonic() < deadline, "the test's child never started"
        time.sleep(0.05)
    ssh.stop(process)
    assert process.returncode is not None
    status = Path(f"/proc/{child_pid.read_text().strip()}/stat")
    while status.exists() and status.read_text().split(") ")[1][0] != "Z":  # gone, or dead and not yet reaped
        assert time.monotonic() < deadline, "a process sshd started outlived stop()"
        time.sleep(0.05)


def test_a_failed_ssh_run_is_a_named_problem_of_its_run_not_a_crash(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    def no_server(root: Path, cache: Path) -> None:
        raise errors.RunError("apt-get install openssh-server failed in the bookworm root filesystem: "
                                   "Temporary failure resolving 'deb.debian.org'")

    monkeypatch.setattr(runs, "ensure_ssh_server", no_server)
    outcome = runs.run_over_ssh("bookworm", tmp_path / "root", tmp_path, [], {}, tmp_path)
    assert (outcome.distro, outcome.install, outcome.cpu) == ("bookworm", "ssh", "cortex-a72")
    assert not outcome.ok
    assert outcome.problems == ["over SSH: apt-get install openssh-server failed in the bookworm root filesystem: "
                                "Temporary failure resolving 'deb.debian.org'"]


def test_answers_about_a_deployed_copy_are_compared_under_the_path_x86_used() -> None:
    from deploy.arm64.answers import ModelAnswers

    deployed = "deployed/model_int8/current/model_int8.tflite"
    answers = ModelAnswers(results={}, info={"model": deployed, "sha256": "ab"}, benchmark=None, problems=[],
                           verify=(0, f"OK {deployed} (6097 bytes, sha256 ab)"))
    seen = runs.as_if_read_from(answers, deployed, "models/model_int8.tflite")
    assert seen.info == {"model": "models/model_int8.tflite", "sha256": "ab"}
    assert seen.verify == (0, "OK models/model_int8.tflite (6097 bytes, sha256 ab)")
    assert answers.info["model"] == deployed  # the device's own answers are kept as they were
