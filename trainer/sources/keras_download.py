"""CIFAR-10 through Keras' own download (`keras.datasets.cifar10`), the data set when none is given."""

from __future__ import annotations

import numpy as np

from edge_runtime.errors import DataError

from ..dataset import Dataset
from ..invocation import knob
from ..progress import Progress
from .cifar_archive import CIFAR10_CLASSES


def load_keras_cifar10(progress: Progress) -> Dataset:
    """CIFAR-10 through `keras.datasets.cifar10.load_data()` (downloads about 170 MB once, then cached)."""
    progress.message(f"loading CIFAR-10 through Keras (downloads about 170 MB on first use; "
                     f"use {knob('--data', 'PATH')} for a local copy)")
    from ..tensorflow_env import import_tensorflow

    import_tensorflow("edge-train")  # one line naming the extra to install when TensorFlow is missing
    import keras  # lazy: TensorFlow only where it is needed

    try:
        (train_images, train_labels), (test_images, test_labels) = keras.datasets.cifar10.load_data()
    except Exception as error:  # Keras raises a bare Exception for download failures
        raise DataError(f"CIFAR-10 download through Keras failed ({error}); "
                        f"pass {knob('--data', 'PATH')} with a local copy") from error
    return Dataset(
        train_images=np.ascontiguousarray(train_images, dtype=np.uint8),
        train_labels=np.asarray(train_labels, dtype=np.int64).reshape(-1),
        test_images=np.ascontiguousarray(test_images, dtype=np.uint8),
        test_labels=np.asarray(test_labels, dtype=np.int64).reshape(-1),
        class_names=list(CIFAR10_CLASSES),
        source="CIFAR-10 (keras.datasets.cifar10)",
    )
