"""A model that loads but fails when it runs is the model's error, on every path (issue: damaged graphs).

The models here are tiny Conv2D-Reshape-Dense classifiers whose batch dimension is resizable, so the
converter computes the Reshape's new shape at run time (SHAPE, STRIDED_SLICE, PACK of a constant):
`allocate_tensors` passes and only `invoke` finds what is wrong. Two damages, patched into the
flatbuffer through `flatbuffer_check`'s bounds-checked reader:

- reshape: the PACK's constant 36 (the flattened size) becomes 37, so RESHAPE's element counts disagree;
- zero point: the int8 Dense weights get per-channel zero point 5, which the XNNPACK delegate
  refuses; the delegate prepares that part of the graph at the first invoke (its input is dynamic).

Each path must say so once, as one line naming the model, with exit 2: no image blamed, no traceback.
"""

from __future__ import annotations

import os
import re
import struct
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
from click.testing import CliRunner, Result
from PIL import Image

from edge_runtime.classify import Classifier, interpreter_reason
from edge_runtime.cli import DEFAULT_BATCH, SMALL_JOB_FILES, main
from edge_runtime.errors import ModelError
from edge_runtime.model_file.flatbuffer_check import UOFFSET, Table
from edge_runtime.model_file.metadata import ModelMetadata, embed_metadata
from edge_runtime.preprocess import PreprocessSpec

REPO_ROOT = Path(__file__).resolve().parent.parent
CONSOLE_SCRIPT = "import sys; from edge_runtime.cli import main; sys.exit(main())"
LABELS = ["cat", "dog", "bird"]
SIDE = 8
FLAT = 36  # Conv2D(4, 3, strides=2) on 8x8: 3x3x4 values, flattened by the Reshape
WRONG_FLAT = FLAT + 1
BAD_ZERO_POINT = 5
IMAGE_SIDE = 12
FOLDER_IMAGES = 4
# The schema.fbs fields the patches walk: Model.subgraphs and buffers, SubGraph.tensors, Tensor.shape,
# type, buffer and quantization, Buffer.data, QuantizationParameters.zero_point.
MODEL_SUBGRAPHS_SLOT, MODEL_BUFFERS_SLOT = 2, 4
SUBGRAPH_TENSORS_SLOT = 0
TENSOR_SHAPE_SLOT, TENSOR_TYPE_SLOT, TENSOR_BUFFER_SLOT, TENSOR_QUANTIZATION_SLOT = 0, 1, 2, 4
BUFFER_DATA_SLOT = 0
ZERO_POINT_SLOT = 3
INT32_TYPE, INT8_TYPE = 2, 9
INT32 = struct.Struct("<i")
INT64 = struct.Struct("<q")


class BrokenModels(NamedTuple):
    good: Path  # the reshape model before its damage: it runs
    reshape: Path
    zero_point: Path


# --- building and damaging the models ------------------------------------------------------------

def _network():
    import tensorflow as tf

    tf.keras.utils.set_random_seed(0)
    inputs = tf.keras.Input((SIDE, SIDE, 3))
    x = tf.keras.layers.Conv2D(4, 3, strides=2, activation="relu")(inputs)
    x = tf.keras.layers.Reshape((FLAT,))(x)
    outputs = tf.keras.layers.Dense(len(LABELS), activation="softmax")(x)
    return tf.keras.Model(inputs, outputs)


def _convert(model, int8: bool) -> bytes:
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if int8:
        pixels = np.random.default_rng(0).random((8, 1, SIDE, SIDE, 3), dtype=np.float32)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([image] for image in pixels)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = converter.inference_output_type = tf.int8
    return bytes(converter.convert())


def _tensors(model: bytes) -> tuple[Table, list[Table]]:
    root = Table.root(model)
    subgraphs, _ = root.vector(MODEL_SUBGRAPHS_SLOT, UOFFSET.size)
    graph = root.table_at(subgraphs)
    start, count = graph.vector(SUBGRAPH_TENSORS_SLOT, UOFFSET.size)
    return root, [graph.table_at(start + UOFFSET.size * index) for index in range(count)]


def _shape(tensor: Table) -> list[int]:
    start, count = tensor.vector(TENSOR_SHAPE_SLOT, INT32.size)
    return [INT32.unpack_from(tensor.checker.buffer, start + INT32.size * i)[0] for i in range(count)]


def with_wrong_reshape(model: bytes) -> bytes:
    """The model with its one int32 scalar constant FLAT (the Reshape's new size) made WRONG_FLAT."""
    root, tensors = _tensors(model)
    buffers, _ = root.vector(MODEL_BUFFERS_SLOT, UOFFSET.size)
    found = []
    for tensor in tensors:
        if tensor.scalar(TENSOR_TYPE_SLOT, "<b") != INT32_TYPE or _shape(tensor):
            continue
        buffer = root.table_at(buffers + UOFFSET.size * tensor.scalar(TENSOR_BUFFER_SLOT, "<I"))
        start, size = buffer.vector(BUFFER_DATA_SLOT, 1)
        if size == INT32.size and INT32.unpack_from(model, start)[0] == FLAT:
            found.append(start)
    assert len(found) == 1, f"{len(found)} int32 constants of {FLAT}: the converter's graph changed"
    damaged = bytearray(model)
    INT32.pack_into(damaged, found[0], WRONG_FLAT)
    return bytes(damaged)


def with_bad_zero_point(model: bytes) -> bytes:
    """The int8 model with every per-channel zero point of its Dense weights [3, 36] set to BAD_ZERO_POINT."""
    _, tensors = _tensors(model)
    weights = [tensor for tensor in tensors
               if tensor.scalar(TENSOR_TYPE_SLOT, "<b") == INT8_TYPE and _shape(tensor) == [len(LABELS), FLAT]]
    assert len(weights) == 1, "the Dense weights not found: the converter's graph changed"
    tensor = weights[0]
    quantization = tensor.table_at(tensor.checker.field(tensor.position, TENSOR_QUANTIZATION_SLOT, UOFFSET.size))
    start, count = quantization.vector(ZERO_POINT_SLOT, INT64.size)
    assert count == len(LABELS), "per-channel quantization expected"
    damaged = bytearray(model)
    for channel in range(count):
        INT64.pack_into(damaged, start + INT64.size * channel, BAD_ZERO_POINT)
    return bytes(damaged)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> BrokenModels:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    folder = tmp_path_factory.mktemp("broken_models")
    network = _network()
    metadata = ModelMetadata(list(LABELS), PreprocessSpec(height=SIDE, width=SIDE), {"source": "model failure test"})
    float_model, int8_model = _convert(network, int8=False), _convert(network, int8=True)
    paths = BrokenModels(folder / "good.tflite", folder / "reshape.tflite", folder / "zero_point.tflite")
    paths.good.write_bytes(embed_metadata(float_model, metadata))
    paths.reshape.write_bytes(embed_metadata(with_wrong_reshape(float_model), metadata))
    paths.zero_point.write_bytes(embed_metadata(with_bad_zero_point(int8_model), metadata))
    return paths


def message_pattern(path: Path, kind: str, batch: int = 1) -> str:
    """The one line edge-classify prints for the model, as a regex (node and tensor numbers are the
    converter's); the reshape's element counts are those of a batch of `batch` images."""
    reasons = {
        "reshape": (rf"num_input_elements != num_output_elements \({FLAT * batch} != {WRONG_FLAT * batch}\) "
                    r"at node \d+ \(RESHAPE\)"),
        "zero_point": (rf"unsupported zero-point value \({BAD_ZERO_POINT}\) in channel 0 of INT8 tensor \d+ in "
                       r"XNNPACK delegate at node \d+ \(TfLiteXNNPackDelegate\)"),
    }
    return rf"{re.escape(str(path))}: the ai_edge_litert interpreter cannot run this model \({reasons[kind]}\)"


def image_folder(folder: Path, count: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(1).integers(0, 256, (IMAGE_SIDE, IMAGE_SIDE, 3), dtype=np.uint8)
    for number in range(count):
        Image.fromarray(pixels).save(folder / f"image{number:04d}.png")
    return folder


def run(*args: str | os.PathLike) -> Result:
    return CliRunner().invoke(main, [str(arg) for arg in args])


def assert_one_model_line(result: Result, path: Path, kind: str, stdout_empty: bool = True, batch: int = 1) -> None:
    """Exit 2, the model's one line as the last line of stderr and the only one naming it, nothing blamed."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert re.fullmatch("Error: " + message_pattern(path, kind, batch), lines[-1]), result.stderr
    assert [line for line in lines if str(path) in line] == [lines[-1]], result.stderr
    assert "cannot decode image" not in result.output and "failed" not in result.stdout
    if stdout_empty:
        assert result.stdout == ""


# --- the interpreter's reason, readable ----------------------------------------------------------

@pytest.mark.parametrize("raw, reason", [
    ("./tflite/kernels/internal/reshape_utils.h num_input_elements != num_output_elements (36 != 37)"
     "Node number 4 (RESHAPE) failed to invoke.",
     "num_input_elements != num_output_elements (36 != 37) at node 4 (RESHAPE)"),
    # A later invoke's messages follow those of the earlier ones: the last failure is the reason.
    ("tensorflow/lite/kernels/reshape.cc:94 num_input_elements != num_output_elements (36 != 37)"
     "Node number 4 (RESHAPE) failed to invoke.tensorflow/lite/kernels/reshape.cc:94 num_input_elements "
     "!= num_output_elements (144 != 148)Node number 4 (RESHAPE) failed to invoke.",
     "num_input_elements != num_output_elements (144 != 148) at node 4 (RESHAPE)"),
    ("unsupported zero-point value (5) in channel 0 of INT8 tensor 4 in XNNPACK delegateunsupported datatype "
     "(INT8) of tensor 4 in XNNPACK delegatefailed to create XNNPACK Value for tensor 4"
     "Node number 8 (TfLiteXNNPackDelegate) failed to prepare.",
     "unsupported zero-point value (5) in channel 0 of INT8 tensor 4 in XNNPACK delegate at node 8 "
     "(TfLiteXNNPackDelegate)"),
    # Older builds put each message on its own line.
    ("tensorflow/lite/kernels/gather.cc:157 Gather index out of bounds\nNode number 2 (GATHER) failed to invoke.\n",
     "Gather index out of bounds at node 2 (GATHER)"),
    # XNNPACK says why only the first time: the node's earlier reason stays the reason.
    ("unsupported zero-point value (5) in channel 0 of INT8 tensor 4 in XNNPACK delegate"
     "Node number 8 (TfLiteXNNPackDelegate) failed to prepare.Node number 8 (TfLiteXNNPackDelegate) failed to prepare.",
     "unsupported zero-point value (5) in channel 0 of INT8 tensor 4 in XNNPACK delegate at node 8 "
     "(TfLiteXNNPackDelegate)"),
    ("Node number 3 (CUSTOM) failed to invoke.", "Node number 3 (CUSTOM) failed to invoke"),
    ("Invoke called on model that is not consistent.", "Invoke called on model that is not consistent."),
    ("", "RuntimeError"),
])
def test_the_interpreters_reason_is_its_first_message_in_one_line(raw: str, reason: str) -> None:
    assert interpreter_reason(RuntimeError(raw)) == reason


# --- the library ---------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["reshape", "zero_point"])
def test_the_library_raises_model_error_naming_the_model(models: BrokenModels, kind: str) -> None:
    path = getattr(models, kind)
    classifier = Classifier(path)  # it loads: allocate_tensors finds nothing wrong
    pixels = np.zeros((SIDE, SIDE, 3), dtype=np.uint8)
    with pytest.raises(ModelError) as caught:
        classifier.classify(pixels)
    assert re.fullmatch(message_pattern(path, kind), str(caught.value)), str(caught.value)
    assert isinstance(caught.value.__cause__, RuntimeError)
    assert classifier.use_batches(4) == 4
    with pytest.raises(ModelError) as caught:
        classifier.scores_batch(np.stack([pixels] * 3))  # the input holds 4 images, 3 of them used
    assert re.fullmatch(message_pattern(path, kind, batch=4), str(caught.value)), str(caught.value)


def test_the_undamaged_model_runs(models: BrokenModels) -> None:
    """The damage, not the model's shape, is what fails: the same network unpatched classifies."""
    scores = Classifier(models.good).scores(np.zeros((SIDE, SIDE, 3), dtype=np.uint8))
    assert scores.shape == (len(LABELS),) and abs(float(scores.sum()) - 1.0) < 1e-5


# --- edge-classify, every path -------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["reshape", "zero_point"])
def test_one_photo_gets_one_line_about_the_model(models: BrokenModels, tmp_path: Path, kind: str) -> None:
    photo = image_folder(tmp_path / "photos", 1) / "image0000.png"
    path = getattr(models, kind)
    result = run("--model", path, photo)
    assert_one_model_line(result, path, kind)
    assert str(photo) not in result.output


@pytest.mark.parametrize("batch", [1, 4])
def test_a_folder_in_this_process_stops_at_the_model_once(models: BrokenModels, tmp_path: Path, batch: int) -> None:
    folder = image_folder(tmp_path / "photos", FOLDER_IMAGES)
    result = run("--model", models.reshape, "--workers", "1", "--batch", batch, folder)
    assert_one_model_line(result, models.reshape, "reshape", batch=batch)
    assert "image0" not in result.output and "classified" not in result.stderr


@pytest.mark.parametrize("batch", [DEFAULT_BATCH, 1])
def test_a_folder_in_worker_processes_stops_every_worker_and_says_it_once(models: BrokenModels, tmp_path: Path,
                                                                          batch: int) -> None:
    """SMALL_JOB_FILES files in 2 workers: a worker sends the model's failure, the parent stops the run.
    Run as a command, so that anything a worker writes to the real stderr (a traceback) is seen."""
    folder = image_folder(tmp_path / "photos", SMALL_JOB_FILES)
    completed = subprocess.run(
        [sys.executable, "-c", CONSOLE_SCRIPT, "-v", "--model", str(models.reshape), "--workers", "2",
         "--batch", str(batch), str(folder)], capture_output=True, text=True, cwd=REPO_ROOT, timeout=120,
        env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert completed.returncode == 2, completed.stderr
    assert "Traceback" not in completed.stderr
    assert "worker processes" in completed.stderr, "the run must have used the workers"
    assert completed.stdout == ""
    errors = [line for line in completed.stderr.splitlines() if line.startswith("Error")]
    assert len(errors) == 1, completed.stderr
    assert re.fullmatch("Error: " + message_pattern(models.reshape, "reshape", batch), errors[0]), errors[0]
    assert "image0" not in completed.stderr and "not classified" not in completed.stderr


def test_camera_frames_stop_at_the_model_with_exit_2(models: BrokenModels, tmp_path: Path) -> None:
    import cv2

    video = tmp_path / "frames.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (IMAGE_SIDE, IMAGE_SIDE))
    assert writer.isOpened()
    for _ in range(3):
        writer.write(np.zeros((IMAGE_SIDE, IMAGE_SIDE, 3), dtype=np.uint8))
    writer.release()
    result = run("--model", models.reshape, "--camera", video)
    assert_one_model_line(result, models.reshape, "reshape")
    assert "frames in" not in result.stderr, "no summary of a run that never classified a frame"


def test_info_shows_the_facts_then_says_the_model_cannot_run(models: BrokenModels) -> None:
    result = run("--info", models.reshape)
    assert_one_model_line(result, models.reshape, "reshape", stdout_empty=False)
    assert result.stdout.splitlines()[0] == f"{'model:':<13} {models.reshape}"
    assert run("--info", models.good).exit_code == 0


def test_benchmark_says_the_model_cannot_run_in_one_line(models: BrokenModels) -> None:
    result = run("--benchmark", models.reshape, "--runs", "3")
    assert_one_model_line(result, models.reshape, "reshape")


@pytest.mark.parametrize("batch", ["1", "4"])
def test_a_decoder_that_crashes_is_still_that_images_error(models: BrokenModels, tmp_path: Path, monkeypatch,
                                                           batch: str) -> None:
    """Telling the two apart goes by where the failure happens, not its type: a RuntimeError while
    decoding one file is that file's error line, and the other files are classified."""
    folder = image_folder(tmp_path / "photos", FOLDER_IMAGES)
    hostile = folder / "image0001.png"
    original = Classifier.load

    def load(classifier: Classifier, path):
        if Path(path) == hostile:
            raise RuntimeError("decoder crashed")
        return original(classifier, path)

    monkeypatch.setattr(Classifier, "load", load)
    result = run("--model", models.good, "--workers", "1", "--batch", batch, folder)
    assert result.exit_code == 1, result.output
    assert f"{hostile}: error: cannot decode image (RuntimeError: decoder crashed)" in result.stderr.splitlines()
    assert len(result.stdout.splitlines()) == FOLDER_IMAGES - 1
