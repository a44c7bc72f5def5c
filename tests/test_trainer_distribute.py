"""`--distribute`: training through tf.distribute.MirroredStrategy, here on two logical CPU devices."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from synthetic import write_split_dataset

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parent.parent
# Splits the CPU into two logical devices before anything else touches TensorFlow, then trains.
TWO_CPUS = """
import sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from trainer.cli import main
main()
"""


def test_distribute_trains_on_two_logical_cpus(tmp_path: Path) -> None:
    data = write_split_dataset(tmp_path / "data", train_per_class=8, test_per_class=2)
    out = tmp_path / "out"
    completed = subprocess.run([sys.executable, "-c", TWO_CPUS, "--arch", "resnet8", "--distribute", "--data",
                                str(data), "--out", str(out), "--epochs", "1", "--batch-size", "8", "--seed", "1",
                                "--validation-fraction", "0.2"],
                               cwd=REPO_ROOT, capture_output=True, text=True, timeout=600, check=False)
    assert completed.returncode == 0, completed.stderr[-2000:]
    lines = completed.stderr.splitlines()
    assert [line for line in lines if line.startswith("distributing over 2 device(s) with MirroredStrategy: ")
            and line.endswith("/device:CPU:0, /device:CPU:1")], lines
    assert completed.stdout.startswith("kept epoch 1 of 1 ")
    report = json.loads((out / "training.json").read_text())
    assert report["arch"]["settings"]["distribute"] is True and report["config"]["distribute"] is True
    # 32 images, a fifth held out: 25 to train (3 whole batches of 8 per epoch), 7 to validate: an odd
    # count the two devices cannot share, padded with a zero-weight copy that the accuracy does not count.
    assert (report["data"]["train"], report["data"]["validation"]) == (25, 7)
    validation_correct = report["history"]["val_accuracy"][0] * 7
    assert validation_correct == pytest.approx(round(validation_correct), abs=1e-4)
    assert all(math.isfinite(report["history"][key][0]) for key in ("loss", "val_loss"))
    import keras

    model = keras.models.load_model(out / "model.keras")
    assert all(np.isfinite(weight).all() for weight in model.get_weights())
