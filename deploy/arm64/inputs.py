"""What both machines classify: the .tflite models from OUT and the test images (CIFAR-10 test images or
generated ones, and one file per image format the tests cover), gathered in the cache's work folder."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from .errors import Unavailable


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
