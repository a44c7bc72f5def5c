"""Benchmark `edge-classify -r FOLDER` with its default settings against a bare one-process loop, on
small JPEGs and on camera-sized photos, each comparison side by side in one run.

1. CIFAR-10: the test folder's 10,000 JPEGs (32x32), `edge-classify --json -r FOLDER -o FILE` with
   its default settings (a worker process per CPU, batches of DEFAULT_BATCH) against
   baseline_loop.py (one process, one thread: open, convert, resize, set tensor, invoke), files in
   the page cache, process start to exit, one untimed run of each, then REPEATS rounds taking
   turns; medians. Every default run's answers are compared with the bare loop's, file by file.
       targets: images/s >= MIN_THROUGHPUT_RATIO (bench_runtime.py) x the bare loop's; the same
       answer as the bare loop on every file
2. Camera-sized photos: CAMERA_PHOTOS JPEGs of 4032x3024 (12.2 MP) made from the test images, the
   same two commands in turns (edge-classify decodes each photo reduced, by Pillow's JPEG draft,
   to at least 4x its input size; the bare loop decodes every photo in full and resizes it with
   Pillow's default filter), medians of REPEATS rounds after one untimed edge-classify run.
       target: images/s >= MIN_CAMERA_RATIO x the bare loop's
   Stated, not targets: top-1 agreement of the default run with the bare loop, and with
   edge-classify's own preprocessing of the fully decoded photo (the draft's own effect: the bare
   loop also stretches the 4:3 photo to the square input where edge-classify centre-crops it, and
   filters differently), and each one's accuracy on the source image's class.

How a photo is made (`make_photo`, deterministic from --seed and its index): test image number
order[i] of a seeded permutation of the sorted test files is upscaled with Pillow's bicubic
filter to 3024x3024 and mirrored outwards to 4032x3024 (numpy's symmetric padding: a wider scene
around the subject, which a centre crop removes again); Gaussian noise of standard deviation
PHOTO_NOISE_STD grey levels, independent per pixel and channel, is added as sensor grain (an
upscaled 32x32 image alone is smooth enough to make the entropy-coded data, and so decoding,
unrealistically cheap); then it is saved as a baseline JPEG of quality PHOTO_QUALITY with 4:2:0
chroma subsampling and a small EXIF block (orientation 1, as a camera writes). The photos are
about 2.1 MB each (1.4 bits per pixel). They are generated once into a cache folder outside the
repository (default $XDG_CACHE_HOME/edge-image-toolkit/camera-photos/<parameters>/, i.e.
~/.cache/...), one file per index, so a smaller run reuses a larger one's photos; each run links
the photos it uses into a temporary folder. Generating 300 takes a few minutes on a 2-core machine.

    python benchmarks/bench_folders.py [--int8 OUT/model_int8.tflite] [--data ../shared/datasets/cifar10-jpeg]
        [--camera-photos 300] [--camera-cache DIR] [--seed 0] [--repeats 3] [--json summary.json] [--limit N]

CAMERA_PHOTOS defaults to 300, edge-classify's SMALL_JOB_FILES: below it edge-classify classifies
in one process whatever the file size. --limit N measures N of the CIFAR test files (spread over
the classes) and N // LIMIT_PHOTO_DIVISOR photos: a smoke test of the script, not a measurement to
record. Subprocesses run with the environment a user has (harness.user_environment), and
edge_runtime is byte-compiled first. Exit status 0 when every target is met, 1 when one is
missed, 2 for bad options or missing files.
"""

from __future__ import annotations

import compileall
import dataclasses
import hashlib
import io
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

import click
import numpy as np

from bench_runtime import MIN_THROUGHPUT_RATIO
from harness import (BENCHMARKS, CONSOLE_SCRIPT, DEFAULT_DATA, REPO_ROOT, Check, ProcessRun, finish, link_files, median,
                     run_process, spread, user_environment, warm_page_cache)

DEFAULT_INT8 = Path("artifacts") / "model_int8.tflite"
MIN_CAMERA_RATIO = 7.0  # issue 13's follow-up: default settings on camera-sized photos
DEFAULT_REPEATS = 3
CAMERA_PHOTOS = 300
LIMIT_PHOTO_DIVISOR = 25  # --limit 500: 20 photos
MIN_LIMIT_PHOTOS = 4
DEFAULT_SEED = 0
# The photos (see the module docstring): 12.2 MP, 4:3, the square subject in the middle.
PHOTO_WIDTH, PHOTO_HEIGHT = 4032, 3024
PHOTO_NOISE_STD = 5.0
PHOTO_QUALITY = 90
PHOTO_SUBSAMPLING = "4:2:0"
PHOTO_VERSION = 1  # bump when make_photo changes: the cache key holds it
EXIF_ORIENTATION, EXIF_MAKE, EXIF_MODEL = 0x0112, 0x010F, 0x0110
MEGABYTE = 1e6


@dataclasses.dataclass(frozen=True)
class Comparison:
    """One folder's side-by-side runs: edge-classify's default settings against the bare loop."""

    images: int
    bare_runs: list[ProcessRun]
    default_runs: list[ProcessRun]

    @property
    def bare_images_per_s(self) -> float:
        return self.images / median(run.wall_s for run in self.bare_runs)

    @property
    def default_images_per_s(self) -> float:
        return self.images / median(run.wall_s for run in self.default_runs)

    @property
    def ratio(self) -> float:
        return self.default_images_per_s / self.bare_images_per_s

    def summary(self) -> dict[str, Any]:
        return {"images": self.images, "ratio": self.ratio,
                "bare_loop": _runs_summary(self.bare_runs, self.bare_images_per_s),
                "default": _runs_summary(self.default_runs, self.default_images_per_s)}


def _runs_summary(runs: list[ProcessRun], images_per_s: float) -> dict[str, Any]:
    return {"images_per_s": images_per_s, "wall_s": [run.wall_s for run in runs],
            "cpu_s": [run.cpu_s for run in runs], "peak_mib": median(run.peak_mib for run in runs)}


# --- the camera-sized photos --------------------------------------------------------------------

def photo_cache_root(base: Path | None) -> Path:
    """Where the photos are kept: `base`, else under $XDG_CACHE_HOME (or ~/.cache) as the trainer's cache."""
    if base is not None:
        return base
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "edge-image-toolkit" / "camera-photos"


def photo_folder(root: Path, sources: list[Path], seed: int) -> Path:
    """The cache folder of the photos made with these parameters from these source files."""
    listing = hashlib.sha256("\n".join(str(path) for path in sources).encode()).hexdigest()[:12]
    return root / (f"v{PHOTO_VERSION}-{PHOTO_WIDTH}x{PHOTO_HEIGHT}-q{PHOTO_QUALITY}-noise{PHOTO_NOISE_STD:g}-"
                   f"seed{seed}-{listing}")


def photo_order(count: int, seed: int) -> np.ndarray:
    """The seeded permutation of the test files whose first N are the sources of N photos."""
    return np.random.default_rng(seed).permutation(count)


def make_photo(source: Path, seed: int, index: int) -> bytes:
    """Photo `index` as JPEG bytes: `source` upscaled, mirrored out to 4:3, with grain; see the docstring."""
    from PIL import Image

    side = PHOTO_HEIGHT
    with Image.open(source) as image:
        square = np.asarray(image.convert("RGB").resize((side, side), Image.Resampling.BICUBIC))
    margin = (PHOTO_WIDTH - side) // 2
    frame = np.pad(square, ((0, 0), (margin, PHOTO_WIDTH - side - margin), (0, 0)), mode="symmetric")
    rng = np.random.default_rng([seed, index])
    grain = rng.standard_normal(frame.shape, dtype=np.float32) * np.float32(PHOTO_NOISE_STD)
    pixels = np.clip(np.rint(frame + grain), 0, 255).astype(np.uint8)
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 1
    exif[EXIF_MAKE] = "edge-image-toolkit"
    exif[EXIF_MODEL] = "bench_folders.py synthetic 12 MP"
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=PHOTO_QUALITY, subsampling=PHOTO_SUBSAMPLING,
                                 exif=exif)
    return buffer.getvalue()


def ensure_photos(test_files: list[Path], count: int, seed: int, cache: Path,
                  progress: Callable[[str], None]) -> list[Path]:
    """The first `count` photos, made where missing (each written whole, then renamed into place)."""
    folder = photo_folder(cache, test_files, seed)
    order = photo_order(len(test_files), seed)
    photos = []
    made = 0
    for index in range(count):
        source = test_files[int(order[index])]
        path = folder / source.parent.name / f"{index:04d}.jpg"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_suffix(".partial")
            partial.write_bytes(make_photo(source, seed, index))
            partial.replace(path)
            made += 1
            if made % 25 == 0:
                progress(f"  made {made} photos ...")
        photos.append(path)
    if made:
        progress(f"  made {made} photos in {folder}")
    return photos


# --- the comparisons ----------------------------------------------------------------------------

def compare(int8: Path, folder: Path, images: int, repeats: int, work: Path, name: str,
            warm_bare_loop: bool) -> tuple[Comparison, Path, Path]:
    """Default edge-classify and the bare loop over `folder` in turns; returns the last outputs too.

    Each command runs once untimed first (the bare loop only when `warm_bare_loop`: over big
    photos its untimed run would cost minutes and warm nothing the page cache does not hold).
    """
    python = sys.executable
    env = user_environment()
    answers, output = work / f"{name}-bare.tsv", work / f"{name}-default.jsonl"
    classify = [python, "-c", CONSOLE_SCRIPT, "--model", str(int8), "--json", "-r", "-o", str(output), str(folder)]
    bare = [python, str(BENCHMARKS / "baseline_loop.py"), str(int8), str(folder), str(answers)]
    run_process(classify, env)
    if warm_bare_loop:
        run_process(bare, env)
    bare_runs, default_runs = [], []
    for _ in range(repeats):
        bare_runs.append(run_process(bare, env))
        default_runs.append(run_process(classify, env))
    return Comparison(images, bare_runs, default_runs), answers, output


def read_answers(answers: Path, output: Path, labels: list[str]) -> tuple[dict[str, str], dict[str, str]]:
    """(bare loop's label, edge-classify's label) by path."""
    bare = {path: labels[int(index)] for path, index in
            (line.split("\t") for line in answers.read_text().splitlines())}
    ours = {record["path"]: record.get("label", "") for record in
            (json.loads(line) for line in output.read_text().splitlines())}
    return bare, ours


def full_decode_answers(int8: Path, paths: list[str]) -> dict[str, str]:
    """edge-classify's preprocessing of each photo decoded in full (no draft), by path."""
    from edge_runtime.classify import Classifier
    from edge_runtime.preprocess import open_image, prepare_image

    classifier = Classifier(int8)
    answers = {}
    for path in paths:
        with open_image(path) as image:
            image.load()  # decoded in full: a draft asked for after loading changes nothing
            pixels = prepare_image(image, classifier.spec, name=path)
        answers[path] = classifier.classify(pixels)[0].label
    return answers


def share(pairs: list[tuple[str, str]]) -> float:
    return sum(first == second for first, second in pairs) / len(pairs) if pairs else 0.0


def evaluate(summary: dict[str, Any]) -> list[Check]:
    cifar, camera = summary["cifar"], summary["camera"]
    return [
        Check("CIFAR-10 JPEGs, default settings vs bare loop (x)", round(cifar["ratio"], 3),
              f">= {MIN_THROUGHPUT_RATIO}", cifar["ratio"] >= MIN_THROUGHPUT_RATIO),
        Check("CIFAR-10 JPEGs: same answer as the bare loop on every file", cifar["same_as_bare_loop"],
              f"== {cifar['images']}", cifar["same_as_bare_loop"] == cifar["images"] == cifar["records"]),
        Check("camera-sized photos, default settings vs bare full-decoding loop (x)", round(camera["ratio"], 3),
              f">= {MIN_CAMERA_RATIO}", camera["ratio"] >= MIN_CAMERA_RATIO),
    ]


def print_summary(summary: dict[str, Any], checks: list[Check]) -> None:
    cpus = summary["machine"]["cpus"]
    for key, title in (("cifar", "CIFAR-10 test JPEGs (32x32)"), ("camera", "camera-sized photos")):
        item = summary[key]
        click.echo(f"{title}: {item['images']} files, {cpus} CPUs, process start to exit, medians of "
                   f"{len(item['default']['wall_s'])}:")
        for side, label in (("bare_loop", "bare loop (one process)"), ("default", "edge-classify, default")):
            runs = item[side]
            click.echo(f"  {label:26s} {runs['images_per_s']:9.1f} images/s  wall "
                       + " ".join(f"{wall:.2f}" for wall in runs["wall_s"])
                       + " s  cpu " + " ".join(f"{cpu:.1f}" for cpu in runs["cpu_s"]) + " s")
        click.echo(f"  ratio {item['ratio']:.3f}x")
    cifar, camera = summary["cifar"], summary["camera"]
    click.echo(f"CIFAR-10: same answer as the bare loop on {cifar['same_as_bare_loop']} of {cifar['images']} files; "
               f"accuracy {cifar['accuracy']:.4f}")
    click.echo(f"camera photos ({camera['photo']}): top-1 agreement with the bare full-decoding loop "
               f"{camera['agreement_with_bare_loop']:.1%}; with edge-classify's preprocessing of the fully decoded "
               f"photo {camera['agreement_with_full_decode']:.1%}; accuracy on the source class: default "
               f"{camera['accuracy']['default']:.1%}, full decode {camera['accuracy']['full_decode']:.1%}, "
               f"bare loop {camera['accuracy']['bare_loop']:.1%}")


@click.command()
@click.option("--int8", "int8", type=click.Path(path_type=Path), default=DEFAULT_INT8, show_default=True,
              help="The int8 model.")
@click.option("--data", type=click.Path(path_type=Path), default=DEFAULT_DATA, show_default=True,
              help="CIFAR-10 JPEG root with a test/ folder.")
@click.option("--camera-photos", default=CAMERA_PHOTOS, show_default=True, type=click.IntRange(min=1),
              help="How many camera-sized photos.")
@click.option("--camera-cache", type=click.Path(path_type=Path),
              help="Where the photos are kept (default: $XDG_CACHE_HOME/edge-image-toolkit/camera-photos).")
@click.option("--seed", default=DEFAULT_SEED, show_default=True, type=int, help="Seed of the photos.")
@click.option("--repeats", default=DEFAULT_REPEATS, show_default=True, type=click.IntRange(min=1))
@click.option("--json", "json_path", type=click.Path(path_type=Path), help="Write the numbers here.")
@click.option("--limit", type=click.IntRange(min=1), metavar="N",
              help="N of the test files and N // 25 photos (a smoke test; nothing to record).")
def main(int8: Path, data: Path, camera_photos: int, camera_cache: Path | None, seed: int, repeats: int,
         json_path: Path | None, limit: int | None) -> None:
    """Measure edge-classify's folder runs against the bare loop and print PASS or FAIL for each target."""
    sys.path.insert(0, str(REPO_ROOT))
    int8, test_folder = int8.resolve(), (data / "test").resolve()
    for path, what in ((int8, "int8 model"), (test_folder, "test folder")):
        if not path.exists():
            raise click.UsageError(f"{path}: {what} not found")
    from edge_runtime.model_file.metadata import read_metadata

    metadata = read_metadata(int8)
    if metadata is None:
        raise click.UsageError(f"{int8}: no embedded labels (a model exported by edge-convert is expected)")
    labels = metadata.labels
    compileall.compile_dir(str(REPO_ROOT / "edge_runtime"), quiet=1)
    all_files = sorted(test_folder.rglob("*.jpg"))
    files = spread(all_files, limit)
    photo_count = camera_photos if limit is None else min(camera_photos, max(MIN_LIMIT_PHOTOS,
                                                                             limit // LIMIT_PHOTO_DIVISOR))
    summary: dict[str, Any] = {"machine": {"cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                                           else os.cpu_count(), "python": sys.version.split()[0],
                                           "load_average": list(os.getloadavg())},
                               "limit": limit, "repeats": repeats, "model": str(int8)}
    click.echo(f"camera-sized photos: {photo_count} ...", err=True)
    photos = ensure_photos(all_files, photo_count, seed, photo_cache_root(camera_cache),
                           lambda line: click.echo(line, err=True))
    with tempfile.TemporaryDirectory() as work_name:
        work = Path(work_name)
        cifar_folder = test_folder
        if limit is not None:
            cifar_folder = work / "test"
            link_files(files, cifar_folder)
        warm_page_cache(files)
        click.echo(f"CIFAR-10: {len(files)} files, default edge-classify and the bare loop in turns ...", err=True)
        cifar, answers, output = compare(int8, cifar_folder, len(files), repeats, work, "cifar", warm_bare_loop=True)
        bare, ours = read_answers(answers, output, labels)
        summary["cifar"] = {**cifar.summary(), "records": len(ours),
                            "same_as_bare_loop": sum(bare.get(path) == label for path, label in ours.items()),
                            "accuracy": share([(Path(path).parent.name, label) for path, label in ours.items()])}
        camera_folder = work / "photos"
        link_files(photos, camera_folder)
        warm_page_cache(photos)
        click.echo(f"camera-sized photos: {len(photos)} files, in turns ...", err=True)
        camera, answers, output = compare(int8, camera_folder, len(photos), repeats, work, "camera",
                                          warm_bare_loop=False)
        bare, ours = read_answers(answers, output, labels)
        click.echo("camera-sized photos: decoding each in full for the agreement ...", err=True)
        full = full_decode_answers(int8, sorted(ours))
        truth = {path: Path(path).parent.name for path in ours}
        summary["camera"] = {
            **camera.summary(),
            "photo": (f"{PHOTO_WIDTH}x{PHOTO_HEIGHT}, quality {PHOTO_QUALITY}, {PHOTO_SUBSAMPLING}, noise "
                      f"{PHOTO_NOISE_STD:g}, mean {statistics.fmean(p.stat().st_size for p in photos) / MEGABYTE:.2f} MB"),
            "cache": str(photos[0].parent.parent),
            "agreement_with_bare_loop": share([(label, bare.get(path)) for path, label in ours.items()]),
            "agreement_with_full_decode": share([(label, full[path]) for path, label in ours.items()]),
            "accuracy": {name: share([(answer, truth[path]) for path, answer in answers_by_path.items()])
                         for name, answers_by_path in (("default", ours), ("full_decode", full),
                                                       ("bare_loop", bare))},
        }
    finish(summary, evaluate, print_summary, json_path)


if __name__ == "__main__":
    main()
