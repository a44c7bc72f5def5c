"""The run's configuration: what to train on, where to write, and the recipe's knobs with the network's defaults.

`TrainConfig.recipe()` is what training.json and the checkpoint record. Two choices follow from a
configuration alone: whether batch-norm statistics are recomputed after each epoch, and whether
training streams batches or holds float32 arrays in memory.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from edge_runtime.preprocess import PreprocessSpec

from .dataset import DEFAULT_SEED, DEFAULT_TEST_FRACTION
from .keep import KEEP_BEST, KEEP_CHOICES
from .models import ARCHS, DEFAULT_ARCH, Arch, get_arch

DEFAULT_OUT = Path("artifacts")
DEFAULT_EPOCHS = ARCHS[DEFAULT_ARCH].epochs
DEFAULT_BATCH_SIZE = ARCHS[DEFAULT_ARCH].batch_size
# From this input side up, the training images are never held as float32 all at once.
STREAM_MIN_SIDE = 96


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """What to train on, where to write, and the recipe's knobs (defaults are the documented recipe).

    `epochs`, `batch_size`, `image_size`, `augment`, `learning_rate`, `validation_fraction` and `alpha`
    left at None take the arch's defaults (`trainer.models`): after construction every one of them holds a value.
    """

    data: str | os.PathLike | None = None
    out: Path = DEFAULT_OUT
    epochs: int | None = None
    batch_size: int | None = None
    validation_fraction: float | None = None
    seed: int = DEFAULT_SEED
    resume: bool = False
    # Only used when `data` is a single class-folder tree that has to be split into train and test.
    test_fraction: float = DEFAULT_TEST_FRACTION
    workers: int | None = None
    # Which epoch's weights the run keeps (trainer.keep); not part of what training computes.
    keep: str = KEEP_BEST
    # A fresh run into a folder that holds a run replaces it only when forced.
    force: bool = False
    arch: str = DEFAULT_ARCH
    image_size: int | None = None
    augment: bool | None = None
    learning_rate: float | None = None
    # Options of some networks only (MobileNetV2's width multiplier and pretrained weights).
    alpha: float | None = None
    weights: str | None = None
    # With pretrained weights: epochs with the backbone frozen before fine-tuning (None: the arch's).
    freeze_epochs: int | None = None
    # Train through tf.distribute.MirroredStrategy over every GPU (or every logical CPU without one).
    distribute: bool = False

    def __post_init__(self) -> None:
        arch = ARCHS.get(self.arch)
        if arch is None:
            return  # validate() names the choices
        defaults = {"epochs": arch.epochs, "batch_size": arch.batch_size, "image_size": arch.image_size,
                    "augment": arch.augment, "learning_rate": arch.learning_rate,
                    "validation_fraction": arch.validation_fraction}
        if "alpha" in arch.options:
            defaults["alpha"] = arch.options["alpha"]
        if arch.backbone is not None:
            defaults["freeze_epochs"] = arch.freeze_epochs
        for name, value in defaults.items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, value)

    @property
    def network(self) -> Arch:
        """The registry row of `arch`."""
        return get_arch(self.arch)

    def spec(self) -> PreprocessSpec:
        """How images become this network's inputs: its normalization at `image_size`."""
        return self.network.spec(self.image_size)

    def validate(self) -> None:
        """Raise ValueError for settings no run can use."""
        arch = self.network
        for name in ("alpha", "weights"):
            if getattr(self, name) is not None and name not in arch.options:
                raise ValueError(f"{name} applies to {', '.join(a.name for a in ARCHS.values() if name in a.options)}"
                                 f" only, not to {self.arch}")
        if self.freeze_epochs is not None and (arch.backbone is None or self.freeze_epochs < 0):
            raise ValueError(f"freeze epochs {self.freeze_epochs} do not apply to {self.arch}"
                             if arch.backbone is None else f"freeze epochs must be 0 or more, not {self.freeze_epochs}")
        if self.image_size < arch.min_image_size:
            raise ValueError(f"image size must be at least {arch.min_image_size} for {self.arch}, not {self.image_size}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning rate must be positive, not {self.learning_rate}")
        if self.alpha is not None and not self.alpha > 0:
            raise ValueError(f"alpha must be positive, not {self.alpha}")
        if self.epochs < 1:
            raise ValueError(f"epochs must be at least 1, not {self.epochs}")
        if self.batch_size < 1:
            raise ValueError(f"batch size must be at least 1, not {self.batch_size}")
        if not 0.0 <= self.validation_fraction < 1.0:
            raise ValueError(f"validation fraction must be in [0, 1), not {self.validation_fraction}")
        if not 0.0 < self.test_fraction < 1.0:
            raise ValueError(f"test fraction must be in (0, 1), not {self.test_fraction}")
        if self.keep not in KEEP_CHOICES:
            raise ValueError(f"keep must be one of {', '.join(KEEP_CHOICES)}, not {self.keep!r}")

    def recipe(self) -> dict[str, Any]:
        """The settings that define the run, JSON-ready (the data and weights paths made absolute)."""
        data = None if self.data is None else str(Path(self.data).expanduser().resolve())
        weights = self.weights
        if weights is not None and weights not in NAMED_WEIGHTS:
            weights = str(Path(weights).expanduser().resolve())
        return {"data": data, "epochs": self.epochs, "batch_size": self.batch_size,
                "validation_fraction": self.validation_fraction, "seed": self.seed,
                "test_fraction": self.test_fraction, "keep": self.keep, "arch": self.arch,
                "image_size": self.image_size, "augment": self.augment, "learning_rate": self.learning_rate,
                "alpha": self.alpha, "weights": weights, "freeze_epochs": self.freeze_epochs,
                "distribute": self.distribute}


# --weights values that are not file paths.
NAMED_WEIGHTS = ("imagenet",)


def recalibrates_batch_norm(config: TrainConfig) -> bool:
    """Whether the run recomputes batch-norm statistics after each epoch (trainer.batch_norm): for networks
    that ask for it, trained from scratch (pretrained backbones keep theirs) and not distributed (the
    replicated variables are not updated outside a replica step)."""
    return config.network.recalibrate_batch_norm and config.weights is None and not config.distribute


def averages_weights(config: TrainConfig) -> bool:
    """Whether the run validates and exports a moving average of its weights (trainer.averaging): for
    networks that ask for it, trained from scratch in one phase and not distributed (the average's
    batch-norm statistics are recomputed outside a replica step, as in recalibrates_batch_norm)."""
    return config.network.weight_average is not None and config.weights is None and not config.distribute


def streams_batches(config: TrainConfig) -> bool:
    """Whether training streams batches from uint8 images (else float32 arrays in memory, the documented way)."""
    return bool(config.augment) or config.image_size >= STREAM_MIN_SIDE or config.distribute
