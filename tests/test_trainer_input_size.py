"""Data at the network's input size: image files decoded at it, CIFAR-10's 32x32 arrays resized to it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge_runtime.preprocess import PreprocessSpec, array_to_input, load_image
from trainer.progress import Progress
from trainer.sources import load_dataset
from trainer_fixtures import cifar_members, write_cifar_folder

QUIET = Progress(quiet=True)
SPEC_48 = PreprocessSpec(height=48, width=48)


def test_image_folders_decode_at_the_spec_size(split_dataset: Path) -> None:
    dataset = load_dataset(split_dataset, progress=QUIET, spec=SPEC_48)
    assert dataset.train_images.shape[1:] == (48, 48, 3) and dataset.test_images.shape[1:] == (48, 48, 3)
    for index in (0, len(dataset.train_paths) - 1):
        np.testing.assert_array_equal(dataset.train_images[index], load_image(dataset.train_paths[index], SPEC_48))
    # The same files at the default size are another array (the size really changed the decoding).
    small = load_dataset(split_dataset, progress=QUIET, splits=("test",))
    assert small.test_images.shape[1:] == (32, 32, 3)


def test_cifar_arrays_are_resized_to_the_spec_size(tmp_path: Path) -> None:
    folder = write_cifar_folder(tmp_path / "cifar-10-batches-py", cifar_members())
    native = load_dataset(folder, progress=QUIET)
    resized = load_dataset(folder, progress=Progress(quiet=True), spec=SPEC_48)
    assert resized.train_images.shape == (len(native.train_images), 48, 48, 3)
    assert resized.train_images.dtype == np.uint8
    np.testing.assert_array_equal(resized.train_images[3], array_to_input(native.train_images[3], SPEC_48))
    np.testing.assert_array_equal(resized.test_labels, native.test_labels)


def test_decoded_images_are_not_copied_when_every_file_reads(split_dataset: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """At 96 px and above a second copy of the set is what memory cannot afford: each split's array is
    the one its files were decoded into."""
    import trainer.sources.image_folders as image_folders

    decoded = []
    decode = image_folders.decode_images

    def recording(*args, **kwargs):
        result = decode(*args, **kwargs)
        decoded.append(result[0])
        return result

    monkeypatch.setattr(image_folders, "decode_images", recording)
    dataset = load_dataset(split_dataset, progress=QUIET, spec=SPEC_48)
    assert len(decoded) == 2
    assert dataset.train_images is decoded[0] and dataset.test_images is decoded[1]
    # One unreadable file: the kept images are then a copy without it.
    damaged = tmp_path / "data"
    import shutil

    shutil.copytree(split_dataset, damaged)
    (damaged / "train" / "circle" / "0000.png").write_text("not an image\n")
    partial = load_dataset(damaged, progress=QUIET, spec=SPEC_48)
    assert partial.skipped_count == 1 and len(partial.train_images) == len(dataset.train_images) - 1
