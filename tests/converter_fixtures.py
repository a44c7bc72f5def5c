"""Fixtures for the converter and report tests: one small model trained once per session.

The model is the recipe's network (`trainer.models.cnn.build_model`) with four classes, trained for a few
epochs on the synthetic image folders of `conftest.split_dataset`, so parity is measured on a model
that has learned something. Its folder looks like the trainer's output: model.keras, labels.txt
and a training.json written by the trainer's own `training_report`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

SEED = 7
EPOCHS = 1  # already 100% on this data; one epoch leaves probabilities unsaturated (0.5-0.99), a stricter parity test
BATCH_SIZE = 32
CALIBRATION_SIZE = 100
# The trained model must be far above chance (25% for four classes) for parity to mean anything.
MIN_TRAINED_ACCURACY = 0.8


@dataclasses.dataclass(frozen=True)
class TrainedModel:
    """A trained model's folder and the data it came from."""

    folder: Path
    model_path: Path
    labels_path: Path
    data_root: Path
    dataset: object  # trainer.dataset.Dataset
    keras_test_accuracy: float


@dataclasses.dataclass(frozen=True)
class Converted:
    """The fixture model converted to float32 and int8 (library call, calibration recorded)."""

    trained: TrainedModel
    out: Path
    float32: Path
    int8: Path
    calibration: np.ndarray  # what the representative dataset actually yielded, stacked


def train_small_model(dataset, seed: int = SEED, epochs: int = EPOCHS):
    """The recipe's network trained briefly on `dataset` (deterministic for a seed on one machine)."""
    import keras

    from edge_runtime.preprocess import scale_pixels
    from trainer.models.cnn import build_model

    keras.utils.set_random_seed(seed)
    model = build_model(num_classes=len(dataset.class_names), input_shape=dataset.train_images.shape[1:])
    targets = np.eye(len(dataset.class_names), dtype=np.float32)[dataset.train_labels]
    history = model.fit(scale_pixels(dataset.train_images), targets, epochs=epochs, batch_size=BATCH_SIZE,
                        shuffle=True, verbose=0)
    return model, {key: [float(v) for v in values] for key, values in history.history.items()}


def write_trainer_outputs(folder: Path, model, dataset, history: dict, data_root: Path, seed: int,
                          test_accuracy: float, test_fraction: float | None = None) -> None:
    """model.keras, labels.txt and training.json as the trainer writes them."""
    from edge_runtime.model_file.labels import write_labels
    from trainer.keep import KEEP_BEST, choose_epoch
    from trainer.config import TrainConfig
    from trainer.outputs import training_report

    folder.mkdir(parents=True, exist_ok=True)
    model.save(folder / "model.keras")
    write_labels(folder / "labels.txt", list(dataset.class_names))
    config = TrainConfig(data=data_root, out=folder, epochs=len(history["loss"]), seed=seed)
    if test_fraction is not None:
        config = dataclasses.replace(config, test_fraction=test_fraction)
    report = training_report(config,
                             dataset, history, test_loss=0.0, test_accuracy=test_accuracy, durations={},
                             resumed_from_epoch=0, validation_count=0, train_count=dataset.train_count,
                             parameters=int(model.count_params()), kept=choose_epoch(history, KEEP_BEST),
                             last_epoch_test={"loss": 0.0, "accuracy": test_accuracy})
    (folder / "training.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


@pytest.fixture(scope="session")
def trained_model(split_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> TrainedModel:
    """The recipe's CNN trained on the synthetic split data set, saved like the trainer saves it."""
    from edge_runtime.preprocess import scale_pixels
    from trainer.progress import Progress
    from trainer.sources import load_dataset

    dataset = load_dataset(split_dataset, seed=SEED, progress=Progress(quiet=True))
    model, history = train_small_model(dataset)
    probabilities = model.predict(scale_pixels(dataset.test_images), verbose=0)
    accuracy = float(np.mean(np.argmax(probabilities, axis=1) == dataset.test_labels))
    folder = tmp_path_factory.mktemp("artifacts")
    write_trainer_outputs(folder, model, dataset, history, split_dataset, SEED, accuracy)
    return TrainedModel(folder=folder, model_path=folder / "model.keras", labels_path=folder / "labels.txt",
                        data_root=split_dataset, dataset=dataset, keras_test_accuracy=accuracy)


@pytest.fixture(scope="session")
def converted(trained_model: TrainedModel) -> Converted:
    """float32 and int8 files of the trained model, converted in its folder (as `make convert` does), with
    the smoke-test image chosen among the calibration images' files."""
    import converter.convert as convert
    import converter.tflite_export as tflite_export
    from converter.smoke_image import smoke_source_of

    recorded: list[np.ndarray] = []
    original = tflite_export.representative_dataset

    def recording(calibration: np.ndarray):
        samples = original(calibration)

        def generator():
            for sample in samples():
                recorded.append(np.array(sample[0], copy=True))
                yield sample

        return generator

    tflite_export.representative_dataset = recording
    try:
        convert.convert_model(trained_model.model_path, trained_model.folder,
                              train_images=trained_model.dataset.train_images,
                              calibration_size=CALIBRATION_SIZE, seed=SEED,
                              smoke_source=smoke_source_of(trained_model.dataset))
    finally:
        tflite_export.representative_dataset = original
    return Converted(trained=trained_model, out=trained_model.folder,
                     float32=trained_model.folder / "model_float32.tflite",
                     int8=trained_model.folder / "model_int8.tflite",
                     calibration=np.concatenate(recorded) if recorded else np.zeros((0, 32, 32, 3), np.float32))
