"""The training recipe: `train()` loads the data, holds out validation, builds the network, fits it phase
by phase with a checkpoint after every epoch, evaluates the kept epoch on the test set and writes the outputs.

Outputs in OUT, each written atomically (`trainer.outputs`): `model.keras`, `labels.txt`, `training.json`,
`accuracy.png`. `model.keras` holds the epoch chosen by the keep rule (`trainer.keep`: by default the best on
validation). `checkpoints/` holds the last completed epoch (model with optimizer state, plus history)
and the best epoch so far (`trainer.checkpoint`), so that `resume=True` continues an interrupted run to the
same final epoch count and keeps the same epoch as an uninterrupted run would.

The network comes from the registry (`trainer.models`, `--arch`), with its input size, input
scaling, optimizer, learning-rate schedule, epochs, batch size and augmentation as defaults that
the configuration (`trainer.config`) may override. The documented CNN without augmentation trains exactly
as the documented script does (float32 arrays in memory, Keras' own shuffle); augmented runs and inputs of
96 px and above stream batches from the uint8 images instead (`trainer.batches`).
"""

from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Sequence

import numpy as np

from edge_runtime.errors import DataError
from edge_runtime.preprocess import PreprocessSpec

from .averaging import AVERAGE_RECALIBRATION_IMAGES, apply_average, averaged_validation_callback
from .batch_norm import RECALIBRATION_IMAGES, recalibration_batches, recalibration_callback
from .batches import as_tensor, evaluation_data, fit_data, steps_per_epoch, training_stream
from .checkpoint import (CHECKPOINT_DIR, CHECKPOINT_MODEL_PATTERN, Checkpoint, CheckpointError, check_resumable,
                         finished_result, read_checkpoint, refuse_to_replace)
from .config import TrainConfig, averages_weights, recalibrates_batch_norm, streams_batches
from .distribution import check_replicas, distribution_strategy, strategy_scope
from .epochs import epoch_callback
from .dataset import Dataset
from .keep import KeptEpoch, choose_epoch
from .outputs import TrainResult, one_class_answer, training_report, write_outputs
from .phases import prepare_phase, training_phases
from .principal_stem import start_from_principal_patches
from .progress import Progress
from .sources import load_dataset
from .tensorflow_env import import_tensorflow, native_output_to_log
from .validation import shuffled_split, validation_warning

if TYPE_CHECKING:  # pragma: no cover
    import keras


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during training: the checkpoint of the last completed epoch is on disk."""

    def __init__(self, epochs_completed: int, epochs: int, out: Path) -> None:
        super().__init__(f"interrupted after epoch {epochs_completed} of {epochs}")
        self.epochs_completed = epochs_completed
        self.epochs = epochs
        self.out = out


def build_network(config: TrainConfig, num_classes: int) -> "keras.Model":
    """The arch's network for `num_classes` at the configured size, with its own options (alpha, weights)."""
    arch = config.network
    options = {name: getattr(config, name) for name in arch.options}
    return arch.build(num_classes, config.image_size, **options)


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
    checkpoint = _starting_checkpoint(config, out, progress)
    if checkpoint is not None:
        complete = finished_result(out, config, checkpoint)
        if complete is not None:
            return complete
        progress.message(f"resuming from epoch {checkpoint.epoch} of {config.epochs} ({checkpoint.model_path})")

    started = time.perf_counter()
    spec = config.spec()
    dataset = load_dataset(config.data, seed=config.seed, test_fraction=config.test_fraction,
                           progress=progress, workers=config.workers, spec=spec)
    loading_seconds = time.perf_counter() - started
    progress.message(f"loaded {dataset.summary()} in {loading_seconds:.1f} s")
    if checkpoint is not None and checkpoint.class_names != dataset.class_names:
        raise CheckpointError(f"{folder}: the checkpoint's classes ({', '.join(checkpoint.class_names)}) "
                              f"differ from the data's ({', '.join(dataset.class_names)})")
    train_index, validation_index = _validation_split(dataset, config)

    # Lazy and quiet: after the data, so `--help` and data errors never wait for TensorFlow.
    import_tensorflow()
    import keras

    keras.utils.set_random_seed(config.seed)
    strategy = distribution_strategy(config.distribute, progress)
    replicas = strategy.num_replicas_in_sync if strategy is not None else 1
    check_replicas(replicas, config.batch_size, len(train_index))
    with strategy_scope(strategy), native_output_to_log():  # the first op probes for CUDA devices and prints about it
        if checkpoint is not None:
            model = keras.models.load_model(checkpoint.model_path)
            history = {key: list(values) for key, values in checkpoint.history.items()}
            initial_epoch, prior_seconds = checkpoint.epoch, checkpoint.training_seconds
        else:
            model = build_network(config, dataset.num_classes)
            history, initial_epoch, prior_seconds = {}, 0, 0.0
    if checkpoint is None and config.network.principal_stem is not None and config.weights is None:
        used = start_from_principal_patches(model, config.network.principal_stem, dataset.train_images, train_index,
                                            spec, config.seed)
        progress.message(f"{config.network.principal_stem} starts from the principal directions of {used:,} "
                         f"training images' patches")

    streaming = streams_batches(config)
    test_set = evaluation_data(dataset, config, spec, streaming, replicas)
    session_training_seconds = 0.0
    checkpoint_seconds = 0.0
    if initial_epoch < config.epochs:
        session_training_seconds, checkpoint_seconds = _fit(
            model, history, config, dataset, spec, train_index, validation_index, initial_epoch=initial_epoch,
            prior_seconds=prior_seconds, strategy=strategy, replicas=replicas, streaming=streaming,
            callbacks=callbacks, progress=progress)
    else:
        progress.message(f"all {config.epochs} epochs are trained; evaluating and writing the outputs")

    average = None
    if averages_weights(config):
        average = functools.partial(_apply_average, batches=_average_sample(dataset, train_index, spec, config))
    evaluation = _evaluate_kept(model, test_set, history, config, dataset, average)
    model = evaluation.model
    progress.message(f"kept epoch {evaluation.kept.epoch} of {config.epochs} ({evaluation.kept.rule}): test accuracy "
                     f"{evaluation.test_accuracy:.4f}, loss {evaluation.test_loss:.4f} on {dataset.test_count:,} "
                     f"images (last epoch: {evaluation.last_accuracy:.4f})")

    durations = {
        "loading_seconds": round(loading_seconds, 3),
        "training_seconds": round(prior_seconds + session_training_seconds, 3),
        "training_seconds_this_session": round(session_training_seconds, 3),
        "checkpoint_seconds_this_session": round(checkpoint_seconds, 3),
        "evaluation_seconds": round(evaluation.seconds, 3),
    }
    kept, test_loss, test_accuracy = evaluation.kept, evaluation.test_loss, evaluation.test_accuracy
    report = training_report(config, dataset, history, test_loss, test_accuracy,
                             durations, resumed_from_epoch=initial_epoch,
                             validation_count=len(validation_index), train_count=len(train_index),
                             parameters=int(model.count_params()), kept=kept,
                             last_epoch_test={"loss": evaluation.last_loss, "accuracy": evaluation.last_accuracy},
                             one_class=evaluation.one_class)
    paths = write_outputs(out, model, dataset.class_names, history, report, kept_epoch=kept.epoch)
    progress.message(f"wrote {', '.join(path.name for path in paths.values())} to {out}")
    return TrainResult(out=out, model_path=paths["model"], labels_path=paths["labels"],
                       report_path=paths["report"], plot_path=paths["plot"], history=history,
                       test_loss=test_loss, test_accuracy=test_accuracy,
                       epochs_completed=config.epochs, resumed_from_epoch=initial_epoch, durations=durations,
                       kept=kept, last_epoch_test_accuracy=evaluation.last_accuracy,
                       one_class_answer=evaluation.one_class)


def _starting_checkpoint(config: TrainConfig, out: Path, progress: Progress) -> Checkpoint | None:
    """The checkpoint a resumed run continues from, checked against `config`; None for a fresh run,
    once it is sure to replace nothing it must not (RunExists)."""
    if not config.resume:
        refuse_to_replace(out, config.force, progress)
        return None
    folder = out / CHECKPOINT_DIR
    checkpoint = read_checkpoint(out)
    if checkpoint is None:
        raise CheckpointError(f"{folder}: no checkpoint to resume from; run without --resume to start")
    check_resumable(checkpoint, config, folder)
    return checkpoint


def _validation_split(dataset: Dataset, config: TrainConfig) -> tuple[np.ndarray, np.ndarray]:
    """(training, validation) indices of the training images; DataError when too few to hold any out."""
    train_index, validation_index = shuffled_split(dataset.train_count, config.validation_fraction, config.seed)
    if len(train_index) == 0 or (config.validation_fraction > 0 and len(validation_index) == 0):
        raise DataError(f"{dataset.source}: {dataset.train_count} training image(s) are too few to hold out "
                        f"{config.validation_fraction:.0%} for validation")
    return train_index, validation_index


def _fit(model: "keras.Model", history: dict[str, list[float]], config: TrainConfig, dataset: Dataset,
         spec: PreprocessSpec, train_index: np.ndarray, validation_index: np.ndarray, *, initial_epoch: int,
         prior_seconds: float, strategy: Any, replicas: int, streaming: bool, callbacks: Sequence[Any],
         progress: Progress) -> tuple[float, float]:
    """Fit epochs initial_epoch + 1 .. config.epochs, phase by phase, checkpointing after each epoch.

    Returns (training seconds, checkpointing seconds) of this session; TrainingInterrupted on Ctrl-C.
    """
    out = Path(config.out)
    folder = out / CHECKPOINT_DIR
    validation = None
    # One tensor of the training images for both streams (made only where training streams).
    train_pixels = as_tensor(dataset.train_images) if streaming else None
    if len(validation_index):
        validation = fit_data(dataset, validation_index, config, spec, streaming, evaluation=True,
                              replicas=replicas, train_pixels=train_pixels)
    whole_batches = replicas > 1
    steps = steps_per_epoch(len(train_index), config.batch_size, drop_remainder=whole_batches)
    epoch_checkpoint = epoch_callback(folder, history, config.recipe(), dataset.class_names, config.epochs,
                                      config.batch_size, prior_seconds, progress)
    fit_callbacks = [epoch_checkpoint, *callbacks]
    if averages_weights(config):
        # Validation sees the average; the raw weights are back before the checkpoint is written.
        fit_callbacks.insert(0, averaged_validation_callback(_average_sample(dataset, train_index, spec, config)))
        progress.message(f"validating and keeping a moving average of the weights (decay "
                         f"{config.network.weight_average:g} a step), with batch-norm statistics from "
                         f"{min(AVERAGE_RECALIBRATION_IMAGES, len(train_index)):,} training images")
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
                with strategy_scope(strategy):
                    prepare_phase(model, config, phase, steps)
                if phase.first_epoch > 0:
                    progress.message(f"fine-tuning the whole network from epoch {first + 1} at learning rate "
                                     f"{phase.learning_rate:g}")
                elif not phase.backbone_trainable:
                    progress.message(f"pretrained backbone frozen for epochs 1..{phase.end_epoch}")
            if streaming:
                model.fit(training_stream(train_pixels, dataset.train_labels, train_index, dataset.num_classes, spec,
                                          config.batch_size, config.seed, first,
                                          config.network.augmentation if config.augment else None, whole_batches),
                          epochs=phase.end_epoch, initial_epoch=first, steps_per_epoch=steps, shuffle=False,
                          validation_data=validation, verbose=0, callbacks=fit_callbacks)
            else:
                x_train, y_train = fit_data(dataset, train_index, config, spec, streaming)
                model.fit(x_train, y_train, batch_size=config.batch_size, epochs=phase.end_epoch,
                          initial_epoch=first, validation_data=validation, shuffle=True, verbose=0,
                          callbacks=fit_callbacks)
                del x_train, y_train
    except KeyboardInterrupt as interrupt:
        progress.end_status()
        raise TrainingInterrupted(initial_epoch + epoch_checkpoint.epochs_completed, config.epochs,
                                  out) from interrupt
    return time.perf_counter() - fit_started, epoch_checkpoint.checkpoint_seconds


class Evaluation(NamedTuple):
    """The kept epoch's model and its test figures, beside the last epoch's."""

    model: Any  # keras.Model
    kept: KeptEpoch
    test_loss: float
    test_accuracy: float
    last_loss: float
    last_accuracy: float
    one_class: str | None  # the class every test image was given, when the model answers only one
    seconds: float


def _average_sample(dataset: Dataset, train_index: np.ndarray, spec: PreprocessSpec,
                    config: TrainConfig) -> Any:
    """The batches the averaged weights' batch-norm statistics come from, the same at every use (a callable
    that yields them afresh): validation and the final model then see the same statistics."""
    return functools.partial(recalibration_batches, dataset.train_images, train_index, spec, config.batch_size,
                             AVERAGE_RECALIBRATION_IMAGES)


def _apply_average(model: "keras.Model", batches: Any) -> None:
    """`trainer.averaging.apply_average` with a fresh pass over the recalibration sample, quietly."""
    with native_output_to_log():
        apply_average(model, batches())


def _evaluate_kept(model: "keras.Model", test_set: Any, history: dict[str, list[float]], config: TrainConfig,
                   dataset: Dataset, average: Any = None) -> Evaluation:
    """Evaluate the last epoch on the test set, then the kept epoch (loaded from its checkpoint when it
    is another). `average`, when given, turns each into its averaged model first (trainer.averaging)."""
    import keras

    started = time.perf_counter()
    if average is not None:
        average(model)
    last_loss, last_accuracy = _evaluate(model, test_set)
    kept = choose_epoch(history, config.keep)
    if kept.epoch == config.epochs:
        test_loss, test_accuracy = last_loss, last_accuracy
    else:
        folder = Path(config.out) / CHECKPOINT_DIR
        with native_output_to_log():
            model = keras.models.load_model(folder / CHECKPOINT_MODEL_PATTERN.format(epoch=kept.epoch))
        if average is not None:
            average(model)
        test_loss, test_accuracy = _evaluate(model, test_set)
    answered = one_class_answer(_predicted_classes(model, test_set), dataset.test_labels)
    one_class = None if answered is None else dataset.class_names[answered]
    return Evaluation(model=model, kept=kept, test_loss=float(test_loss), test_accuracy=float(test_accuracy),
                      last_loss=float(last_loss), last_accuracy=float(last_accuracy), one_class=one_class,
                      seconds=time.perf_counter() - started)
