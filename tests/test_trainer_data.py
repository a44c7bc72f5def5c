"""Loading data sets: image-folder trees (split and single), the CIFAR-10 python format, bad data."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edge_runtime.errors import DataError
from edge_runtime.preprocess import DEFAULT_SPEC, load_image
from synthetic import CLASS_NAMES, synthetic_arrays, write_image_folder
from trainer.progress import Progress
from trainer.sources import load_dataset
from trainer.sources.image_folders import stratified_test_mask
from trainer_fixtures import (IMAGES_PER_BATCH, TINY_CLASS_NAMES, TRAIN_BATCH_COUNT, CallsEval, RunsShellCommand,
                              batch_rows, cifar_members, pickle_batch, write_cifar_archive, write_cifar_folder,
                              write_damaged_files)

QUIET = Progress(quiet=True)
# tests/synthetic.py writes the split data set's train/ with seed 1 and test/ with seed 2.
SPLIT_TRAIN_SEED, SPLIT_TEST_SEED = 1, 2
SPLIT_TRAIN_PER_CLASS, SPLIT_TEST_PER_CLASS = 60, 20


def copy_tree(source: Path, destination: Path) -> Path:
    shutil.copytree(source, destination)
    return destination


def test_quiet_progress_still_shows_warnings(capsys: pytest.CaptureFixture) -> None:
    quiet, chatty = Progress(quiet=True), Progress(interval_seconds=3600)
    quiet.message("loading")
    quiet.count("decoded images", 10, 10)
    quiet.warning("skipped a.jpg: not a recognised image file")
    assert capsys.readouterr().err == "warning: skipped a.jpg: not a recognised image file\n"
    for done in (1, 2, 3):  # the first count and the last are shown, the rest wait for the interval
        chatty.count("decoded images", done, 3)
    assert capsys.readouterr().err == "decoded images: 1/3\ndecoded images: 3/3\n"


# --- image-folder trees ---------------------------------------------------------------------------

def test_split_tree_arrays_equal_the_images_written_in_sorted_class_order(split_dataset: Path) -> None:
    dataset = load_dataset(split_dataset, progress=QUIET)
    expected_train, expected_train_labels = synthetic_arrays(SPLIT_TRAIN_PER_CLASS, seed=SPLIT_TRAIN_SEED)
    expected_test, expected_test_labels = synthetic_arrays(SPLIT_TEST_PER_CLASS, seed=SPLIT_TEST_SEED)

    assert dataset.class_names == sorted(CLASS_NAMES)
    assert dataset.train_images.dtype == np.uint8 and dataset.train_images.shape == (240, 32, 32, 3)
    assert dataset.train_labels.dtype == np.int64
    # PNG is lossless and the images are already 32x32, so the arrays are the written pixels exactly.
    np.testing.assert_array_equal(dataset.train_images, expected_train)
    np.testing.assert_array_equal(dataset.train_labels, expected_train_labels)
    np.testing.assert_array_equal(dataset.test_images, expected_test)
    np.testing.assert_array_equal(dataset.test_labels, expected_test_labels)
    assert dataset.skipped == [] and dataset.skipped_count == 0
    assert dataset.counts()["train_per_class"] == {name: SPLIT_TRAIN_PER_CLASS for name in CLASS_NAMES}


def test_paths_are_in_array_order(split_dataset: Path) -> None:
    dataset = load_dataset(split_dataset, progress=QUIET)
    assert len(dataset.train_paths) == dataset.train_count and len(dataset.test_paths) == dataset.test_count
    for index in (0, 59, 60, 131, 239):
        path = Path(dataset.train_paths[index])
        assert path.parent.name == dataset.class_names[dataset.train_labels[index]]
        np.testing.assert_array_equal(dataset.train_images[index], load_image(path, DEFAULT_SPEC))
    assert Path(dataset.test_paths[-1]).parent.parent.name == "test"


@pytest.mark.parametrize("wanted,unread", [(("test",), "train"), (("train",), "test")])
def test_a_split_tree_decodes_only_the_splits_asked_for(split_dataset: Path, tmp_path: Path,
                                                      wanted: tuple[str, ...], unread: str) -> None:
    """The report needs only test/, calibration only train/: the other folder's files are never opened."""
    root = copy_tree(split_dataset, tmp_path / "data")
    damaged = write_damaged_files(root / unread / "cross")  # would be skipped with a warning if decoded
    full = load_dataset(split_dataset, progress=QUIET)
    dataset = load_dataset(root, progress=QUIET, splits=wanted)

    assert dataset.skipped == [], f"{damaged[0].parent} was decoded"
    assert dataset.loaded_splits == wanted
    assert getattr(dataset, f"{unread}_images").shape == (0, 32, 32, 3)
    assert getattr(dataset, f"{unread}_paths") == []
    (split,) = wanted
    np.testing.assert_array_equal(getattr(dataset, f"{split}_images"), getattr(full, f"{split}_images"))
    np.testing.assert_array_equal(getattr(dataset, f"{split}_labels"), getattr(full, f"{split}_labels"))
    assert dataset.class_names == full.class_names
    assert f"({'training' if unread == 'train' else 'test'} images not read)" in dataset.summary()


def test_splits_must_name_one_of_train_and_test(split_dataset: Path) -> None:
    with pytest.raises(ValueError, match="splits must name at least one of train, test"):
        load_dataset(split_dataset, progress=QUIET, splits=("validation",))


def test_images_of_any_size_and_mode_go_through_the_shared_preprocessing(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "data", per_class=3)
    odd = {
        "grey_wide.png": Image.fromarray(np.tile(np.arange(96, dtype=np.uint8), (48, 1)), "L"),
        "rgba.png": Image.new("RGBA", (50, 70), (200, 10, 10, 128)),
        "big.jpg": Image.new("RGB", (640, 480), (20, 90, 160)),
        "palette.gif": Image.new("P", (33, 31), 5),
    }
    for name, image in odd.items():
        image.save(root / "circle" / name)
    dataset = load_dataset(root, test_fraction=0.5, progress=QUIET)
    paths = dataset.train_paths + dataset.test_paths
    images = np.concatenate([dataset.train_images, dataset.test_images])
    for name in odd:
        index = next(i for i, path in enumerate(paths) if path.endswith(name))
        assert images[index].shape == (32, 32, 3)
        np.testing.assert_array_equal(images[index], load_image(root / "circle" / name, DEFAULT_SPEC))
    assert dataset.skipped == []


def test_single_tree_is_split_per_class_with_the_seed(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "one", per_class=10)
    dataset = load_dataset(root, seed=3, test_fraction=0.2, progress=QUIET)
    assert dataset.class_names == sorted(CLASS_NAMES)
    assert np.bincount(dataset.train_labels).tolist() == [8, 8, 8, 8]
    assert np.bincount(dataset.test_labels).tolist() == [2, 2, 2, 2]
    all_files = sorted(str(p) for p in root.rglob("*.png"))
    assert sorted(dataset.train_paths + dataset.test_paths) == all_files
    assert not set(dataset.train_paths) & set(dataset.test_paths)
    for images, labels, paths in ((dataset.train_images, dataset.train_labels, dataset.train_paths),
                                  (dataset.test_images, dataset.test_labels, dataset.test_paths)):
        for index in range(0, len(paths), 7):
            assert Path(paths[index]).parent.name == dataset.class_names[labels[index]]
            np.testing.assert_array_equal(images[index], load_image(paths[index], DEFAULT_SPEC))

    again = load_dataset(root, seed=3, test_fraction=0.2, progress=QUIET)
    other_seed = load_dataset(root, seed=4, test_fraction=0.2, progress=QUIET)
    assert again.test_paths == dataset.test_paths
    assert other_seed.test_paths != dataset.test_paths


def test_stratified_mask_keeps_at_least_one_image_on_each_side() -> None:
    labels = np.array([0] * 2 + [1] * 1 + [2] * 50)
    mask = stratified_test_mask(labels, 3, 0.2, seed=0)
    assert mask[labels == 0].sum() == 1  # round(0.4) would be 0: at least one goes to test
    assert mask[labels == 1].sum() == 0  # a single image stays in training
    assert mask[labels == 2].sum() == 10


def test_corrupt_files_are_skipped_with_one_warning_each_and_counted(split_dataset: Path, tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture) -> None:
    root = copy_tree(split_dataset, tmp_path / "data")
    damaged = write_damaged_files(root / "train" / "cross") + write_damaged_files(root / "test" / "waves")
    (root / "train" / "cross" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")  # hidden: ignored, not a warning
    capsys.readouterr()
    dataset = load_dataset(root, progress=Progress(quiet=True))
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]

    assert dataset.skipped_count == 6
    assert sorted(path for path, _ in dataset.skipped) == sorted(str(p) for p in damaged)
    assert len(warnings) == 6
    for path in damaged:
        assert sum(str(path) in line for line in warnings) == 1
    assert any(reason == "file is empty (0 bytes)" for _, reason in dataset.skipped)
    assert dataset.train_count == 240 and dataset.test_count == 80  # the readable images are all there
    assert dataset.summary().endswith("(6 unreadable files skipped)")
    assert str(root / "train" / "cross" / ".DS_Store") not in {path for path, _ in dataset.skipped}


# --- bad data -----------------------------------------------------------------------------------

def test_missing_path_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"^.*nowhere: no such file or folder$"):
        load_dataset(tmp_path / "nowhere", progress=QUIET)


def test_fewer_than_two_classes_names_the_folder(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "one_class", per_class=3, class_names=("only",))
    with pytest.raises(DataError) as error:
        load_dataset(root, progress=QUIET)
    assert str(error.value) == (f"{root}: found 1 class folder (only); need at least two, "
                                f"one sub-folder per class")


def test_folder_without_class_folders_names_the_folder(tmp_path: Path) -> None:
    root = tmp_path / "flat"
    root.mkdir()
    Image.new("RGB", (32, 32)).save(root / "loose.png")
    with pytest.raises(DataError, match=r"flat: found 0 class folders \(none\); need at least two"):
        load_dataset(root, progress=QUIET)


def test_empty_class_folder_names_it(split_dataset: Path, tmp_path: Path) -> None:
    root = copy_tree(split_dataset, tmp_path / "data")
    (root / "test" / "zebra").mkdir()
    (root / "train" / "zebra").mkdir()
    with pytest.raises(DataError) as error:
        load_dataset(root, progress=QUIET)
    assert str(error.value) == f"{root / 'train' / 'zebra'}: class folder is empty"


def test_class_folder_with_only_unreadable_files_names_it(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "data", per_class=3, class_names=("a", "b"))
    write_damaged_files(root / "c")
    with pytest.raises(DataError, match=r"/c: no readable images in class folder"):
        load_dataset(root, progress=QUIET)


def test_train_and_test_with_different_classes_name_both(split_dataset: Path, tmp_path: Path) -> None:
    root = copy_tree(split_dataset, tmp_path / "data")
    (root / "test" / "waves").rename(root / "test" / "zigzag")
    with pytest.raises(DataError) as error:
        load_dataset(root, progress=QUIET)
    assert str(error.value) == (f"{root}: train/ and test/ have different class folders "
                                f"(only in train/: waves; only in test/: zigzag)")


def test_train_without_test_is_refused(split_dataset: Path, tmp_path: Path) -> None:
    root = copy_tree(split_dataset, tmp_path / "data")
    shutil.rmtree(root / "test")
    with pytest.raises(DataError, match=r"data: has a train/ folder but no test/ folder"):
        load_dataset(root, progress=QUIET)


def test_a_file_that_is_no_archive_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "data.zip"
    path.write_bytes(b"PK not really")
    with pytest.raises(DataError, match=r"data.zip: not a data folder or a CIFAR-10 python archive"):
        load_dataset(path, progress=QUIET)


# --- the CIFAR-10 python format -----------------------------------------------------------------

def expected_cifar_arrays() -> tuple[np.ndarray, np.ndarray]:
    rows, labels = zip(*(batch_rows(index) for index in range(1, TRAIN_BATCH_COUNT + 1)))
    images = np.concatenate(rows).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return images, np.concatenate(labels)


@pytest.mark.parametrize("layout", ["archive", "folder", "parent_folder"])
def test_cifar_python_format_loads_in_class_index_order(tmp_path: Path, layout: str) -> None:
    members = cifar_members()
    if layout == "archive":
        source = write_cifar_archive(tmp_path / "cifar-10-python.tar.gz", members)
    elif layout == "folder":
        source = write_cifar_folder(tmp_path / "cifar-10-batches-py", members)
    else:
        write_cifar_folder(tmp_path / "download" / "cifar-10-batches-py", members)
        source = tmp_path / "download"
    dataset = load_dataset(source, progress=QUIET)

    images, labels = expected_cifar_arrays()
    assert dataset.class_names == list(TINY_CLASS_NAMES)
    assert dataset.train_images.shape == (TRAIN_BATCH_COUNT * IMAGES_PER_BATCH, 32, 32, 3)
    np.testing.assert_array_equal(dataset.train_images, images)
    np.testing.assert_array_equal(dataset.train_labels, labels)
    # Batch 2, image 3 was written as red 23 + y, green 103 + x, blue 202: pixel (y=5, x=7).
    assert dataset.train_images[IMAGES_PER_BATCH + 3, 5, 7].tolist() == [23 + 5, 103 + 7, 202]
    assert dataset.test_images.shape == (IMAGES_PER_BATCH, 32, 32, 3)
    assert dataset.test_labels.tolist() == batch_rows(0)[1]
    assert dataset.train_paths is None and dataset.test_paths is None


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_cifar_batches_written_by_current_numpy_load_too(tmp_path: Path, protocol: int) -> None:
    folder = write_cifar_folder(tmp_path / "batches", cifar_members(numpy1_names=False, protocol=protocol))
    dataset = load_dataset(folder, progress=QUIET)
    np.testing.assert_array_equal(dataset.train_images, expected_cifar_arrays()[0])


@pytest.mark.parametrize("payload", [RunsShellCommand, CallsEval])
@pytest.mark.parametrize("layout", ["archive", "folder"])
def test_malicious_pickle_is_refused_and_not_executed(tmp_path: Path, payload: type, layout: str) -> None:
    marker = tmp_path / "pwned"
    members = cifar_members()
    members["data_batch_1"] = pickle.dumps({b"data": payload(marker), b"labels": [0]}, protocol=2)
    if layout == "archive":
        source = write_cifar_archive(tmp_path / "cifar-10-python.tar.gz", members)
    else:
        source = write_cifar_folder(tmp_path / "cifar-10-batches-py", members)
    with pytest.raises(DataError, match=r"data_batch_1: refused, not a plain CIFAR-10 batch \(refusing to load "):
        load_dataset(source, progress=QUIET)
    assert not marker.exists()


def test_pickled_object_arrays_are_refused(tmp_path: Path) -> None:
    members = cifar_members()
    members["test_batch"] = pickle_batch({b"data": np.array([1, "x"], dtype=object), b"labels": [0, 1]},
                                         numpy1_names=False)
    folder = write_cifar_folder(tmp_path / "cifar-10-batches-py", members)
    with pytest.raises(DataError, match=r"test_batch: refused.*Python objects are not allowed"):
        load_dataset(folder, progress=QUIET)


def test_cifar_batch_with_wrong_contents_names_the_file(tmp_path: Path) -> None:
    members = cifar_members()
    members["data_batch_3"] = pickle_batch({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]},
                                           numpy1_names=False)
    folder = write_cifar_folder(tmp_path / "cifar-10-batches-py", members)
    with pytest.raises(DataError, match=r"data_batch_3: 'data' is not a uint8 array of 3072-byte rows"):
        load_dataset(folder, progress=QUIET)


def test_cifar_folder_without_test_batch_is_refused(tmp_path: Path) -> None:
    members = cifar_members()
    del members["test_batch"]
    folder = write_cifar_folder(tmp_path / "cifar-10-batches-py", members)
    with pytest.raises(DataError, match=r"cifar-10-batches-py: test_batch is missing"):
        load_dataset(folder, progress=QUIET)


# --- CIFAR-10 through Keras (the default; the real download cannot run here) ---------------------

def test_default_source_is_keras_cifar10(monkeypatch: pytest.MonkeyPatch) -> None:
    import keras

    train_images = np.arange(4 * 32 * 32 * 3, dtype=np.uint8).reshape(4, 32, 32, 3)
    keras_labels = np.array([[3], [0], [9], [1]], dtype=np.uint8)  # Keras gives [N, 1] uint8
    monkeypatch.setattr(keras.datasets.cifar10, "load_data",
                        lambda: ((train_images, keras_labels), (train_images[:2], keras_labels[:2])))
    dataset = load_dataset(None, progress=QUIET)
    assert dataset.class_names[:3] == ["airplane", "automobile", "bird"] and dataset.num_classes == 10
    assert dataset.train_labels.dtype == np.int64 and dataset.train_labels.tolist() == [3, 0, 9, 1]
    np.testing.assert_array_equal(dataset.train_images, train_images)
    assert dataset.test_count == 2 and dataset.train_paths is None
    assert dataset.source == "CIFAR-10 (keras.datasets.cifar10)"


@pytest.mark.parametrize("make, knob", [(False, "--data PATH"), (True, "DATA=PATH")], ids=["edge-train", "make"])
def test_failed_download_is_a_data_error_that_suggests_data(monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture, make: bool,
                                                            knob: str) -> None:
    import keras

    from trainer.invocation import MAKE_ENV

    def offline():
        raise Exception("URL fetch failure on https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz: None")

    monkeypatch.setattr(keras.datasets.cifar10, "load_data", offline)
    if make:  # `make train` without DATA= : the person sets DATA=, not --data
        monkeypatch.setenv(MAKE_ENV, "1")
    else:
        monkeypatch.delenv(MAKE_ENV, raising=False)
    with pytest.raises(DataError, match=rf"^CIFAR-10 download through Keras failed \(URL fetch failure.*\); "
                                        rf"pass {knob} with a local copy$"):
        load_dataset(None, progress=Progress())
    assert capsys.readouterr().err == ("loading CIFAR-10 through Keras (downloads about 170 MB on first use; "
                                       f"use {knob} for a local copy)\n")


# --- the process pool for large folders ----------------------------------------------------------

POOL_CHECK = r"""
import concurrent.futures, json, sys
import numpy as np
import trainer.decoding as decoding
from trainer.progress import Progress
from trainer.sources import load_dataset

pools = []
class CountingPool(concurrent.futures.ProcessPoolExecutor):
    def __init__(self, *args, **kwargs):
        pools.append(kwargs.get("max_workers"))
        super().__init__(*args, **kwargs)

concurrent.futures.ProcessPoolExecutor = CountingPool
decoding.PARALLEL_MIN_FILES, decoding.FILES_PER_TASK = 10, 37  # odd chunks: boundaries inside classes
quiet = Progress(quiet=True)
serial = load_dataset(sys.argv[1], progress=quiet, workers=1)
assert pools == [], pools
pooled = load_dataset(sys.argv[1], progress=quiet, workers=2)
print(json.dumps({
    "pools": pools,
    "same_images": bool(np.array_equal(serial.train_images, pooled.train_images)
                        and np.array_equal(serial.test_images, pooled.test_images)),
    "same_labels": bool(np.array_equal(serial.train_labels, pooled.train_labels)),
    "same_paths": serial.train_paths == pooled.train_paths and serial.test_paths == pooled.test_paths,
    "skipped": [serial.skipped, pooled.skipped],
}))
"""


def test_process_pool_gives_the_same_arrays_in_the_same_order(split_dataset: Path, tmp_path: Path) -> None:
    import json
    import subprocess
    import sys

    root = copy_tree(split_dataset, tmp_path / "data")
    write_damaged_files(root / "train" / "stripes")
    # A fresh interpreter: the pool is only used before TensorFlow is imported, and this session may have it.
    completed = subprocess.run([sys.executable, "-c", POOL_CHECK, str(root)], capture_output=True, text=True,
                               cwd=Path(__file__).resolve().parent.parent, timeout=120, check=False)
    assert completed.returncode == 0, completed.stderr
    result = json.loads(completed.stdout)
    assert result["pools"] == [2, 2]  # one pool per split: train/ and test/ are decoded (and cached) apart
    assert result["same_images"] and result["same_labels"] and result["same_paths"]
    serial_skipped, pooled_skipped = result["skipped"]
    assert len(serial_skipped) == 3 and pooled_skipped == serial_skipped
