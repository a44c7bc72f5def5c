"""`make deploy` and the fleet playbook (deploy/ansible) against one real OpenSSH server on 127.0.0.1.

The "device" is this machine reached over SSH: sshd runs with a throwaway host key and client key,
the device's edge-classify is this checkout's CLI run by the test's Python, and a stand-in service
manager records restarts. Each test gives the device its own models folder, so the versions, the
`current` link and the summary JSON are checked exactly. Tests that need the server skip, with the
reason, where sshd cannot be started.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest

from deploy_fixtures import (SshdUnavailable, SshServer, ansible_env, flip_byte, free_port, local_sshd,
                             remote_edge_classify, systemd_analyze_verify, write_deployable_model,
                             write_service_stand_in)
from edge_runtime.model_file.manifest import MANIFEST_NAME
from PIL import Image
from synthetic import synthetic_arrays

pytest_plugins = ("runtime_fixtures",)

REPO_ROOT = Path(__file__).resolve().parent.parent
PLAYBOOKS = REPO_ROOT / "deploy" / "ansible"
ANSIBLE_PLAYBOOK = Path(sys.executable).parent / "ansible-playbook"
MODEL_NAME = "model_int8.tflite"
SMOKE_NAME = "smoke.png"
SERVICE = "edge-classify-camera"
HOST = "device"
VERSION_PREFIX = 12
CORRUPT_OFFSET = 200
PLAYBOOK_TIMEOUT_S = 180
SCRIPT_TIMEOUT_S = 120
# ansible-playbook: 2 when a host failed, 4 when one was unreachable; make passes it on as 2.
EXIT_HOST_FAILED = 2
EXIT_UNREACHABLE = 4
EXIT_USAGE = 2
NO_CHANGE_LINE = "No device changed: every device already runs this model."

pytestmark = pytest.mark.skipif(not ANSIBLE_PLAYBOOK.exists(),
                                reason="ansible-playbook is not installed (pip install -e '.[fleet]')")


def sha256_hex(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def version_of(model: Path) -> str:
    return sha256_hex(model)[:VERSION_PREFIX]


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


@pytest.fixture(scope="module")
def other_artifacts(runtime_models, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second version under the same name: the float32 export of the same network."""
    return write_deployable_model(runtime_models.float32, tmp_path_factory.mktemp("other"), MODEL_NAME)


@pytest.fixture(scope="module")
def smoke(artifacts: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A synthetic test image and the top-1 label this machine's edge-classify gives it with the model."""
    images, _ = synthetic_arrays(1, seed=11)
    image = tmp_path_factory.mktemp("smoke") / SMOKE_NAME
    Image.fromarray(images[0]).save(image)
    answer = subprocess.run([sys.executable, "-m", "edge_runtime.cli", "--json", "--model", str(artifacts),
                             str(image)], capture_output=True, text=True, timeout=SCRIPT_TIMEOUT_S, check=True)
    return image, json.loads(answer.stdout)["label"]


class Fleet:
    """One device (the test server) with its own models folder, inventory and summary file."""

    def __init__(self, server: SshServer, folder: Path, smoke: tuple[Path, str], **overrides: Any) -> None:
        self.server = server
        self.folder = folder
        self.models = folder / "edge-models"
        self.summary = folder / "summary.json"
        self.service_command, self.service_log = write_service_stand_in(folder / "services")
        self.env = ansible_env(folder)
        self.vars: dict[str, Any] = {
            "edge_model_dir": str(self.models),
            "edge_model_runtime_install": False,
            "edge_model_classify_command": remote_edge_classify(REPO_ROOT, sys.executable),
            "edge_model_smoke_image": str(smoke[0]),
            "edge_model_smoke_label": smoke[1],
            "edge_model_services": [SERVICE],
            "edge_model_service_manager": "command",
            "edge_model_service_command": str(self.service_command),
            "edge_fleet_summary": str(self.summary),
            **overrides,
        }
        self.inventory = folder / "hosts.yml"
        self.inventory.write_text(json.dumps({"all": {"hosts": {HOST: server.ansible_vars()}}}))

    def play(self, model: Path | None = None, playbook: str = "deploy.yml",
             **extra: Any) -> subprocess.CompletedProcess:
        """ansible-playbook with this device's inventory; variables go in a JSON file (no shell quoting)."""
        variables = dict(self.vars, **extra)
        if model is not None:
            variables["edge_model_src"] = str(model)
        extra_file = self.folder / "extra-vars.json"
        extra_file.write_text(json.dumps(variables))
        self.summary.unlink(missing_ok=True)
        return subprocess.run([str(ANSIBLE_PLAYBOOK), "-i", str(self.inventory), "-e", f"@{extra_file}",
                               str(PLAYBOOKS / playbook)], cwd=REPO_ROOT, env=self.env, capture_output=True,
                              text=True, timeout=PLAYBOOK_TIMEOUT_S)

    def install_by_hand(self, model: Path, smoke_image: Path) -> None:
        """What an earlier deploy of `model` leaves on the device, written directly (the device is this
        machine): its version's folder and `current` pointing at it."""
        version = self.models / "models" / version_of(model)
        version.mkdir(parents=True)
        for source in (model, model.parent / MANIFEST_NAME, smoke_image):
            shutil.copyfile(source, version / source.name)
        (self.models / "current").symlink_to(f"models/{version.name}")

    def read_summary(self) -> dict[str, Any]:
        return json.loads(self.summary.read_text())

    def current(self) -> str | None:
        link = self.models / "current"
        return os.readlink(link) if link.is_symlink() else None

    def restarts(self) -> list[str]:
        return self.service_log.read_text().splitlines() if self.service_log.exists() else []


@pytest.fixture()
def fleet(sshd: SshServer, tmp_path: Path, smoke: tuple[Path, str]) -> Fleet:
    return Fleet(sshd, tmp_path, smoke)


def summary_of(model: Path | None, **device: Any) -> dict[str, Any]:
    """The summary JSON expected for the one device."""
    row = {"host": HOST, "status": "updated", "active_sha256": None, "previous_sha256": None, "step": None,
           "reason": None, **device}
    return {"model": None if model is None else {"file": model.name, "sha256": sha256_hex(model)},
            "devices": [row], "counts": {row["status"]: 1}}


def recap(result: subprocess.CompletedProcess) -> str:
    lines = [line for line in result.stdout.splitlines() if line.startswith(f"{HOST} ") and "ok=" in line]
    assert len(lines) == 1, result.stdout
    return lines[0]


def connections_seen(server: SshServer) -> int:
    return server.log.read_text(errors="replace").count("Connection from ")


def version_files(fleet: Fleet, model: Path) -> list[str]:
    return sorted(path.name for path in (fleet.models / "models" / version_of(model)).iterdir())


@pytest.mark.ssh
def test_make_deploy_installs_verifies_smoke_tests_and_a_second_run_changes_nothing(
        sshd, artifacts, smoke, tmp_path):
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    fleet = Fleet(sshd, tmp_path, smoke)
    extra_file = tmp_path / "make-vars.json"
    extra_file.write_text(json.dumps({key: value for key, value in fleet.vars.items()
                                      if key not in ("edge_model_dir", "edge_fleet_summary")}))
    env = dict(fleet.env, ANSIBLE_REMOTE_PORT=str(sshd.port), ANSIBLE_PRIVATE_KEY_FILE=str(sshd.identity),
               ANSIBLE_SSH_COMMON_ARGS=" ".join(sshd.ssh_options()), ANSIBLE_PYTHON_INTERPRETER=sys.executable)
    # -o wheel: the runtime is not installed here, so the wheel need not be built.
    command = ["make", "--no-print-directory", "-s", "-o", "wheel", "deploy", f"DEVICE={sshd.device}",
               f"MODEL={artifacts}", f"DEST={fleet.models}", f"SUMMARY={fleet.summary}",
               f"ANSIBLE_ARGS=-e @{extra_file}"]
    first = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                           timeout=PLAYBOOK_TIMEOUT_S)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr
    version = fleet.models / "models" / version_of(artifacts)
    # The model, its manifest and the smoke image arrived byte for byte in the version's folder,
    # current points at it, no temporary folder is left, and the service restarted once.
    assert (version / MODEL_NAME).read_bytes() == artifacts.read_bytes()
    assert (version / MANIFEST_NAME).read_bytes() == (artifacts.parent / MANIFEST_NAME).read_bytes()
    assert (version / SMOKE_NAME).read_bytes() == smoke[0].read_bytes()
    assert sorted(p.name for p in version.iterdir()) == sorted([MANIFEST_NAME, MODEL_NAME, SMOKE_NAME])
    assert fleet.current() == f"models/{version_of(artifacts)}"
    assert sorted(p.name for p in (fleet.models / "models").iterdir()) == [version_of(artifacts)]
    assert fleet.restarts() == [f"restart {SERVICE}"]
    # The services read the model through current, and the camera source, from the settings file.
    settings = [line for line in (fleet.models / "edge-classify.env").read_text().splitlines()
                if line and not line.startswith("#")]
    assert settings == [f"EDGE_CLASSIFY_MODEL={fleet.models}/current/{MODEL_NAME}", "EDGE_CLASSIFY_CAMERA=auto"]
    expected = summary_of(artifacts, host=sshd.host, active_sha256=sha256_hex(artifacts))
    assert fleet.read_summary() == expected
    assert f"summary written to {fleet.summary}" in first.stdout

    second = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                            timeout=PLAYBOOK_TIMEOUT_S)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr
    assert re.search(rf"^{re.escape(sshd.host)} +: ok=\d+ +changed=0 +unreachable=0 +failed=0 ", second.stdout,
                     re.MULTILINE), second.stdout[-2000:]
    assert NO_CHANGE_LINE in second.stdout.splitlines()
    assert fleet.read_summary() == summary_of(artifacts, host=sshd.host, status="unchanged",
                                              active_sha256=sha256_hex(artifacts))
    assert fleet.restarts() == [f"restart {SERVICE}"]


@pytest.mark.ssh
def test_corrupted_version_on_the_device_is_caught_and_copied_again(fleet, artifacts, smoke):
    fleet.install_by_hand(artifacts, smoke[0])
    device_copy = fleet.models / "current" / MODEL_NAME
    # On the device itself, edge-classify --verify checks the copy against the manifest beside it.
    device_verify = f"{fleet.vars['edge_model_classify_command']} --verify {shlex.quote(str(device_copy))}"
    on_device = fleet.server.run(device_verify, check=False)
    assert (on_device.returncode, on_device.stdout.split(" ")[0]) == (0, "OK"), on_device.stderr
    flip_byte(device_copy, CORRUPT_OFFSET)
    damaged_sha = sha256_hex(device_copy)
    on_device = fleet.server.run(device_verify, check=False)
    assert on_device.returncode == 1
    assert on_device.stdout.startswith(f"FAILED {device_copy}: sha256 is {damaged_sha}")

    # The next run finds the version's folder differs from the manifest and writes it again.
    repaired = fleet.play(artifacts)
    assert repaired.returncode == 0, repaired.stdout[-3000:]
    assert device_copy.read_bytes() == artifacts.read_bytes()
    assert fleet.current() == f"models/{version_of(artifacts)}"
    assert fleet.read_summary() == summary_of(artifacts, active_sha256=sha256_hex(artifacts))
    # current never changed; the one restart is for the services' settings file this hand-made device lacked.
    assert fleet.restarts() == [f"restart {SERVICE}"]


@pytest.mark.ssh
def test_new_version_switches_current_and_keeps_the_previous_one(fleet, artifacts, other_artifacts, smoke):
    fleet.install_by_hand(artifacts, smoke[0])
    result = fleet.play(other_artifacts)
    assert result.returncode == 0, result.stdout[-3000:]
    assert fleet.current() == f"models/{version_of(other_artifacts)}"
    assert os.readlink(fleet.models / "previous") == f"models/{version_of(artifacts)}"
    assert fleet.read_summary() == summary_of(other_artifacts, active_sha256=sha256_hex(other_artifacts),
                                              previous_sha256=sha256_hex(artifacts))
    assert fleet.restarts() == [f"restart {SERVICE}"]

    # rollback.yml with no version goes back to previous, and previous becomes the one it left.
    back = fleet.play(playbook="rollback.yml")
    assert back.returncode == 0, back.stdout[-3000:]
    assert fleet.current() == f"models/{version_of(artifacts)}"
    assert os.readlink(fleet.models / "previous") == f"models/{version_of(other_artifacts)}"
    assert fleet.read_summary() == summary_of(None, active_sha256=sha256_hex(artifacts),
                                              previous_sha256=sha256_hex(other_artifacts))
    assert fleet.restarts() == [f"restart {SERVICE}"] * 2

    # A version the device does not have is refused before anything changes.
    missing = fleet.play(playbook="rollback.yml", edge_model_rollback_version="0000")
    assert missing.returncode == EXIT_HOST_FAILED
    names = ", ".join(sorted([version_of(artifacts), version_of(other_artifacts)]))
    assert fleet.read_summary() == summary_of(
        None, status="failed", active_sha256=sha256_hex(artifacts), previous_sha256=sha256_hex(other_artifacts),
        step="choose version", reason=f"no version 0000 on the device (it has {names})")
    assert fleet.current() == f"models/{version_of(artifacts)}"


@pytest.mark.ssh
def test_versions_beyond_keep_are_pruned_but_never_the_current_or_previous_one(fleet, artifacts, other_artifacts,
                                                                               smoke):
    fleet.install_by_hand(artifacts, smoke[0])
    # Three older versions, the oldest first; the hand-installed current one is older than all of them.
    older = ["0000000000a1", "0000000000a2", "0000000000a3"]
    for age, name in enumerate(older, start=1):
        folder = fleet.models / "models" / name
        folder.mkdir()
        os.utime(folder, (1_000_000 * age, 1_000_000 * age))
    current = fleet.models / "models" / version_of(artifacts)
    os.utime(current, (1, 1))
    result = fleet.play(other_artifacts, edge_model_keep=3)
    assert result.returncode == 0, result.stdout[-3000:]
    # Kept: the new current, the previous (the oldest folder of all), and the newest other one.
    assert sorted(p.name for p in (fleet.models / "models").iterdir()) == sorted(
        [version_of(other_artifacts), version_of(artifacts), older[-1]])


@pytest.mark.ssh
def test_service_that_fails_after_the_switch_is_rolled_back(fleet, artifacts, other_artifacts, smoke):
    fleet.install_by_hand(artifacts, smoke[0])
    (fleet.service_command.parent / f"{SERVICE}.down").touch()
    result = fleet.play(other_artifacts)
    assert result.returncode == EXIT_HOST_FAILED
    assert fleet.read_summary() == summary_of(
        other_artifacts, status="rolled_back", active_sha256=sha256_hex(artifacts), step="service check",
        reason=f"{SERVICE} is not active after the restart (inactive); "
               f"not active after the rollback: {SERVICE}")
    # current is back on the old version, restarted on it; the new version stays for a later try.
    assert fleet.current() == f"models/{version_of(artifacts)}"
    assert not (fleet.models / "previous").exists()
    assert (fleet.models / "current" / MODEL_NAME).read_bytes() == artifacts.read_bytes()
    assert fleet.restarts() == [f"restart {SERVICE}"] * 2


@pytest.mark.ssh
def test_damaged_transfer_never_replaces_the_installed_model(fleet, artifacts, other_artifacts, smoke, tmp_path):
    fleet.install_by_hand(artifacts, smoke[0])
    installed = (fleet.models / "current" / MODEL_NAME).read_bytes()
    # An scp that damages the model on its way: the device is this machine, so the wrapper can change
    # the file it just wrote before Ansible checks it.
    damaging_scp = tmp_path / "damaging-scp"
    damaging_scp.write_text(
        f"#!{sys.executable}\n"
        "import shlex, subprocess, sys\n"
        "status = subprocess.run(['scp', *sys.argv[1:]]).returncode\n"
        "source, target = sys.argv[-2], shlex.split(sys.argv[-1].split(':', 1)[1])[0]\n"
        f"if status == 0 and source.endswith('{MODEL_NAME}'):\n"
        "    data = bytearray(open(target, 'rb').read())\n"
        f"    data[{CORRUPT_OFFSET}] ^= 0xFF\n"
        "    open(target, 'wb').write(bytes(data))\n"
        "sys.exit(status)\n")
    damaging_scp.chmod(0o755)
    result = fleet.play(other_artifacts, ansible_ssh_transfer_method="scp", ansible_scp_executable=str(damaging_scp))
    assert result.returncode == EXIT_HOST_FAILED
    summary = fleet.read_summary()
    device = summary["devices"][0]
    assert (device["status"], device["step"], device["active_sha256"]) == ("failed", "copy", sha256_hex(artifacts))
    assert "does not match the expected checksum" in device["reason"], device["reason"]
    # The earlier good copy is current and untouched; nothing of the new version is left.
    assert fleet.current() == f"models/{version_of(artifacts)}"
    assert (fleet.models / "current" / MODEL_NAME).read_bytes() == installed
    assert sorted(p.name for p in (fleet.models / "models").iterdir()) == [version_of(artifacts)]
    assert fleet.restarts() == []


@pytest.mark.ssh
def test_local_model_that_does_not_match_its_manifest_is_never_sent(fleet, artifacts, tmp_path):
    local = tmp_path / "artifacts"
    model = write_deployable_model(artifacts, local, MODEL_NAME)
    expected_sha = sha256_hex(model)
    flip_byte(model, CORRUPT_OFFSET)
    before = connections_seen(fleet.server)
    result = fleet.play(model)
    assert result.returncode == EXIT_HOST_FAILED
    assert fleet.read_summary() == {
        "model": None, "counts": {"failed": 1},
        "devices": [{"host": HOST, "status": "failed", "active_sha256": None, "previous_sha256": None,
                     "step": "local check",
                     "reason": f"{model} does not match {local / MANIFEST_NAME} (sha256 is {sha256_hex(model)}, "
                               f"manifest says {expected_sha}); nothing was copied"}]}
    assert not fleet.models.exists()
    assert connections_seen(fleet.server) == before


@pytest.mark.ssh
def test_model_that_edge_classify_cannot_open_fails_the_smoke_test(fleet, artifacts, smoke, tmp_path):
    fleet.install_by_hand(artifacts, smoke[0])
    not_a_model = tmp_path / "source.bin"
    not_a_model.write_bytes(b"this is a text file, not a TFLite flatbuffer\n" * 4)
    broken = write_deployable_model(not_a_model, tmp_path / "broken", "broken.tflite")
    result = fleet.play(broken)
    assert result.returncode == EXIT_HOST_FAILED
    device = fleet.read_summary()["devices"][0]
    assert (device["status"], device["step"], device["active_sha256"]) == ("failed", "smoke test", sha256_hex(artifacts))
    new_model = fleet.models / "models" / version_of(broken) / broken.name
    assert re.fullmatch(rf"edge-classify --info {re.escape(str(new_model))} on {HOST} exited [1-9][0-9]* "
                        r"\(.*broken\.tflite.*\)", device["reason"]), device["reason"]
    # current never moved, and the refused version was removed.
    assert fleet.current() == f"models/{version_of(artifacts)}"
    assert sorted(p.name for p in (fleet.models / "models").iterdir()) == [version_of(artifacts)]


@pytest.mark.ssh
def test_smoke_image_with_another_label_stops_before_the_switch(fleet, artifacts, smoke):
    wrong = "not-" + smoke[1]
    result = fleet.play(artifacts, edge_model_smoke_label=wrong)
    assert result.returncode == EXIT_HOST_FAILED
    assert fleet.read_summary() == summary_of(
        artifacts, status="failed", step="smoke test",
        reason=f"{SMOKE_NAME} was classified as {smoke[1]}, expected {wrong}")
    assert fleet.current() is None
    assert fleet.restarts() == []


@pytest.mark.ssh
def test_missing_edge_classify_on_the_device_is_named(fleet, artifacts, tmp_path):
    venv = tmp_path / "no-venv"
    result = fleet.play(artifacts, edge_model_classify_command="", edge_model_venv=str(venv))
    assert result.returncode == EXIT_HOST_FAILED
    assert fleet.read_summary()["devices"][0]["reason"] == (
        f"edge-classify not found at {venv}/bin/edge-classify on {HOST}: let the role install the runtime "
        "(edge_model_runtime_install=true) or set edge_model_classify_command")
    assert fleet.current() is None


def test_unreachable_device_gives_one_line(tmp_path, artifacts, smoke):
    if shutil.which("ssh") is None:
        pytest.skip("the ssh client is not installed")
    port = free_port()  # nothing listens there
    server = SshServer(host="127.0.0.1", port=port, user="nobody", identity=tmp_path / "no-key",
                       known_hosts=tmp_path / "known_hosts", log=tmp_path / "no-log")
    fleet = Fleet(server, tmp_path, smoke)
    result = fleet.play(artifacts)
    assert result.returncode == EXIT_UNREACHABLE
    assert fleet.read_summary() == summary_of(
        artifacts, status="unreachable", step="connect",
        reason=f"ssh: connect to host 127.0.0.1 port {port}: Connection refused")
    assert not fleet.models.exists()


def test_missing_manifest_is_refused_before_connecting(tmp_path, smoke):
    model = tmp_path / "artifacts" / MODEL_NAME
    model.parent.mkdir()
    model.write_bytes(b"\x00\x00\x00\x00TFL3")
    server = SshServer(host="192.0.2.1", port=22, user="pi", identity=tmp_path / "no-key",
                       known_hosts=tmp_path / "known_hosts", log=tmp_path / "no-log")
    fleet = Fleet(server, tmp_path, smoke)
    result = fleet.play(model)
    assert result.returncode == EXIT_HOST_FAILED
    assert fleet.read_summary()["devices"][0] == {
        "host": HOST, "status": "failed", "active_sha256": None, "previous_sha256": None, "step": "local check",
        "reason": f"{model.parent / MANIFEST_NAME}: manifest not found beside {model} (edge-convert writes it)"}


def test_model_missing_from_its_manifest_is_refused(tmp_path, smoke):
    source = tmp_path / "bytes.bin"
    source.write_bytes(b"\x00\x00\x00\x00TFL3" + bytes(range(256)))
    model = write_deployable_model(source, tmp_path / "artifacts", MODEL_NAME)
    renamed = model.with_name("other.tflite")
    model.rename(renamed)
    server = SshServer(host="192.0.2.1", port=22, user="pi", identity=tmp_path / "no-key",
                       known_hosts=tmp_path / "known_hosts", log=tmp_path / "no-log")
    fleet = Fleet(server, tmp_path, smoke)
    result = fleet.play(renamed)
    assert result.returncode == EXIT_HOST_FAILED
    assert fleet.read_summary()["devices"][0]["reason"] == (
        f"{model.parent / MANIFEST_NAME}: has no entry for other.tflite (it lists {MODEL_NAME})")


def load_summary_callback() -> Any:
    """deploy/ansible/callback_plugins/edge_fleet_summary.py, imported as ansible-playbook would."""
    import importlib.util

    path = PLAYBOOKS / "callback_plugins" / "edge_fleet_summary.py"
    spec = importlib.util.spec_from_file_location("edge_fleet_summary", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _Named:
    def __init__(self, name: str) -> None:
        self.name = name

    def get_name(self) -> str:
        return self.name


class _Result:
    """What a callback receives for one task on one host."""

    def __init__(self, host: str, result: dict[str, Any], task: str = "a task") -> None:
        self._host, self._result, self._task = _Named(host), result, _Named(task)


class _Inventory:
    def __init__(self, hosts: list[str]) -> None:
        self.hosts = hosts

    def get_hosts(self, pattern: str, ignore_restrictions: bool = False) -> list[_Named]:
        assert (pattern, ignore_restrictions) == ("all", True)
        return [_Named(host) for host in self.hosts]


class _Play:
    def __init__(self, hosts: list[str], summary: Path) -> None:
        manager = type("VariableManager", (), {})()
        manager._inventory, manager.extra_vars = _Inventory(hosts), {"edge_fleet_summary": str(summary)}
        self.hosts, self.vars, self._manager = "all", {}, manager

    def get_variable_manager(self) -> Any:
        return self._manager


def test_summary_names_every_host_once_with_what_ansible_saw(tmp_path, capsys):
    module = load_summary_callback()
    callback = module.CallbackModule()
    summary = tmp_path / "fleet" / "summary.json"
    hosts = ["canary", "pi-2", "pi-3", "pi-4"]
    for batch in range(2):  # once per batch, with the same hosts
        callback.v2_playbook_on_play_start(_Play(hosts, summary))
    callback.v2_runner_on_ok(_Result("canary", {"ansible_facts": {"edge_model_step": "smoke test"}}))
    callback.v2_runner_on_ok(_Result("pi-2", {"ansible_facts": {"edge_model_step": "copy"}}))
    callback.v2_runner_on_unreachable(_Result("pi-2", {"msg": "Task failed: Data could not be sent to remote host "
                                                              "\"pi-2\". Make sure this host can be reached over ssh: "
                                                              "ssh: connect to host pi-2 port 22: No route to host"}))
    callback.v2_runner_on_failed(_Result("pi-3", {"msg": "Permission denied\n  (publickey)"}, "Read the device"))
    reported = {"status": "rolled_back", "active_sha256": "a" * 64, "previous_sha256": None,
                "step": "service check", "reason": "cam is not active after the restart (inactive)"}
    stats = type("Stats", (), {})()
    stats.custom = {"canary": {"edge_fleet_device": reported},
                    "_run": {"edge_fleet_model": {"file": "model_int8.tflite", "sha256": "b" * 64}}}
    callback.v2_playbook_on_stats(stats)
    assert json.loads(summary.read_text()) == {
        "model": {"file": "model_int8.tflite", "sha256": "b" * 64},
        "devices": [
            {"host": "canary", **reported},
            {"host": "pi-2", "status": "unreachable", "active_sha256": None, "previous_sha256": None, "step": "copy",
             "reason": "ssh: connect to host pi-2 port 22: No route to host"},
            {"host": "pi-3", "status": "failed", "active_sha256": None, "previous_sha256": None,
             "step": "Read the device", "reason": "Permission denied (publickey)"},
            {"host": "pi-4", "status": "not_attempted", "active_sha256": None, "previous_sha256": None, "step": None,
             "reason": "the rollout stopped before this device's batch"}],
        "counts": {"rolled_back": 1, "failed": 1, "unreachable": 1, "not_attempted": 1}}
    printed = capsys.readouterr().out.splitlines()
    assert [line.split()[:2] for line in printed if line.split()[:1] in (["canary"], ["pi-4"])] == [
        ["canary", "rolled_back"], ["pi-4", "not_attempted"]]
    assert "rolled_back 1, failed 1, unreachable 1, not_attempted 1" in printed
    assert f"summary written to {summary}" in printed
    assert [p.name for p in summary.parent.iterdir()] == ["summary.json"]  # no temporary file left


def make_usage(*args: str) -> subprocess.CompletedProcess:
    """`make -s ARGS` free of the caller's make variables (DEVICE, MODEL, ...)."""
    inherited = {"DEVICE", "MODEL", "VARIANT", "DEST", "INVENTORY", "VERSION", "SUMMARY", "ANSIBLE_ARGS",
                 "MAKEFLAGS", "MFLAGS", "MAKELEVEL"}
    env = {key: value for key, value in os.environ.items() if key not in inherited}
    return subprocess.run(["make", "--no-print-directory", "-s", *args], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=SCRIPT_TIMEOUT_S)


@pytest.mark.parametrize("args, message", [
    (["deploy"], "make deploy: set DEVICE=user@host (and optionally MODEL=, VARIANT=, DEST=)"),
    (["deploy", "DEVICE=raspberrypi.local"], "make deploy: DEVICE must be user@host, got 'raspberrypi.local'"),
    (["deploy", "DEVICE=pi@host", "VARIANT=int4"], "make: VARIANT must be int8 or float32, got 'int4'"),
    (["deploy-fleet"], "make deploy-fleet: set INVENTORY=hosts.yml (see deploy/ansible/inventory.example.yml)"),
    (["rollback-fleet", "INVENTORY=no-such-hosts.yml"], "make rollback-fleet: inventory no-such-hosts.yml not found"),
])
def test_usage_errors(args, message):
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    result = make_usage(*args)
    assert result.returncode == EXIT_USAGE
    assert result.stderr.splitlines()[0] == message
    assert result.stdout == ""


def test_model_file_name_the_device_shell_would_split_is_refused(tmp_path, smoke):
    source = tmp_path / "bytes.bin"
    source.write_bytes(b"\x00\x00\x00\x00TFL3")
    model = write_deployable_model(source, tmp_path / "artifacts", "m;rm.tflite")
    server = SshServer(host="192.0.2.1", port=22, user="pi", identity=tmp_path / "no-key",
                       known_hosts=tmp_path / "known_hosts", log=tmp_path / "no-log")
    fleet = Fleet(server, tmp_path, smoke)
    assert fleet.play(model).returncode == EXIT_HOST_FAILED
    assert fleet.read_summary()["devices"][0]["reason"] == (
        "model file name 'm;rm.tflite' may only contain letters, digits and . _ -")


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
