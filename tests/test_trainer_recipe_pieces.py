"""The recipe pieces of a fast ResNet-8 run on a tiny data set: the stem starts from the principal directions of
the training patches, and training.json and the help line say what the recipe was (what the alternating flip
does to the batches is tested in test_trainer_batches.py)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from edge_runtime.preprocess import scale_pixels
from synthetic import write_split_dataset
from trainer import models
from trainer.batches import Augmentation
from trainer.config import TrainConfig
from trainer.principal_stem import principal_kernel
from trainer.progress import Progress
from trainer.sources import load_dataset
from trainer.train import train
from trainer.validation import shuffled_split

STEM = "stem_conv"
PIECES = {"augmentation": Augmentation(shift=0.0625, flip_order="alternating"), "principal_stem": STEM}


class StemAtStart:
    """A Keras callback that keeps the stem's kernel as training begins."""

    def __new__(cls, kept: list):
        import keras

        class Keeper(keras.callbacks.Callback):
            def on_train_begin(self, logs=None):
                kept.append(self.model.get_layer(STEM).kernel.numpy().copy())

        return Keeper()


def test_a_tiny_run_starts_from_the_principal_stem_and_records_the_recipe(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    row = dataclasses.replace(models.ARCHS["resnet8"], **PIECES)
    monkeypatch.setitem(models.ARCHS, "resnet8", row)
    data = write_split_dataset(tmp_path / "data", train_per_class=12, test_per_class=3)
    config = TrainConfig(data=data, out=tmp_path / "out", arch="resnet8", epochs=2, batch_size=16, seed=4,
                         validation_fraction=0.25)
    kept: list[np.ndarray] = []
    train(config, Progress(), callbacks=[StemAtStart(kept)])

    # The stem's starting kernel is the principal kernel of the training share's patches (all of them: a
    # tiny set has fewer images than the sample), as the network takes its inputs.
    dataset = load_dataset(data, seed=4, progress=Progress(quiet=True), spec=config.spec())
    train_index, _ = shuffled_split(dataset.train_count, 0.25, 4)
    expected = principal_kernel(scale_pixels(dataset.train_images[np.sort(train_index)], config.spec()), 3, 16)
    np.testing.assert_allclose(kept[0], expected, rtol=1e-5, atol=1e-6)
    assert f"{STEM} starts from the principal directions of {len(train_index)} training images' patches" in \
        capsys.readouterr().err

    report = json.loads((tmp_path / "out" / "training.json").read_text())["arch"]
    assert report["defaults"]["principal_stem"] == STEM
    assert report["settings"]["augmentation"] == {"flip": "alternating", "shift": 0.0625, "rotation": None}
    assert "(alternating flip, shift up to 0.0625 of the side)" in row.help_line()
    assert "stem_conv started from the principal directions of the training patches" in row.help_line()
