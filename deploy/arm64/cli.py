"""`make arm64-check`'s command: the options, and the check in the order it runs.

Writes OUT/arm64-check.json and prints a summary. Exit 0 when every run matched, 1 on any mismatch
(each named by file and difference), 2 when emulation cannot run here (not root, no qemu binfmt,
no mirror, no models), with the reason. Emulated timings are recorded but are not Pi timings.
"""

from __future__ import annotations

import concurrent.futures
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import click

from .chroot import CPUINFO
from .errors import CheckFailed, RunError, Unavailable, log
from .host import check_host
from .inputs import find_models, fresh_folder, write_images
from .install import SSH_CPU, SSH_DISTRO, find_wheel
from .reference import x86_references
from .report import check_report, print_summary, write_report
from .rootfs import DISTROS, build_rootfs, cached_rootfs
from .runs import DistroResult, check_distro

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
EXIT_OK = 0
EXIT_MISMATCH = 1
EXIT_UNAVAILABLE = 2
CPUS = ("cortex-a72", "cortex-a76")
DEFAULT_MIRROR = "http://deb.debian.org/debian"
DEFAULT_CACHE = Path.home() / ".cache" / "edge-image-toolkit" / "arm64"
DEFAULT_DATA = REPO_ROOT.parent / "shared" / "datasets" / "cifar10-jpeg" / "test"
DEFAULT_IMAGES = 200


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
    references, notes = x86_references(models, work, cache, wheel, host_edge_classify, distros)
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
    report = check_report(ok, image_source, models, wheel, cache, timings, outcomes, references, notes)
    report_path = write_report(out, report)
    print_summary(report, report_path, len(list((work / "images" / "formats").iterdir())), outcomes)
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
