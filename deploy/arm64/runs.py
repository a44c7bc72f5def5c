"""One distro's runs: each of deploy/README.md's install paths in its root filesystem, edge-classify under
each CPU model through chroot, and last the device workflow over SSH (the deploy playbook, then every
command on the deployed copies); every run compared with x86."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from edge_runtime.atomic import write_text

from .answers import COMMAND_TIMEOUT_S, ModelAnswers, collect_answers, first_error
from .chroot import DEVICE_HOME, DEVICE_WORK, checked, chroot, chroot_prefix, device_path
from .errors import RunError, log
from .install import (BACKEND_PACKAGES, INSTALL_BACKENDS, INSTALL_TIMEOUT_S, INSTALLS, SSH_CPU, SSH_DEST, SSH_DISTRO,
                      SSH_INSTALL, Install, ensure_ssh_server, failed_install, readme_install_script, ssh_model_dir,
                      ssh_model_path)
from .parity import JSON_SCORE_RESOLUTION, RunOutcome, compare_models, info_differences
from .rootfs import prepare_rootfs
from .ssh import DEVICE_NAME, LOOPBACK, Session, SshError, running_sshd

# A Python snippet run with the device environment's python: versions of what was installed.
PROBE = """
import importlib.metadata as metadata, importlib.util, json, platform
def version(name):
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return ""
import numpy, PIL
print(json.dumps({"python": platform.python_version(), "numpy": numpy.__version__, "numpy_file": numpy.__file__,
                  "pillow": PIL.__version__, "ai-edge-litert": version("ai-edge-litert"),
                  "tflite-runtime": version("tflite-runtime"),
                  "tensorflow": importlib.util.find_spec("tensorflow") is not None or bool(version("tensorflow"))
                                or bool(version("tensorflow-cpu")) or bool(version("keras"))}))
"""


# Runs a command on the device from a folder there: (command, cwd) -> its completed process.
Shell = Callable[[Sequence[str], str], subprocess.CompletedProcess]


def chroot_shell(root: Path, cache: Path, cpu: str) -> Shell:
    """Commands on the device through chroot (the default way of this check)."""
    def run(command: Sequence[str], cwd: str) -> subprocess.CompletedProcess:
        return chroot(root, cache, cpu, command, timeout=COMMAND_TIMEOUT_S, cwd=cwd)
    return run


def ssh_shell(session: Session) -> Shell:
    """Commands on the device over SSH, as a person would type them."""
    def run(command: Sequence[str], cwd: str) -> subprocess.CompletedProcess:
        try:
            return session.run(command, cwd)
        except SshError as error:
            raise RunError(str(error)) from error
    return run


def device_runner(shell: Shell, venv: str, program: str = "edge-classify") -> Any:
    """`run(args)`: one of the virtual environment's programs on the device, from the work folder."""
    def run(args: list[str]) -> subprocess.CompletedProcess:
        return shell([f"{device_path(venv)}/bin/{program}", *args], DEVICE_WORK)
    return run


@dataclasses.dataclass
class DistroResult:
    outcomes: list[RunOutcome]
    timings: dict[str, float]
    notes: list[str]


def check_distro(distro: str, root: Path, cache: Path, work: Path, wheel: Path, models: list[Path],
                 references: dict[str, dict[str, ModelAnswers]], cpus: Sequence[str],
                 log_folder: Path, ssh: bool) -> DistroResult:
    """Install and run every install path and CPU model in one root filesystem; never raises RunError."""
    timings: dict[str, float] = {}
    notes: list[str] = []
    outcomes: list[RunOutcome] = []
    started = time.monotonic()
    prepare_rootfs(root)
    device_work = root / DEVICE_WORK.lstrip("/")
    shutil.rmtree(device_work, ignore_errors=True)
    shutil.copytree(work, device_work, symlinks=False)
    shutil.copyfile(wheel, root / DEVICE_HOME.lstrip("/") / wheel.name)
    for install in (i for i in INSTALLS if distro in i.distros):
        began = time.monotonic()
        log_path = log_folder / f"{distro}-{install.name}-install.log"
        completed = chroot(root, cache, "cortex-a72", ["/bin/sh", "-c", readme_install_script(wheel.name, install)],
                           timeout=INSTALL_TIMEOUT_S)
        write_text(log_path, completed.stdout + completed.stderr)
        timings[f"install {install.name}"] = round(time.monotonic() - began, 1)
        if completed.returncode != 0:
            reason = first_error(completed)
            outcomes.append(failed_install(distro, install, reason, time.monotonic() - began, log_path))
            notes.append(f"{distro}: README's [{install.extra}] install failed: {reason} (log: {log_path})")
            continue
        for cpu in cpus:
            outcomes.append(run_one(distro, install, cpu, chroot_shell(root, cache, cpu), models, references))
    edge_installed = any(outcome.install == INSTALLS[0].name and outcome.cpu != "-" for outcome in outcomes)
    if ssh and distro == SSH_DISTRO and edge_installed:
        # Last, on the runtime the chroot installed.
        began = time.monotonic()
        outcomes.append(run_over_ssh(distro, root, cache, models, references, log_folder))
        timings["ssh deploy and runs"] = round(time.monotonic() - began, 1)
    timings["total"] = round(time.monotonic() - started, 1)
    return DistroResult(outcomes, timings, notes)


def run_over_ssh(distro: str, root: Path, cache: Path, models: list[Path],
                 references: dict[str, dict[str, ModelAnswers]], log_folder: Path) -> RunOutcome:
    """The device workflow over SSH: sshd in the root filesystem, the deploy playbook (what `make deploy` runs)
    for each model, then every edge-classify command over SSH on the deployed copies, compared with x86 like
    the chroot runs. Never raises RunError."""
    began = time.monotonic()
    try:
        ensure_ssh_server(root, cache)
        shutil.rmtree(root / DEVICE_HOME.lstrip("/") / SSH_DEST, ignore_errors=True)
        with contextlib.ExitStack() as stack:
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ssh-", dir=cache)))
            session = stack.enter_context(running_sshd(
                root, chroot_prefix(root, cache, SSH_CPU), SSH_CPU, folder, log_folder / f"{distro}-sshd.log",
                COMMAND_TIMEOUT_S))
            log(f"{distro}: sshd listening on {LOOPBACK}:{session.port}; the deploy playbook of "
                f"{', '.join(model.name for model in models)} to {session.destination}:{SSH_DEST}")
            for model in models:
                deployed = session.deploy(model, ssh_model_dir(model.name), folder)
                write_text(log_folder / f"{distro}-deploy-{model.stem}.log", deployed.stdout + deployed.stderr)
                if deployed.returncode != 0:
                    raise RunError(f"the deploy playbook of {model.name} to {session.destination} (port {session.port}) "
                                   f"failed: {playbook_failure(deployed)} (log: {log_folder})")
            paths = {model.name: ssh_model_path(model.name) for model in models}
            return run_one(distro, SSH_INSTALL, SSH_CPU, ssh_shell(session), models, references, began, paths)
    except (RunError, SshError, OSError, subprocess.SubprocessError) as error:
        outcome = RunOutcome(distro=distro, install=SSH_INSTALL.name, cpu=SSH_CPU, machine="", python="",
                             backend=INSTALL_BACKENDS[SSH_INSTALL.name], backend_version="", numpy_version="",
                             pillow_version="", tensorflow_installed=False, seconds=time.monotonic() - began)
        outcome.problems.append(f"over SSH: {error}")
        return outcome


def playbook_failure(completed: subprocess.CompletedProcess) -> str:
    """The summary's line for the device when it has one ("STEP: REASON"), else the output's last line."""
    rows = [line for line in completed.stdout.splitlines() if line.startswith(f"{DEVICE_NAME} ")
            and "ok=" not in line]
    return " ".join(rows[-1].split()[4:]) if rows else first_error(completed)


def run_one(distro: str, install: Install, cpu: str, shell: Shell, models: list[Path],
            references: dict[str, dict[str, ModelAnswers]], began: float | None = None,
            paths: dict[str, str] | None = None) -> RunOutcome:
    """One distro, install path and CPU model: facts about the environment, then every model against x86.

    `shell` runs each command on the device (through chroot, or over SSH); `began` is when the run's
    clock started (default: now); `paths` maps a model's name to where the device reads it, relative to
    the work folder (default models/NAME)."""
    began = time.monotonic() if began is None else began
    expected_backend = INSTALL_BACKENDS[install.name]
    outcome = RunOutcome(distro=distro, install=install.name, cpu=cpu, machine="", python="",
                         backend=expected_backend, backend_version="", numpy_version="", pillow_version="",
                         tensorflow_installed=False, seconds=0.0)
    where = f"the {distro}/{install.name}/{cpu} run"
    try:
        outcome.machine = checked(shell(["uname", "-m"], DEVICE_HOME), ["uname", "-m"], where).stdout.strip()
        probe_command = [f"{device_path(install.venv)}/bin/python", "-c", PROBE]
        probe = checked(shell(probe_command, DEVICE_HOME), probe_command[:2], where)
        facts = json.loads(probe.stdout)
        outcome.python = facts["python"]
        outcome.numpy_version = facts["numpy"] + (" (Debian's)" if facts["numpy_file"].startswith("/usr/lib/")
                                                  else " (pip's)")
        outcome.pillow_version = facts["pillow"]
        outcome.tensorflow_installed = bool(facts["tensorflow"])
        outcome.backend_version = facts[BACKEND_PACKAGES[expected_backend]]
        run = device_runner(shell, install.venv)
        python = device_runner(shell, install.venv, "python")
        reference_set = references.get(expected_backend)
        if reference_set is None:
            raise RunError(f"no x86 reference for the {expected_backend} backend")
        for model in models:
            name = (paths or {}).get(model.name, f"models/{model.name}")
            reference = reference_set[model.name]
            answers = collect_answers(run, name, int(reference.info.get("num_classes", 1)), f"{distro}/{cpu}",
                                      python)
            answers = as_if_read_from(answers, name, f"models/{model.name}")
            outcome.problems.extend(answers.problems)
            if answers.info:
                if answers.info.get("backend") != expected_backend:
                    outcome.problems.append(f"{name}: edge-classify chose the {answers.info.get('backend')} backend, "
                                            f"not {expected_backend}")
                outcome.problems.extend(f"{name}: --info differs: {difference}"
                                        for difference in info_differences(reference.info, answers.info))
            if answers.verify != reference.verify:
                outcome.problems.append(f"{name}: --verify said {answers.verify}, x86 said {reference.verify}")
            if answers.benchmark:
                outcome.benchmarks[model.name] = {key: answers.benchmark[key] for key in
                                                  ("runs", "init_ms", "first_ms", "mean_ms", "p50_ms", "p90_ms")}
            int8_scale = (reference.info.get("output", {}).get("quantization") or {}).get("scale")
            outcome.parities.append(compare_models(model.name, int8_scale, reference.results, answers.results))
            if int8_scale is not None:
                check_score_resolution(reference.info, name, outcome)
                if answers.reference_kernels is not None and reference.reference_kernels is not None:
                    outcome.reference_kernels[model.name] = answers.reference_kernels == reference.reference_kernels
    except (RunError, ValueError, KeyError) as error:
        outcome.problems.append(f"stopped: {error}")
    outcome.seconds = time.monotonic() - began
    return outcome


def as_if_read_from(answers: ModelAnswers, device_path: str, reference_path: str) -> ModelAnswers:
    """The answers with the model's path as x86 gave it: --info and --verify print the path they were given,
    and the SSH run reads the deployed copy at another path (deployed/NAME/current/...) than x86's."""
    if device_path == reference_path:
        return answers
    info = dict(answers.info)
    if info.get("model") == device_path:
        info["model"] = reference_path
    code, message = answers.verify
    return dataclasses.replace(answers, info=info, verify=(code, message.replace(device_path, reference_path)))


def check_score_resolution(info: dict[str, Any], name: str, outcome: RunOutcome) -> None:
    """Equal 6-decimal scores mean equal int8 outputs only when one int8 step is larger than the rounding."""
    scale = (info.get("output", {}).get("quantization") or {}).get("scale")
    if scale is not None and scale <= 2 * JSON_SCORE_RESOLUTION:
        outcome.problems.append(f"{name}: output scale {scale} is below what 6-decimal scores can tell apart; "
                                "int8 identity is not proven by the printed scores")
