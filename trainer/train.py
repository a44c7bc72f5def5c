"""The training loop: load data, shuffle and hold out validation, fit, checkpoint every epoch, write outputs.

Outputs in OUT, each written atomically: `model.keras`, `labels.txt`, `training.json`, `accuracy.png`.
`model.keras` holds the epoch chosen by the keep rule (`trainer.keep`: by default the best on
validation). `checkpoints/` holds the last completed epoch (model with optimizer state, plus history)
and the best epoch so far, so that `resume=True` continues an interrupted run to the same final
epoch count and keeps the same epoch as an uninterrupted run would.

The network comes from the registry (`trainer.models`, `--arch`), with its input size, input
scaling, optimizer, learning-rate schedule, epochs, batch size and augmentation as defaults that
the configuration may override. The documented CNN without augmentation trains exactly as the
documented script does (float32 arrays in memory, Keras' own shuffle); augmented runs and inputs of
96 px and above stream batches from the uint8 images instead (`trainer.batches`).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import os
import platform
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from edge_runtime.atomic import atomic_path, write_text
from edge_runtime.errors import DataError, EdgeError
from edge_runtime.model_file.labels import write_labels
from edge_runtime.preprocess import PreprocessSpec, scale_pixels

from .batch_norm import RECALIBRATION_IMAGES, recalibration_batches, recalibration_callback
from .batches import DEFAULT_AUGMENTATION, evaluation_batches, one_hot, steps_per_epoch, training_batches
from .data import DEFAULT_SEED, DEFAULT_TEST_FRACTION, Dataset, Progress, load_dataset
from .invocation import knob, resume_command, under_make
from .keep import KEEP_BEST, KEEP_CHOICES, KeptEpoch, best_validation_epoch, choose_epoch
from .models import ARCHS, CONSTANT, DEFAULT_ARCH, SGD, SGD_MOMENTUM, Arch, get_arch
from .tensorflow_env import import_tensorflow, native_output_to_log

if TYPE_CHECKING:  # pragma: no cover
    import keras

logger = logging.getLogger(__name__)

DEFAULT_OUT = Path("artifacts")
DEFAULT_EPOCHS = ARCHS[DEFAULT_ARCH].epochs
DEFAULT_BATCH_SIZE = ARCHS[DEFAULT_ARCH].batch_size

MODEL_FILE = "model.keras"
LABELS_FILE = "labels.txt"
REPORT_FILE = "training.json"
PLOT_FILE = "accuracy.png"
CHECKPOINT_DIR = "checkpoints"
CHECKPOINT_STATE = "state.json"
CHECKPOINT_MODEL_PATTERN = "epoch-{epoch:03d}.keras"
CHECKPOINT_MODEL_GLOB = "epoch-*.keras"
STATUS_INTERVAL_SECONDS = 0.5  # how often the in-epoch status line is redrawn on a terminal
REPORT_FORMAT_VERSION = 4  # 2: adds "kept" and "test_last_epoch"; 3: adds "arch"; 4: adds test.one_class_answer
# Fields of the configuration that decide what a run computes; a resumed run must match them.
# The network comes first: when it differs, that is what the person needs to hear.
RECIPE_FIELDS = ("arch", "data", "seed", "batch_size", "validation_fraction", "test_fraction", "image_size",
                 "augment", "learning_rate", "alpha", "weights", "freeze_epochs")
# What a checkpoint made before --arch existed was trained with.
LEGACY_RECIPE = {"arch": DEFAULT_ARCH, "image_size": ARCHS[DEFAULT_ARCH].image_size, "augment": False,
                 "learning_rate": ARCHS[DEFAULT_ARCH].learning_rate, "alpha": None, "weights": None,
                 "freeze_epochs": None}
# From this input side up, the training images are never held as float32 all at once.
STREAM_MIN_SIDE = 96
# Batches the input pipeline prepares ahead of the training step.
PREFETCH_BATCHES = 2
# Fewer validation images than this draw a warning when the best epoch is kept. With n images one
# image moves validation accuracy by 100/n points, and late epochs differ by about a point: at 100,
# one image is one point (and an accuracy near 85% still has a standard error of about 3.6 points),
# so below it the kept epoch is chosen on steps coarser than the differences it is meant to find.
MIN_VALIDATION_IMAGES = 100
# A larger share than this is not suggested to reach MIN_VALIDATION_IMAGES: it would take more from
# training than the choice of epoch is worth; such a data set is told to keep the last epoch instead.
MAX_SUGGESTED_VALIDATION_FRACTION = 0.5
PERCENT = 100.0


class CheckpointError(EdgeError):
    """There is no checkpoint to resume from, or it belongs to a different run."""


class RunExists(CheckpointError):
    """A fresh run would replace a finished or unfinished run in the same folder."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during training: the checkpoint of the last completed epoch is on disk."""

    def __init__(self, epochs_completed: int, epochs: int, out: Path) -> None:
        super().__init__(f"interrupted after epoch {epochs_completed} of {epochs}")
        self.epochs_completed = epochs_completed
        self.epochs = epochs
        self.out = out


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


@dataclasses.dataclass(frozen=True)
class Phase:
    """Epochs first_epoch..end_epoch-1 (0-based) trained with one optimizer: the whole run, or with
    pretrained weights a frozen-backbone phase and then a fine-tuning one at a lower rate."""

    first_epoch: int
    end_epoch: int
    learning_rate: float
    backbone_trainable: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {"epochs": [self.first_epoch + 1, self.end_epoch], "learning_rate": self.learning_rate,
                "backbone_trainable": self.backbone_trainable}


def training_phases(config: TrainConfig) -> list[Phase]:
    """The run's phases: one, or with pretrained weights a frozen one then fine-tuning (`Arch.freeze_epochs`)."""
    arch = config.network
    freeze = min(config.freeze_epochs or 0, config.epochs) if config.weights is not None and arch.backbone else 0
    if freeze == 0:
        return [Phase(0, config.epochs, config.learning_rate)]
    phases = [Phase(0, freeze, config.learning_rate, backbone_trainable=False)]
    if freeze < config.epochs:
        phases.append(Phase(freeze, config.epochs, config.learning_rate * arch.fine_tune_factor))
    return phases


def recalibrates_batch_norm(config: TrainConfig) -> bool:
    """Whether the run recomputes batch-norm statistics after each epoch (trainer.batch_norm): for networks
    that ask for it, trained from scratch (pretrained backbones keep theirs) and not distributed (the
    replicated variables are not updated outside a replica step)."""
    return config.network.recalibrate_batch_norm and config.weights is None and not config.distribute


def streams_batches(config: TrainConfig) -> bool:
    """Whether training streams batches from uint8 images (else float32 arrays in memory, the documented way)."""
    return bool(config.augment) or config.image_size >= STREAM_MIN_SIDE or config.distribute


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """The last completed epoch of a run, as stored in OUT/checkpoints/."""

    epoch: int
    model_path: Path
    history: dict[str, list[float]]
    recipe: dict[str, Any]
    class_names: list[str]
    training_seconds: float
    best_epoch: int | None = None  # the best validation epoch so far; its model file is kept beside the last
    best_model_path: Path | None = None


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """What a finished run produced."""

    out: Path
    model_path: Path
    labels_path: Path
    report_path: Path
    plot_path: Path
    history: dict[str, list[float]]
    test_loss: float
    test_accuracy: float
    epochs_completed: int
    resumed_from_epoch: int
    durations: dict[str, float]
    kept: KeptEpoch
    last_epoch_test_accuracy: float
    already_complete: bool = False  # --resume found the run finished and did nothing
    one_class_answer: str | None = None  # the class the kept model answers for every test image, if only one


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


def one_class_answer(predictions: np.ndarray, labels: np.ndarray) -> int | None:
    """The class a model answered for every test image, when it answered one class only and the test
    images are of more than one (a model that has not learned to tell them apart); else None."""
    answered = np.unique(np.asarray(predictions))
    if len(answered) != 1 or len(np.unique(np.asarray(labels))) < 2:
        return None
    return int(answered[0])


def read_checkpoint(out: str | os.PathLike) -> Checkpoint | None:
    """The checkpoint in OUT/checkpoints, None if there is none; CheckpointError if it is damaged."""
    folder = Path(out) / CHECKPOINT_DIR
    state_path = folder / CHECKPOINT_STATE
    if not state_path.is_file():
        return None
    try:
        state = json.loads(state_path.read_text(encoding="utf-8"))
        best_model = state.get("best_model")
        checkpoint = Checkpoint(
            epoch=int(state["epoch"]),
            model_path=folder / state["model"],
            history={key: [float(v) for v in values] for key, values in state["history"].items()},
            recipe=dict(state["recipe"]),
            class_names=[str(name) for name in state["class_names"]],
            training_seconds=float(state.get("training_seconds", 0.0)),
            best_epoch=None if state.get("best_epoch") is None else int(state["best_epoch"]),
            best_model_path=None if best_model is None else folder / best_model,
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise CheckpointError(f"{state_path}: damaged checkpoint state ({error}); "
                              f"start afresh without --resume") from error
    if not checkpoint.model_path.is_file():
        raise CheckpointError(f"{checkpoint.model_path}: checkpoint model is missing; start afresh without --resume")
    if checkpoint.best_model_path is not None and not checkpoint.best_model_path.is_file():
        raise CheckpointError(f"{checkpoint.best_model_path}: the best epoch's checkpoint model is missing; "
                              f"start afresh without --resume")
    return checkpoint


def _write_checkpoint(folder: Path, model: "keras.Model", epoch: int, history: dict[str, list[float]],
                      recipe: dict[str, Any], class_names: Sequence[str], training_seconds: float) -> None:
    """Save the model for `epoch`, then point state.json at it and at the best epoch so far, then drop
    every other epoch file.

    The best validation epoch's file stays beside the last one, so a resumed run can still keep it.
    state.json is replaced last, so it always names complete model files: a crash at any point
    leaves either the previous checkpoint or this one.
    """
    model_name = CHECKPOINT_MODEL_PATTERN.format(epoch=epoch)
    with atomic_path(folder / model_name) as tmp:
        model.save(tmp)
    best_epoch = best_validation_epoch(history)
    best_name = None if best_epoch is None else CHECKPOINT_MODEL_PATTERN.format(epoch=best_epoch)
    if best_name is not None and not (folder / best_name).is_file():
        raise CheckpointError(f"{folder / best_name}: the best epoch's checkpoint model is missing")
    state = {"epoch": epoch, "model": model_name, "best_epoch": best_epoch, "best_model": best_name,
             "history": history, "recipe": recipe, "class_names": list(class_names),
             "training_seconds": training_seconds}
    write_text(folder / CHECKPOINT_STATE, json.dumps(state, indent=1) + "\n")
    logger.debug("checkpointed epoch %d in %s (best so far: %s)", epoch, folder / model_name, best_epoch)
    for old in folder.glob(CHECKPOINT_MODEL_GLOB):
        if old.name not in (model_name, best_name):
            old.unlink(missing_ok=True)


def _check_resumable(checkpoint: Checkpoint, config: TrainConfig, folder: Path) -> None:
    """Refuse to continue a checkpoint with settings that would make a different run."""
    wanted = config.recipe()
    for field in RECIPE_FIELDS:
        made_with = checkpoint.recipe.get(field, LEGACY_RECIPE.get(field))
        if made_with != wanted[field]:
            raise CheckpointError(
                f"{folder}: the checkpoint was made with {field} {made_with!r}, "
                f"not {wanted[field]!r}; resume with the same settings or start afresh without --resume")
    planned = checkpoint.recipe.get("epochs")
    if config.network.schedule != CONSTANT and planned is not None and planned != config.epochs:
        raise CheckpointError(f"{folder}: the checkpoint's learning-rate schedule was planned for {planned} epochs, "
                              f"not {config.epochs}; resume with --epochs {planned} or start afresh")
    if checkpoint.best_epoch is None and checkpoint.history.get("val_accuracy"):
        raise CheckpointError(f"{folder}: this checkpoint was made by an earlier edge-train that did not keep "
                              f"the best epoch; start afresh with --force")
    if checkpoint.epoch > config.epochs:
        raise CheckpointError(f"{folder}: the checkpoint already has {checkpoint.epoch} epochs, "
                              f"more than the {config.epochs} asked for")


def _epoch_callback(folder: Path, history: dict[str, list[float]], recipe: dict[str, Any],
                    class_names: Sequence[str], epochs: int, batch_size: int, prior_seconds: float,
                    progress: Progress) -> "keras.callbacks.Callback":
    """A Keras callback that shows progress and checkpoints every epoch (built lazily: Keras is heavy).

    On a terminal it also redraws one status line within the epoch (step, images/s, time left);
    elsewhere (a log file, CI) it prints one line per epoch only.
    """
    import keras

    class EpochCheckpoint(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.epochs_completed = 0
            self.checkpoint_seconds = 0.0  # reported, to show what checkpointing costs
            self.fit_started = time.perf_counter()
            self.epoch_started = self.fit_started
            self.epoch_number = 0
            self.last_status = 0.0
            self.first_step_seconds: float | None = None  # when step 1 of this epoch ended, from its start

        def on_train_begin(self, logs: dict | None = None) -> None:
            self.fit_started = time.perf_counter()

        def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
            self.epoch_started = self.last_status = time.perf_counter()
            self.epoch_number = epoch + 1
            self.first_step_seconds = None

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            now = time.perf_counter()
            progress.end_status()
            for key, value in sorted((logs or {}).items()):
                history.setdefault(key, []).append(float(value))
            metrics = "  ".join(f"{key} {float(value):.4f}" for key, value in sorted((logs or {}).items()))
            progress.message(f"epoch {epoch + 1}/{epochs}  {metrics}  ({now - self.epoch_started:.1f} s)")
            _write_checkpoint(folder, self.model, epoch + 1, history, recipe, class_names,
                              prior_seconds + (now - self.fit_started))
            self.checkpoint_seconds += time.perf_counter() - now
            self.epochs_completed = epoch + 1

    class EpochCheckpointWithStatus(EpochCheckpoint):
        def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
            now = time.perf_counter()
            if batch == 0:
                self.first_step_seconds = now - self.epoch_started
            if now - self.last_status < STATUS_INTERVAL_SECONDS:
                return
            self.last_status = now
            steps = self.params.get("steps") or 0
            progress.status(epoch_status(self.epoch_number, epochs, batch + 1, steps, batch_size,
                                         now - self.epoch_started, self.first_step_seconds))

    return EpochCheckpointWithStatus() if progress.live else EpochCheckpoint()


def epoch_status(epoch: int, epochs: int, step: int, steps: int, batch_size: int, seconds: float,
                 first_step_seconds: float | None) -> str:
    """The in-epoch status line: `epoch 3/15  step 200/625  1,840 images/s  0:15 left in this epoch`.

    `seconds` have passed since the epoch began, `first_step_seconds` of them by the end of step 1.
    Step 1 also builds (and in the first epoch compiles) the graph, so the rate and the time left are
    measured over the steps after it; until one has ended, the line shows neither.
    """
    text = f"epoch {epoch}/{epochs}  step {step}/{steps or '?'}"
    per_step = step_seconds(step, seconds, first_step_seconds)
    if per_step is None:
        return text
    text += f"  {batch_size / per_step:,.0f} images/s"
    if steps:
        left = round(per_step * max(0, steps - step))
        text += f"  {left // 60}:{left % 60:02d} left in this epoch"
    return text


def step_seconds(step: int, seconds: float, first_step_seconds: float | None) -> float | None:
    """Seconds per training step after the first (which includes building the graph), from the time
    `seconds` at the end of `step` and the time at which step 1 ended; None until a later step has ended."""
    if first_step_seconds is None or step < 2 or seconds <= first_step_seconds:
        return None
    return (seconds - first_step_seconds) / (step - 1)


def build_network(config: TrainConfig, num_classes: int) -> "keras.Model":
    """The arch's network for `num_classes` at the configured size, with its own options (alpha, weights)."""
    arch = config.network
    options = {name: getattr(config, name) for name in arch.options}
    return arch.build(num_classes, config.image_size, **options)


def learning_rate_schedule(config: TrainConfig, phase: Phase, steps: int) -> Any:
    """The phase's learning rate: constant, or a linear warm-up from 0 and a cosine decay to 0 at its end."""
    if config.network.schedule == CONSTANT:
        return phase.learning_rate
    import keras

    total = steps * (phase.end_epoch - phase.first_epoch)
    warmup = min(config.network.warmup_epochs * steps, total // 2)
    return keras.optimizers.schedules.CosineDecay(initial_learning_rate=0.0, decay_steps=max(1, total - warmup),
                                                  warmup_target=phase.learning_rate, warmup_steps=warmup)


def prepare_phase(model: "keras.Model", config: TrainConfig, phase: Phase, steps: int) -> None:
    """Freeze or unfreeze the backbone for `phase` and compile with a fresh optimizer at its learning rate."""
    import keras

    from .models.cnn import LOSS, METRICS

    arch = config.network
    if arch.backbone is not None:
        model.get_layer(arch.backbone).trainable = phase.backbone_trainable
    learning_rate = learning_rate_schedule(config, phase, steps)
    loss = keras.losses.CategoricalCrossentropy(label_smoothing=arch.label_smoothing) if arch.label_smoothing else LOSS
    if arch.optimizer == SGD:
        optimizer = keras.optimizers.SGD(learning_rate=learning_rate, momentum=SGD_MOMENTUM, nesterov=True)
    else:
        optimizer = keras.optimizers.Adam(learning_rate=learning_rate)
    # XLA is left out under tf.distribute: the replicated step is not what it was measured on.
    jit = arch.jit_compile and not config.distribute
    if config.distribute:
        # Distributed evaluation pads its batches with zero-weight copies (trainer.batches): the accuracy
        # must weigh them, so it counts real images only. (The loss's divisor still counts the copies of
        # the last batch: a slight bias of the validation and test loss, never of the accuracy.)
        model.compile(optimizer=optimizer, loss=loss, weighted_metrics=list(METRICS), jit_compile=jit)
    else:
        model.compile(optimizer=optimizer, loss=loss, metrics=list(METRICS), jit_compile=jit)


def distribution_strategy(distribute: bool, progress: Progress) -> Any:
    """tf.distribute.MirroredStrategy over every GPU, or every logical CPU where there is no GPU; None when off."""
    if not distribute:
        return None
    tf = import_tensorflow()
    devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
    strategy = tf.distribute.MirroredStrategy(devices=[device.name for device in devices])
    progress.message(f"distributing over {strategy.num_replicas_in_sync} device(s) with MirroredStrategy: "
                     f"{', '.join(device.name for device in devices)}")
    return strategy


def _scope(strategy: Any) -> Any:
    """The strategy's scope, or a scope that does nothing."""
    import contextlib

    return strategy.scope() if strategy is not None else contextlib.nullcontext()


def _stream(generate: Any, *args: Any, batches: int | None = None, weighted: bool = False) -> Any:
    """A tf.data pipeline over `generate(*args)`, which yields (float32 inputs, one-hot targets) batches,
    with sample weights as a third array when `weighted`.

    `batches` is how many a finite stream yields: Keras then knows where an evaluation ends.
    """
    tf = import_tensorflow()
    images, num_classes = args[0], args[3]
    signature = (tf.TensorSpec((None, *images.shape[1:]), tf.float32), tf.TensorSpec((None, num_classes), tf.float32))
    if weighted:
        signature += (tf.TensorSpec((None,), tf.float32),)
    dataset = tf.data.Dataset.from_generator(functools.partial(generate, *args), output_signature=signature)
    if batches is not None:
        dataset = dataset.apply(tf.data.experimental.assert_cardinality(batches))
    return dataset.prefetch(PREFETCH_BATCHES)


def check_replicas(replicas: int, batch_size: int, train_count: int) -> None:
    """Refuse a distributed run whose training batches the devices cannot share evenly (DataError)."""
    if replicas == 1:
        return
    if batch_size % replicas:
        raise DataError(f"batch size {batch_size} does not split evenly over {replicas} devices; "
                        f"give a multiple of {replicas}")
    if train_count < batch_size:
        raise DataError(f"{train_count} training image(s) are fewer than one batch of {batch_size}; "
                        f"a distributed run trains on whole batches only")


def _evaluation_stream(images: np.ndarray, labels: np.ndarray, index: np.ndarray | None, num_classes: int,
                       spec: PreprocessSpec, batch_size: int, replicas: int) -> Any:
    """Evaluation batches in order, as a stream of known length (padded for the devices when distributed)."""
    count = len(images) if index is None else len(index)
    return _stream(evaluation_batches, images, labels, index, num_classes, spec, batch_size, replicas,
                   batches=steps_per_epoch(count, batch_size), weighted=replicas > 1)


def _fit_data(dataset: Dataset, index: np.ndarray, config: TrainConfig, spec: PreprocessSpec, streaming: bool,
              evaluation: bool = False, replicas: int = 1) -> Any:
    """The images at `index` as the network takes them: (float32 array, one-hot) in memory, or a stream."""
    if streaming and evaluation:
        return _evaluation_stream(dataset.train_images, dataset.train_labels, index, dataset.num_classes, spec,
                                  config.batch_size, replicas)
    # The fancy indexing copies, in shuffled order (the documented recipe's arrays).
    return (scale_pixels(dataset.train_images[index], spec), one_hot(dataset.train_labels[index], dataset.num_classes))


def _evaluation_data(dataset: Dataset, config: TrainConfig, spec: PreprocessSpec, streaming: bool,
                     replicas: int = 1) -> Any:
    """The test set as the network takes it: arrays for the documented path, else a stream."""
    if streaming:
        return _evaluation_stream(dataset.test_images, dataset.test_labels, None, dataset.num_classes, spec,
                                  config.batch_size, replicas)
    return scale_pixels(dataset.test_images, spec), one_hot(dataset.test_labels, dataset.num_classes)


def _predicted_classes(model: "keras.Model", data: Any) -> np.ndarray:
    """The top-1 class of each test image, from arrays or a stream (whose targets predict ignores; a
    distributed stream's padding repeats images, which leaves the set of answers unchanged)."""
    inputs = data[0] if isinstance(data, tuple) else data
    return np.argmax(model.predict(inputs, verbose=0), axis=1)


def _evaluate(model: "keras.Model", data: Any) -> tuple[float, float]:
    """(loss, accuracy) of `model` on arrays or a stream."""
    if isinstance(data, tuple):
        loss, accuracy = model.evaluate(*data, verbose=0)
    else:
        loss, accuracy = model.evaluate(data, verbose=0)
    return float(loss), float(accuracy)


def package_versions() -> dict[str, str]:
    """Versions of what produced the model, for training.json."""
    from importlib import metadata

    versions = {"python": platform.python_version()}
    for name in ("tensorflow", "keras", "numpy", "pillow", "matplotlib", "edge-image-toolkit"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def train(config: TrainConfig, progress: Progress | None = None,
          callbacks: Sequence[Any] = ()) -> TrainResult:
    """Train the network `config.arch` (default: the documented CNN) as `config` says and write the
    outputs into `config.out`.

    `callbacks` are extra Keras callbacks, run after the per-epoch checkpoint (tests use one to
    simulate Ctrl-C). Raises DataError / CheckpointError for bad input, RunExists when a fresh run
    would replace another without `force`, TrainingInterrupted on Ctrl-C during training (the last
    completed epoch is checkpointed). `resume` on a finished run returns its result without work.
    """
    config.validate()
    progress = progress if progress is not None else Progress()
    out = Path(config.out)
    folder = out / CHECKPOINT_DIR
    checkpoint = None
    if config.resume:
        checkpoint = read_checkpoint(out)
        if checkpoint is None:
            raise CheckpointError(f"{folder}: no checkpoint to resume from; run without --resume to start")
        _check_resumable(checkpoint, config, folder)
        complete = finished_result(out, config, checkpoint)
        if complete is not None:
            return complete
        progress.message(f"resuming from epoch {checkpoint.epoch} of {config.epochs} ({checkpoint.model_path})")
    else:
        _refuse_to_replace(out, config.force, progress)

    started = time.perf_counter()
    spec = config.spec()
    dataset = load_dataset(config.data, seed=config.seed, test_fraction=config.test_fraction,
                           progress=progress, workers=config.workers, spec=spec)
    loading_seconds = time.perf_counter() - started
    progress.message(f"loaded {dataset.summary()} in {loading_seconds:.1f} s")
    if checkpoint is not None and checkpoint.class_names != dataset.class_names:
        raise CheckpointError(f"{folder}: the checkpoint's classes ({', '.join(checkpoint.class_names)}) "
                              f"differ from the data's ({', '.join(dataset.class_names)})")

    train_index, validation_index = shuffled_split(dataset.train_count, config.validation_fraction, config.seed)
    if len(train_index) == 0 or (config.validation_fraction > 0 and len(validation_index) == 0):
        raise DataError(f"{dataset.source}: {dataset.train_count} training image(s) are too few to hold out "
                        f"{config.validation_fraction:.0%} for validation")

    # Lazy and quiet: after the data, so `--help` and data errors never wait for TensorFlow.
    import_tensorflow()
    import keras

    keras.utils.set_random_seed(config.seed)
    strategy = distribution_strategy(config.distribute, progress)
    replicas = strategy.num_replicas_in_sync if strategy is not None else 1
    check_replicas(replicas, config.batch_size, len(train_index))
    with _scope(strategy), native_output_to_log():  # the first op probes for CUDA devices and prints about it
        if checkpoint is not None:
            model = keras.models.load_model(checkpoint.model_path)
            history = {key: list(values) for key, values in checkpoint.history.items()}
            initial_epoch, prior_seconds = checkpoint.epoch, checkpoint.training_seconds
        else:
            model = build_network(config, dataset.num_classes)
            history, initial_epoch, prior_seconds = {}, 0, 0.0

    streaming = streams_batches(config)
    evaluation_data = _evaluation_data(dataset, config, spec, streaming, replicas)
    session_training_seconds = 0.0
    checkpoint_seconds = 0.0
    if initial_epoch < config.epochs:
        validation = None
        if len(validation_index):
            validation = _fit_data(dataset, validation_index, config, spec, streaming, evaluation=True,
                                   replicas=replicas)
        whole_batches = replicas > 1
        steps = steps_per_epoch(len(train_index), config.batch_size, drop_remainder=whole_batches)
        epoch_callback = _epoch_callback(folder, history, config.recipe(), dataset.class_names, config.epochs,
                                         config.batch_size, prior_seconds, progress)
        fit_callbacks = [epoch_callback, *callbacks]
        if recalibrates_batch_norm(config):
            # Before the checkpointing callback, so that each saved epoch carries the new statistics.
            fit_callbacks.insert(0, recalibration_callback(functools.partial(
                recalibration_batches, dataset.train_images, train_index, spec, config.batch_size)))
            progress.message(f"batch-norm statistics recomputed after each epoch from "
                             f"{min(RECALIBRATION_IMAGES, len(train_index)):,} training images")
        too_few = validation_warning(dataset.train_count, config.validation_fraction, config.keep)
        if too_few is not None:
            progress.warning(too_few)
        augmentation = "augmented, " if config.augment else ""
        progress.message(f"training {config.arch} on {len(train_index):,} {spec.width}x{spec.height} images "
                         f"({augmentation}{'streamed' if streaming else 'in memory'}), validating on "
                         f"{len(validation_index):,}: epochs {initial_epoch + 1}..{config.epochs}, "
                         f"batch {config.batch_size}")
        fit_started = time.perf_counter()
        try:
            for phase in training_phases(config):
                if phase.end_epoch <= initial_epoch:
                    continue
                first = max(phase.first_epoch, initial_epoch)
                if first == phase.first_epoch:  # a phase starting now; a resumed one has its optimizer
                    with _scope(strategy):
                        prepare_phase(model, config, phase, steps)
                    if phase.first_epoch > 0:
                        progress.message(f"fine-tuning the whole network from epoch {first + 1} at learning rate "
                                         f"{phase.learning_rate:g}")
                    elif not phase.backbone_trainable:
                        progress.message(f"pretrained backbone frozen for epochs 1..{phase.end_epoch}")
                if streaming:
                    model.fit(_stream(training_batches, dataset.train_images, dataset.train_labels, train_index,
                                      dataset.num_classes, spec, config.batch_size, config.seed, first, None,
                                      DEFAULT_AUGMENTATION if config.augment else None, whole_batches),
                              epochs=phase.end_epoch, initial_epoch=first, steps_per_epoch=steps, shuffle=False,
                              validation_data=validation, verbose=0, callbacks=fit_callbacks)
                else:
                    x_train, y_train = _fit_data(dataset, train_index, config, spec, streaming)
                    model.fit(x_train, y_train, batch_size=config.batch_size, epochs=phase.end_epoch,
                              initial_epoch=first, validation_data=validation, shuffle=True, verbose=0,
                              callbacks=fit_callbacks)
                    del x_train, y_train
        except KeyboardInterrupt as interrupt:
            progress.end_status()
            raise TrainingInterrupted(initial_epoch + epoch_callback.epochs_completed, config.epochs,
                                      out) from interrupt
        session_training_seconds = time.perf_counter() - fit_started
        checkpoint_seconds = epoch_callback.checkpoint_seconds
        del validation
    else:
        progress.message(f"all {config.epochs} epochs are trained; evaluating and writing the outputs")

    started = time.perf_counter()
    last_loss, last_accuracy = _evaluate(model, evaluation_data)
    kept = choose_epoch(history, config.keep)
    if kept.epoch == config.epochs:
        test_loss, test_accuracy = last_loss, last_accuracy
    else:
        with native_output_to_log():
            model = keras.models.load_model(folder / CHECKPOINT_MODEL_PATTERN.format(epoch=kept.epoch))
        test_loss, test_accuracy = _evaluate(model, evaluation_data)
    answered = one_class_answer(_predicted_classes(model, evaluation_data), dataset.test_labels)
    one_class = None if answered is None else dataset.class_names[answered]
    evaluation_seconds = time.perf_counter() - started
    progress.message(f"kept epoch {kept.epoch} of {config.epochs} ({kept.rule}): test accuracy "
                     f"{test_accuracy:.4f}, loss {test_loss:.4f} on {dataset.test_count:,} images "
                     f"(last epoch: {last_accuracy:.4f})")

    durations = {
        "loading_seconds": round(loading_seconds, 3),
        "training_seconds": round(prior_seconds + session_training_seconds, 3),
        "training_seconds_this_session": round(session_training_seconds, 3),
        "checkpoint_seconds_this_session": round(checkpoint_seconds, 3),
        "evaluation_seconds": round(evaluation_seconds, 3),
    }
    report = training_report(config, dataset, history, float(test_loss), float(test_accuracy),
                             durations, resumed_from_epoch=initial_epoch,
                             validation_count=len(validation_index), train_count=len(train_index),
                             parameters=int(model.count_params()), kept=kept,
                             last_epoch_test={"loss": float(last_loss), "accuracy": float(last_accuracy)},
                             one_class=one_class)
    paths = write_outputs(out, model, dataset.class_names, history, report, kept_epoch=kept.epoch)
    progress.message(f"wrote {', '.join(path.name for path in paths.values())} to {out}")
    return TrainResult(out=out, model_path=paths["model"], labels_path=paths["labels"],
                       report_path=paths["report"], plot_path=paths["plot"], history=history,
                       test_loss=float(test_loss), test_accuracy=float(test_accuracy),
                       epochs_completed=config.epochs, resumed_from_epoch=initial_epoch, durations=durations,
                       kept=kept, last_epoch_test_accuracy=float(last_accuracy), one_class_answer=one_class)


def finished_result(out: Path, config: TrainConfig, checkpoint: Checkpoint) -> TrainResult | None:
    """The result of the run in `out` when it is already complete as `config` asks, else None.

    Complete means: the checkpoint has every epoch, and model.keras and a training.json written
    from that checkpoint with the same keep rule are in place. Anything less is finished by resuming.
    """
    if checkpoint.epoch != config.epochs:
        return None
    paths = {"model": out / MODEL_FILE, "labels": out / LABELS_FILE, "plot": out / PLOT_FILE,
             "report": out / REPORT_FILE}
    if not all(path.is_file() for path in paths.values()):
        return None
    try:
        report = json.loads(paths["report"].read_text(encoding="utf-8"))
        kept = KeptEpoch(**report["kept"])
        history = {key: [float(v) for v in values] for key, values in report["history"].items()}
        test_loss, test_accuracy = float(report["test"]["loss"]), float(report["test"]["accuracy"])
        last_accuracy = float(report["test_last_epoch"]["accuracy"])
        resumed_from = int(report.get("resumed_from_epoch", 0))
        durations = dict(report.get("durations", {}))
        one_class = report["test"].get("one_class_answer")
    except (OSError, ValueError, KeyError, TypeError) as error:
        logger.debug("%s does not describe a finished run (%s); finishing it", paths["report"], error)
        return None
    if kept.keep != config.keep or history != checkpoint.history:
        return None
    return TrainResult(out=out, model_path=paths["model"], labels_path=paths["labels"], report_path=paths["report"],
                       plot_path=paths["plot"], history=history, test_loss=test_loss, test_accuracy=test_accuracy,
                       epochs_completed=config.epochs, resumed_from_epoch=resumed_from, durations=durations,
                       kept=kept, last_epoch_test_accuracy=last_accuracy, already_complete=True,
                       one_class_answer=None if one_class is None else str(one_class))


def _refuse_to_replace(out: Path, force: bool, progress: Progress) -> None:
    """A fresh run never silently replaces another: refuse, or with `force` say what is replaced.

    The refusal names the knobs the person has (`trainer.invocation`: FORCE=1 and OUT= under make)
    and says what is true of the run found: a finished one is complete, an unfinished one can continue.
    """
    try:
        earlier = read_checkpoint(out)
    except CheckpointError:
        earlier = None  # a damaged checkpoint is nothing to continue; the outputs below still count
    finished = [name for name in (MODEL_FILE, REPORT_FILE) if (out / name).is_file()]
    replace = f"replace it with {knob('--force')}"
    elsewhere = f"train into another folder with {knob('--out', 'FOLDER')}"
    # make has no resume: there it is edge-train's whole command.
    resume = resume_command(out) if under_make() else "--resume"
    if earlier is not None and earlier.epoch < int(earlier.recipe.get("epochs", 0)):
        what = f"an unfinished run (epoch {earlier.epoch} of {earlier.recipe.get('epochs')} in {out / CHECKPOINT_DIR})"
        advice = f"continue it with {resume}, {replace}, or {elsewhere}"
    elif finished:
        what = f"a finished run ({', '.join(finished)})"
        advice = f"it is complete: {replace}, or {elsewhere}"
    elif earlier is not None:
        what = f"a run whose {earlier.epoch} epochs are all trained but whose {MODEL_FILE} was not written"
        advice = f"write its outputs with {resume}, {replace}, or {elsewhere}"
    else:
        return
    if not force:
        raise RunExists(f"{out}: already holds {what}; {advice}")
    progress.warning(f"{out}: replacing {what} ({knob('--force')})")


def training_report(config: TrainConfig, dataset: Dataset, history: dict[str, list[float]], test_loss: float,
                    test_accuracy: float, durations: dict[str, float], resumed_from_epoch: int,
                    validation_count: int, train_count: int, parameters: int, kept: KeptEpoch,
                    last_epoch_test: dict[str, float], one_class: str | None = None) -> dict[str, Any]:
    """The contents of training.json: `test` is the kept model's, `test_last_epoch` the final epoch's.

    `test.one_class_answer` names the class the kept model answers for every test image, when it
    answers only one (null otherwise).
    """
    counts = dataset.counts()
    return {
        "format_version": REPORT_FORMAT_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "test": {"loss": test_loss, "accuracy": test_accuracy, "count": dataset.test_count,
                 "one_class_answer": one_class},
        "kept": kept.to_dict(),
        "test_last_epoch": dict(last_epoch_test, count=dataset.test_count),
        "history": history,
        "epochs": len(history.get("loss", [])),
        "resumed_from_epoch": resumed_from_epoch,
        "config": config.recipe(),
        "seed": config.seed,
        "data": {
            "source": dataset.source,
            "class_names": list(dataset.class_names),
            "train": train_count,
            "validation": validation_count,
            "test": dataset.test_count,
            "skipped": dataset.skipped_count,
            "skipped_files": [{"path": path, "reason": reason} for path, reason in dataset.skipped],
            "train_per_class": counts["train_per_class"],
            "test_per_class": counts["test_per_class"],
        },
        "model": {"parameters": parameters, "file": MODEL_FILE},
        "arch": arch_report(config),
        "preprocess": config.spec().to_dict(),
        "durations": durations,
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cpus": os.cpu_count()},
        "versions": package_versions(),
    }


def arch_report(config: TrainConfig) -> dict[str, Any]:
    """training.json's "arch": the network, its registry defaults and the settings this run used."""
    arch = config.network
    settings = {"image_size": config.image_size, "scale": arch.scale, "offset": arch.offset,
                "optimizer": arch.optimizer, "learning_rate": config.learning_rate, "schedule": arch.schedule,
                "warmup_epochs": arch.warmup_epochs, "epochs": config.epochs, "batch_size": config.batch_size,
                "augment": config.augment,
                "augmentation": DEFAULT_AUGMENTATION.to_dict() if config.augment else None,
                "input_pipeline": "stream" if streams_batches(config) else "arrays",
                "phases": [phase.to_dict() for phase in training_phases(config)],
                "distribute": config.distribute}
    for name in arch.options:
        settings[name] = config.recipe()[name]
    if arch.backbone is not None:
        settings.update(freeze_epochs=config.freeze_epochs, fine_tune_factor=arch.fine_tune_factor)
    return {"name": arch.name, "summary": arch.summary, "defaults": arch.defaults(), "settings": settings}


def write_outputs(out: Path, model: "keras.Model", class_names: Sequence[str], history: dict[str, list[float]],
                  report: dict[str, Any], kept_epoch: int | None = None) -> dict[str, Path]:
    """Write model.keras, labels.txt, accuracy.png and (last) training.json, each atomically."""
    from .plots import plot_training_curves

    out.mkdir(parents=True, exist_ok=True)
    paths = {"model": out / MODEL_FILE, "labels": out / LABELS_FILE, "plot": out / PLOT_FILE,
             "report": out / REPORT_FILE}
    with atomic_path(paths["model"]) as tmp:
        model.save(tmp)
    write_labels(paths["labels"], list(class_names))
    plot_training_curves(history, paths["plot"], kept_epoch=kept_epoch)
    write_text(paths["report"], json.dumps(report, indent=2) + "\n")
    return paths
