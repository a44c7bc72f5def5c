"""The fleet deploy (deploy/ansible/deploy.yml, rollback.yml) against four local devices.

Each device is a real OpenSSH server on its own 127.0.0.1 port. Run as root, each device logs in as its own
Unix user (created for this module and removed after it) with its own home, so the role's defaults
(`~/edge-models`, `~/edge-venv`) are used as they are on a Pi; run as another user, every device is the
current user and the inventory gives each an absolute edge_model_dir and edge_model_venv under its own
folder. Systemd is replaced by a stand-in service manager per device (tests/fleet_fixtures.py) that logs each
restart and fails is-active where the test says. The runtime is installed once per module from a wheelhouse
built once per session (the project's wheel and its [edge] dependencies from pip's cache or the registry;
the tests skip with pip's reason where the registry is unreachable), so the devices never reach an index:
dev1 gets it copied by the role (edge_model_wheelhouse), the others read a copy on their (shared) disk
(edge_model_pip_extra_args), which saves three 46 MB copies.

Where `make arm64-check`'s Bookworm root filesystem is cached and qemu-user can run it, a fifth device is
that emulated arm64 system (tests/fleet_arm64.py): its own aarch64 sshd, a runtime the role installs from
aarch64 wheels, edge-classify under QEMU_CPU=cortex-a72, the same stand-in service manager. It is the fourth
device of the rollout test, in dev4's place; the fault tests stay on the four x86 devices, which are fast.
Where it is not available the rollout test runs on dev1-dev4, a warning says why, and
test_the_fourth_rollout_device_is_the_emulated_arm64_system is skipped with the reason (pytest -rs).

The devices are shared by the tests of this module: the module fixture installs the runtime and a first
model everywhere, and each test starts from whatever the devices run, deploys versions of its own and
checks each device against what it ran before.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any, Iterator, Sequence

import pytest
from edge_runtime.model_file.manifest import MANIFEST_NAME
from fleet_arm64 import ARM64_DEVICE_NAME, CPU, Arm64Device, Arm64Unavailable, arm64_device, bookworm_rootfs
from fleet_fixtures import (ANSIBLE_PLAYBOOK, REPO_ROOT, Device, FleetSession, FleetUnavailable,
                            ModelVersion, SmokeImage, Wheelhouse, ansible_environment, build_wheelhouse,
                            devices_by_host, fleet_folder, folder_usage, local_fleet, pick_smoke_image, play_recap,
                            read_summary, stop_device_when, tmpfs_versions)

pytest_plugins = ("runtime_fixtures",)
pytestmark = [pytest.mark.ssh, pytest.mark.slow]

MODEL_NAME = "model_int8.tflite"
# The fleet, in inventory order (the order Ansible makes its batches in), in two groups.
GROUPS = {"shop": ["dev1", "dev2"], "lab": ["dev3", "dev4"]}
HOSTS = [name for names in GROUPS.values() for name in names]
CAMERA, LIVE = "edge-classify-camera", "edge-classify-live"
# dev2 runs two services, dev4 none (the service is off there); the emulated arm64 device runs one.
SERVICES = {"dev1": [CAMERA], "dev2": [CAMERA, LIVE], "dev3": [CAMERA], "dev4": [], ARM64_DEVICE_NAME: [CAMERA]}
STATUSES = {"updated", "unchanged", "rolled_back", "failed", "unreachable", "not_attempted"}
FAILING_STATUSES = {"rolled_back", "failed", "unreachable", "not_attempted"}
# One batch of every device: runs whose batching is not what they test take one batch's time, not three.
ALL_AT_ONCE = ["100%"]
WRONG_LABEL = "not-a-label-of-this-model"
RUN_TIMEOUT_S = 600
# How long the unreachable test waits for its device's copy to start before it gives up on stopping it.
STOP_WATCH_S = 240
# A tmpfs for the disk-full test: what the kept versions use plus this, far less than the big model.
TMPFS_HEADROOM_BYTES = 256 * 1024
BIG_MODEL_PADDING = 1024 * 1024
NO_CHANGE_LINE = re.compile(r"no device changed", re.IGNORECASE)
# make's line for a recipe that failed (not a usage check, which exits 2 with its own message).
MAKE_RECIPE_FAILED = re.compile(r"\[\S*:\d+: deploy-fleet\] Error \d+")
# What an outer `make test` would pass down to the make the tests run.
MAKE_ENVIRONMENT = ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Rollout:
    """The fleet and the four devices of the rollout test: dev1-dev3 and the emulated arm64 device where it
    runs, else dev4 (`arm64_unused` says why)."""

    session: FleetSession
    groups: dict[str, list[str]]
    arm64_unused: str | None

    @property
    def hosts(self) -> list[str]:
        return [name for names in self.groups.values() for name in names]


@pytest.fixture(scope="session")
def fleet_wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Wheelhouse:
    try:
        return build_wheelhouse(tmp_path_factory.mktemp("fleet-wheelhouse") / "wheels")
    except FleetUnavailable as reason:
        pytest.skip(str(reason))


@pytest.fixture(scope="module")
def smoke_image(runtime_models, synthetic_test_images, tmp_path_factory: pytest.TempPathFactory) -> SmokeImage:
    """A fresh synthetic image the test model classifies correctly, and its label."""
    images, classes = synthetic_test_images
    return pick_smoke_image(runtime_models.int8, images, classes, tmp_path_factory.mktemp("smoke"))


@pytest.fixture(scope="module")
def rollout(runtime_models, fleet_wheelhouse: Wheelhouse, smoke_image: SmokeImage) -> Iterator[Rollout]:
    """Four fresh x86 devices and, where it runs, the emulated arm64 one; then the runtime installed and a
    first model deployed on all of them in one batch."""
    if not ANSIBLE_PLAYBOOK.exists():
        pytest.skip(f"{ANSIBLE_PLAYBOOK} not found: pip install -e '.[fleet]'")
    try:
        with fleet_folder() as folder, local_fleet(folder, HOSTS, SERVICES) as devices, \
                contextlib.ExitStack() as stack:
            arm64_unused = None
            try:
                stack.enter_context(arm64_device(devices, bookworm_rootfs(), SERVICES[ARM64_DEVICE_NAME],
                                                 fleet_wheelhouse.wheel))
            except Arm64Unavailable as reason:
                arm64_unused = str(reason)
                log.warning("the emulated arm64 device is not used: %s; the rollout test runs on dev1-dev4",
                            arm64_unused)
            fourth = "dev4" if arm64_unused else ARM64_DEVICE_NAME
            session = FleetSession(devices, fleet_wheelhouse, smoke_image, runtime_models.plain_int8.read_bytes(),
                                   MODEL_NAME, GROUPS, wheelhouse_copied_to=["dev1"])
            every_device = {group: list(names) for group, names in GROUPS.items()}
            if not arm64_unused:
                every_device["lab"].append(ARM64_DEVICE_NAME)
            first = session.new_model("first")
            result, summary = session.deploy(first, session.inventory(groups=every_device), timeout=RUN_TIMEOUT_S,
                                             edge_fleet_serial=ALL_AT_ONCE)
            assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
            # Fresh devices: nothing was active before.
            assert {host: (entry["status"], entry["active_sha256"], entry["previous_sha256"])
                    for host, entry in devices_by_host(read_summary(summary)).items()} == \
                {host: ("updated", first.sha256, None) for names in every_device.values() for host in names}
            yield Rollout(session, {"shop": ["dev1", "dev2"], "lab": ["dev3", fourth]}, arm64_unused)
    except FleetUnavailable as reason:
        pytest.skip(str(reason))


@pytest.fixture(scope="module")
def fleet(rollout: Rollout) -> FleetSession:
    """The fleet of the fault tests: its default inventory is the four x86 devices."""
    return rollout.session


# --- what is checked after every run ------------------------------------------------------------------------

def devices(session: FleetSession, names: Sequence[str] = HOSTS) -> list[Device]:
    return [session.fleet.device(name) for name in names]


def assert_every_device_works(session: FleetSession, expected: dict[str, ModelVersion]) -> None:
    """No device without a working model: `current` resolves to a whole version whose sha256 is the expected
    one and the device's edge-classify --verify and --info accept it through the link."""
    assert {device.name: device.working_model(MODEL_NAME) for device in devices(session, list(expected))} == \
        {name: (model.prefix, model.sha256) for name, model in expected.items()}


def running_models(session: FleetSession, names: Sequence[str] = HOSTS) -> dict[str, ModelVersion]:
    """Which of the session's models each device's `current` points to now."""
    return {device.name: session.models[device.current_version()] for device in devices(session, names)}


def assert_summary(summary_path: Path, model: ModelVersion, expected: dict[str, dict[str, Any]],
                   inventory_hosts: Sequence[str] = HOSTS) -> dict[str, Any]:
    """The summary file holds the model and exactly one entry per inventory host with the expected values
    (keys not given are not checked here), and counts that add up."""
    summary = read_summary(summary_path)
    assert summary["model"] == {"file": MODEL_NAME, "sha256": model.sha256}
    hosts = [entry["host"] for entry in summary["devices"]]
    assert sorted(hosts) == sorted(inventory_hosts), hosts
    entries = devices_by_host(summary)
    assert {host: {key: entries[host][key] for key in values} for host, values in expected.items()} == expected
    statuses = [entry["status"] for entry in summary["devices"]]
    assert set(statuses) <= STATUSES
    assert {status: count for status, count in summary["counts"].items() if count} == \
        {status: statuses.count(status) for status in set(statuses)}
    for entry in summary["devices"]:
        for key in ("step", "reason"):
            assert entry[key] is None or (entry[key].strip() and "\n" not in entry[key]), entry
    return summary


def assert_table_matches(output: str, summary_path: Path) -> None:
    """The table printed at the end of the run says what the summary file says: one row per device with its
    status and the first 12 hex digits of its active and previous models ("-" when unknown)."""
    table = output[output.rindex("FLEET SUMMARY"):]
    for entry in read_summary(summary_path)["devices"]:
        short = [entry[key][:12] if entry[key] else "-" for key in ("active_sha256", "previous_sha256")]
        row = rf"^{re.escape(entry['host'])}\s+{entry['status']}\s+{short[0]}\s+{short[1]}\s"
        assert re.search(row, table, flags=re.MULTILINE), (row, table)


def updated(model: ModelVersion, previous: ModelVersion) -> dict[str, Any]:
    return {"status": "updated", "active_sha256": model.sha256, "previous_sha256": previous.sha256,
            "step": None, "reason": None}


def restarts_since(session: FleetSession, before: dict[str, int]) -> dict[str, list[str]]:
    return {device.name: device.restarts()[before[device.name]:] for device in devices(session, list(before))}


def restart_counts(session: FleetSession, names: Sequence[str] = HOSTS) -> dict[str, int]:
    return {device.name: len(device.restarts()) for device in devices(session, names)}


def restarted_once_on(session: FleetSession, models: dict[str, ModelVersion]) -> dict[str, list[str]]:
    return {name: [f"restart {service} {model.prefix}" for service in SERVICES[name]]
            for name, model in models.items()}


def connections_seen(device: Device) -> int:
    return device.sshd.log.read_text(errors="replace").count("Connection from ")


def batches_of(output: str, hosts: Sequence[str]) -> list[list[str]]:
    """The hosts of each run of the rollout play, as Ansible printed them (the play header repeats per batch)."""
    sections = re.split(r"^PLAY \[(.*)\] \*+$", output, flags=re.MULTILINE)
    names = sections[1::2]
    rollout = max(set(names), key=names.count)
    batches = []
    for name, body in zip(names, sections[2::2]):
        if name == rollout:
            seen = re.findall(r"^(?:ok|changed|failed|fatal|skipping): \[([^\]]+)\]", body, flags=re.MULTILINE)
            batches.append(sorted(set(seen) & set(hosts)))
    return batches


def default_batches(hosts: Sequence[str]) -> list[list[str]]:
    """The default batches [1, "25%", "100%"] of four devices, in inventory order."""
    return [list(hosts[:1]), list(hosts[1:2]), sorted(hosts[2:])]


def failure_output(result: subprocess.CompletedProcess) -> str:
    return result.stdout[-8000:] + result.stderr[-3000:]


def run_make(target: str, folder: Path, **variables: str) -> subprocess.CompletedProcess:
    """`make TARGET NAME=value ...` in the repository with the fleet's Ansible environment, nothing passed
    down from an enclosing make."""
    env = {key: value for key, value in ansible_environment(folder).items() if key not in MAKE_ENVIRONMENT}
    return subprocess.run(["make", "--no-print-directory", target, *(f"{name}={value}" for name, value
                                                                     in variables.items())],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)


# --- the rollout ---------------------------------------------------------------------------------------------

def test_rollout_to_four_devices_then_nothing_changes_then_rollback(rollout: Rollout, tmp_path: Path):
    """Model A with the default batches (dev1, then dev2, then dev3 and the fourth device), the same model
    again (changed=0, every device unchanged), model B, then `make rollback-fleet` back to A. The fourth
    device is the emulated arm64 system where it runs, else dev4."""
    fleet, hosts = rollout.session, rollout.hosts
    running = running_models(fleet, hosts)
    first = running["dev1"]
    assert running == {name: first for name in hosts}
    # The runtime the module fixture's first run installed: a venv that sees the system's packages (picamera2).
    for device in devices(fleet, hosts):
        assert "include-system-site-packages = true" in (device.venv / "pyvenv.cfg").read_text(), device.name
    model_a = fleet.new_model("A")
    before = restart_counts(fleet, hosts)

    result, summary = fleet.deploy(model_a, fleet.inventory(groups=rollout.groups))
    assert result.returncode == 0, failure_output(result)
    assert batches_of(result.stdout, hosts) == default_batches(hosts)
    assert_every_device_works(fleet, {name: model_a for name in hosts})
    for device in devices(fleet, hosts):
        folder = device.versions_dir / model_a.prefix
        assert (folder / MODEL_NAME).read_bytes() == model_a.path.read_bytes()
        assert (folder / MANIFEST_NAME).read_bytes() == (model_a.path.parent / MANIFEST_NAME).read_bytes()
        assert set(os.listdir(folder)) - {MODEL_NAME, MANIFEST_NAME} <= {fleet.smoke.path.name}
    # Each service restarted exactly once, after `current` pointed to the new version; none where it is off.
    assert restarts_since(fleet, before) == restarted_once_on(fleet, {name: model_a for name in hosts})
    assert_summary(summary, model_a, {name: updated(model_a, first) for name in hosts}, hosts)
    assert_table_matches(result.stdout, summary)

    # The same model again: nothing changes anywhere, and the run says so.
    before = restart_counts(fleet, hosts)
    again, summary = fleet.deploy(model_a, fleet.inventory(groups=rollout.groups), edge_fleet_serial=ALL_AT_ONCE)
    assert again.returncode == 0, failure_output(again)
    recap = play_recap(again.stdout)
    assert {host: (counts["changed"], counts["failed"], counts["unreachable"]) for host, counts in recap.items()
            if host in hosts} == {host: (0, 0, 0) for host in hosts}, again.stdout[-3000:]
    assert NO_CHANGE_LINE.search(again.stdout), again.stdout[-3000:]
    assert restarts_since(fleet, before) == {name: [] for name in hosts}
    assert_summary(summary, model_a, {name: {"status": "unchanged", "active_sha256": model_a.sha256,
                                             "step": None, "reason": None} for name in hosts}, hosts)

    # Model B everywhere, then `make rollback-fleet` brings A back on every device.
    model_b = fleet.new_model("B")
    result, summary = fleet.deploy(model_b, fleet.inventory(groups=rollout.groups), edge_fleet_serial=ALL_AT_ONCE)
    assert result.returncode == 0, failure_output(result)
    assert_every_device_works(fleet, {name: model_b for name in hosts})
    assert_summary(summary, model_b, {name: updated(model_b, model_a) for name in hosts}, hosts)

    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    before = restart_counts(fleet, hosts)
    rollback_summary = tmp_path / "rollback.json"
    rolled = run_make("rollback-fleet", fleet.folder, INVENTORY=str(fleet.inventory(groups=rollout.groups)),
                      SUMMARY=str(rollback_summary))
    assert rolled.returncode == 0, failure_output(rolled)
    assert_every_device_works(fleet, {name: model_a for name in hosts})
    assert restarts_since(fleet, before) == restarted_once_on(fleet, {name: model_a for name in hosts})
    entries = devices_by_host(read_summary(rollback_summary))
    assert {host: (entry["active_sha256"], entry["previous_sha256"]) for host, entry in entries.items()} == \
        {host: (model_a.sha256, model_b.sha256) for host in hosts}
    # Three versions kept, never more: first, A and B are all there.
    for device in devices(fleet, hosts):
        assert device.version_folders() == sorted({first.prefix, model_a.prefix, model_b.prefix})


def test_the_fourth_rollout_device_is_the_emulated_arm64_system(rollout: Rollout):
    """Where make arm64-check's Bookworm root filesystem is cached, the rollout test's fourth device is that
    system: its sessions run aarch64 programs under the Pi's CPU model, and the runtime the role installed
    there is the aarch64 build of LiteRT. Skipped, with the reason, where it is not."""
    if rollout.arm64_unused:
        pytest.skip(f"the rollout test ran on four x86 devices: {rollout.arm64_unused}")
    device = rollout.session.fleet.device(ARM64_DEVICE_NAME)
    assert isinstance(device, Arm64Device) and rollout.hosts[-1] == ARM64_DEVICE_NAME
    session = device.over_ssh('uname -m; echo "$QEMU_CPU"')
    assert session.returncode == 0, session.stderr
    assert session.stdout.split() == ["aarch64", CPU]
    venv = device.venv / "lib"
    records = [path.read_text() for path in venv.glob("python3*/site-packages/ai_edge_litert-*.dist-info/WHEEL")]
    assert len(records) == 1 and re.search(r"^Tag: cp3\d+-cp3\d+-manylinux_\d+_\d+_aarch64$", records[0],
                                           flags=re.MULTILINE), records
    info = device.edge_classify("--info", device.device_path(device.current / MODEL_NAME), "--json")
    assert info.returncode == 0, info.stderr
    assert json.loads(info.stdout)["backend"] == "ai_edge_litert", info.stdout


# --- faults ----------------------------------------------------------------------------------------------------

def assert_failure_entry(entry: dict[str, Any], status: str, active: ModelVersion | None) -> None:
    """A failing device's entry: its status, the model it runs (None: the summary may not know it), and a
    named step with a reason."""
    assert entry["status"] == status, entry
    if active is not None:
        assert entry["active_sha256"] == active.sha256, entry
    assert entry["step"] and entry["reason"], entry


def test_smoke_test_failure_keeps_the_old_model_and_a_service_that_fails_is_rolled_back(fleet: FleetSession):
    """One batch of all four devices with max_fail_percentage 50: dev2's smoke test fails before the switch
    (it expects another label), dev3's service does not come up with the new model after the switch. That is
    2 of 4 failed, not more than 50%, so dev1 and dev4 are updated."""
    before = running_models(fleet)
    model = fleet.new_model("faults-a")
    restarts = restart_counts(fleet)
    fleet.fleet.device("dev3").break_service_for(model.prefix)
    try:
        inventory = fleet.inventory({"dev2": {"edge_model_smoke_label": WRONG_LABEL}})
        result, summary = fleet.deploy(model, inventory, edge_fleet_serial=["100%"],
                                       edge_fleet_max_fail_percentage=50)
    finally:
        fleet.fleet.device("dev3").break_service_for(None)
    assert result.returncode != 0, failure_output(result)
    assert_every_device_works(fleet, {"dev1": model, "dev2": before["dev2"], "dev3": before["dev3"],
                                      "dev4": model})
    # dev2 never switched, and the version it refused is not left on it.
    assert model.prefix not in fleet.fleet.device("dev2").version_folders()
    # dev3 switched, its service failed, `current` went back and the service was restarted on the old model.
    assert restarts_since(fleet, restarts) == {
        "dev1": [f"restart {CAMERA} {model.prefix}"],
        "dev2": [],
        "dev3": [f"restart {CAMERA} {model.prefix}", f"restart {CAMERA} {before['dev3'].prefix}"],
        "dev4": []}
    entries = devices_by_host(assert_summary(summary, model, {
        "dev1": updated(model, before["dev1"]), "dev4": updated(model, before["dev4"])}))
    assert_table_matches(result.stdout, summary)
    assert_failure_entry(entries["dev2"], "failed", before["dev2"])
    assert entries["dev2"]["previous_sha256"] != model.sha256, entries["dev2"]
    assert entries["dev2"]["step"] == "smoke test", entries["dev2"]
    assert WRONG_LABEL in entries["dev2"]["reason"], entries["dev2"]
    assert_failure_entry(entries["dev3"], "rolled_back", before["dev3"])
    assert entries["dev3"]["step"] == "service check", entries["dev3"]
    assert CAMERA in entries["dev3"]["reason"], entries["dev3"]


def test_failing_canary_stops_the_rollout_before_any_other_device_changes(fleet: FleetSession):
    """The default policy (batches [1, 25%, 100%], max_fail_percentage 0): the canary dev1 fails its smoke
    test, so dev2-dev4 are never contacted."""
    before = running_models(fleet)
    versions = {device.name: device.version_folders() for device in devices(fleet)}
    connections = {device.name: connections_seen(device) for device in devices(fleet)}
    restarts = restart_counts(fleet)
    model = fleet.new_model("faults-b")
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    # Through `make deploy-fleet`, whose exit status must say the rollout failed; the test's wheel replaces
    # the one `make wheel` builds (a later -e wins), so the canary's runtime is left as it is.
    summary = fleet.summary_path()
    overrides = fleet.folder / "deploy-fleet-vars.json"
    overrides.write_text(json.dumps({"edge_model_wheel": str(fleet.wheelhouse.wheel)}))
    result = run_make("deploy-fleet", fleet.folder,
                      INVENTORY=str(fleet.inventory({"dev1": {"edge_model_smoke_label": WRONG_LABEL}})),
                      MODEL=str(model.path), SUMMARY=str(summary), ANSIBLE_ARGS=f"-e @{overrides}")
    assert result.returncode != 0, failure_output(result)
    assert MAKE_RECIPE_FAILED.search(result.stderr), failure_output(result)
    assert_every_device_works(fleet, before)
    # The canary's refused version is removed; nothing else is restarted, copied or even contacted.
    assert {device.name: device.version_folders() for device in devices(fleet)} == versions
    assert restarts_since(fleet, restarts) == {name: [] for name in HOSTS}
    others = [device for device in devices(fleet) if device.name != "dev1"]
    assert {device.name: connections_seen(device) for device in others} == \
        {device.name: connections[device.name] for device in others}
    entries = devices_by_host(assert_summary(summary, model, {}))
    assert_failure_entry(entries["dev1"], "failed", before["dev1"])
    assert entries["dev1"]["step"] == "smoke test", entries["dev1"]
    for device in others:
        entry = entries[device.name]
        assert (entry["status"], entry["active_sha256"] in (None, before[device.name].sha256)) == \
            ("not_attempted", True), entry


def test_device_lost_mid_run_is_reported_unreachable_and_the_others_complete(fleet: FleetSession):
    """One batch of all four with the default max_fail_percentage 0: dev4 drops off the network as its copy
    starts (its sshd and every session are killed). An unreachable device does not count toward
    max_fail_percentage, so the three others complete; dev4 keeps its old model."""
    lost = fleet.fleet.device("dev4")
    before = running_models(fleet)
    versions_before = set(lost.version_folders())
    model = fleet.new_model("faults-c")

    def copy_started() -> bool:
        return bool(set(lost.version_folders()) - versions_before)

    try:
        with stop_device_when(lost, copy_started, STOP_WATCH_S) as stopped:
            result, summary = fleet.deploy(model, edge_fleet_serial=ALL_AT_ONCE)
        assert stopped["stopped_after_s"] is not None, "dev4's copy never started: " + failure_output(result)
        assert result.returncode != 0, failure_output(result)
        assert play_recap(result.stdout)["dev4"]["unreachable"] == 1, result.stdout[-3000:]
        entries = devices_by_host(assert_summary(summary, model, {
            name: updated(model, before[name]) for name in ("dev1", "dev2", "dev3")}))
        assert_table_matches(result.stdout, summary)
        assert entries["dev4"]["status"] == "unreachable", entries["dev4"]
        assert entries["dev4"]["active_sha256"] in (None, before["dev4"].sha256), entries["dev4"]
        assert_every_device_works(fleet, {"dev1": model, "dev2": model, "dev3": model, "dev4": before["dev4"]})
    finally:
        if not lost.sshd.running:
            lost.sshd.start()
    # Back on the network, the next run finishes the job there, over what the lost run left.
    result, summary = fleet.deploy(model, fleet.inventory(groups={"lab": ["dev4"]}))
    assert result.returncode == 0, failure_output(result)
    assert [(entry["host"], entry["status"], entry["active_sha256"], entry["previous_sha256"])
            for entry in read_summary(summary)["devices"]] == \
        [("dev4", "updated", model.sha256, before["dev4"].sha256)]
    assert_every_device_works(fleet, {name: model for name in HOSTS})


def test_disk_full_during_the_copy_keeps_the_old_model(fleet: FleetSession):
    """dev2's models folder is a tmpfs with room for its kept versions and little more; a model bigger than
    that fails in the copy, and dev2 keeps running its old model with nothing of the new one left."""
    device = fleet.fleet.device("dev2")
    before = running_models(fleet)
    restarts = restart_counts(fleet)
    try:
        with tmpfs_versions(device, folder_usage(device.versions_dir) + TMPFS_HEADROOM_BYTES):
            versions = device.version_folders()
            big = fleet.new_model("faults-d", padding=BIG_MODEL_PADDING)
            result, summary = fleet.deploy(big, fleet.inventory(groups={"shop": ["dev2"]}))
            assert result.returncode != 0, failure_output(result)
            assert device.version_folders() == versions
            assert device.working_model(MODEL_NAME) == (before["dev2"].prefix, before["dev2"].sha256)
    except FleetUnavailable as reason:
        pytest.skip(str(reason))
    assert restarts_since(fleet, restarts)["dev2"] == []
    summary_data = read_summary(summary)
    assert [entry["host"] for entry in summary_data["devices"]] == ["dev2"]
    entry = summary_data["devices"][0]
    assert_failure_entry(entry, "failed", before["dev2"])
    assert entry["step"] == "copy", entry
    # After the tmpfs is gone, the device is as it was.
    assert_every_device_works(fleet, before)
