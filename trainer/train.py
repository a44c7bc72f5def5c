"""The training loop: load data, shuffle and hold out validation, fit, checkpoint every epoch, write outputs.

Outputs in OUT, each written atomically: `model.keras`, `labels.txt`, `training.json`, `accuracy.png`.
`model.keras` holds the epoch chosen by the keep rule (`trainer.keep`: by default the best on
validation). `checkpoints/` holds the last completed epoch (model with optimizer state, plus history)
and the best epoch so far, so that `resume=True` continues an interrupted run to the same final
epoch count and keeps the same epoch as an uninterrupted run would.
"""

from __future__ import annotations

import dataclasses
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
from edge_runtime.labels import write_labels
from edge_runtime.preprocess import DEFAULT_SPEC, scale_pixels

from .data import DEFAULT_SEED, DEFAULT_TEST_FRACTION, Dataset, Progress, load_dataset
from .keep import KEEP_BEST, KEEP_CHOICES, KeptEpoch, best_validation_epoch, choose_epoch
from .tensorflow_env import import_tensorflow, native_output_to_log

if TYPE_CHECKING:  # pragma: no cover
    import keras

logger = logging.getLogger(__name__)

DEFAULT_OUT = Path("artifacts")
DEFAULT_EPOCHS = 15
DEFAULT_BATCH_SIZE = 64
DEFAULT_VALIDATION_FRACTION = 0.2

MODEL_FILE = "model.keras"
LABELS_FILE = "labels.txt"
REPORT_FILE = "training.json"
PLOT_FILE = "accuracy.png"
CHECKPOINT_DIR = "checkpoints"
CHECKPOINT_STATE = "state.json"
CHECKPOINT_MODEL_PATTERN = "epoch-{epoch:03d}.keras"
CHECKPOINT_MODEL_GLOB = "epoch-*.keras"
STATUS_INTERVAL_SECONDS = 0.5  # how often the in-epoch status line is redrawn on a terminal
REPORT_FORMAT_VERSION = 2  # 2: adds "kept" and "test_last_epoch"
# Fields of the configuration that decide what a run computes; a resumed run must match them.
RECIPE_FIELDS = ("data", "seed", "batch_size", "validation_fraction", "test_fraction")


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
    """What to train on, where to write, and the recipe's knobs (defaults are the documented recipe)."""

    data: str | os.PathLike | None = None
    out: Path = DEFAULT_OUT
    epochs: int = DEFAULT_EPOCHS
    batch_size: int = DEFAULT_BATCH_SIZE
    validation_fraction: float = DEFAULT_VALIDATION_FRACTION
    seed: int = DEFAULT_SEED
    resume: bool = False
    # Only used when `data` is a single class-folder tree that has to be split into train and test.
    test_fraction: float = DEFAULT_TEST_FRACTION
    workers: int | None = None
    # Which epoch's weights the run keeps (trainer.keep); not part of what training computes.
    keep: str = KEEP_BEST
    # A fresh run into a folder that holds a run replaces it only when forced.
    force: bool = False

    def validate(self) -> None:
        """Raise ValueError for settings no run can use."""
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
        """The settings that define the run, JSON-ready (the data path made absolute)."""
        data = None if self.data is None else str(Path(self.data).expanduser().resolve())
        return {"data": data, "epochs": self.epochs, "batch_size": self.batch_size,
                "validation_fraction": self.validation_fraction, "seed": self.seed,
                "test_fraction": self.test_fraction, "keep": self.keep}


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


def shuffled_split(count: int, validation_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(training indices, validation indices): a seeded permutation, then the last fraction held out.

    Shuffling first matters: data sets sorted by class would otherwise validate on the last classes only.
    The split point follows Keras' `validation_split` rule, floor(count * (1 - fraction)).
    """
    order = np.random.default_rng(seed).permutation(count)
    split_at = int(math.floor(count * (1.0 - validation_fraction)))
    return order[:split_at], order[split_at:]


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
        if checkpoint.recipe.get(field) != wanted[field]:
            raise CheckpointError(
                f"{folder}: the checkpoint was made with {field} {checkpoint.recipe.get(field)!r}, "
                f"not {wanted[field]!r}; resume with the same settings or start afresh without --resume")
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

        def on_train_begin(self, logs: dict | None = None) -> None:
            self.fit_started = time.perf_counter()

        def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
            self.epoch_started = self.last_status = time.perf_counter()
            self.epoch_number = epoch + 1

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
            if now - self.last_status < STATUS_INTERVAL_SECONDS:
                return
            self.last_status = now
            steps = self.params.get("steps") or 0
            progress.status(epoch_status(self.epoch_number, epochs, batch + 1, steps, batch_size,
                                         now - self.epoch_started))

    return EpochCheckpointWithStatus() if progress.live else EpochCheckpoint()


def epoch_status(epoch: int, epochs: int, step: int, steps: int, batch_size: int, seconds: float) -> str:
    """The in-epoch status line: `epoch 3/15  step 200/625  1,840 images/s  0:15 left`."""
    rate = step * batch_size / seconds if seconds > 0 else 0.0
    text = f"epoch {epoch}/{epochs}  step {step}/{steps or '?'}  {rate:,.0f} images/s"
    if steps and step and seconds > 0:
        left = round(seconds / step * (steps - step))
        text += f"  {left // 60}:{left % 60:02d} left in this epoch"
    return text


def _one_hot(labels: np.ndarray, num_classes: int) -> np.ndarray:
    return np.eye(num_classes, dtype=np.float32)[labels]


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
    """Train the documented CNN as `config` says and write the outputs into `config.out`.

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
    dataset = load_dataset(config.data, seed=config.seed, test_fraction=config.test_fraction,
                           progress=progress, workers=config.workers)
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

    from .model import build_model

    keras.utils.set_random_seed(config.seed)
    with native_output_to_log():  # the first op probes for CUDA devices and prints about it
        if checkpoint is not None:
            model = keras.models.load_model(checkpoint.model_path)
            history = {key: list(values) for key, values in checkpoint.history.items()}
            initial_epoch, prior_seconds = checkpoint.epoch, checkpoint.training_seconds
        else:
            model = build_model(dataset.num_classes, dataset.train_images.shape[1:])
            history, initial_epoch, prior_seconds = {}, 0, 0.0

    session_training_seconds = 0.0
    checkpoint_seconds = 0.0
    if initial_epoch < config.epochs:
        # Shuffle before holding out validation (the fancy indexing copies, in shuffled order).
        x_train = scale_pixels(dataset.train_images[train_index], DEFAULT_SPEC)
        y_train = _one_hot(dataset.train_labels[train_index], dataset.num_classes)
        validation = None
        if len(validation_index):
            validation = (scale_pixels(dataset.train_images[validation_index], DEFAULT_SPEC),
                          _one_hot(dataset.train_labels[validation_index], dataset.num_classes))
        epoch_callback = _epoch_callback(folder, history, config.recipe(), dataset.class_names, config.epochs,
                                         config.batch_size, prior_seconds, progress)
        progress.message(f"training on {len(train_index):,} images, validating on {len(validation_index):,}: "
                         f"epochs {initial_epoch + 1}..{config.epochs}, batch {config.batch_size}")
        fit_started = time.perf_counter()
        try:
            model.fit(x_train, y_train, batch_size=config.batch_size, epochs=config.epochs,
                      initial_epoch=initial_epoch, validation_data=validation, shuffle=True, verbose=0,
                      callbacks=[epoch_callback, *callbacks])
        except KeyboardInterrupt as interrupt:
            progress.end_status()
            raise TrainingInterrupted(initial_epoch + epoch_callback.epochs_completed, config.epochs,
                                      out) from interrupt
        session_training_seconds = time.perf_counter() - fit_started
        checkpoint_seconds = epoch_callback.checkpoint_seconds
        del x_train, y_train, validation
    else:
        progress.message(f"all {config.epochs} epochs are trained; evaluating and writing the outputs")

    started = time.perf_counter()
    test_images = scale_pixels(dataset.test_images, DEFAULT_SPEC)
    test_targets = _one_hot(dataset.test_labels, dataset.num_classes)
    last_loss, last_accuracy = model.evaluate(test_images, test_targets, verbose=0)
    kept = choose_epoch(history, config.keep)
    if kept.epoch == config.epochs:
        test_loss, test_accuracy = last_loss, last_accuracy
    else:
        with native_output_to_log():
            model = keras.models.load_model(folder / CHECKPOINT_MODEL_PATTERN.format(epoch=kept.epoch))
        test_loss, test_accuracy = model.evaluate(test_images, test_targets, verbose=0)
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
                             last_epoch_test={"loss": float(last_loss), "accuracy": float(last_accuracy)})
    paths = write_outputs(out, model, dataset.class_names, history, report, kept_epoch=kept.epoch)
    progress.message(f"wrote {', '.join(path.name for path in paths.values())} to {out}")
    return TrainResult(out=out, model_path=paths["model"], labels_path=paths["labels"],
                       report_path=paths["report"], plot_path=paths["plot"], history=history,
                       test_loss=float(test_loss), test_accuracy=float(test_accuracy),
                       epochs_completed=config.epochs, resumed_from_epoch=initial_epoch, durations=durations,
                       kept=kept, last_epoch_test_accuracy=float(last_accuracy))


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
    except (OSError, ValueError, KeyError, TypeError) as error:
        logger.debug("%s does not describe a finished run (%s); finishing it", paths["report"], error)
        return None
    if kept.keep != config.keep or history != checkpoint.history:
        return None
    return TrainResult(out=out, model_path=paths["model"], labels_path=paths["labels"], report_path=paths["report"],
                       plot_path=paths["plot"], history=history, test_loss=test_loss, test_accuracy=test_accuracy,
                       epochs_completed=config.epochs, resumed_from_epoch=resumed_from, durations=durations,
                       kept=kept, last_epoch_test_accuracy=last_accuracy, already_complete=True)


def _refuse_to_replace(out: Path, force: bool, progress: Progress) -> None:
    """A fresh run never silently replaces another: refuse, or with `force` say what is replaced."""
    try:
        earlier = read_checkpoint(out)
    except CheckpointError:
        earlier = None  # a damaged checkpoint is nothing to continue; the outputs below still count
    finished = [name for name in (MODEL_FILE, REPORT_FILE) if (out / name).is_file()]
    if earlier is not None and earlier.epoch < int(earlier.recipe.get("epochs", 0)):
        what = f"an unfinished run (epoch {earlier.epoch} of {earlier.recipe.get('epochs')} in {out / CHECKPOINT_DIR})"
        advice = "continue it with --resume"
    elif finished or earlier is not None:
        what = f"a finished run ({', '.join(finished) or 'its checkpoint'})"
        advice = "finish or check it with --resume"
    else:
        return
    if not force:
        raise RunExists(f"{out}: already holds {what}; {advice}, or replace it with --force "
                        f"(or choose another --out)")
    progress.warning(f"{out}: replacing {what} (--force)")


def training_report(config: TrainConfig, dataset: Dataset, history: dict[str, list[float]], test_loss: float,
                    test_accuracy: float, durations: dict[str, float], resumed_from_epoch: int,
                    validation_count: int, train_count: int, parameters: int, kept: KeptEpoch,
                    last_epoch_test: dict[str, float]) -> dict[str, Any]:
    """The contents of training.json: `test` is the kept model's, `test_last_epoch` the final epoch's."""
    counts = dataset.counts()
    return {
        "format_version": REPORT_FORMAT_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "test": {"loss": test_loss, "accuracy": test_accuracy, "count": dataset.test_count},
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
        "preprocess": DEFAULT_SPEC.to_dict(),
        "durations": durations,
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cpus": os.cpu_count()},
        "versions": package_versions(),
    }


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
