"""The README's first command without DATA: train, convert and report on CIFAR-10 through Keras.

Nothing here reaches the network: Keras' `cifar10.load_data` is replaced by a stand-in returning a
tiny CIFAR-shaped set (uint8 [N, 32, 32, 3], labels [N, 1], as Keras returns them). What is under
test is our side: every command finds the data through training.json's "no data set" and the
default Keras path, end to end.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from synthetic import synthetic_image
from trainer.sources.cifar_archive import CIFAR10_CLASSES

TRAIN_PER_CLASS, TEST_PER_CLASS = 12, 4


def tiny_cifar() -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(0)

    def split(per_class: int) -> tuple[np.ndarray, np.ndarray]:
        labels = np.repeat(np.arange(len(CIFAR10_CLASSES)), per_class)
        images = np.stack([synthetic_image(int(label), rng) for label in labels])
        return images, labels.reshape(-1, 1).astype(np.uint8)

    return split(TRAIN_PER_CLASS), split(TEST_PER_CLASS)


@pytest.mark.slow
def test_train_convert_report_without_data_use_cifar10_through_keras(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import keras

    calls = []

    def load_data():
        calls.append(1)
        return tiny_cifar()

    monkeypatch.setattr(keras.datasets.cifar10, "load_data", load_data)
    from converter.cli import main as convert_main
    from converter.cli import report_main
    from trainer.cli import main as train_main

    out = tmp_path / "artifacts"
    runner = CliRunner()
    trained = runner.invoke(train_main, ["--out", str(out), "--epochs", "1", "--batch-size", "32", "--quiet"])
    assert trained.exit_code == 0, trained.output
    training = json.loads((out / "training.json").read_text())
    assert training["config"]["data"] is None
    assert training["data"]["class_names"] == list(CIFAR10_CLASSES)
    assert training["data"]["test"] == TEST_PER_CLASS * len(CIFAR10_CLASSES)

    converted = runner.invoke(convert_main, ["--model", str(out / "model.keras"), "--out", str(out),
                                             "--calibration-size", "20", "--quiet"])
    assert converted.exit_code == 0, converted.output
    assert (out / "model_int8.tflite").is_file() and (out / "model_float32.tflite").is_file()

    reported = runner.invoke(report_main, ["--out", str(out), "--quiet"])
    assert reported.exit_code == 0, reported.output
    report = json.loads((out / "report.json").read_text())
    assert {entry["name"] for entry in report["formats"]} >= {"keras", "float32", "int8"}
    float32 = next(entry for entry in report["formats"] if entry["name"] == "float32")
    assert float32["agreement"] == 1.0
    assert len(calls) == 3  # train, convert and report each found the data through Keras
