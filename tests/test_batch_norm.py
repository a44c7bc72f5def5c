"""Batch-norm statistics recomputed from the weights (trainer.batch_norm), alone and inside a training run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edge_runtime.preprocess import PreprocessSpec
from synthetic import write_split_dataset
from trainer.batch_norm import RECALIBRATION_IMAGES, recalibrate, recalibration_batches, recalibration_callback
from trainer.config import TrainConfig, recalibrates_batch_norm
from trainer.models import ARCHS
from trainer.progress import Progress
from trainer.train import train
from trainer.validation import shuffled_split

SLOW_MOMENTUM = 0.999999  # moving statistics that training alone would barely move


def bn_model(momentum: float = SLOW_MOMENTUM, features: int = 4):
    """Input -> Dense -> BatchNormalization -> Dense softmax, small enough to check by hand."""
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input(shape=(features,))
    hidden = keras.layers.Dense(3, name="dense")(inputs)
    normalized = keras.layers.BatchNormalization(momentum=momentum, name="bn")(hidden)
    outputs = keras.layers.Dense(2, activation="softmax", name="head")(normalized)
    return keras.Model(inputs, outputs)


def shifted_batches(count: int = 3, size: int = 16, seed: int = 1) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [(rng.normal(size=(size, 4)) * 3 + 5).astype(np.float32) for _ in range(count)]


def test_moving_statistics_become_the_averages_over_the_batches() -> None:
    model = bn_model()
    batches = shifted_batches()
    weights_before = [weight.copy() for weight in model.get_weights()]
    assert recalibrate(model, batches) == 3
    layer = model.get_layer("bn")
    hidden = [np.asarray(model.get_layer("dense")(batch)) for batch in batches]
    np.testing.assert_allclose(layer.moving_mean.numpy(), np.mean([h.mean(axis=0) for h in hidden], axis=0),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(layer.moving_variance.numpy(), np.mean([h.var(axis=0) for h in hidden], axis=0),
                               rtol=1e-4, atol=1e-5)
    assert layer.momentum == SLOW_MOMENTUM  # restored
    changed = [name for name, before, after in zip([w.path for w in model.weights], weights_before,
                                                   model.get_weights()) if not np.array_equal(before, after)]
    assert sorted(changed) == ["bn/moving_mean", "bn/moving_variance"]


def test_inference_then_matches_batch_statistics() -> None:
    model = bn_model()
    batch = shifted_batches(count=1, size=64)[0]
    before = np.asarray(model(batch, training=False))
    training_mode = np.asarray(model(batch, training=True))
    assert np.abs(before - training_mode).max() > 0.05  # the initial statistics (0, 1) are far off
    recalibrate(model, [batch])
    np.testing.assert_allclose(np.asarray(model(batch, training=False)), training_mode, atol=1e-3)


def test_frozen_layers_keep_their_statistics() -> None:
    model = bn_model()
    layer = model.get_layer("bn")
    layer.trainable = False
    recalibrate(model, shifted_batches())
    assert np.array_equal(layer.moving_mean.numpy(), np.zeros(3, np.float32))
    assert np.array_equal(layer.moving_variance.numpy(), np.ones(3, np.float32))


def test_momentum_is_restored_when_a_batch_fails() -> None:
    model = bn_model()
    with pytest.raises(Exception):
        recalibrate(model, [shifted_batches(count=1)[0], np.zeros((2, 7), np.float32)])
    assert model.get_layer("bn").momentum == SLOW_MOMENTUM


def test_the_sample_is_the_first_images_of_the_index_unaugmented_in_batches() -> None:
    images = np.arange(10 * 2 * 2 * 3, dtype=np.uint8).reshape(10, 2, 2, 3)
    index = np.array([7, 2, 9, 0, 5, 1])
    spec = PreprocessSpec(height=2, width=2, scale=2.0, offset=-1.0)
    batches = list(recalibration_batches(images, index, spec, batch_size=2, count=5))
    assert [len(batch) for batch in batches] == [2, 2, 1]
    np.testing.assert_array_equal(np.concatenate(batches), images[[7, 2, 9, 0, 5]].astype(np.float32) * 2 - 1)


@pytest.mark.parametrize("with_validation", [True, False])
def test_the_callback_recalibrates_before_validation_or_at_the_epoch_end(with_validation: bool) -> None:
    import keras

    model = bn_model()
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss="categorical_crossentropy")
    batches = shifted_batches()
    seen_at_validation = []

    class Probe(keras.callbacks.Callback):
        def on_test_begin(self, logs=None):
            seen_at_validation.append(self.model.get_layer("bn").moving_mean.numpy().copy())

    x = np.concatenate(batches)
    y = np.eye(2, dtype=np.float32)[np.arange(len(x)) % 2]
    model.fit(x, y, batch_size=16, epochs=1, verbose=0, validation_data=(x, y) if with_validation else None,
              callbacks=[recalibration_callback(lambda: batches), Probe()])
    hidden = [np.asarray(model.get_layer("dense")(batch)) for batch in batches]
    expected = np.mean([h.mean(axis=0) for h in hidden], axis=0)  # lr 0: the weights did not move
    np.testing.assert_allclose(model.get_layer("bn").moving_mean.numpy(), expected, rtol=1e-5, atol=1e-5)
    if with_validation:
        np.testing.assert_allclose(seen_at_validation[0], expected, rtol=1e-5, atol=1e-5)


def test_only_from_scratch_undistributed_mobilenetv2_recalibrates(tmp_path: Path) -> None:
    assert ARCHS["mobilenetv2"].recalibrate_batch_norm and not ARCHS["resnet8"].recalibrate_batch_norm
    assert recalibrates_batch_norm(TrainConfig(arch="mobilenetv2"))
    assert not recalibrates_batch_norm(TrainConfig(arch="mobilenetv2", weights="imagenet"))
    assert not recalibrates_batch_norm(TrainConfig(arch="mobilenetv2", distribute=True))
    assert not recalibrates_batch_norm(TrainConfig(arch="resnet8"))
    assert not recalibrates_batch_norm(TrainConfig())


@pytest.mark.slow
def test_a_mobilenetv2_run_saves_the_recalibrated_statistics(tmp_path: Path) -> None:
    import keras

    data = write_split_dataset(tmp_path / "data", train_per_class=10, test_per_class=2)
    out = tmp_path / "out"
    messages: list[str] = []

    class Recording(Progress):
        def message(self, text: str) -> None:
            messages.append(text)

    config = TrainConfig(data=data, out=out, arch="mobilenetv2", epochs=1, batch_size=8, image_size=32,
                         augment=True)
    train(config, Recording(quiet=True))
    report = json.loads((out / "training.json").read_text())
    assert report["arch"]["defaults"]["recalibrate_batch_norm"] is True
    train_count = report["data"]["train"]
    assert f"batch-norm statistics recomputed after each epoch from {min(RECALIBRATION_IMAGES, train_count):,} " \
           f"training images" in messages

    # The saved model's first batch-norm layer holds the averages over the un-augmented sample, as
    # computed from the saved (final) weights.
    from trainer.sources import load_dataset

    dataset = load_dataset(data, seed=config.seed, test_fraction=config.test_fraction, spec=config.spec(),
                           progress=Progress(quiet=True))
    train_index, _ = shuffled_split(dataset.train_count, config.validation_fraction, config.seed)
    model = keras.models.load_model(out / "model.keras")
    backbone = model.get_layer("backbone")
    layer = backbone.get_layer("bn_Conv1")
    to_layer = keras.Model(backbone.input, layer.input)
    inputs = recalibration_batches(dataset.train_images, train_index, config.spec(), config.batch_size)
    expected = np.mean([np.asarray(to_layer(batch)).mean(axis=(0, 1, 2)) for batch in inputs], axis=0)
    np.testing.assert_allclose(layer.moving_mean.numpy(), expected, rtol=1e-4, atol=1e-5)
