"""Models from elsewhere: edge-classify feeds them what MediaPipe's ImageClassifier feeds them.

MediaPipe 1.2.3 is the reference runtime of the TFLite ecosystem (its Android and web demos run the
same ImageClassifier). For a model without our `preprocess.json` edge-classify resizes as MediaPipe
does (`fixed_point_resize.fixed_point_bilinear`) and turns pixels into input values as MediaPipe
does (`model_file.conventions`), so the scores agree.

Three kinds of check:
- Coral's MobileNet v2 (../shared/models/coral) on its two photos: the command line against MediaPipe
  reading the same files; skips without the shared model.
- "pixel probe" models built here: the official metadata on a network whose class scores are its
  own input tensor, so MediaPipe's scores are the values it fed, read back whole. A float32 probe
  with mean 127.5 and std 127.5 shows the resize and the float arithmetic; a uint8 probe whose
  metadata says the same shows the pixel codes are fed as they are. Exact, on images of several
  sizes (up and down, not square) chosen so that some source coordinates fall exactly between two
  of OpenCV's 1/32-pixel steps.
- small float32 and uint8 classifiers built here with the official metadata, through the command
  line against MediaPipe: same top-1, scores within 0.03.

MediaPipe is a development tool, never a runtime dependency: install it beside the dev extra with
`pip install --no-deps "mediapipe>=1.2.3"` (see tests/test_official_export.py). Without it every test
here skips with the reason; the built models also need TensorFlow.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from edge_runtime.classify import Classifier
from edge_runtime.cli import main
from edge_runtime.preprocess import FIXED_POINT_BILINEAR, Normalization, array_to_input

mp = pytest.importorskip("mediapipe", reason="mediapipe is not installed; pip install --no-deps 'mediapipe>=1.2.3'")
from mediapipe.tasks.python import BaseOptions, vision  # noqa: E402

CORAL = Path(__file__).resolve().parent.parent.parent / "shared" / "models" / "coral"
CORAL_MODEL = CORAL / "mobilenet_v2_1.0_224_quant.tflite"
CORAL_PHOTOS = ("grace_hopper.bmp", "cat_720p.jpg")
TOP_K = 3
# What the task asks of the agreement. Measured: 0 on grace_hopper.bmp; 0.0039 (one output step,
# 1/256) on cat_720p.jpg, all from MediaPipe's own JPEG decoder, which differs from Pillow's by up to
# 3 codes on 5% of the photo's pixels.
MAX_SCORE_DIFFERENCE = 0.03
# On the same decoded pixels the scores are the same numbers; the command line rounds to 6 decimals.
SAME_SCORE = 1e-6

MOBILENET = Normalization(mean=(127.5,), std=(127.5,))
# The probe's input: 64 rows and 128 columns put source coordinates exactly between two 1/32-pixel
# steps (x * width_in / 128 * 32 = k + 1/2), where only OpenCV's own arithmetic decides the rounding,
# and 128 columns are two of OpenCV's 64-column blocks.
PROBE_HEIGHT, PROBE_WIDTH = 64, 128
# (height, width) of the test images: up, down, up one way and down the other, the input's own size.
# (7, 1281) and (13, 45) have coordinates that round differently unless OpenCV's arithmetic is
# followed step by step (x * source_width / width rounded half to even is off on both), and (13, 45)
# also unless each 64-column block is mapped from its own first column.
IMAGE_SIZES = ((7, 1281), (13, 45), (97, 45), (333, 517), (PROBE_HEIGHT, PROBE_WIDTH))
CLASSIFIER_LABELS = ["alpha", "beta", "gamma", "delta", "epsilon"]
LOGIT_SPREAD = 4.0  # the classifier's logits vary by a few units from image to image: decisive top-1s
SEED = 17


def mediapipe_scores(model: Path, image) -> np.ndarray:
    """Every class score MediaPipe's ImageClassifier gives `image` (an mp.Image), by class index."""
    options = vision.ImageClassifierOptions(base_options=BaseOptions(model_asset_path=str(model)), max_results=-1)
    with vision.ImageClassifier.create_from_options(options) as classifier:
        categories = classifier.classify(image).classifications[0].categories
    scores = np.full(max(category.index for category in categories) + 1, np.nan)
    for category in categories:
        scores[category.index] = category.score
    return scores


def mediapipe_top(model: Path, image) -> tuple[str, float]:
    """MediaPipe's best class of `image`: label and score."""
    options = vision.ImageClassifierOptions(base_options=BaseOptions(model_asset_path=str(model)), max_results=1)
    with vision.ImageClassifier.create_from_options(options) as classifier:
        (best,) = classifier.classify(image).classifications[0].categories
    return best.category_name, best.score


def edge_classify(model: Path, *images: Path) -> list[dict]:
    """edge-classify's --json -k 3 records for `images`, through the command line."""
    result = CliRunner().invoke(main, ["--model", str(model), "--json", "-k", str(TOP_K), *map(str, images)])
    assert result.exit_code == 0, result.output
    assert "note:" not in result.stderr  # nothing was guessed
    return [json.loads(line) for line in result.stdout.splitlines()]


# --- Coral's MobileNet v2 -------------------------------------------------------------------------------

coral_only = pytest.mark.skipif(not CORAL_MODEL.is_file(),
                                reason=f"no Coral test model at {CORAL_MODEL} (../shared is absent)")


@coral_only
@pytest.mark.parametrize("photo", CORAL_PHOTOS)
def test_coral_photos_answer_as_mediapipe_reading_the_same_file(photo: str) -> None:
    (record,) = edge_classify(CORAL_MODEL, CORAL / photo)
    label, score = mediapipe_top(CORAL_MODEL, mp.Image.create_from_file(str(CORAL / photo)))
    assert record["label"] == label
    assert abs(record["score"] - score) <= MAX_SCORE_DIFFERENCE


@coral_only
@pytest.mark.parametrize("photo", CORAL_PHOTOS)
def test_coral_scores_are_mediapipes_on_the_same_decoded_pixels(photo: str) -> None:
    classifier = Classifier(CORAL_MODEL)
    assert classifier.spec.resample == FIXED_POINT_BILINEAR
    ours = classifier.scores(classifier.load(CORAL / photo))
    decoded = np.asarray(Image.open(CORAL / photo).convert("RGB"))
    theirs = mediapipe_scores(CORAL_MODEL, mp.Image(image_format=mp.ImageFormat.SRGB, data=decoded))
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=SAME_SCORE)


# --- models built here --------------------------------------------------------------------------------

def _convert(model, calibration: np.ndarray | None = None) -> bytes:
    """A Keras model as TFLite: float32, or with uint8 input and output calibrated on `calibration`."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if calibration is not None:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([sample[None]] for sample in calibration)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.uint8
        converter.inference_output_type = tf.uint8
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Statistics for quantized inputs were expected")
        return bytes(converter.convert())


def _third_party(model_bytes: bytes, labels: list[str]) -> bytes:
    """The model as someone else publishes it: the official metadata and its labels, nothing of ours."""
    from converter.official_metadata import (ModelDescription, append_files, attach_metadata_buffer,
                                             metadata_flatbuffer)

    description = ModelDescription(name="parity", description="built by tests/test_mediapipe_parity.py",
                                   version="1", labels=labels, width=PROBE_WIDTH, height=PROBE_HEIGHT,
                                   normalization=MOBILENET)
    with_metadata = attach_metadata_buffer(model_bytes, metadata_flatbuffer(description))
    return append_files(with_metadata, {description.labels_file: "".join(f"{label}\n" for label in labels).encode()})


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Pixel probes and classifiers, float32 and uint8, each with the official metadata only."""
    pytest.importorskip("tensorflow", reason="building the models needs TensorFlow")
    import keras

    rng = np.random.default_rng(SEED)
    shape = (PROBE_HEIGHT, PROBE_WIDTH, 3)
    inputs = keras.Input(shape)
    probe = keras.Model(inputs, keras.layers.Reshape((int(np.prod(shape)),))(inputs))
    dense = keras.layers.Dense(len(CLASSIFIER_LABELS), activation="softmax")
    classifier = keras.Model(inputs, dense(keras.layers.Flatten()(inputs)))
    weights = rng.normal(0.0, LOGIT_SPREAD / np.sqrt(np.prod(shape)), (int(np.prod(shape)), len(CLASSIFIER_LABELS)))
    dense.set_weights([weights.astype(np.float32), np.zeros(len(CLASSIFIER_LABELS), dtype=np.float32)])
    # The probe's uint8 input is calibrated on 0..255 (scale 1, zero point 0), so its scores are the
    # codes it was fed; the classifier's on [-1, 1], the values its metadata describes.
    pixels = rng.integers(0, 256, (8, *shape)).astype(np.float32)
    pixels[:, 0, 0], pixels[:, -1, -1] = 0.0, 255.0
    probe_labels = [str(index) for index in range(int(np.prod(shape)))]
    folder = tmp_path_factory.mktemp("parity")
    built = {
        "probe_float32": _third_party(_convert(probe), probe_labels),
        "probe_uint8": _third_party(_convert(probe, pixels), probe_labels),
        "classifier_float32": _third_party(_convert(classifier), CLASSIFIER_LABELS),
        "classifier_uint8": _third_party(_convert(classifier, MOBILENET.apply(pixels)), CLASSIFIER_LABELS),
    }
    paths = {}
    for name, model_bytes in built.items():
        paths[name] = folder / f"{name}.tflite"
        paths[name].write_bytes(model_bytes)
    return paths


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Noise images of IMAGE_SIZES as PNG, which MediaPipe and Pillow decode alike."""
    rng = np.random.default_rng(SEED)
    folder = tmp_path_factory.mktemp("parity-images")
    paths = []
    for height, width in IMAGE_SIZES:
        path = folder / f"noise_{height}x{width}.png"
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["float32", "uint8"])
def test_probe_reads_back_mediapipes_input_values_exactly(models, images, variant: str) -> None:
    path = models[f"probe_{variant}"]
    classifier = Classifier(path)
    assert classifier.metadata is None and classifier.official.normalization == MOBILENET
    if variant == "uint8":
        assert (classifier.input.scale, classifier.input.zero_point) == (1.0, 0)
    for image in images:
        ours = classifier.quantize_input(classifier.load(image)).reshape(-1).astype(np.float64)
        theirs = mediapipe_scores(path, mp.Image.create_from_file(str(image)))
        np.testing.assert_array_equal(ours, theirs, err_msg=f"{image.name} through {path.name}")


@pytest.mark.slow
def test_camera_frames_get_mediapipes_pixels(models) -> None:
    classifier = Classifier(models["probe_uint8"])
    rng = np.random.default_rng(SEED + 1)
    for height, width in IMAGE_SIZES:
        frame = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        theirs = mediapipe_scores(models["probe_uint8"], mp.Image(image_format=mp.ImageFormat.SRGB, data=frame))
        np.testing.assert_array_equal(array_to_input(frame, classifier.spec).reshape(-1), theirs)


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["float32", "uint8"])
def test_classifiers_answer_as_mediapipe(models, images, variant: str) -> None:
    path = models[f"classifier_{variant}"]
    records = edge_classify(path, *images)
    assert len(records) == len(images)
    for record, image in zip(records, images):
        label, score = mediapipe_top(path, mp.Image.create_from_file(str(image)))
        assert record["label"] == label, image.name
        assert abs(record["score"] - score) <= MAX_SCORE_DIFFERENCE, (image.name, record["score"], score)
