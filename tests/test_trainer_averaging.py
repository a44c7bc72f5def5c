"""Weight averaging (trainer.averaging): validation, the kept model and model.keras use the moving average of
the weights with its own batch-norm statistics, while training goes on from the raw weights."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from edge_runtime.preprocess import scale_pixels
from synthetic import write_split_dataset
from trainer import models
from trainer.averaging import AVERAGE_RECALIBRATION_IMAGES, apply_average
from trainer.batch_norm import recalibration_batches
from trainer.checkpoint import CHECKPOINT_DIR, CHECKPOINT_MODEL_PATTERN
from trainer.config import TrainConfig
from trainer.progress import Progress
from trainer.sources import load_dataset
from trainer.train import TrainingInterrupted, train
from trainer.validation import shuffled_split
from trainer_fixtures import InterruptAfterEpoch

DECAY = 0.8  # strong, so that a few steps leave the average well apart from the raw weights


def tiny_model(use_ema: bool):
    import keras

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="hidden"),
                              keras.layers.BatchNormalization(name="norm"),
                              keras.layers.Dense(2, activation="softmax")])
    options = {"use_ema": True, "ema_momentum": DECAY} if use_ema else {}
    model.compile(keras.optimizers.SGD(0.5, **options), "categorical_crossentropy")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 4)).astype("float32")
    y = np.eye(2, dtype="float32")[rng.integers(0, 2, 64)]
    return model, x, y


def test_apply_average_puts_the_running_average_in_and_recomputes_the_statistics() -> None:
    import keras

    model, x, y = tiny_model(use_ema=True)
    averages: list[list[np.ndarray]] = []

    class Follow(keras.callbacks.Callback):  # the average as this test computes it, from each step's weights
        def on_train_batch_end(self, batch, logs=None):
            weights = [v.numpy().copy() for v in self.model.trainable_variables]
            averages.append(weights if not averages else
                            [DECAY * a + (1 - DECAY) * w for a, w in zip(averages[-1], weights)])

    model.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False, callbacks=[Follow()])
    model.set_weights([w + 1.0 for w in model.get_weights()])  # raw weights and statistics, far from the average
    ran = apply_average(model, [x[:32], x[32:]])

    assert ran == 2
    for variable, expected in zip(model.trainable_variables, averages[-1]):
        np.testing.assert_allclose(variable.numpy(), expected, rtol=1e-5, atol=1e-6)
    hidden = x @ model.get_layer("hidden").kernel.numpy() + model.get_layer("hidden").bias.numpy()
    np.testing.assert_allclose(model.get_layer("norm").moving_mean.numpy(), hidden.mean(axis=0), rtol=1e-4, atol=1e-5)


def test_apply_average_refuses_a_model_whose_optimizer_keeps_none() -> None:
    model, x, _ = tiny_model(use_ema=False)
    with pytest.raises(ValueError, match="keeps no average"):
        apply_average(model, [x])


class RawWeights:
    """A Keras callback that keeps every weight after each step and at each epoch's end (after validation)."""

    def __new__(cls, after_steps: list, at_epoch_end: list):
        import keras

        class Keeper(keras.callbacks.Callback):
            def on_train_batch_end(self, batch, logs=None):
                after_steps[:] = [self.model.get_weights()]

            def on_epoch_end(self, epoch, logs=None):
                at_epoch_end.append(self.model.get_weights())

        return Keeper()


def test_a_tiny_run_validates_and_exports_the_average_and_trains_on_from_the_raw_weights(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    import keras

    row = dataclasses.replace(models.ARCHS["resnet8"], weight_average=DECAY)
    monkeypatch.setitem(models.ARCHS, "resnet8", row)
    data = write_split_dataset(tmp_path / "data", train_per_class=12, test_per_class=3)
    config = TrainConfig(data=data, out=tmp_path / "out", arch="resnet8", epochs=2, batch_size=16, seed=4,
                         validation_fraction=0.25, keep="last")
    after_steps: list = []
    at_epoch_end: list = []
    train(config, Progress(), callbacks=[RawWeights(after_steps, at_epoch_end)])
    assert "validating and keeping a moving average of the weights (decay 0.8 a step)" in capsys.readouterr().err

    # Validation put every weight back: training goes on from the last step's raw weights and statistics.
    for before, after in zip(after_steps[0], at_epoch_end[-1]):
        np.testing.assert_array_equal(before, after)

    # The last checkpoint holds those raw weights; averaged as trainer.averaging says, it is the model that
    # was validated and exported.
    checkpoint = keras.models.load_model(tmp_path / "out" / CHECKPOINT_DIR / CHECKPOINT_MODEL_PATTERN.format(epoch=2))
    for raw, stored in zip(at_epoch_end[-1], checkpoint.get_weights()):
        np.testing.assert_array_equal(raw, stored)
    dataset = load_dataset(data, seed=4, progress=Progress(quiet=True), spec=config.spec())
    train_index, validation_index = shuffled_split(dataset.train_count, 0.25, 4)
    apply_average(checkpoint, recalibration_batches(dataset.train_images, train_index, config.spec(), 16,
                                                    AVERAGE_RECALIBRATION_IMAGES))
    exported = keras.models.load_model(tmp_path / "out" / "model.keras")
    differs = False
    for averaged, written, raw in zip(checkpoint.get_weights(), exported.get_weights(), at_epoch_end[-1]):
        np.testing.assert_allclose(written, averaged, rtol=1e-5, atol=1e-6)
        differs = differs or not np.allclose(written, raw)
    assert differs, "the exported weights are the raw ones"

    inputs = scale_pixels(dataset.train_images[validation_index], config.spec())
    targets = np.eye(dataset.num_classes, dtype="float32")[dataset.train_labels[validation_index]]
    loss, accuracy = checkpoint.evaluate(inputs, targets, verbose=0)
    history = json.loads((tmp_path / "out" / "training.json").read_text())["history"]
    # The loss too: 30 images leave the accuracy coarse enough for raw weights to match it by chance.
    assert history["val_accuracy"][-1] == pytest.approx(accuracy)
    assert history["val_loss"][-1] == pytest.approx(loss, rel=1e-4)
    assert "a moving average of the weights (decay 0.8 a step) is validated and exported" in row.help_line()


def test_a_resumed_run_continues_the_average_from_its_checkpoint(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import keras

    # A slow decay, so that an average started afresh at the resumed epoch would show in the exported weights.
    monkeypatch.setitem(models.ARCHS, "resnet8", dataclasses.replace(models.ARCHS["resnet8"], weight_average=0.95))
    data = write_split_dataset(tmp_path / "data", train_per_class=12, test_per_class=3)

    def config(out: str, resume: bool = False) -> TrainConfig:
        return TrainConfig(data=data, out=tmp_path / out, arch="resnet8", epochs=2, batch_size=16, seed=4,
                           validation_fraction=0.25, keep="last", resume=resume)

    whole = train(config("whole"), Progress(quiet=True))
    with pytest.raises(TrainingInterrupted):
        train(config("resumed"), Progress(quiet=True), callbacks=[InterruptAfterEpoch(1)])
    resumed = train(config("resumed", resume=True), Progress(quiet=True))
    assert resumed.resumed_from_epoch == 1

    exported = [keras.models.load_model(result.model_path).get_weights() for result in (whole, resumed)]
    raw = keras.models.load_model(tmp_path / "whole" / CHECKPOINT_DIR / CHECKPOINT_MODEL_PATTERN.format(epoch=2))
    apart = 0.0
    for uninterrupted, continued, last_step in zip(*exported, raw.get_weights()):
        np.testing.assert_allclose(continued, uninterrupted, rtol=1e-4, atol=1e-5)
        apart = max(apart, float(np.max(np.abs(uninterrupted - last_step))))
    assert apart > 1e-3, "the average is indistinguishable from the last step's weights"
