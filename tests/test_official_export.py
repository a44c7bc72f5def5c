"""What edge-convert exports, seen by the TFLite ecosystem: every variant carries the official
metadata (labels, normalization, RGB), the uint8 variant has uint8 tensors and agrees with Keras,
the report covers it, and MediaPipe's ImageClassifier reads the files as edge-classify does.

The MediaPipe test needs `mediapipe` (a development tool, never a runtime dependency, and not in
the `dev` extra: its wheel requires opencv-contrib-python, which shares the `cv2` package with the
camera extra's opencv-python-headless). Install it beside the dev extra with
`pip install --no-deps "mediapipe>=1.2.3"`; without it that test skips with the reason.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

pytest.register_assert_rewrite("converter_fixtures")
from converter_fixtures import CALIBRATION_SIZE, SEED, Converted  # noqa: E402
from synthetic import CLASS_NAMES, synthetic_arrays  # noqa: E402

pytest_plugins = ("converter_fixtures",)
pytestmark = pytest.mark.slow

RECIPE_NORMALIZATION = ((0.0,), (255.0,))  # x / 255 as (pixel - mean) / std
UINT8_MIN_AGREEMENT = 0.95
MEDIAPIPE_MIN_AGREEMENT = 0.99
MEDIAPIPE_IMAGES_PER_CLASS = 75  # 300 images
MEDIAPIPE_SEED = 11
MAX_SCORE_DIFFERENCE = 1e-4


@pytest.fixture(scope="module")
def uint8_model(converted: Converted, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fixture model's uint8 variant, converted through the command line as a user would."""
    from converter.cli import main

    out = tmp_path_factory.mktemp("uint8")
    result = CliRunner().invoke(main, ["--model", str(converted.trained.model_path), "--out", str(out),
                                       "--variants", "uint8", "--calibration-size", str(CALIBRATION_SIZE),
                                       "--seed", str(SEED), "--quiet"])
    assert result.exit_code == 0, result.output
    return out / "model_uint8.tflite"


def _paths(converted: Converted, uint8_model: Path) -> dict[str, Path]:
    return {"float32": converted.float32, "int8": converted.int8, "uint8": uint8_model}


@pytest.mark.parametrize("variant", ["float32", "int8", "uint8"])
def test_exports_read_back_through_the_official_schema(converted: Converted, uint8_model: Path,
                                                      variant: str) -> None:
    from edge_runtime.model_file.official_metadata import read_official_metadata

    path = _paths(converted, uint8_model)[variant]
    official = read_official_metadata(path.read_bytes(), str(path))
    assert official is not None
    assert official.labels == list(CLASS_NAMES)
    assert official.labels_file == "labels.txt"
    assert (official.normalization.mean, official.normalization.std) == RECIPE_NORMALIZATION
    assert official.color_space == "RGB"
    assert official.output_range == (0.0, 1.0)
    assert official.name == f"edge-image-toolkit image classifier ({variant})"
    assert official.version.startswith("sha256:")
    assert official.min_parser_version == "1.0.0"


def test_uint8_variant_has_uint8_tensors_and_agrees_with_keras(converted: Converted, uint8_model: Path) -> None:
    from converter.source_model import load_keras_model
    from edge_runtime.classify import Classifier
    from edge_runtime.preprocess import scale_pixels

    classifier = Classifier(uint8_model)
    assert (classifier.input.dtype, classifier.output.dtype) == (np.uint8, np.uint8)
    # Trained on x / 255: the input quantization is the pixel itself.
    assert abs(classifier.input.scale * 255.0 - 1.0) < 1e-6 and classifier.input.zero_point == 0
    assert classifier.metadata is not None and classifier.metadata.info["variant"] == "uint8"
    assert classifier.metadata.info["calibration"]["count"] == CALIBRATION_SIZE
    dataset = converted.trained.dataset
    keras_top1 = load_keras_model(converted.trained.model_path).predict(
        scale_pixels(dataset.test_images), verbose=0).argmax(axis=1)
    top1 = np.array([classifier.scores(classifier.load(path)).argmax() for path in dataset.test_paths])
    assert np.mean(top1 == keras_top1) >= UINT8_MIN_AGREEMENT


def test_uint8_and_int8_give_the_same_scores(converted: Converted, uint8_model: Path) -> None:
    """One quantized network, two kinds of edges: the int8 and uint8 files answer alike."""
    from edge_runtime.classify import Classifier

    int8, uint8 = Classifier(converted.int8), Classifier(uint8_model)
    images, _ = synthetic_arrays(10, seed=MEDIAPIPE_SEED)
    for image in images:
        assert int(int8.scores(image).argmax()) == int(uint8.scores(image).argmax())


def test_report_lists_uint8_when_present(converted: Converted, uint8_model: Path, tmp_path: Path) -> None:
    import shutil

    from converter.report import tflite_models

    for path in (converted.float32, converted.int8, uint8_model):
        shutil.copy(path, tmp_path / path.name)
    assert [variant for variant, _ in tflite_models(tmp_path)] == ["float32", "int8", "uint8"]


def test_cli_lists_uint8_among_the_variants() -> None:
    from converter.cli import main

    result = CliRunner().invoke(main, ["--help"])
    assert "float32, int8, uint8, dynamic, float16" in " ".join(result.output.split())


# --- MediaPipe reads our files --------------------------------------------------------------------------

@pytest.mark.parametrize("variant", ["float32", "uint8"])
def test_mediapipe_reads_labels_and_agrees_with_edge_classify(converted: Converted, uint8_model: Path,
                                                              variant: str) -> None:
    try:
        import mediapipe as mp
        from mediapipe.tasks.python import BaseOptions, vision
    except ImportError as error:
        pytest.skip(f"mediapipe is not installed ({error}); pip install --no-deps 'mediapipe>=1.2.3' to run it")
    from edge_runtime.classify import Classifier

    path = _paths(converted, uint8_model)[variant]
    ours = Classifier(path)
    options = vision.ImageClassifierOptions(base_options=BaseOptions(model_asset_path=str(path)),
                                            max_results=len(CLASS_NAMES))
    images, _ = synthetic_arrays(MEDIAPIPE_IMAGES_PER_CLASS, seed=MEDIAPIPE_SEED)
    agreements = 0
    with vision.ImageClassifier.create_from_options(options) as classifier:
        for image in images:
            result = classifier.classify(mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(image)))
            categories = result.classifications[0].categories
            assert {category.category_name for category in categories} == set(CLASS_NAMES)
            best = max(categories, key=lambda category: category.score)
            (top,) = ours.classify(image)
            assert best.category_name == CLASS_NAMES[best.index]
            agreements += int(best.index == top.index)
            if variant == "float32":
                assert abs(best.score - top.score) <= MAX_SCORE_DIFFERENCE
    assert agreements / len(images) >= MEDIAPIPE_MIN_AGREEMENT
