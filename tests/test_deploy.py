"""`make deploy` / deploy/deploy.sh against a real OpenSSH server started on 127.0.0.1.

The "device" is this machine reached over SSH: sshd runs with a throwaway host key and client key,
and the device's edge-classify is this checkout's CLI run by the test's Python. Tests that need the
server skip, with the reason, where sshd cannot be started.
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from deploy_fixtures import (SshdUnavailable, SshServer, flip_byte, free_port, local_sshd, remote_edge_classify,
                             systemd_analyze_verify, write_deployable_model)
from edge_runtime.model_file.manifest import MANIFEST_NAME

pytest_plugins = ("runtime_fixtures",)

REPO_ROOT = Path(__file__).resolve().parent.parent
DEPLOY_SCRIPT = REPO_ROOT / "deploy" / "deploy.sh"
MODEL_NAME = "model_int8.tflite"
# The test model's input tensor, as `edge-classify --info` reports it.
INPUT_SHAPE_TEXT = "[1, 32, 32, 3]"
CORRUPT_OFFSET = 200
SCRIPT_TIMEOUT_S = 120
EXIT_FAILURE = 1
EXIT_USAGE = 2
PARTIAL_SUFFIX = ".deploy-partial"


def sha256_hex(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run_deploy(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    """Run deploy.sh with /bin/sh, as `make deploy` does."""
    return subprocess.run(["sh", str(DEPLOY_SCRIPT), *args], env=env, capture_output=True, text=True,
                          timeout=SCRIPT_TIMEOUT_S, cwd=REPO_ROOT)


def error_lines(result: subprocess.CompletedProcess) -> list[str]:
    return result.stderr.splitlines()


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshServer]:
    try:
        with local_sshd(tmp_path_factory.mktemp("sshd")) as server:
            yield server
    except SshdUnavailable as reason:
        pytest.skip(f"cannot start a local OpenSSH server: {reason}")


@pytest.fixture(scope="module")
def artifacts(runtime_models, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An int8 model with embedded labels and its manifest.json, as edge-convert leaves them."""
    return write_deployable_model(runtime_models.int8, tmp_path_factory.mktemp("artifacts"), MODEL_NAME)


@pytest.fixture()
def device_env(sshd: SshServer) -> dict[str, str]:
    env = sshd.deploy_env()
    env["REMOTE_EDGE_CLASSIFY"] = remote_edge_classify(REPO_ROOT, sys.executable)
    env["PYTHON"] = sys.executable
    return env


def connections_seen(server: SshServer) -> int:
    return server.log.read_text(errors="replace").count("Connection from ")


@pytest.mark.ssh
def test_make_deploy_copies_verifies_and_smoke_tests(sshd, device_env, artifacts, tmp_path):
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    dest = tmp_path / "device" / "edge-models"
    manifest = artifacts.parent / MANIFEST_NAME
    result = subprocess.run(["make", "--no-print-directory", "-s", "deploy", f"DEVICE={sshd.device}",
                             f"MODEL={artifacts}", f"DEST={dest}"],
                            cwd=REPO_ROOT, env=device_env, capture_output=True, text=True, timeout=SCRIPT_TIMEOUT_S)
    assert result.returncode == 0, result.stderr
    # The model and its manifest arrived byte for byte, and nothing else is left in DEST.
    assert (dest / MODEL_NAME).read_bytes() == artifacts.read_bytes()
    assert (dest / MANIFEST_NAME).read_bytes() == manifest.read_bytes()
    assert sorted(p.name for p in dest.iterdir()) == sorted([MANIFEST_NAME, MODEL_NAME])
    # The smoke test ran the device's edge-classify on the installed copy, which hashed it too.
    assert INPUT_SHAPE_TEXT in result.stdout
    assert re.search(rf"^model:\s+{re.escape(str(dest / MODEL_NAME))}$", result.stdout, re.MULTILINE)
    assert re.search(rf"^sha256:\s+{sha256_hex(artifacts)}$", result.stdout, re.MULTILINE)
    size = artifacts.stat().st_size
    assert error_lines(result) == [
        f"deploy: copying {artifacts} and {MANIFEST_NAME} to {sshd.device}:{dest}",
        f"deploy: OK {sshd.device}:{dest / MODEL_NAME} ({size} bytes, sha256 {sha256_hex(artifacts)} "
        f"matches {manifest}; edge-classify --info ran)",
    ]


@pytest.mark.ssh
def test_corrupted_copy_on_the_device_is_caught(sshd, device_env, artifacts, tmp_path):
    dest = tmp_path / "edge-models"
    manifest = artifacts.parent / MANIFEST_NAME
    assert run_deploy([sshd.device, str(artifacts), str(dest)], device_env).returncode == 0
    device_copy = dest / MODEL_NAME
    verify_args = ["--verify-only", sshd.device, str(artifacts), str(dest)]
    untouched = run_deploy(verify_args, device_env)
    assert untouched.returncode == 0, untouched.stderr
    assert INPUT_SHAPE_TEXT in untouched.stdout

    # On the device itself, edge-classify --verify checks the copy against the deployed manifest.
    device_verify = f"{device_env['REMOTE_EDGE_CLASSIFY']} --verify {device_copy}"
    on_device = sshd.run(device_verify, check=False)
    assert (on_device.returncode, on_device.stdout.split(" ")[0]) == (0, "OK"), on_device.stderr

    expected_sha = sha256_hex(artifacts)
    flip_byte(device_copy, CORRUPT_OFFSET)
    on_device = sshd.run(device_verify, check=False)
    assert on_device.returncode == EXIT_FAILURE
    assert on_device.stdout.startswith(f"FAILED {device_copy}: sha256 is {sha256_hex(device_copy)}")
    flipped = run_deploy(verify_args, device_env)
    assert flipped.returncode == EXIT_FAILURE
    assert error_lines(flipped) == [
        f"deploy: remote check failed: {device_copy} on {sshd.device} does not match {manifest} "
        f"(sha256 is {sha256_hex(device_copy)}, manifest says {expected_sha})"]
    assert flipped.stdout == ""

    size = artifacts.stat().st_size
    device_copy.write_bytes(artifacts.read_bytes()[:-1])
    truncated = run_deploy(verify_args, device_env)
    assert truncated.returncode == EXIT_FAILURE
    assert error_lines(truncated) == [
        f"deploy: remote check failed: {device_copy} on {sshd.device} does not match {manifest} "
        f"(size is {size - 1} bytes, manifest says {size}; "
        f"sha256 is {sha256_hex(device_copy)}, manifest says {expected_sha})"]


@pytest.mark.ssh
def test_device_manifest_that_differs_is_caught(sshd, device_env, artifacts, tmp_path):
    dest = tmp_path / "edge-models"
    assert run_deploy([sshd.device, str(artifacts), str(dest)], device_env).returncode == 0
    (dest / MANIFEST_NAME).write_text("{}\n")
    result = run_deploy(["--verify-only", sshd.device, str(artifacts), str(dest)], device_env)
    assert result.returncode == EXIT_FAILURE
    assert error_lines(result) == [
        f"deploy: remote check failed: {dest / MANIFEST_NAME} on {sshd.device} is missing or differs "
        f"from {artifacts.parent / MANIFEST_NAME}"]


@pytest.mark.ssh
def test_damaged_transfer_never_replaces_the_installed_model(sshd, device_env, artifacts, tmp_path):
    dest = tmp_path / "edge-models"
    assert run_deploy([sshd.device, str(artifacts), str(dest)], device_env).returncode == 0
    installed = (dest / MODEL_NAME).read_bytes()
    # An scp that damages the model on its way: the device is this machine, so the wrapper can
    # change the arrived temporary file before deploy.sh hashes it over SSH.
    damaging_scp = tmp_path / "damaging-scp"
    damaging_scp.write_text(
        f"#!{sys.executable}\n"
        "import subprocess, sys\n"
        "status = subprocess.run(['scp', *sys.argv[1:]]).returncode\n"
        "target = sys.argv[-1].split(':', 1)[1]\n"
        f"if status == 0 and target.endswith('{MODEL_NAME}{PARTIAL_SUFFIX}'):\n"
        "    data = bytearray(open(target, 'rb').read())\n"
        f"    data[{CORRUPT_OFFSET}] ^= 0xFF\n"
        "    open(target, 'wb').write(bytes(data))\n"
        "sys.exit(status)\n")
    damaging_scp.chmod(0o755)
    env = dict(device_env, DEPLOY_SCP=str(damaging_scp))
    result = run_deploy([sshd.device, str(artifacts), str(dest)], env)
    assert result.returncode == EXIT_FAILURE
    lines = error_lines(result)
    assert lines[-1].startswith(
        f"deploy: remote check failed: the copy on {sshd.device} does not match {artifacts.parent / MANIFEST_NAME} "
        f"(sha256 is ")
    assert lines[-1].endswith(f"manifest says {sha256_hex(artifacts)}); nothing was installed as {dest / MODEL_NAME}")
    assert len(lines) == 2  # the "copying" progress line, then the failure
    # The earlier good copy is untouched and the temporary files are gone.
    assert (dest / MODEL_NAME).read_bytes() == installed
    assert sorted(p.name for p in dest.iterdir()) == sorted([MANIFEST_NAME, MODEL_NAME])


@pytest.mark.ssh
def test_local_model_that_does_not_match_its_manifest_is_never_sent(sshd, device_env, artifacts, tmp_path):
    local = tmp_path / "artifacts"
    model = write_deployable_model(artifacts, local, MODEL_NAME)
    expected_sha = sha256_hex(model)
    flip_byte(model, CORRUPT_OFFSET)
    dest = tmp_path / "edge-models"
    before = connections_seen(sshd)
    result = run_deploy([sshd.device, str(model), str(dest)], device_env)
    assert result.returncode == EXIT_FAILURE
    assert error_lines(result) == [
        f"deploy: local check failed: {model} does not match {local / MANIFEST_NAME} "
        f"(sha256 is {sha256_hex(model)}, manifest says {expected_sha}); nothing was copied"]
    assert not dest.exists()
    assert connections_seen(sshd) == before


@pytest.mark.ssh
def test_model_that_edge_classify_cannot_open_fails_the_smoke_test(sshd, device_env, tmp_path):
    not_a_model = tmp_path / "source.bin"
    not_a_model.write_bytes(b"this is a text file, not a TFLite flatbuffer\n" * 4)
    model = write_deployable_model(not_a_model, tmp_path / "artifacts", "broken.tflite")
    dest = tmp_path / "edge-models"
    result = run_deploy([sshd.device, str(model), str(dest)], device_env)
    assert result.returncode == EXIT_FAILURE
    last = error_lines(result)[-1]
    assert re.fullmatch(rf"deploy: smoke test failed: edge-classify --info {re.escape(str(dest))}/broken\.tflite "
                        rf"on {re.escape(sshd.device)} exited [1-9][0-9]* \(.*broken\.tflite.*\)", last), last
    assert len(error_lines(result)) == 2
    # The file did arrive intact: only the device's edge-classify refused it.
    assert (dest / "broken.tflite").read_bytes() == model.read_bytes()


@pytest.mark.ssh
def test_missing_edge_classify_on_the_device_is_named(sshd, device_env, artifacts, tmp_path):
    found = sshd.run("command -v edge-classify || ls ~/edge-venv/bin/edge-classify", check=False)
    if found.returncode == 0:
        pytest.skip(f"this machine has an edge-classify the device side would find: {found.stdout.strip()}")
    env = dict(device_env)
    del env["REMOTE_EDGE_CLASSIFY"]
    dest = tmp_path / "edge-models"
    result = run_deploy([sshd.device, str(artifacts), str(dest)], env)
    assert result.returncode == EXIT_FAILURE
    assert error_lines(result)[-1] == (
        f"deploy: smoke test failed: edge-classify --info {dest / MODEL_NAME} on {sshd.device} exited 127 "
        "(edge-classify is not on the PATH of a non-interactive login nor in ~/edge-venv/bin; "
        "install it (deploy/README.md) or set REMOTE_EDGE_CLASSIFY)")


def _any_model(tmp_path: Path) -> Path:
    source = tmp_path / "bytes.bin"
    source.write_bytes(b"\x00\x00\x00\x00TFL3" + bytes(range(256)))
    return write_deployable_model(source, tmp_path / "artifacts", MODEL_NAME)


def test_unreachable_device_gives_one_line(tmp_path):
    if shutil.which("ssh") is None:
        pytest.skip("the ssh client is not installed")
    model = _any_model(tmp_path)
    port = free_port()  # nothing listens there
    env = {k: v for k, v in os.environ.items() if k != "SSH_AUTH_SOCK"}
    env.update(SSH_PORT=str(port), SSH_OPTS="-F /dev/null -o StrictHostKeyChecking=yes "
                                           f"-o UserKnownHostsFile={tmp_path / 'known_hosts'}")
    result = run_deploy(["nobody@127.0.0.1", str(model), str(tmp_path / "dest")], env)
    assert result.returncode == EXIT_FAILURE
    assert error_lines(result) == [
        f"deploy: connect failed: cannot reach nobody@127.0.0.1 over SSH "
        f"(ssh: connect to host 127.0.0.1 port {port}: Connection refused)"]
    assert not (tmp_path / "dest").exists()


def test_missing_manifest_is_refused_before_connecting(tmp_path):
    model = tmp_path / "artifacts" / MODEL_NAME
    model.parent.mkdir()
    model.write_bytes(b"\x00\x00\x00\x00TFL3")
    result = run_deploy(["pi@192.0.2.1", str(model), "edge-models"], dict(os.environ))
    assert result.returncode == EXIT_FAILURE
    assert error_lines(result) == [
        f"deploy: local check failed: {model.parent / MANIFEST_NAME}: manifest not found beside {model} "
        "(edge-convert writes it)"]


def test_model_missing_from_its_manifest_is_refused(tmp_path):
    model = _any_model(tmp_path)
    renamed = model.with_name("other.tflite")
    model.rename(renamed)
    result = run_deploy(["pi@192.0.2.1", str(renamed), "edge-models"], dict(os.environ, PYTHON=sys.executable))
    assert result.returncode == EXIT_FAILURE
    assert error_lines(result) == [
        f"deploy: local check failed: {model.parent / MANIFEST_NAME}: has no entry for other.tflite "
        f"(it lists {MODEL_NAME})"]


@pytest.mark.parametrize("args, message", [
    ([], "deploy: expected DEVICE [MODEL] [DEST]"),
    (["-oProxyCommand=true"], "deploy: unknown option -oProxyCommand=true"),
    (["--verify-only", "-x"], "deploy: DEVICE must be user@host, got '-x'"),
    (["pi@host", "m.tflite", "my models"], "deploy: DEST 'my models' may only contain letters, digits and . _ / -"),
    (["pi@host", "m;rm.tflite"], "deploy: model file name 'm;rm.tflite' may only contain letters, digits and . _ -"),
])
def test_usage_errors(args, message):
    result = run_deploy(args, dict(os.environ))
    assert result.returncode == EXIT_USAGE
    assert error_lines(result) == [
        message, "usage: deploy/deploy.sh [--verify-only] DEVICE [MODEL] [DEST]   (see the header of this script)"]


SERVICE_UNIT = REPO_ROOT / "deploy" / "edge-classify-camera.service"
UNIT_EDGE_CLASSIFY = "/home/pi/edge-venv/bin/edge-classify"


def _unit_exec_start() -> list[str]:
    lines = [line for line in SERVICE_UNIT.read_text().splitlines() if line.startswith("ExecStart=")]
    assert len(lines) == 1, lines
    return shlex.split(lines[0].removeprefix("ExecStart="))


def test_service_unit_command_is_one_edge_classify_accepts():
    from edge_runtime.cli import main

    argv = _unit_exec_start()
    assert argv[0] == UNIT_EDGE_CLASSIFY
    # Parse (without running) the unit's command line with the real CLI's option parser.
    context = main.make_context("edge-classify", argv[1:])
    assert context.params["camera"] == "auto"
    assert context.params["as_json"] is True
    assert context.params["model_option"] == "/home/pi/edge-models/model_int8.tflite"
    unit = SERVICE_UNIT.read_text()
    assert "\nStandardOutput=append:/var/log/edge-classify/camera.jsonl\n" in unit
    assert "\nRestart=on-failure\n" in unit


def test_service_unit_passes_systemd_analyze_verify(tmp_path):
    result = systemd_analyze_verify(SERVICE_UNIT, UNIT_EDGE_CLASSIFY, sys.executable, tmp_path, SCRIPT_TIMEOUT_S)
    if result is None:
        pytest.skip("systemd-analyze is not installed")
    assert (result.returncode, result.stderr) == (0, "")
