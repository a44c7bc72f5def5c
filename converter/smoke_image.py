"""The smoke-test image bundled with every export: one image file that each written model must label right.

A device that receives a new model classifies this image before the model goes live (issue 23; the
Ansible role reads manifest.json's `"smoke_test": {"image": NAME, "label": LABEL}`). The image is one
of the calibration images the converter already read, so no extra data is loaded. Images that came
as arrays (CIFAR-10 through keras.datasets) are written as lossless PNG files first. Up to
MAX_CANDIDATES of them, in calibration order, are run through `edge_runtime.classify.Classifier`
on the written `.tflite` files (the device's code, file reader and preprocessing), and the one whose
smallest top-1 margin over every variant is largest wins, the first on a tie: the same export always
bundles the same image. The checked file's own bytes are copied, never re-encoded, so the device
reads the very pixels that were checked here.

`smoke_candidates` and `clearest_candidate` are pure (paths and arrays in, small results out);
`choose_smoke_image` runs the models and `write_smoke_image` copies the chosen file atomically.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from edge_runtime.atomic import write_bytes
from edge_runtime.errors import ImageError
from edge_runtime.sources.files import has_image_extension

SMOKE_IMAGE_MAX_BYTES = 256 * 1024  # a bigger file would travel to every device with every version
MAX_CANDIDATES = 32  # calibration images run through every variant to find the clearest one
SMOKE_FILE_PREFIX = "smoke_"
MAX_LABEL_CHARACTERS = 48  # of the label in the file name; the manifest keeps the label whole
UNSAFE_NAME_CHARACTERS = re.compile(r"[^A-Za-z0-9_-]+")
UNNAMED_LABEL = "image"  # the file name's stem when nothing of the label is left


@dataclasses.dataclass(frozen=True)
class SmokeSource:
    """The images the converter read, to choose the smoke image from: their files and class names.

    `paths` is None when the images came from an archive or an array download (no file to copy);
    then `images` (uint8 [N, height, width, 3]), when given, are written as PNG files to choose from.
    `labels[i]` is the class name of image i; `origin` names the data set in messages.
    """

    paths: Sequence[str] | None
    labels: Sequence[str]
    origin: str
    images: np.ndarray | None = None


def smoke_source_of(dataset: Any) -> SmokeSource:
    """The training images of a loaded `trainer.dataset.Dataset` (the calibration draw, when picked)."""
    names = list(dataset.class_names)
    return SmokeSource(paths=dataset.train_paths, labels=[names[int(index)] for index in dataset.train_labels],
                       origin=dataset.source, images=None if dataset.train_paths else dataset.train_images)


@dataclasses.dataclass(frozen=True)
class SmokeCandidate:
    """One image file that may become the smoke image, and the label it must get."""

    path: Path
    label: str


@dataclasses.dataclass(frozen=True)
class SmokeImage:
    """The chosen image: the file written beside the models, its label, where it came from, and its margin."""

    name: str
    label: str
    source: Path
    margin: float  # the smallest (top-1 minus runner-up score) over every variant

    def manifest_entry(self) -> dict[str, str]:
        """manifest.json's `smoke_test` entry (what the deploy role reads)."""
        return {"image": self.name, "label": self.label}


def smoke_file_name(label: str, suffix: str) -> str:
    """`smoke_<label><suffix>`, the label reduced to letters, digits, `_` and `-` (a name any shell passes as is)."""
    stem = UNSAFE_NAME_CHARACTERS.sub("_", label).strip("_")[:MAX_LABEL_CHARACTERS].rstrip("_")
    return f"{SMOKE_FILE_PREFIX}{stem or UNNAMED_LABEL}{suffix.lower()}"


def smoke_candidates(source: SmokeSource | None, indices: Sequence[int] | None = None,
                     limit: int = MAX_CANDIDATES,
                     max_bytes: int = SMOKE_IMAGE_MAX_BYTES) -> tuple[list[SmokeCandidate], str | None]:
    """The first `limit` images of `source` (in `indices` order, default all) that can be bundled.

    An image can be bundled when it is a file in a format the runtime reads (by its extension) of at
    most `max_bytes`. Returns (candidates, None), or ([], the reason there are none) for the progress line.
    """
    if source is None:
        return [], "no images were given to choose one from (edge-convert reads them for int8 or uint8 only)"
    if source.paths is None:
        return [], f"{source.origin} holds no image files to copy (calibrate on image folders to bundle one)"
    order = range(len(source.paths)) if indices is None else indices
    candidates: list[SmokeCandidate] = []
    seen = 0
    for index in order:
        seen += 1
        path = Path(source.paths[index])
        size = _file_size(path) if has_image_extension(path.name) else None
        if size is not None and size <= max_bytes:
            candidates.append(SmokeCandidate(path=path, label=str(source.labels[index])))
            if len(candidates) == limit:
                break
    if not candidates:
        return [], (f"none of the {seen:,} images read is an image file the runtime reads "
                    f"of at most {max_bytes // 1024} KiB")
    return candidates, None


def _file_size(path: Path) -> int | None:
    """The size of a regular file; None for anything else or an unreadable one."""
    try:
        return path.stat().st_size if path.is_file() else None
    except OSError:
        return None


def png_candidates(source: SmokeSource, folder: Path, indices: Sequence[int] | None = None,
                   limit: int = MAX_CANDIDATES) -> SmokeSource:
    """`source` with its first `limit` array images (in `indices` order) written to `folder` as PNG files:
    lossless, so the file holds exactly the pixels the models were calibrated on. A source that has
    files, or no arrays, is returned as it is."""
    if source.paths is not None or source.images is None:
        return source
    from PIL import Image

    order = list(range(len(source.images)) if indices is None else indices)[:limit]
    paths = []
    for index in order:
        path = folder / f"{index}.png"
        Image.fromarray(np.ascontiguousarray(source.images[index], dtype=np.uint8)).save(path, format="PNG")
        paths.append(str(path))
    return SmokeSource(paths=paths, labels=[source.labels[index] for index in order], origin=source.origin)


def label_margin(scores: np.ndarray, labels: Sequence[str], expected: str) -> float:
    """Top-1 minus runner-up score when the top-1 label (the first of equal scores, as edge-classify
    answers) is `expected`; NaN when it is not, or when the two best scores tie."""
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    best = int(scores.argmax())
    if best >= len(labels) or labels[best] != expected:
        return math.nan
    runner_up = float(np.delete(scores, best).max()) if scores.size > 1 else 0.0
    margin = float(scores[best]) - runner_up
    return margin if margin > 0 else math.nan


def clearest_candidate(margins: np.ndarray) -> int | None:
    """Index of the candidate whose smallest margin over the variants is largest (margins: [variants,
    candidates], NaN where a variant gets the label wrong); the first on a tie; None when none is right
    in every variant."""
    margins = np.asarray(margins, dtype=np.float64)
    if margins.size == 0:
        return None
    worst = np.where(np.isnan(margins).any(axis=0), -np.inf, np.nan_to_num(margins, nan=-np.inf).min(axis=0))
    best = int(np.argmax(worst))  # argmax returns the first of equal values
    return best if np.isfinite(worst[best]) else None


def choose_smoke_image(model_paths: Sequence[str | os.PathLike], candidates: Sequence[SmokeCandidate]
                       ) -> tuple[SmokeImage | None, str | None]:
    """Run every candidate through every model as the device does; (the clearest image, None) or
    (None, the reason there is none). A candidate the runtime cannot read counts as wrong."""
    from edge_runtime.classify import Classifier

    margins = np.full((len(model_paths), len(candidates)), np.nan)
    for row, model_path in enumerate(model_paths):
        classifier = Classifier(model_path, threads=1)
        labels = classifier.labels or []
        for column, candidate in enumerate(candidates):
            try:
                pixels = classifier.load(candidate.path)
            except ImageError:
                continue
            margins[row, column] = label_margin(classifier.scores(pixels), labels, candidate.label)
    chosen = clearest_candidate(margins)
    if chosen is None:
        return None, (f"none of the {len(candidates)} candidate images got its own label "
                      f"from every model ({', '.join(Path(path).name for path in model_paths)})")
    candidate = candidates[chosen]
    name = smoke_file_name(candidate.label, candidate.path.suffix)
    return SmokeImage(name=name, label=candidate.label, source=candidate.path,
                      margin=float(margins[:, chosen].min())), None


def write_smoke_image(out_dir: str | os.PathLike, image: SmokeImage) -> Path:
    """Copy the chosen file's bytes to `out_dir/<image.name>` atomically; returns the path written."""
    path = Path(out_dir) / image.name
    try:
        data = image.source.read_bytes()
    except OSError as error:
        raise ImageError(f"{image.source}: cannot read the smoke image ({error.strerror or error})") from error
    write_bytes(path, data)
    return path


def stale_smoke_image(out_dir: str | os.PathLike, previous_entry: object, current_name: str | None) -> Path | None:
    """The smoke image an earlier export listed in `out_dir` that this one no longer bundles (to remove), if any.

    Only a plain name written by this module (`smoke_...`, no folder part) is ever returned.
    """
    if not isinstance(previous_entry, dict):
        return None
    name = previous_entry.get("image")
    if not isinstance(name, str) or name == current_name or not name.startswith(SMOKE_FILE_PREFIX) \
            or Path(name).name != name:
        return None
    path = Path(out_dir) / name
    return path if path.is_file() and not path.is_symlink() else None
