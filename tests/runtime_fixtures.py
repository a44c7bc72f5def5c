"""Tiny TFLite models for the runtime tests, trained and converted once per test session.

A small Keras CNN learns the four synthetic classes of `synthetic.py` in a few epochs; it is
converted to float32 and to full-int8 TFLite (int8 input and output, calibrated on the same
`scale_pixels` inputs the network was trained on) and carries its labels and preprocessing
embedded, as the converter's exports do. Their batch dimension is -1 (resizable), as Keras
exports have it. Beside them: the same int8 network without metadata, a uint8-input variant,
the int8 network converted with a fixed batch of 1, and a model whose input is not an image tensor. Also here: the bad
input files (empty, truncated, not an image, a folder named like one, a decompression bomb).

Test modules use it with `pytest_plugins = ("runtime_fixtures",)` so the session fixture is
registered once and the models are built once, whichever modules run. They also import its
helpers directly, so it opts out of assertion rewriting (it asserts nothing): PYTEST_DONT_REWRITE
"""

from __future__ import annotations

import dataclasses
import os
import signal
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest

from edge_runtime.model_file.labels import write_labels
from edge_runtime.model_file.metadata import ModelMetadata, embed_metadata
from edge_runtime.preprocess import DEFAULT_SPEC, scale_pixels
from PIL import Image

from synthetic import CLASS_NAMES, IMAGE_SIZE, synthetic_arrays

TRAIN_PER_CLASS = 48
CALIBRATION_IMAGES = 32
EPOCHS = 6
BATCH_SIZE = 16
SEED = 7
DENSE_INPUT_SIZE = 10
BOMB_SIDE = 40_000  # a PNG declaring 40000x40000 RGB pixels: 4.8 GB if decoded
# The accuracy the tiny model must reach on fresh synthetic images for tests to trust it.
MIN_SYNTHETIC_ACCURACY = 0.9


@dataclasses.dataclass(frozen=True)
class RuntimeModels:
    """Paths of the test models and their labels file."""

    folder: Path
    float32: Path        # float32 in and out, labels and preprocessing embedded
    int8: Path           # int8 in and out, labels and preprocessing embedded
    uint8: Path          # uint8 in and out, labels embedded
    plain_int8: Path     # the int8 network without any metadata
    fixed_batch_int8: Path  # the int8 network with input shape_signature [1, 32, 32, 3]: no batches
    dense_input: Path    # input [1, 10]: not an image
    labels_file: Path    # CLASS_NAMES, one per line


def ctrl_c_as_in_a_terminal() -> None:
    """preexec_fn of a subprocess that a test stops with SIGINT: a test run started in the background
    (`cmd &` in a script) ignores SIGINT, and its children would inherit that and never stop."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _network(batch_size: int | None = None):
    import tensorflow as tf

    inputs = tf.keras.Input((IMAGE_SIZE, IMAGE_SIZE, 3), batch_size=batch_size)
    x = tf.keras.layers.Conv2D(8, 3, strides=2, activation="relu")(inputs)
    x = tf.keras.layers.Conv2D(16, 3, strides=2, activation="relu")(x)
    x = tf.keras.layers.GlobalAveragePooling2D()(x)
    outputs = tf.keras.layers.Dense(len(CLASS_NAMES), activation="softmax")(x)
    return tf.keras.Model(inputs, outputs)


def _train_keras_model():
    import tensorflow as tf

    tf.keras.utils.set_random_seed(SEED)
    images, labels = synthetic_arrays(TRAIN_PER_CLASS, seed=SEED)
    model = _network()
    model.compile(optimizer=tf.keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy")
    model.fit(scale_pixels(images), labels, epochs=EPOCHS, batch_size=BATCH_SIZE, verbose=0)
    return model


def _convert(model, io_type=None) -> bytes:
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if io_type is not None:
        calibration, _ = synthetic_arrays(CALIBRATION_IMAGES // len(CLASS_NAMES), seed=SEED + 1)

        def representative_data():
            for image in calibration:
                yield [scale_pixels(image[None])]

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative_data
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = io_type
        converter.inference_output_type = io_type
    with warnings.catch_warnings():
        # The converter notes that int8 inputs get statistics from calibration: expected here.
        warnings.filterwarnings("ignore", message="Statistics for quantized inputs were expected")
        return converter.convert()


def _dense_model_bytes() -> bytes:
    import tensorflow as tf

    inputs = tf.keras.Input((DENSE_INPUT_SIZE,))
    outputs = tf.keras.layers.Dense(len(CLASS_NAMES), activation="softmax")(inputs)
    return _convert(tf.keras.Model(inputs, outputs))


def build_runtime_models(folder: Path) -> RuntimeModels:
    """Train, convert and write every test model into `folder`."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    model = _train_keras_model()
    metadata = ModelMetadata(labels=list(CLASS_NAMES), preprocess=DEFAULT_SPEC,
                             info={"source": "runtime test fixture"})
    int8_bytes = _convert(model, tf.int8)
    paths = RuntimeModels(
        folder=folder,
        float32=folder / "model_float32.tflite",
        int8=folder / "model_int8.tflite",
        uint8=folder / "model_uint8.tflite",
        plain_int8=folder / "plain_int8.tflite",
        fixed_batch_int8=folder / "fixed_batch_int8.tflite",
        dense_input=folder / "dense_input.tflite",
        labels_file=folder / "labels.txt",
    )
    paths.float32.write_bytes(embed_metadata(_convert(model), metadata))
    paths.int8.write_bytes(embed_metadata(int8_bytes, metadata))
    paths.uint8.write_bytes(embed_metadata(_convert(model, tf.uint8), metadata))
    paths.plain_int8.write_bytes(int8_bytes)
    fixed_batch = _network(batch_size=1)
    fixed_batch.set_weights(model.get_weights())
    paths.fixed_batch_int8.write_bytes(embed_metadata(_convert(fixed_batch, tf.int8), metadata))
    paths.dense_input.write_bytes(_dense_model_bytes())
    write_labels(paths.labels_file, list(CLASS_NAMES))
    return paths


@pytest.fixture(scope="session")
def runtime_models(tmp_path_factory: pytest.TempPathFactory) -> RuntimeModels:
    """The test models, built once per session."""
    return build_runtime_models(tmp_path_factory.mktemp("runtime_models"))


@pytest.fixture(scope="session")
def synthetic_test_images() -> tuple[np.ndarray, np.ndarray]:
    """Fresh synthetic images (not seen in training) and their class indices."""
    return synthetic_arrays(16, seed=SEED + 2)


# --- bad input files ----------------------------------------------------------------------------

def png_declaring(width: int, height: int) -> bytes:
    """A PNG header that declares width x height RGB pixels, then one tiny IDAT and IEND."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB, no interlace
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 16))
            + chunk(b"IEND", b""))


def bad_files(folder: Path) -> dict[str, tuple[Path, str]]:
    """Each kind of bad input and the reason its error line must give."""
    folder.mkdir(parents=True, exist_ok=True)
    good_jpeg = folder / "good.jpg"
    good_png = folder / "good.png"
    picture = Image.fromarray(synthetic_arrays(1, seed=6, size=64)[0][0])
    picture.save(good_jpeg, quality=90)
    picture.save(good_png)
    files = {
        "empty": (folder / "empty.jpg", "file is empty (0 bytes)"),
        "truncated_jpeg": (folder / "truncated.jpg", "cannot decode image (image file is truncated"),
        "truncated_png": (folder / "truncated.png", "cannot decode image ("),
        "text": (folder / "notes.jpg", "not a recognised image file"),
        "folder": (folder / "album.jpg", "is a folder, not an image file"),
        "bomb": (folder / "bomb.png", "declares too many pixels to decode safely (possible decompression bomb)"),
    }
    files["empty"][0].write_bytes(b"")
    files["truncated_jpeg"][0].write_bytes(good_jpeg.read_bytes()[:len(good_jpeg.read_bytes()) // 2])
    files["truncated_png"][0].write_bytes(good_png.read_bytes()[:len(good_png.read_bytes()) // 2])
    files["text"][0].write_text("this is not a picture\n")
    files["folder"][0].mkdir()
    files["bomb"][0].write_bytes(png_declaring(BOMB_SIDE, BOMB_SIDE))
    good_jpeg.unlink()
    good_png.unlink()
    return files
