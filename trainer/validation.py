"""Holding out validation images: the seeded split of the training images, and the warning when too few
are held out to choose the kept epoch on."""

from __future__ import annotations

import math

import numpy as np

from .invocation import knob
from .keep import KEEP_BEST

# Fewer validation images than this draw a warning when the best epoch is kept. With n images one
# image moves validation accuracy by 100/n points, and late epochs differ by about a point: at 100,
# one image is one point (and an accuracy near 85% still has a standard error of about 3.6 points),
# so below it the kept epoch is chosen on steps coarser than the differences it is meant to find.
MIN_VALIDATION_IMAGES = 100
# A larger share than this is not suggested to reach MIN_VALIDATION_IMAGES: it would take more from
# training than the choice of epoch is worth; such a data set is told to keep the last epoch instead.
MAX_SUGGESTED_VALIDATION_FRACTION = 0.5
PERCENT = 100.0


def shuffled_split(count: int, validation_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(training indices, validation indices): a seeded permutation, then the last fraction held out.

    Shuffling first matters: data sets sorted by class would otherwise validate on the last classes only.
    The split point follows Keras' `validation_split` rule, floor(count * (1 - fraction)).
    """
    order = np.random.default_rng(seed).permutation(count)
    split_at = count - validation_count(count, validation_fraction)
    return order[:split_at], order[split_at:]


def validation_count(count: int, validation_fraction: float) -> int:
    """How many of `count` training images `shuffled_split` holds out: count - floor(count * (1 - fraction))."""
    return count - int(math.floor(count * (1.0 - validation_fraction)))


def validation_warning(count: int, validation_fraction: float, keep: str) -> str | None:
    """A line for the person when the best epoch would be chosen on fewer than MIN_VALIDATION_IMAGES
    validation images (of `count` training images), with the share that holds out enough; else None."""
    held_out = validation_count(count, validation_fraction)
    if keep != KEEP_BEST or held_out == 0 or held_out >= MIN_VALIDATION_IMAGES:
        return None
    text = (f"validating on {held_out:,} of {count:,} training images (validation fraction "
            f"{validation_fraction:g}): one image is {PERCENT / held_out:.1f} points of validation accuracy, "
            f"too coarse to choose the kept epoch; ")
    # The smallest share in hundredths that holds out enough: floor() in the split can give one image
    # more than count * share, so the search starts just below.
    hundredths = max(1, math.floor((MIN_VALIDATION_IMAGES - 1) * PERCENT / count))
    while validation_count(count, hundredths / PERCENT) < MIN_VALIDATION_IMAGES:
        hundredths += 1
    suggested = hundredths / PERCENT
    if suggested <= MAX_SUGGESTED_VALIDATION_FRACTION:
        return text + f"hold out {MIN_VALIDATION_IMAGES} or more with {knob('--validation-fraction', f'{suggested:g}')}"
    return text + (f"the data set is too small to hold out {MIN_VALIDATION_IMAGES}: add images or "
                   f"{knob('--keep', 'last')}")
