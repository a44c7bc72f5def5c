"""The on-disk cache of decoded images: a second load reads it, any change to the files or the
decoding misses it, and nothing half-written is ever read."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from edge_runtime.preprocess import PreprocessSpec
from synthetic import write_image_folder, write_split_dataset
from trainer import decoded_cache, decoding
from trainer.progress import Progress
from trainer.sources import load_dataset

QUIET = Progress(quiet=True)
SPEC_40 = PreprocessSpec(height=40, width=40)


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh cache folder that caches even these few files."""
    folder = tmp_path / "cache"
    monkeypatch.setenv(decoded_cache.CACHE_ENV, str(folder))
    monkeypatch.setattr(decoded_cache, "MIN_FILES", 1)
    return folder


def entries(folder: Path) -> list[Path]:
    return sorted(entry for entry in folder.iterdir() if not entry.name.startswith(".")) if folder.exists() else []


def forbid_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("an image was decoded although the cache held it")

    monkeypatch.setattr(decoding, "decode_chunk", refuse)


def test_second_load_reads_the_cache_and_gives_the_same_arrays(cache, tmp_path, monkeypatch):
    root = write_split_dataset(tmp_path / "data")
    monkeypatch.setenv(decoded_cache.CACHE_ENV, "off")
    uncached = load_dataset(root, progress=QUIET)
    monkeypatch.setenv(decoded_cache.CACHE_ENV, str(cache))
    first = load_dataset(root, progress=QUIET)
    assert len(entries(cache)) == 2  # train/ and test/, one entry each
    forbid_decoding(monkeypatch)
    second = load_dataset(root, progress=QUIET)
    for name in ("train_images", "test_images"):
        np.testing.assert_array_equal(getattr(second, name), getattr(uncached, name))
        np.testing.assert_array_equal(getattr(first, name), getattr(uncached, name))
        assert isinstance(getattr(second, name), np.memmap)  # mapped from disk, not held in memory
    np.testing.assert_array_equal(second.train_labels, uncached.train_labels)
    assert second.train_paths == uncached.train_paths


def test_one_split_reads_only_its_own_entry(cache, tmp_path, monkeypatch):
    root = write_split_dataset(tmp_path / "data")
    load_dataset(root, progress=QUIET)
    forbid_decoding(monkeypatch)
    test_only = load_dataset(root, progress=QUIET, splits=("test",))  # what the report reads
    assert test_only.test_count > 0 and test_only.train_count == 0


def test_a_changed_file_is_decoded_again(cache, tmp_path):
    root = write_image_folder(tmp_path / "data", per_class=6)
    before = load_dataset(root, progress=QUIET)
    victim = Path(before.train_paths[0])
    from PIL import Image

    Image.new("RGB", (32, 32), (1, 2, 3)).save(victim)
    os.utime(victim, ns=(1, 1))  # a different modification time whatever the clock's resolution
    after = load_dataset(root, progress=QUIET)
    index = after.train_paths.index(str(victim))
    assert (after.train_images[index] == (1, 2, 3)).all()
    assert len(entries(cache)) == 2


def test_another_size_is_another_entry_but_normalization_is_not(cache, tmp_path, monkeypatch):
    root = write_image_folder(tmp_path / "data", per_class=6)
    load_dataset(root, progress=QUIET)
    load_dataset(root, progress=QUIET, spec=SPEC_40)
    assert len(entries(cache)) == 2
    forbid_decoding(monkeypatch)
    raw = load_dataset(root, progress=QUIET, spec=PreprocessSpec(scale=1.0, offset=0.0))  # ResNet-8's inputs
    assert raw.train_images.shape[1:] == (32, 32, 3)


def test_unreadable_files_are_remembered_and_warned_about_again(cache, tmp_path, monkeypatch):
    root = write_image_folder(tmp_path / "data", per_class=6)
    broken = root / "cross" / "broken.png"
    broken.write_bytes(b"not an image")
    first = load_dataset(root, progress=QUIET)
    warnings: list[str] = []
    monkeypatch.setattr(Progress, "warning", lambda self, text: warnings.append(text))
    forbid_decoding(monkeypatch)
    second = load_dataset(root, progress=Progress(quiet=True))
    assert second.skipped == first.skipped and len(second.skipped) == 1
    assert any(str(broken) in warning for warning in warnings)
    assert str(broken) not in (second.train_paths or []) + (second.test_paths or [])


def test_an_interrupted_decode_leaves_no_entry(cache, tmp_path, monkeypatch):
    root = write_image_folder(tmp_path / "data", per_class=6)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(decoding, "decode_chunk", interrupted)
    with pytest.raises(KeyboardInterrupt):
        load_dataset(root, progress=QUIET)
    assert not cache.exists() or list(cache.iterdir()) == []
    monkeypatch.undo()
    monkeypatch.setenv(decoded_cache.CACHE_ENV, str(cache))
    monkeypatch.setattr(decoded_cache, "MIN_FILES", 1)
    assert load_dataset(root, progress=QUIET).train_count > 0


def test_a_damaged_entry_is_decoded_again(cache, tmp_path):
    root = write_image_folder(tmp_path / "data", per_class=6)
    expected = load_dataset(root, progress=QUIET).train_images.copy()
    (entry,) = entries(cache)
    (entry / decoded_cache.IMAGES_FILE).write_bytes(b"truncated")
    again = load_dataset(root, progress=QUIET)
    np.testing.assert_array_equal(again.train_images, expected)


def test_the_cache_can_be_turned_off(tmp_path, monkeypatch):
    monkeypatch.setenv(decoded_cache.CACHE_ENV, "off")
    monkeypatch.setattr(decoded_cache, "MIN_FILES", 1)
    assert decoded_cache.cache_root() is None
    dataset = load_dataset(write_image_folder(tmp_path / "data", per_class=6), progress=QUIET)
    assert not isinstance(dataset.train_images, np.memmap)


def test_small_sets_are_not_cached(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv(decoded_cache.CACHE_ENV, str(folder))
    load_dataset(write_image_folder(tmp_path / "data", per_class=6), progress=QUIET)
    assert entries(folder) == []


def test_only_the_most_recently_used_entries_are_kept(cache, tmp_path):
    for size in range(decoded_cache.MAX_ENTRIES + 2):
        folder = cache / f"entry{size}"
        folder.mkdir(parents=True)
        os.utime(folder, (1000 + size, 1000 + size))
    abandoned = cache / ".partial-dead"
    abandoned.mkdir()
    os.utime(abandoned, (1, 1))
    decoded_cache.prune(cache)
    kept = [entry.name for entry in entries(cache)]
    assert kept == sorted(f"entry{size}" for size in range(2, decoded_cache.MAX_ENTRIES + 2))
    assert not abandoned.exists()


def test_default_location_follows_xdg(monkeypatch, tmp_path):
    monkeypatch.delenv(decoded_cache.CACHE_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert decoded_cache.cache_root() == tmp_path / "edge-image-toolkit" / "decoded"


def test_a_pick_decodes_only_the_picked_files(tmp_path, monkeypatch):
    """The converter's calibration draw and the report's --max-images sample decode only what they use."""
    root = write_split_dataset(tmp_path / "data")
    whole = load_dataset(root, progress=QUIET)
    decoded: list[int] = []
    decode = decoding.decode_chunk

    def counting(paths, *args, **kwargs):
        decoded.append(len(paths))
        return decode(paths, *args, **kwargs)

    monkeypatch.setattr(decoding, "decode_chunk", counting)
    chosen = np.array([0, 3, 7, 20])
    picked = load_dataset(root, progress=QUIET, splits=("train",), pick=lambda split, count: chosen)
    assert sum(decoded) == len(chosen)
    np.testing.assert_array_equal(picked.train_images, whole.train_images[chosen])
    np.testing.assert_array_equal(picked.train_labels, whole.train_labels[chosen])
    assert picked.train_paths == [whole.train_paths[i] for i in chosen]
    assert picked.train_available == whole.train_count and picked.test_count == 0


def test_a_pick_that_leaves_a_class_out_is_not_an_unreadable_class(tmp_path):
    root = write_split_dataset(tmp_path / "data")
    picked = load_dataset(root, progress=QUIET, splits=("test",), pick=lambda split, count: np.array([0]))
    assert picked.test_count == 1


def test_a_pick_from_a_source_loaded_whole(tmp_path):
    root = write_image_folder(tmp_path / "data", per_class=6)  # one tree: split after decoding
    whole = load_dataset(root, progress=QUIET)
    picked = load_dataset(root, progress=QUIET, pick=lambda split, count: np.array([1, 2]))
    np.testing.assert_array_equal(picked.test_images, whole.test_images[[1, 2]])
    assert picked.test_available == whole.test_count and picked.train_available == whole.train_count
