"""Streamed batches and augmentation: the order per epoch, what a flip and a shift do, scaling per batch."""

from __future__ import annotations

import numpy as np
import pytest

from edge_runtime.preprocess import PreprocessSpec, scale_pixels
from trainer.batches import (Augmentation, augment, epoch_order, evaluation_batches, one_hot, steps_per_epoch,
                             training_batches)

RAW = PreprocessSpec(scale=1.0, offset=0.0)
UNIT = PreprocessSpec()
COUNT, SIDE = 10, 32


def numbered_images(count: int = COUNT, side: int = SIDE) -> np.ndarray:
    """uint8 images whose red channel is the image's number and green its column (flips and shifts show)."""
    images = np.zeros((count, side, side, 3), dtype=np.uint8)
    images[..., 0] = np.arange(count, dtype=np.uint8)[:, None, None]
    images[..., 1] = np.arange(side, dtype=np.uint8)[None, None, :] * 4
    images[..., 2] = np.arange(side, dtype=np.uint8)[None, :, None] * 4
    return images


def test_epoch_order_is_a_permutation_from_seed_and_epoch() -> None:
    first = epoch_order(100, seed=3, epoch=0)
    assert sorted(first.tolist()) == list(range(100))
    assert np.array_equal(first, epoch_order(100, seed=3, epoch=0))
    assert not np.array_equal(first, epoch_order(100, seed=3, epoch=1))
    assert not np.array_equal(first, epoch_order(100, seed=4, epoch=0))


def test_flip_mirrors_columns_and_keeps_pixels() -> None:
    images = numbered_images()
    flipped = augment(images, np.random.default_rng(0), Augmentation(flip=True, shift=0.0))
    assert flipped.dtype == np.uint8 and flipped.shape == images.shape
    mirrored = [np.array_equal(out, image[:, ::-1]) for out, image in zip(flipped, images)]
    same = [np.array_equal(out, image) for out, image in zip(flipped, images)]
    assert all(m or s for m, s in zip(mirrored, same))
    assert 0 < sum(mirrored) < COUNT  # about half of them, and not none or all
    assert np.array_equal(images, numbered_images())  # the input is not changed


def test_shift_moves_each_image_by_at_most_a_tenth_with_reflected_borders() -> None:
    images = numbered_images(count=40)
    shifted = augment(images, np.random.default_rng(1), Augmentation(flip=False, shift=0.1))
    pad = round(0.1 * SIDE)
    offsets = set()
    for out, image in zip(shifted, images):
        assert (out[..., 0] == image[0, 0, 0]).all()  # still the same image
        padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)), mode="reflect")
        found = [(top, left) for top in range(2 * pad + 1) for left in range(2 * pad + 1)
                 if np.array_equal(padded[top:top + SIDE, left:left + SIDE], out)]
        assert found, "not a window of the reflected image"
        offsets.add(found[0])
    assert len(offsets) > 5  # 49 possible; 40 draws land on many of them


def test_augmentation_is_reproducible_from_the_generator() -> None:
    images = numbered_images()
    once = augment(images, np.random.default_rng(5))
    again = augment(images, np.random.default_rng(5))
    assert np.array_equal(once, again)
    assert not np.array_equal(once, images)


def test_training_batches_cover_each_image_once_per_epoch_scaled_by_the_spec() -> None:
    images, labels = numbered_images(), np.arange(COUNT) % 3
    index = np.array([0, 2, 3, 5, 6, 7, 9])  # the training split: positions in the whole array
    batches = list(training_batches(images, labels, index, 3, RAW, batch_size=3, seed=0, first_epoch=0,
                                    end_epoch=2))
    assert len(batches) == 2 * steps_per_epoch(len(index), 3) == 6
    assert [len(x) for x, _ in batches] == [3, 3, 1, 3, 3, 1]
    for epoch in (batches[:3], batches[3:]):
        seen = np.concatenate([x[:, 0, 0, 0] for x, _ in epoch]).astype(int)
        assert sorted(seen.tolist()) == index.tolist()
        for x, y in epoch:
            assert x.dtype == np.float32 and y.dtype == np.float32
            np.testing.assert_array_equal(x, images[x[:, 0, 0, 0].astype(int)].astype(np.float32))
            np.testing.assert_array_equal(y, one_hot(labels[x[:, 0, 0, 0].astype(int)], 3))
    # Scaled by the spec: x / 255 for the documented one.
    x, _ = next(training_batches(images, labels, index, 3, UNIT, 3, seed=0))
    np.testing.assert_array_equal(x, scale_pixels(images[batches[0][0][:, 0, 0, 0].astype(int)], UNIT))


def test_a_resumed_epoch_gets_the_same_batches_as_an_uninterrupted_run() -> None:
    images, labels = numbered_images(), np.arange(COUNT) % 2
    augmentation = Augmentation()
    whole = list(training_batches(images, labels, np.arange(COUNT), 2, RAW, 4, seed=9, first_epoch=0, end_epoch=3,
                                  augmentation=augmentation))
    resumed = list(training_batches(images, labels, np.arange(COUNT), 2, RAW, 4, seed=9, first_epoch=2,
                                    end_epoch=3, augmentation=augmentation))
    assert len(resumed) == 3
    for (x1, y1), (x2, y2) in zip(whole[6:], resumed):
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)


def test_without_an_end_epoch_the_batches_go_on() -> None:
    stream = training_batches(numbered_images(), np.zeros(COUNT, dtype=int), np.arange(COUNT), 2, RAW, 5, seed=0)
    assert len([next(stream) for _ in range(7)]) == 7  # more than the one epoch of 2 batches


def test_evaluation_batches_are_in_order_and_never_augmented() -> None:
    images, labels = numbered_images(), np.arange(COUNT) % 2
    batches = list(evaluation_batches(images, labels, None, 2, UNIT, 4))
    assert [len(x) for x, _ in batches] == [4, 4, 2]
    np.testing.assert_array_equal(np.concatenate([x for x, _ in batches]), scale_pixels(images, UNIT))
    chosen = list(evaluation_batches(images, labels, np.array([7, 1]), 2, UNIT, 4))
    np.testing.assert_array_equal(chosen[0][0], scale_pixels(images[[7, 1]], UNIT))


@pytest.mark.parametrize("count, batch, steps", [(10, 3, 4), (9, 3, 3), (1, 64, 1)])
def test_steps_per_epoch_counts_the_last_partial_batch(count: int, batch: int, steps: int) -> None:
    assert steps_per_epoch(count, batch) == steps


def test_whole_batches_only_leave_out_a_different_remainder_each_epoch() -> None:
    images, labels = numbered_images(), np.zeros(COUNT, dtype=int)
    batches = list(training_batches(images, labels, np.arange(COUNT), 1, RAW, 4, seed=0, first_epoch=0,
                                    end_epoch=2, drop_remainder=True))
    assert [len(x) for x, _ in batches] == [4, 4, 4, 4] and steps_per_epoch(COUNT, 4, drop_remainder=True) == 2
    left_out = [set(range(COUNT)) - set(np.concatenate([x[:, 0, 0, 0] for x, _ in epoch]).astype(int).tolist())
                for epoch in (batches[:2], batches[2:])]
    assert [len(missing) for missing in left_out] == [2, 2] and left_out[0] != left_out[1]


def test_distributed_evaluation_pads_each_batch_with_zero_weight_copies() -> None:
    images, labels = numbered_images(count=7), np.arange(7) % 2
    batches = list(evaluation_batches(images, labels, None, 2, RAW, 4, replicas=2))
    assert [len(batch[0]) for batch in batches] == [4, 4]  # 4 images, then 3 and one copy
    last_x, last_y, last_weights = batches[1]
    assert last_weights.tolist() == [1.0, 1.0, 1.0, 0.0]
    np.testing.assert_array_equal(last_x[3], last_x[2])
    assert sum(batch[2].sum() for batch in batches) == 7
