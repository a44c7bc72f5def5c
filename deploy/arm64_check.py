"""`make arm64-check`: run the device install and edge-classify in emulated arm64 Raspberry Pi OS userlands.

Builds (or reuses, from the cache) arm64 Debian Bookworm and Trixie root filesystems with
debootstrap, follows deploy/README.md's install inside each (a virtual environment, the wheel from
`make wheel` with `[edge]`; on Bookworm also `[tflite]`), copies the models from OUT and runs
`edge-classify` there under qemu-user with QEMU_CPU=cortex-a72 (Pi 4) and cortex-a76 (Pi 5): on
CIFAR test images and on every image format the tests cover, plus `--info`, `--verify` and
`--benchmark --runs 20`. The same commands run on this x86 machine, and `arm64_parity.py` compares
the answers: float32 the same top-1 within 1e-5; int8 the same top-1 within one quantization step,
and bit-identical raw outputs under LiteRT's portable reference kernels (see arm64_parity.py why).

Writes OUT/arm64-check.json and prints a summary. Exit 0 when every run matched, 1 on any mismatch
(each named by file and difference), 2 when emulation cannot run here (not root, no qemu binfmt,
no mirror, no models), with the reason. Emulated timings are recorded but are not Pi timings.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import click

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))  # run as a script: `deploy.` and `edge_runtime.` import from the checkout

from deploy.arm64_parity import (EMULATED_TIMING_NOTE, JSON_SCORE_RESOLUTION, ParseError,  # noqa: E402
                                 RunOutcome, ScoredImage, benchmark_line, compare_models, info_differences,
                                 parse_results, summary_lines)
from deploy import arm64_ssh  # noqa: E402
from edge_runtime.atomic import write_text  # noqa: E402

EXIT_OK = 0
EXIT_MISMATCH = 1
EXIT_UNAVAILABLE = 2

DISTROS = ("bookworm", "trixie")
CPUS = ("cortex-a72", "cortex-a76")
DEFAULT_MIRROR = "http://deb.debian.org/debian"
DEFAULT_CACHE = Path.home() / ".cache" / "edge-image-toolkit" / "arm64"
DEFAULT_DATA = REPO_ROOT.parent / "shared" / "datasets" / "cifar10-jpeg" / "test"
DEFAULT_IMAGES = 200
BENCHMARK_RUNS = 20
PYPI_PROBE = "https://pypi.org/simple/ai-edge-litert/"
NETWORK_TIMEOUT_S = 20
DEBOOTSTRAP_TIMEOUT_S = 40 * 60
INSTALL_TIMEOUT_S = 15 * 60
COMMAND_TIMEOUT_S = 10 * 60
REPORT_NAME = "arm64-check.json"
CHROOT_SCRIPT = Path(__file__).resolve().parent / "arm64_chroot.sh"
DEPLOY_SCRIPT = Path(__file__).resolve().parent / "deploy.sh"
BINFMT_DIR = Path("/proc/sys/fs/binfmt_misc")
BINFMT_ENTRY = BINFMT_DIR / "qemu-aarch64"
TOOLS_HINT = "apt-get install qemu-user-static binfmt-support debootstrap"
# Debian packages of the device's system: python3-venv from README step 1, and the numpy and
# Pillow that python3-picamera2 pulls in on Raspberry Pi OS (picamera2 itself is not in Debian).
ROOTFS_PACKAGES = ("python3", "python3-venv", "python3-pip", "python3-numpy", "python3-pil", "ca-certificates")
ROOTFS_STAMP = ".arm64-check-rootfs"
# Inside the chroot: the Pi user's home (root here), where README step 1 runs.
DEVICE_HOME = "/root"
DEVICE_WORK = f"{DEVICE_HOME}/arm64-check"
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
HOST_CA_FOLDER = Path("/usr/local/share/ca-certificates")


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
# its sshd, `make deploy` of every model to where the chroot runs had them, every command over SSH.
SSH_INSTALL = Install("ssh", "edge", "~/edge-venv", ("bookworm",))
SSH_DISTRO = "bookworm"
SSH_CPU = "cortex-a72"
SSH_DEST = DEVICE_WORK.removeprefix(DEVICE_HOME + "/") + "/models"  # deploy.sh's DEST, relative to the home
# The backend each install path must end up using, as edge-classify --info names it.
INSTALL_BACKENDS = {"edge": "ai_edge_litert", "tflite": "tflite_runtime", "ssh": "ai_edge_litert"}
BACKEND_PACKAGES = {"ai_edge_litert": "ai-edge-litert", "tflite_runtime": "tflite-runtime"}

# A Raspberry Pi 4 (Cortex-A72, part 0xd08) and Pi 5 (Cortex-A76, part 0xd0b) /proc/cpuinfo, as the
# kernel prints them, so LiteRT's CPU detection reads an arm64 CPU instead of the host's x86 one.
CPUINFO = {
    "cortex-a72": ("fp asimd evtstrm crc32 cpuid", "0x0", "0xd08", "3", "Raspberry Pi 4 Model B Rev 1.4"),
    "cortex-a76": ("fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop "
                   "asimddp", "0x4", "0xd0b", "1", "Raspberry Pi 5 Model B Rev 1.0"),
}
PI_CORES = 4

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


# Run with the device environment's python from the work folder: the raw int8 output bytes of every
# image under LiteRT's portable reference kernels (no XNNPACK, no NEON/AVX2 paths), one line per image.
# Equal lines on both machines show that the emulated arm64 userland computes exactly what x86 does.
REFERENCE_KERNEL_PROBE = """
import glob, importlib, sys
from edge_runtime.classify import Classifier
from edge_runtime.interpreter import BACKEND_MODULES, load_interpreter_class
model = sys.argv[1]
name, interpreter_class = load_interpreter_class(None)
resolver = importlib.import_module(BACKEND_MODULES[name]).OpResolverType.BUILTIN_REF
classifier = Classifier(model)
interpreter = interpreter_class(model_path=model, experimental_op_resolver_type=resolver, num_threads=1)
interpreter.allocate_tensors()
source, target = interpreter.get_input_details()[0]["index"], interpreter.get_output_details()[0]["index"]
for path in sorted(glob.glob("images/**/*.*", recursive=True)):
    interpreter.set_tensor(source, classifier.quantize_input(classifier.load(path)))
    interpreter.invoke()
    print(path, interpreter.get_tensor(target).tobytes().hex())
"""


class Unavailable(Exception):
    """Emulation cannot run here: exit 2 with this reason."""


class CheckFailed(Exception):
    """Something other than a difference stops the check (edge-classify fails on x86): exit 1."""


def log(message: str) -> None:
    click.echo(f"arm64-check: {message}", err=True)


# ---------------------------------------------------------------- preflight


def check_host(need_mirror: bool, mirror: str) -> None:
    """Root, the tools, qemu's binfmt handler with the fix-binary flag, and the mirrors; Unavailable if not."""
    if os.geteuid() != 0:
        raise Unavailable("must run as root (debootstrap, chroot and mounts need it): try `sudo make arm64-check`")
    missing = [tool for tool in ("debootstrap", "unshare", "chroot", "mount") if shutil.which(tool) is None]
    if missing:
        raise Unavailable(f"{', '.join(missing)} not found: install them with `{TOOLS_HINT}`")
    enable_binfmt()
    if need_mirror:
        probe_url(f"{mirror.rstrip('/')}/dists/bookworm/Release", "the Debian mirror")
    probe_url(PYPI_PROBE, "PyPI (the device install's pip needs it)")


def enable_binfmt() -> None:
    """Make the kernel run aarch64 programs through qemu-aarch64-static, as the issue's steps do."""
    if not (BINFMT_DIR / "status").exists():
        run_host(["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT_DIR)], "mounting binfmt_misc")
    if not BINFMT_ENTRY.exists() and shutil.which("update-binfmts"):
        subprocess.run(["update-binfmts", "--enable", "qemu-aarch64"], capture_output=True, check=False)
    if not BINFMT_ENTRY.exists():
        raise Unavailable(f"no binfmt handler for aarch64 ({BINFMT_ENTRY} is missing): install `{TOOLS_HINT}`")
    entry = BINFMT_ENTRY.read_text(encoding="utf-8", errors="replace")
    if not entry.startswith("enabled"):
        raise Unavailable("the aarch64 binfmt handler is disabled: run `update-binfmts --enable qemu-aarch64`")
    flags = next((line.split(":", 1)[1].strip() for line in entry.splitlines() if line.startswith("flags:")), "")
    if "F" not in flags:
        raise Unavailable("the aarch64 binfmt handler lacks the F (fix-binary) flag, so qemu cannot start inside "
                          f"a chroot: use Debian's qemu-user-static ({TOOLS_HINT})")


def probe_url(url: str, what: str) -> None:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=NETWORK_TIMEOUT_S):
            pass
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise Unavailable(f"{what} cannot be reached ({url}: {reason})") from error


def run_host(command: Sequence[str], what: str, **kwargs: Any) -> subprocess.CompletedProcess:
    """A host command that must succeed; Unavailable with its last error line if it does not."""
    try:
        completed = subprocess.run(list(command), capture_output=True, text=True, **kwargs)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise Unavailable(f"{what} failed: {error}") from error
    if completed.returncode != 0:
        last = (completed.stderr or completed.stdout).strip().splitlines()[-1:] or ["no message"]
        raise Unavailable(f"{what} failed (exit {completed.returncode}): {last[0]}")
    return completed


# ---------------------------------------------------------------- root filesystems


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


def cpuinfo_file(cache: Path, cpu: str) -> Path:
    """A Raspberry Pi style /proc/cpuinfo for this CPU model, written once into the cache."""
    features, variant, part, revision, model = CPUINFO[cpu]
    blocks = [f"processor\t: {core}\nBogoMIPS\t: 108.00\nFeatures\t: {features}\nCPU implementer\t: 0x41\n"
              f"CPU architecture: 8\nCPU variant\t: {variant}\nCPU part\t: {part}\nCPU revision\t: {revision}\n"
              for core in range(PI_CORES)]
    text = "\n".join(blocks) + f"\nRevision\t: 0000\nModel\t\t: {model}\n"
    path = cache / f"cpuinfo-{cpu}"
    if not path.exists() or path.read_text(encoding="utf-8") != text:
        write_text(path, text)
    return path


def device_env(cpu: str) -> list[str]:
    """The environment of every command in the chroot: nothing from the host but what a login would have."""
    return ["env", "-i", f"HOME={DEVICE_HOME}", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "LANG=C.UTF-8", f"QEMU_CPU={cpu}", f"PIP_CERT={CA_BUNDLE}", "PIP_DISABLE_PIP_VERSION_CHECK=1",
            "PIP_DEFAULT_TIMEOUT=120", "PIP_NO_INPUT=1"]


def chroot_prefix(root: Path, cache: Path, cpu: str) -> list[str]:
    """The command line before a program that runs it in the chroot under QEMU_CPU=cpu."""
    return ["sh", str(CHROOT_SCRIPT), str(root), str(cpuinfo_file(cache, cpu)), *device_env(cpu)]


def chroot(root: Path, cache: Path, cpu: str, command: Sequence[str], timeout: float, check: bool = False,
           cwd: str = DEVICE_HOME) -> subprocess.CompletedProcess:
    """Run `command` in the chroot under QEMU_CPU=cpu, from `cwd`; its output is returned, not printed."""
    full = [*chroot_prefix(root, cache, cpu), "/bin/sh", "-c", arm64_ssh.remote_command(command, cwd)]
    try:
        completed = subprocess.run(full, capture_output=True, text=True, timeout=timeout, errors="replace")
    except subprocess.TimeoutExpired as error:
        raise RunError(f"{' '.join(command[:3])} did not finish within {timeout:.0f} s under emulation") from error
    return checked(completed, command, f"the {root.name} chroot") if check else completed


def device_path(path: str) -> str:
    """A README path such as ~/edge-venv as the chroot's absolute path (commands are passed quoted)."""
    return DEVICE_HOME + path[1:] if path.startswith("~/") else path


class RunError(Exception):
    """One step inside a chroot failed: recorded in its run, the others still run."""


# Runs a command on the device from a folder there: (command, cwd) -> its completed process.
Shell = Callable[[Sequence[str], str], subprocess.CompletedProcess]


# ---------------------------------------------------------------- inputs


def find_models(out: Path) -> list[Path]:
    models = sorted(out.glob("*.tflite"))
    if not models:
        raise Unavailable(f"OUT={out} has no .tflite models to check: run `make train convert` first "
                          f"(or give OUT=folder with model_int8.tflite and model_float32.tflite)")
    return models


def pick_test_images(data: Path, count: int) -> list[Path]:
    """`count` images from a class-folder test set, round robin over the sorted classes (the same every run)."""
    classes = [sorted(p for p in folder.iterdir() if p.is_file()) for folder in sorted(data.iterdir())
               if folder.is_dir()]
    picked: list[Path] = []
    index = 0
    while len(picked) < count and any(index < len(files) for files in classes):
        picked.extend(files[index] for files in classes if index < len(files))
        index += 1
    return picked[:count]


def write_images(folder: Path, data: Path | None, count: int) -> str:
    """The test images: `count` CIFAR test images (or generated ones) and one file per format the tests cover."""
    import numpy as np
    from PIL import Image

    cifar = folder / "cifar"
    if data is not None and data.is_dir():
        for source in pick_test_images(data, count):
            target = cifar / source.parent.name / source.name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
        source_text = f"{count} CIFAR-10 test images from {data}"
    else:
        rng = np.random.default_rng(0)
        cifar.mkdir(parents=True, exist_ok=True)
        for number in range(count):
            pixels = (rng.random((32, 32, 3)) * 255).astype(np.uint8)
            pixels[8:24, 8:24, number % 3] = 255
            Image.fromarray(pixels).save(cifar / f"generated-{number:04d}.{'png' if number % 2 else 'jpg'}")
        source_text = f"{count} generated 32x32 images (no CIFAR-10 copy at {data})"
    write_format_images(folder / "formats", np, Image)
    return source_text


def write_format_images(folder: Path, np: Any, Image: Any) -> None:
    """Every Pillow mode and container the preprocessing tests cover, from one smooth colour picture."""
    folder.mkdir(parents=True, exist_ok=True)
    y, x = np.mgrid[0:48, 0:64]
    picture = np.stack([x * 4, y * 5, (x + y) * 2], axis=-1).astype(np.uint8)
    rgb = Image.fromarray(picture, "RGB")
    rgb.save(folder / "rgb.png")
    rgb.save(folder / "baseline.jpg", quality=90)
    rgb.save(folder / "progressive.jpg", quality=90, progressive=True)
    rgb.resize((640, 480)).save(folder / "large.jpg", quality=90)  # decoded at a reduced JPEG draft size
    rgb.save(folder / "picture.bmp")
    rgb.save(folder / "picture.webp", lossless=True)
    rgb.save(folder / "picture.gif")
    rgb.save(folder / "picture.tiff")
    alpha = np.linspace(0, 255, picture.shape[1], dtype=np.uint8)[None, :].repeat(picture.shape[0], axis=0)
    Image.fromarray(np.dstack([picture, alpha]), "RGBA").save(folder / "rgba.png")
    palette = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    palette.save(folder / "palette.png", transparency=0)
    rgb.convert("L").save(folder / "grey.png")
    Image.fromarray((picture[..., 0].astype(np.uint16) * 257)).save(folder / "grey16.png")
    rgb.convert("CMYK").save(folder / "cmyk.jpg", quality=95)
    exif = Image.Exif()
    exif[0x0112] = 6  # EXIF orientation: turn 90 degrees clockwise to display
    rgb.save(folder / "exif-rotated.jpg", quality=95, exif=exif)


# ---------------------------------------------------------------- edge-classify on either machine


@dataclasses.dataclass
class ModelAnswers:
    """What one machine's edge-classify said about one model."""

    results: dict[str, ScoredImage]
    info: dict[str, Any]
    verify: tuple[int, str]
    benchmark: dict[str, Any] | None
    problems: list[str]
    reference_kernels: str | None = None   # int8 models: REFERENCE_KERNEL_PROBE's output


def answer_commands(model: str, classes: int) -> dict[str, list[str]]:
    """The edge-classify commands run on both machines, from the work folder, for one model."""
    return {
        "info": ["--info", model, "--json"],
        "verify": ["--verify", model],
        "classify": ["-m", model, "--json", "--top-k", str(classes), "-r", "images"],
        "benchmark": ["--benchmark", model, "--runs", str(BENCHMARK_RUNS), "--json"],
    }


def collect_answers(run: Any, model: str, classes: int, where: str, python: Any = None) -> ModelAnswers:
    """Run the four commands through `run(args) -> CompletedProcess` and read what they printed; for an
    int8 model also the reference-kernel probe through `python(args)`."""
    commands = answer_commands(model, classes)
    problems: list[str] = []
    info: dict[str, Any] = {}
    results: dict[str, ScoredImage] = {}
    benchmark = None

    completed = run(commands["info"])
    if completed.returncode == 0:
        info = json.loads(completed.stdout)
    else:
        problems.append(f"{model}: edge-classify --info failed on {where}: {first_error(completed)}")
    verify = run(commands["verify"])
    verify_answer = (verify.returncode, verify.stdout.strip())
    if verify.returncode != 0:
        problems.append(f"{model}: edge-classify --verify failed on {where}: {first_error(verify)}")
    classified = run(commands["classify"])
    if classified.returncode != 0:
        problems.append(f"{model}: edge-classify on the images exited {classified.returncode} on {where}: "
                        f"{first_error(classified)}")
    try:
        results = parse_results(classified.stdout, f"{where} {model}")
    except ParseError as error:
        problems.append(str(error))
    timed = run(commands["benchmark"])
    if timed.returncode == 0:
        benchmark = json.loads(timed.stdout)
    else:
        problems.append(f"{model}: edge-classify --benchmark failed on {where}: {first_error(timed)}")
    reference_kernels = None
    if python is not None and info.get("output", {}).get("quantization"):
        probed = python(["-c", REFERENCE_KERNEL_PROBE, model])
        if probed.returncode == 0 and probed.stdout.strip():
            reference_kernels = probed.stdout
        else:
            problems.append(f"{model}: the reference-kernel probe failed on {where}: {first_error(probed)}")
    return ModelAnswers(results, info, verify_answer, benchmark, problems, reference_kernels)


def first_error(completed: subprocess.CompletedProcess) -> str:
    lines = [line for line in (completed.stderr or completed.stdout or "").splitlines() if line.strip()]
    errors = [line for line in lines if "rror" in line or "qemu" in line or "ignal" in line]
    return (errors or lines or [f"exit {completed.returncode}, no message"])[-1].strip()


def host_runner(program: Path, work: Path) -> Any:
    def run(args: list[str]) -> subprocess.CompletedProcess:
        return subprocess.run([str(program), *args], cwd=work, capture_output=True, text=True,
                              timeout=COMMAND_TIMEOUT_S)
    return run


def chroot_shell(root: Path, cache: Path, cpu: str) -> Shell:
    """Commands on the device through chroot (the default way of this check)."""
    def run(command: Sequence[str], cwd: str) -> subprocess.CompletedProcess:
        return chroot(root, cache, cpu, command, timeout=COMMAND_TIMEOUT_S, cwd=cwd)
    return run


def ssh_shell(session: arm64_ssh.Session) -> Shell:
    """Commands on the device over SSH, as a person would type them."""
    def run(command: Sequence[str], cwd: str) -> subprocess.CompletedProcess:
        try:
            return session.run(command, cwd)
        except arm64_ssh.SshError as error:
            raise RunError(str(error)) from error
    return run


def device_runner(shell: Shell, venv: str, program: str = "edge-classify") -> Any:
    """`run(args)`: one of the virtual environment's programs on the device, from the work folder."""
    def run(args: list[str]) -> subprocess.CompletedProcess:
        return shell([f"{device_path(venv)}/bin/{program}", *args], DEVICE_WORK)
    return run


def checked(completed: subprocess.CompletedProcess, command: Sequence[str], where: str) -> subprocess.CompletedProcess:
    """`completed`, or RunError naming the command and its last line when it failed."""
    if completed.returncode != 0:
        last = (completed.stderr or completed.stdout).strip().splitlines()[-1:] or ["no message"]
        raise RunError(f"`{' '.join(command)}` failed in {where} (exit {completed.returncode}): {last[0]}")
    return completed


def host_reference_venv(cache: Path, wheel: Path, install: Install) -> Path:
    """An x86 virtual environment with the same extra, for comparing an install path whose interpreter
    package the project's .venv lacks (tflite-runtime)."""
    venv = cache / f"x86-venv-{install.name}"
    stamp = venv / ".arm64-check-wheel"
    key = f"{wheel.name} {wheel.stat().st_size} {wheel.stat().st_mtime_ns}"
    if stamp.is_file() and stamp.read_text(encoding="utf-8") == key:
        return venv / "bin" / "edge-classify"
    shutil.rmtree(venv, ignore_errors=True)
    python = shutil.which("python3.11") or sys.executable
    run_host([python, "-m", "venv", str(venv)], f"creating the x86 {install.name} reference environment")
    try:
        run_host([str(venv / "bin" / "pip"), "install", "--quiet", f"{wheel}[{install.extra}]"],
                 f"installing {wheel.name}[{install.extra}] on x86", timeout=INSTALL_TIMEOUT_S)
    except Unavailable as error:
        raise RunError(str(error)) from error
    stamp.write_text(key, encoding="utf-8")
    return venv / "bin" / "edge-classify"


# ---------------------------------------------------------------- one distro


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
        # Last, because it replaces the models the chroot runs read by the deployed copies.
        began = time.monotonic()
        outcomes.append(run_over_ssh(distro, root, cache, models, references, log_folder))
        timings["ssh deploy and runs"] = round(time.monotonic() - began, 1)
    timings["total"] = round(time.monotonic() - started, 1)
    return DistroResult(outcomes, timings, notes)


def ensure_ssh_server(root: Path, cache: Path) -> None:
    """openssh-server in the root filesystem (installed with apt once, then kept in the cache), with host keys."""
    if not (root / arm64_ssh.SSHD.lstrip("/")).exists():
        log(f"{root.name}: installing {', '.join(arm64_ssh.SERVER_PACKAGES)} in the root filesystem for the SSH "
            "run (once; apt under emulation takes a few minutes)")
        script = ("apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "
                  f"--no-install-recommends {' '.join(arm64_ssh.SERVER_PACKAGES)}")
        completed = chroot(root, cache, SSH_CPU, ["/bin/sh", "-c", script], timeout=INSTALL_TIMEOUT_S)
        if completed.returncode != 0:
            raise RunError(f"apt-get install {' '.join(arm64_ssh.SERVER_PACKAGES)} failed in the {root.name} root "
                           f"filesystem: {first_error(completed)}")
    chroot(root, cache, SSH_CPU, ["ssh-keygen", "-A"], timeout=COMMAND_TIMEOUT_S, check=True)


def run_over_ssh(distro: str, root: Path, cache: Path, models: list[Path],
                 references: dict[str, dict[str, ModelAnswers]], log_folder: Path) -> RunOutcome:
    """The device workflow over SSH: sshd in the root filesystem, `make deploy` of each model, then every
    edge-classify command over SSH, compared with x86 like the chroot runs. Never raises RunError."""
    began = time.monotonic()
    try:
        ensure_ssh_server(root, cache)
        # The chroot runs read the models from here; the deploy puts them back, with their manifest.
        shutil.rmtree(root / DEVICE_WORK.lstrip("/") / "models", ignore_errors=True)
        with contextlib.ExitStack() as stack:
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ssh-", dir=cache)))
            session = stack.enter_context(arm64_ssh.running_sshd(
                root, chroot_prefix(root, cache, SSH_CPU), SSH_CPU, folder, log_folder / f"{distro}-sshd.log",
                COMMAND_TIMEOUT_S))
            log(f"{distro}: sshd listening on {arm64_ssh.LOOPBACK}:{session.port}; make deploy of "
                f"{', '.join(model.name for model in models)} to {session.destination}:{SSH_DEST}")
            for model in models:
                deployed = session.deploy(DEPLOY_SCRIPT, model, SSH_DEST)
                if deployed.returncode != 0:
                    raise RunError(f"make deploy of {model.name} to {session.destination} (port {session.port}) "
                                   f"failed: {first_error(deployed)}")
            return run_one(distro, SSH_INSTALL, SSH_CPU, ssh_shell(session), models, references, began)
    except (RunError, arm64_ssh.SshError, OSError, subprocess.SubprocessError) as error:
        outcome = RunOutcome(distro=distro, install=SSH_INSTALL.name, cpu=SSH_CPU, machine="", python="",
                             backend=INSTALL_BACKENDS[SSH_INSTALL.name], backend_version="", numpy_version="",
                             pillow_version="", tensorflow_installed=False, seconds=time.monotonic() - began)
        outcome.problems.append(f"over SSH: {error}")
        return outcome


def failed_install(distro: str, install: Install, reason: str, seconds: float, log_path: Path) -> RunOutcome:
    outcome = RunOutcome(distro=distro, install=install.name, cpu="-", machine="", python="",
                         backend=INSTALL_BACKENDS[install.name], backend_version="", numpy_version="",
                         pillow_version="", tensorflow_installed=False, seconds=seconds)
    outcome.problems.append(f"pip install of the wheel with [{install.extra}] failed: {reason} (log: {log_path})")
    return outcome


def run_one(distro: str, install: Install, cpu: str, shell: Shell, models: list[Path],
            references: dict[str, dict[str, ModelAnswers]], began: float | None = None) -> RunOutcome:
    """One distro, install path and CPU model: facts about the environment, then every model against x86.

    `shell` runs each command on the device (through chroot, or over SSH); `began` is when the run's
    clock started (default: now)."""
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
            name = f"models/{model.name}"
            reference = reference_set[model.name]
            answers = collect_answers(run, name, int(reference.info.get("num_classes", 1)), f"{distro}/{cpu}",
                                      python)
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


def check_score_resolution(info: dict[str, Any], name: str, outcome: RunOutcome) -> None:
    """Equal 6-decimal scores mean equal int8 outputs only when one int8 step is larger than the rounding."""
    scale = (info.get("output", {}).get("quantization") or {}).get("scale")
    if scale is not None and scale <= 2 * JSON_SCORE_RESOLUTION:
        outcome.problems.append(f"{name}: output scale {scale} is below what 6-decimal scores can tell apart; "
                                "int8 identity is not proven by the printed scores")


# ---------------------------------------------------------------- the whole check


def find_wheel(dist: Path) -> Path:
    wheels = sorted(dist.glob("edge_image_toolkit-*.whl"), key=lambda p: p.stat().st_mtime)
    if not wheels:
        raise Unavailable(f"no wheel in {dist}: run `make wheel` first (make arm64-check does)")
    return wheels[-1]


def host_cpu_model() -> str:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        for line in subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def qemu_version() -> str:
    for name in ("qemu-aarch64-static", "qemu-aarch64"):
        if shutil.which(name):
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                first = subprocess.run([name, "--version"], capture_output=True, text=True, timeout=10).stdout
                return first.splitlines()[0] if first else name
    return "unknown"


@contextlib.contextmanager
def fresh_folder(path: Path) -> Iterator[Path]:
    """A new folder filled under a temporary name and renamed to `path` when the block succeeds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        yield temporary
        shutil.rmtree(path, ignore_errors=True)
        os.replace(temporary, path)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)


def run_check(out: Path, cache: Path, data: Path | None, images: int, mirror: str, distros: Sequence[str],
              cpus: Sequence[str], wheel: Path, host_edge_classify: Path, rebuild: bool, ssh: bool = True) -> int:
    started = time.monotonic()
    models = find_models(out)
    cache.mkdir(parents=True, exist_ok=True)
    roots = {distro: None if rebuild else cached_rootfs(cache, distro, mirror) for distro in distros}
    check_host(need_mirror=any(root is None for root in roots.values()), mirror=mirror)
    timings: dict[str, Any] = {}

    log("preparing the images and the x86 reference answers")
    with fresh_folder(cache / "work") as work:
        (work / "models").mkdir()
        for model in models:
            shutil.copyfile(model, work / "models" / model.name)
        if (out / "manifest.json").is_file():
            shutil.copyfile(out / "manifest.json", work / "models" / "manifest.json")
        image_source = write_images(work / "images", data, images)
    work = cache / "work"
    references: dict[str, dict[str, ModelAnswers]] = {}
    notes: list[str] = []
    wanted_backends = {INSTALL_BACKENDS[i.name] for i in INSTALLS if set(i.distros) & set(distros)}
    for backend in sorted(wanted_backends):
        try:
            if backend == "ai_edge_litert":
                edge_classify = host_edge_classify
            else:
                install = next(i for i in INSTALLS if INSTALL_BACKENDS[i.name] == backend)
                edge_classify = host_reference_venv(cache, wheel, install)
        except RunError as error:
            notes.append(f"x86 reference for {backend} not available: {error}")
            continue
        run = host_runner(edge_classify, work)
        python = host_runner(edge_classify.parent / "python", work)
        references[backend] = {}
        for model in models:
            first = run(["--info", f"models/{model.name}", "--json"])
            classes = json.loads(first.stdout).get("num_classes", 1) if first.returncode == 0 else 1
            answers = collect_answers(run, f"models/{model.name}", classes, "x86", python)
            if answers.problems:
                raise CheckFailed(f"edge-classify fails on x86 already: {answers.problems[0]}")
            references[backend][model.name] = answers
    timings["x86 reference s"] = round(time.monotonic() - started, 1)

    began = time.monotonic()
    to_build = [distro for distro, root in roots.items() if root is None]
    if to_build:
        log(f"building arm64 root filesystems ({', '.join(to_build)}) with debootstrap in parallel; "
            f"a cold cache takes several minutes (logs in {cache / 'logs'})")
    log(f"installing per deploy/README.md and running edge-classify under QEMU_CPU={','.join(cpus)} "
        f"({', '.join(distros)} in parallel, each as soon as its root filesystem is ready)")
    log_folder = cache / "logs"

    def build_and_check(distro: str) -> DistroResult:
        building = time.monotonic()
        root = roots[distro] or build_rootfs(cache, distro, mirror)
        built_s = round(time.monotonic() - building, 1)
        result = check_distro(distro, root, cache, work, wheel, models, references, cpus, log_folder, ssh)
        result.timings["debootstrap"] = built_s
        return result

    results: dict[str, DistroResult] = {}
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(distros)) as pool:
        futures = {distro: pool.submit(build_and_check, distro) for distro in distros}
        for distro, future in futures.items():
            try:
                results[distro] = future.result()
            except (RunError, OSError) as error:
                results[distro] = DistroResult([], {}, [f"{distro}: {error}"])
    timings["rootfs"] = "built: " + ", ".join(to_build) if to_build else "reused from the cache"
    timings["rootfs, install and runs s"] = round(time.monotonic() - began, 1)
    timings["total s"] = round(time.monotonic() - started, 1)

    outcomes = [outcome for distro in distros for outcome in results[distro].outcomes]
    for distro in distros:
        notes.extend(results[distro].notes)
        timings[f"{distro} s"] = results[distro].timings
    failed_distros = [distro for distro in distros if not results[distro].outcomes]
    ok = bool(outcomes) and all(outcome.ok for outcome in outcomes) and not failed_distros
    report = {
        "ok": ok,
        "host": {"machine": platform.machine(), "cpu": host_cpu_model(), "cores": os.cpu_count(),
                 "qemu": qemu_version(), "python": platform.python_version()},
        "images": image_source,
        "models": [model.name for model in models],
        "wheel": wheel.name,
        "cache": str(cache),
        "timings": timings,
        "timing_note": f"benchmark figures are {EMULATED_TIMING_NOTE}; seconds are wall time of the emulated runs, "
                       "both distros in parallel",
        "runs": [outcome.record() for outcome in outcomes],
        "x86_benchmark": {backend: {name: answers.benchmark for name, answers in by_model.items()}
                          for backend, by_model in references.items()},
        "notes": notes,
    }
    report_path = out / REPORT_NAME
    write_text(report_path, json.dumps(report, indent=2) + "\n")

    click.echo(f"arm64-check: {image_source} plus {len(list((work / 'images' / 'formats').iterdir()))} "
               f"format files; models {', '.join(m.name for m in models)}")
    click.echo("\n".join(summary_lines(outcomes, notes)))
    for outcome in outcomes:
        for line in benchmark_line(outcome):
            click.echo(line)
    click.echo(f"arm64-check: host {report['host']['cpu']} ({report['host']['cores']} cores), "
               f"{report['host']['qemu']}; rootfs {timings['rootfs']}; total {timings['total s']:.0f} s")
    click.echo(f"arm64-check: wrote {report_path}")
    if not ok:
        click.echo("arm64-check: FAILED: arm64 and x86 differ (see the lines above and "
                   f"{report_path})", err=True)
        return EXIT_MISMATCH
    click.echo("arm64-check: ok: every arm64 run matched x86")
    return EXIT_OK


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--out", default="artifacts", show_default=True, type=click.Path(path_type=Path),
              help="Folder with the .tflite models and manifest.json; arm64-check.json is written here.")
@click.option("--cache", default=str(DEFAULT_CACHE), show_default=True, type=click.Path(path_type=Path),
              help="Where the arm64 root filesystems, .deb files and pip's wheels are kept between runs.")
@click.option("--data", type=click.Path(path_type=Path), default=None,
              help=f"A class-folder test set (default: {DEFAULT_DATA.relative_to(REPO_ROOT.parent)} "
                   "beside the checkout, else generated images).")
@click.option("--images", default=DEFAULT_IMAGES, show_default=True, type=click.IntRange(min=1),
              help="How many test images to classify on each side.")
@click.option("--distros", default=",".join(DISTROS), show_default=True, help="Comma-separated Debian releases.")
@click.option("--cpus", default=",".join(CPUS), show_default=True, help="Comma-separated QEMU_CPU models.")
@click.option("--mirror", default=DEFAULT_MIRROR, show_default=True, help="Debian mirror for debootstrap.")
@click.option("--wheel", type=click.Path(path_type=Path), default=None,
              help="The project's wheel (default: the newest dist/edge_image_toolkit-*.whl).")
@click.option("--rebuild", is_flag=True, help="Build the root filesystems again even when cached.")
@click.option("--ssh/--no-ssh", default=True, show_default=True,
              help=f"Also run the device workflow over SSH on {SSH_DISTRO} ({SSH_CPU}): the root filesystem's own "
                   "sshd on a loopback port, `make deploy` of the models, every command over SSH.")
def main(out: Path, cache: Path, data: Path | None, images: int, distros: str, cpus: str, mirror: str,
         wheel: Path | None, rebuild: bool, ssh: bool) -> None:
    """Install the wheel in emulated arm64 Bookworm and Trixie and compare edge-classify with x86 (as root)."""
    distro_list = [name for name in distros.split(",") if name]
    cpu_list = [name for name in cpus.split(",") if name]
    for cpu in cpu_list:
        if cpu not in CPUINFO:
            raise click.BadParameter(f"{cpu!r}: choose from {', '.join(CPUINFO)}", param_hint="--cpus")
    if data is None and DEFAULT_DATA.is_dir():
        data = DEFAULT_DATA
    host_edge_classify = Path(sys.executable).parent / "edge-classify"
    try:
        if not host_edge_classify.exists():
            raise Unavailable(f"{host_edge_classify} is missing: run `make install` first")
        code = run_check(out.resolve(), cache.resolve(), data, images, mirror, distro_list, cpu_list,
                         (wheel or find_wheel(REPO_ROOT / "dist")).resolve(), host_edge_classify, rebuild, ssh)
    except Unavailable as reason:
        click.echo(f"arm64-check: cannot run: {reason}", err=True)
        sys.exit(EXIT_UNAVAILABLE)
    except CheckFailed as reason:
        click.echo(f"arm64-check: FAILED: {reason}", err=True)
        sys.exit(EXIT_MISMATCH)
    except KeyboardInterrupt:
        click.echo("arm64-check: interrupted", err=True)
        sys.exit(130)
    sys.exit(code)


if __name__ == "__main__":
    main(prog_name="arm64-check")
