"""The official TFLite metadata: models from elsewhere classified with their own normalization and
labels, the preprocessing precedence, the writer's flatbuffer read back, damaged metadata in one line.

The models here are made by the tests: a "brightness" network (global average pool, then a fixed
dense layer) answers dark, mid or bright from the mean of its input values, which it expects in
[-1, 1] (MobileNet's normalization, mean 127.5 and std 127.5). So a wrong normalization gives a
wrong answer: pixel / 255 puts a dark grey (30) at +0.12, which the network calls mid.
"""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from converter.official_metadata import (ModelDescription, append_files, attach_metadata_buffer,
                                         metadata_flatbuffer, spec_normalization)
from edge_runtime.classify import Classifier
from edge_runtime.cli import main
from edge_runtime.errors import ModelError
from edge_runtime.model_file.conventions import EMBEDDED, GUESSED_UNIT_RANGE, QUANTIZED_PIXELS, TFLITE_METADATA
from edge_runtime.model_file.metadata import ModelMetadata, embed_metadata
from edge_runtime.model_file.official_metadata import (ScoreCalibration, SigmoidParameters, metadata_buffer,
                                                       parse_metadata, read_official_metadata)
from edge_runtime.preprocess import Normalization, PreprocessSpec

REPO_ROOT = Path(__file__).resolve().parent.parent
SIDE = 16
BRIGHTNESS_LABELS = ["dark", "mid", "bright"]
LABELS_FILE = "brightness_labels.txt"
MOBILENET = Normalization(mean=(127.5,), std=(127.5,))
# The dense layer: logits (-k m - c, 0, k m - c) for the mean input value m; dark below -1/3, bright above 1/3.
SLOPE = 30.0
MARGIN = 10.0
# Grey levels and what a network fed (pixel - 127.5) / 127.5 answers for them.
GREYS = {30: "dark", 128: "mid", 230: "bright"}
# Calibration values that pin the input's quantization to scale 1/128 and zero point 128 (uint8) or 0 (int8).
REAL_MIN, REAL_MAX = -1.0, 127.0 / 128.0
INPUT_SCALE = 1.0 / 128.0
MIN_FLOAT_SCORE = 0.99
MIN_QUANTIZED_SCORE = 0.98  # one output step is 1/256
MAX_SCORE_ERROR = 1e-6


def grey(level: int) -> np.ndarray:
    return np.full((SIDE, SIDE, 3), level, dtype=np.uint8)


def _brightness_keras_model():
    import keras

    inputs = keras.Input((SIDE, SIDE, 3))
    pooled = keras.layers.GlobalAveragePooling2D()(inputs)
    dense = keras.layers.Dense(len(BRIGHTNESS_LABELS), activation="softmax")
    outputs = dense(pooled)
    weights = np.tile(np.array([[-SLOPE, 0.0, SLOPE]], dtype=np.float32) / 3.0, (3, 1))
    dense.set_weights([weights, np.array([-MARGIN, 0.0, -MARGIN], dtype=np.float32)])
    return keras.Model(inputs, outputs)


def _convert(model, io_type=None) -> bytes:
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if io_type is not None:
        def representative_data():
            # Flat greys over the whole range, so the pooled mean is calibrated over [-1, 1] too.
            for level in np.linspace(REAL_MIN, REAL_MAX, 16):
                sample = np.full((1, SIDE, SIDE, 3), level, dtype=np.float32)
                sample[0, 0, 0], sample[0, -1, -1] = REAL_MIN, REAL_MAX  # the exact range, every time
                yield [sample]

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative_data
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = io_type
        converter.inference_output_type = io_type
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Statistics for quantized inputs were expected")
        return bytes(converter.convert())


def official_only(model_bytes: bytes, normalization: Normalization = MOBILENET,
                  labels: list[str] = BRIGHTNESS_LABELS) -> bytes:
    """The model with an official metadata buffer that names LABELS_FILE, and no archive yet."""
    description = ModelDescription(name="brightness", description="dark, mid or bright", version="7",
                                   labels=labels, width=SIDE, height=SIDE, normalization=normalization,
                                   labels_file=LABELS_FILE)
    return attach_metadata_buffer(model_bytes, metadata_flatbuffer(description))


def with_official_metadata(model_bytes: bytes, normalization: Normalization = MOBILENET,
                           labels: list[str] = BRIGHTNESS_LABELS) -> bytes:
    """A model as a third party publishes it: the official metadata and its labels file, nothing of ours."""
    return append_files(official_only(model_bytes, normalization, labels),
                        {LABELS_FILE: "".join(f"{label}\n" for label in labels).encode()})


@pytest.fixture(scope="module")
def brightness(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """float32, uint8 and int8 brightness models, each with official metadata and bare."""
    import tensorflow as tf

    folder = tmp_path_factory.mktemp("brightness")
    model = _brightness_keras_model()
    paths = {}
    for name, io_type in (("float32", None), ("uint8", tf.uint8), ("int8", tf.int8)):
        bare = _convert(model, io_type)
        paths[f"bare_{name}"] = folder / f"bare_{name}.tflite"
        paths[f"bare_{name}"].write_bytes(bare)
        paths[name] = folder / f"{name}.tflite"
        paths[name].write_bytes(with_official_metadata(bare))
    return paths


def run(*args: object):
    return CliRunner().invoke(main, [str(arg) for arg in args])


# --- models from elsewhere, with official metadata ---------------------------------------------------

@pytest.mark.parametrize("variant", ["float32", "uint8", "int8"])
def test_metadata_normalization_and_labels_classify_every_grey_right(brightness, variant: str) -> None:
    classifier = Classifier(brightness[variant])
    assert classifier.input_rule.kind == TFLITE_METADATA
    assert classifier.input_rule.normalization == MOBILENET
    assert classifier.labels == BRIGHTNESS_LABELS
    assert classifier.labels_source == f"TFLite metadata, {LABELS_FILE}"
    minimum = MIN_FLOAT_SCORE if variant == "float32" else MIN_QUANTIZED_SCORE
    for level, expected in GREYS.items():
        (best,) = classifier.classify(grey(level))
        assert best.label == expected, (level, best)
        assert best.score >= minimum, (level, best)


def test_quantized_inputs_have_the_tensor_parameters_the_test_relies_on(brightness) -> None:
    for variant, zero_point in (("uint8", 128), ("int8", 0)):
        tensor = Classifier(brightness[variant]).input
        assert (tensor.scale, tensor.zero_point) == (INPUT_SCALE, zero_point)


def test_quantized_input_with_metadata_takes_the_pixel_codes_as_mediapipe_does(brightness) -> None:
    """MediaPipe feeds a uint8 input the pixel itself; the metadata's normalization is its scale and zero point."""
    pixels = np.arange(256, dtype=np.uint8).reshape(16, 16, 1).repeat(3, axis=2)
    for variant, offset in (("uint8", 0), ("int8", -128)):
        classifier = Classifier(brightness[variant])
        assert classifier.input_rule.kind == TFLITE_METADATA
        np.testing.assert_array_equal(classifier.quantize_input(pixels)[0].astype(np.int64),
                                      pixels.astype(np.int64) + offset)


# --- models without metadata ------------------------------------------------------------------------

@pytest.mark.parametrize("variant, offset", [("uint8", 0), ("int8", -128)])
def test_quantized_input_without_metadata_takes_the_pixel_itself(brightness, variant: str, offset: int) -> None:
    classifier = Classifier(brightness[f"bare_{variant}"])
    assert classifier.input_rule.kind == QUANTIZED_PIXELS
    assert classifier.labels is None and classifier.labels_source == "class indices"
    assert classifier.spec.resize == "stretch"
    pixels = np.arange(256, dtype=np.uint8).reshape(16, 16, 1).repeat(3, axis=2)
    np.testing.assert_array_equal(classifier.quantize_input(pixels)[0].astype(np.int64),
                                  pixels.astype(np.int64) + offset)
    answers = [classifier.classify(grey(level))[0].index for level in GREYS]
    assert answers == [BRIGHTNESS_LABELS.index(label) for label in GREYS.values()]


def test_float_input_without_metadata_is_guessed_with_a_one_line_notice(brightness, tmp_path: Path) -> None:
    classifier = Classifier(brightness["bare_float32"])
    assert classifier.input_rule.kind == GUESSED_UNIT_RANGE
    # The guess (pixel / 255) is not what this network expects: dark grey reads as mid.
    assert classifier.classify(grey(30))[0].index == BRIGHTNESS_LABELS.index("mid")
    photo = tmp_path / "dark.png"
    from PIL import Image

    Image.fromarray(grey(30)).save(photo)
    result = run("--model", brightness["bare_float32"], photo)
    assert result.exit_code == 0, result.output
    assert result.stderr.strip() == (f"note: {brightness['bare_float32']} carries no normalization metadata: "
                                     "guessing pixel / 255 (inputs in [0, 1]) for its float input; answers may "
                                     "be wrong if the model expects another range")
    assert Classifier(brightness["float32"]).notice is None


def test_labels_option_serves_a_model_without_labels_only(brightness, tmp_path: Path) -> None:
    labels = tmp_path / "labels.txt"
    labels.write_text("black\ngrey\nwhite\n")
    assert Classifier(brightness["bare_uint8"], labels_path=labels).labels == ["black", "grey", "white"]
    assert Classifier(brightness["uint8"], labels_path=labels).labels == BRIGHTNESS_LABELS


# --- precedence: our own spec first ------------------------------------------------------------------

def test_our_embedded_spec_wins_over_the_official_normalization(brightness, tmp_path: Path) -> None:
    """Official metadata that says x / 255 (wrong here) and our spec that says [-1, 1] (right)."""
    wrong = Normalization(mean=(0.0,), std=(255.0,))
    ours = PreprocessSpec(height=SIDE, width=SIDE, scale=1.0 / 127.5, offset=-1.0, resize="stretch")
    both = embed_metadata(official_only(brightness["bare_float32"].read_bytes(), wrong, ["x", "y", "z"]),
                          ModelMetadata(labels=BRIGHTNESS_LABELS, preprocess=ours))
    path = tmp_path / "both.tflite"
    path.write_bytes(both)
    classifier = Classifier(path)
    assert classifier.input_rule.kind == EMBEDDED and classifier.labels_source == "embedded"
    assert [classifier.classify(grey(level))[0].label for level in GREYS] == list(GREYS.values())


# --- --info -------------------------------------------------------------------------------------------

def test_info_says_where_labels_and_normalization_came_from(brightness) -> None:
    lines = dict(line.split(":", 1) for line in run("--info", brightness["uint8"]).stdout.splitlines())
    assert lines["labels"].strip() == f"3 (TFLite metadata, {LABELS_FILE}): dark | mid | bright"
    assert lines["input values"].strip() == ("the pixel itself (MediaPipe's rule for uint8 inputs; the TFLite "
                                             "metadata's (pixel - 127.5) / 127.5 is what the input's scale and "
                                             "zero point stand for)")
    assert lines["preprocess"].strip() == f"{SIDE}x{SIDE} RGB, stretch, fixed_point_bilinear"
    assert lines["metadata"].strip() == ("official TFLite metadata 'brightness' version 7, mean 127.5, std 127.5, "
                                         f"RGB, labels {LABELS_FILE}")

    bare = dict(line.split(":", 1) for line in run("--info", brightness["bare_int8"]).stdout.splitlines())
    assert bare["input values"].strip() == ("pixel - 128 (no normalization metadata: the TFLite convention "
                                            "for int8 inputs)")
    assert bare["metadata"].strip() == "no official TFLite metadata"
    facts = json.loads(run("--info", brightness["float32"], "--json").stdout)
    assert facts["normalization"] == {"rule": "(pixel - 127.5) / 127.5", "guessed": False,
                                      "source": "TFLite metadata NormalizationOptions"}
    assert facts["tflite_metadata"]["labels_file"] == LABELS_FILE


# --- the writer's flatbuffer, read back -------------------------------------------------------------

def test_written_metadata_reads_back_through_the_official_schema() -> None:
    description = ModelDescription(name="n", description="d", version="sha256:0123", labels=["a", "b"],
                                   width=32, height=24, normalization=spec_normalization(PreprocessSpec()))
    raw = metadata_flatbuffer(description)
    assert raw[4:8] == b"M001"
    files = {"labels.txt": b"a\nb\n"}
    official = parse_metadata(raw, files.__getitem__)
    assert (official.name, official.description, official.version) == ("n", "d", "sha256:0123")
    assert (official.author, official.min_parser_version) == ("edge-image-toolkit", "1.0.0")
    assert official.normalization == Normalization(mean=(0.0,), std=(255.0,))
    assert official.color_space == "RGB"
    assert (official.labels, official.labels_file) == (["a", "b"], "labels.txt")
    assert official.output_range == (0.0, 1.0)
    assert official.score_calibration is None
    assert set(official.associated_files) == {"labels.txt", "preprocess.json", "model_info.json"}


def test_spec_scaling_becomes_mean_and_std() -> None:
    assert spec_normalization(PreprocessSpec()) == Normalization(mean=(0.0,), std=(255.0,))
    mobilenet_like = spec_normalization(PreprocessSpec(scale=1 / 127.5, offset=-1.0))
    np.testing.assert_allclose(mobilenet_like.mean + mobilenet_like.std, MOBILENET.mean + MOBILENET.std)
    assert MOBILENET.describe() == "(pixel - 127.5) / 127.5"
    assert Normalization(mean=(123.7, 116.3, 103.5), std=(58.4, 57.1, 57.4)).describe() == (
        "(pixel - [123.7, 116.3, 103.5]) / [58.4, 57.1, 57.4]")
    with pytest.raises(ValueError, match="contains zero"):
        Normalization(mean=(0.0,), std=(0.0,)).validate()
    with pytest.raises(ValueError, match="has 2 values for 3 channels"):
        Normalization(mean=(0.0, 1.0), std=(1.0,)).validate()


def test_per_channel_normalization_is_applied_per_channel() -> None:
    normalization = Normalization(mean=(10.0, 20.0, 30.0), std=(1.0, 2.0, 5.0))
    values = normalization.apply(np.full((2, 2, 3), 40, dtype=np.uint8))
    np.testing.assert_allclose(values[0, 0], [30.0, 10.0, 2.0])


# --- score calibration -------------------------------------------------------------------------------

def test_score_calibration_follows_the_sigmoid_rule() -> None:
    calibration = ScoreCalibration(
        transformation="log", default_score=0.2, file_name="calibration.txt",
        parameters=(SigmoidParameters(scale=1.0, slope=2.0, offset=1.0),
                    None,
                    SigmoidParameters(scale=0.5, slope=1.0, offset=0.0, min_score=0.3)))
    calibrated = calibration.apply(np.array([0.5, 0.9, 0.25], dtype=np.float32))
    expected_first = 1.0 / (1.0 + np.exp(-(2.0 * np.log(0.5) + 1.0)))
    # Second class has no parameters; the third is below its min score: both take the default.
    np.testing.assert_allclose(calibrated, [expected_first, 0.2, 0.2], rtol=MAX_SCORE_ERROR)
    inverse = ScoreCalibration("inverse_logistic", 0.0, (SigmoidParameters(1.0, 1.0, 0.0),), "c.txt")
    np.testing.assert_allclose(inverse.apply(np.array([0.8])), [0.8], rtol=MAX_SCORE_ERROR)


def test_score_calibration_is_read_and_applied_to_the_scores(brightness, tmp_path: Path) -> None:
    from edge_runtime.model_file import metadata_schema_generated as schema

    raw = bytearray(metadata_flatbuffer(ModelDescription(
        name="b", description="", version="", labels=BRIGHTNESS_LABELS, width=SIDE, height=SIDE,
        normalization=MOBILENET, labels_file=LABELS_FILE)))
    metadata = schema.ModelMetadataT.InitFromPackedBuf(bytes(raw), 0)
    output = metadata.subgraphMetadata[0].outputTensorMetadata[0]
    unit = schema.ProcessUnitT()
    unit.optionsType = schema.ProcessUnitOptions.ScoreCalibrationOptions
    unit.options = schema.ScoreCalibrationOptionsT()
    unit.options.scoreTransformation = schema.ScoreTransformationType.IDENTITY
    unit.options.defaultScore = 0.25
    output.processUnits = [unit]
    calibration_file = schema.AssociatedFileT()
    calibration_file.name = "calibration.csv"
    calibration_file.type = schema.AssociatedFileType.TENSOR_AXIS_SCORE_CALIBRATION
    output.associatedFiles.append(calibration_file)
    import flatbuffers

    builder = flatbuffers.Builder(1024)
    builder.Finish(metadata.Pack(builder), file_identifier=b"M001")
    model = append_files(attach_metadata_buffer(brightness["bare_float32"].read_bytes(), bytes(builder.Output())),
                         {LABELS_FILE: b"dark\nmid\nbright\n", "calibration.csv": b"1.0,10.0,-5.0\n\n0.5,1.0,0.0\n"})
    path = tmp_path / "calibrated.tflite"
    path.write_bytes(model)
    classifier = Classifier(path)
    # A dark grey: raw scores about (1, 0, 0); calibrated: sigmoid(10 - 5), the default, 0.5 * sigmoid(0).
    np.testing.assert_allclose(classifier.scores(grey(30)), [1.0 / (1.0 + np.exp(-5.0)), 0.25, 0.25], atol=1e-4)
    assert "score calibration (identity)" in run("--info", path).stdout


# --- damaged metadata: one line ------------------------------------------------------------------------

def _metadata_span(model: bytes) -> tuple[int, int]:
    """Where the official metadata buffer lies in a model file (it starts 4 bytes before 'M001')."""
    start = model.index(b"M001") - 4
    raw = metadata_buffer(model)
    assert model[start:start + len(raw)] == raw
    return start, start + len(raw)


def _one_line_error(result) -> str:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    return lines[0]


def test_damaged_metadata_is_one_line_not_a_traceback(brightness, tmp_path: Path) -> None:
    model = brightness["uint8"].read_bytes()
    start, _ = _metadata_span(model)
    damaged = bytearray(model)
    damaged[start:start + 4] = (0x7FFFFFF0).to_bytes(4, "little")  # the root table far past the buffer
    path = tmp_path / "damaged.tflite"
    path.write_bytes(bytes(damaged))
    line = _one_line_error(run("--model", path, "--info"))
    assert line.startswith(f"Error: {path}: the TFLite metadata is damaged (")

    unlabelled = append_files(official_only(brightness["bare_uint8"].read_bytes()), {"other.txt": b"x\n"})
    path.write_bytes(unlabelled)
    assert _one_line_error(run("--info", path)) == (
        f"Error: {path}: the TFLite metadata names '{LABELS_FILE}', which the model's archive does not contain")

    wrong_identifier = bytearray(model)
    wrong_identifier[start + 4:start + 8] = b"XXXX"
    path.write_bytes(bytes(wrong_identifier))
    assert _one_line_error(run("--info", path)) == (
        f"Error: {path}: the TFLite metadata is damaged (its buffer lacks the 'M001' identifier)")


def test_every_single_byte_damage_is_read_or_refused_as_model_error(brightness) -> None:
    """Whatever one byte of the metadata becomes, reading it never raises anything but ModelError."""
    model = brightness["uint8"].read_bytes()
    start, end = _metadata_span(model)
    outcomes = {"read": 0, "refused": 0}
    for position in range(start, end):
        damaged = bytearray(model)
        damaged[position] ^= 0xFF
        try:
            read_official_metadata(bytes(damaged), "damaged")
            outcomes["read"] += 1
        except ModelError as error:
            assert str(error).startswith("damaged: the TFLite metadata"), error
            assert "\n" not in str(error)
            outcomes["refused"] += 1
    assert outcomes["refused"] > 0 and sum(outcomes.values()) == end - start


# --- staying light ---------------------------------------------------------------------------------------

PROBE = """
import json, sys
from edge_runtime.cli import main
try:
    main({args!r}, prog_name="edge-classify")
except SystemExit as stop:
    assert stop.code == 0, stop.code
print(json.dumps(sorted(m for m in ("tensorflow", "keras", "cv2", "tflite", "mediapipe") if m in sys.modules)))
"""


def modules_loaded_by(args: list[str]) -> list[str]:
    result = subprocess.run([sys.executable, "-c", PROBE.format(args=args)], capture_output=True, text=True,
                            timeout=60, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_our_models_never_load_the_model_schema_and_others_load_no_tensorflow(brightness, tmp_path: Path) -> None:
    from PIL import Image

    photo = tmp_path / "grey.png"
    Image.fromarray(grey(128)).save(photo)
    ours = tmp_path / "ours.tflite"
    ours.write_bytes(embed_metadata(brightness["bare_float32"].read_bytes(),
                                    ModelMetadata(labels=BRIGHTNESS_LABELS, preprocess=PreprocessSpec(
                                        height=SIDE, width=SIDE))))
    assert modules_loaded_by(["--model", str(ours), str(photo)]) == []
    # The official metadata is read through edge_runtime.model_file.flatbuffer_check: no model schema package either.
    assert modules_loaded_by(["--model", str(brightness["uint8"]), str(photo)]) == []
    assert modules_loaded_by(["--model", str(brightness["bare_uint8"]), str(photo)]) == []


# --- --normalization overrides -------------------------------------------------------------------------

def test_normalization_option_overrides_the_guess(brightness, tmp_path: Path) -> None:
    from PIL import Image

    photo = tmp_path / "dark.png"
    Image.fromarray(grey(30)).save(photo)
    result = run("--model", brightness["bare_float32"], "--normalization", "127.5,127.5", "--json", photo)
    assert result.exit_code == 0, result.output
    assert result.stderr == ""  # nothing guessed any more
    assert json.loads(result.stdout)["label"] == str(BRIGHTNESS_LABELS.index("dark"))
    info = dict(line.split(":", 1) for line in run("--info", brightness["uint8"], "--normalization",
                                                   "0,0,0,255,255,255").stdout.splitlines())
    assert info["input values"].strip() == ("(pixel - 0) / 255, then the input's scale and zero point "
                                            "(--normalization)")


@pytest.mark.parametrize("value, message", [
    ("127.5", "'127.5' has 1 numbers: give MEAN,STD or three means and three stds"),
    ("a,b", "'a,b' is not numbers: give MEAN,STD (e.g. 127.5,127.5)"),
    ("0,0", "normalization std [0.0] contains zero"),
])
def test_bad_normalization_is_a_usage_error(brightness, value: str, message: str) -> None:
    result = run("--model", brightness["uint8"], "--normalization", value, "x.png")
    assert result.exit_code == 2
    assert result.output.strip().splitlines()[-1] == f"Error: Invalid value for '--normalization': {message}"


def test_normalization_does_not_apply_to_benchmark(brightness) -> None:
    result = run("--benchmark", brightness["uint8"], "--normalization", "0,1")
    assert result.exit_code == 2
    assert "--normalization only applies to classifying and --info" in result.output
