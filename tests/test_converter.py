"""edge-convert: parity of float32 and int8 TFLite with Keras, embedded metadata, calibration, errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

pytest.register_assert_rewrite("converter_fixtures")
from converter_fixtures import CALIBRATION_SIZE, MIN_TRAINED_ACCURACY, SEED, Converted, TrainedModel  # noqa: E402
from synthetic import CLASS_NAMES  # noqa: E402

pytest_plugins = ("converter_fixtures",)
pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parent.parent
FLOAT32_MAX_PROBABILITY_DIFFERENCE = 1e-4
INT8_MIN_AGREEMENT = 0.95
INT8_MAX_DROP_POINTS = 2.0
INT8_MAX_SIZE_RATIO = 0.27
PIXEL_SCALE = 255.0


@pytest.fixture(scope="module")
def keras_test_probabilities(trained_model: TrainedModel) -> np.ndarray:
    from converter.source_model import load_keras_model
    from edge_runtime.preprocess import scale_pixels

    model = load_keras_model(trained_model.model_path)
    return model.predict(scale_pixels(trained_model.dataset.test_images), verbose=0)


def runtime_test_probabilities(model_path: Path, test_paths: list[str]) -> np.ndarray:
    """Every test file through the device path: Classifier.load, then Classifier.scores."""
    from edge_runtime.classify import Classifier

    classifier = Classifier(model_path, threads=1)
    return np.stack([classifier.scores(classifier.load(path)) for path in test_paths])


def test_fixture_model_learned_far_above_chance(trained_model: TrainedModel) -> None:
    assert trained_model.keras_test_accuracy >= MIN_TRAINED_ACCURACY


def test_float32_agrees_with_keras_on_every_test_image(converted: Converted,
                                                      keras_test_probabilities: np.ndarray) -> None:
    dataset = converted.trained.dataset
    probabilities = runtime_test_probabilities(converted.float32, dataset.test_paths)
    assert probabilities.shape == keras_test_probabilities.shape
    assert np.array_equal(probabilities.argmax(axis=1), keras_test_probabilities.argmax(axis=1))
    assert np.abs(probabilities - keras_test_probabilities).max() < FLOAT32_MAX_PROBABILITY_DIFFERENCE


def test_int8_agrees_with_keras_and_loses_at_most_two_points(converted: Converted,
                                                             keras_test_probabilities: np.ndarray) -> None:
    dataset = converted.trained.dataset
    probabilities = runtime_test_probabilities(converted.int8, dataset.test_paths)
    int8_top1, keras_top1 = probabilities.argmax(axis=1), keras_test_probabilities.argmax(axis=1)
    agreement = np.mean(int8_top1 == keras_top1)
    drop_points = 100.0 * (np.mean(keras_top1 == dataset.test_labels) - np.mean(int8_top1 == dataset.test_labels))
    assert agreement >= INT8_MIN_AGREEMENT
    assert drop_points <= INT8_MAX_DROP_POINTS


def test_int8_is_full_integer_with_int8_input_and_output(converted: Converted) -> None:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(converted.int8))
    interpreter.allocate_tensors()
    assert interpreter.get_input_details()[0]["dtype"] == np.int8
    assert interpreter.get_output_details()[0]["dtype"] == np.int8
    # Full-integer: no float tensor anywhere (int32 is the biases' type).
    tensor_types = {np.dtype(tensor["dtype"]).name for tensor in interpreter.get_tensor_details()}
    assert tensor_types <= {"int8", "int32"}, tensor_types


@pytest.mark.filterwarnings("ignore:.*tf.lite.Interpreter is deprecated:UserWarning")
@pytest.mark.parametrize("variant", ["float32", "int8"])
def test_files_with_metadata_load_in_tensorflows_interpreter_too(converted: Converted, variant: str) -> None:
    """The appended archive is invisible to interpreters: TensorFlow's gives the runtime's exact scores."""
    import tensorflow as tf

    from edge_runtime.classify import Classifier

    path = converted.out / f"model_{variant}.tflite"
    classifier = Classifier(path, threads=1, backend="ai_edge_litert")
    pixels = classifier.load(converted.trained.dataset.test_paths[0])
    interpreter = tf.lite.Interpreter(model_path=str(path), num_threads=1)
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], classifier.quantize_input(pixels))
    interpreter.invoke()
    raw = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])[0]
    scores = classifier.scores(pixels)
    assert raw.shape == scores.shape == (len(CLASS_NAMES),)
    assert int(raw.argmax()) == int(scores.argmax())
    if variant == "float32":
        assert np.allclose(raw, scores, atol=1e-6)


def test_int8_file_is_at_most_27_percent_of_float32(converted: Converted) -> None:
    ratio = converted.int8.stat().st_size / converted.float32.stat().st_size
    assert ratio <= INT8_MAX_SIZE_RATIO


def test_manifest_lists_both_files_and_the_smoke_image_with_size_and_sha256(converted: Converted) -> None:
    from edge_runtime.model_file.manifest import read_manifest, sha256_file, verify_file

    manifest = read_manifest(converted.out / "manifest.json")
    smoke_image = converted.out / manifest["smoke_test"]["image"]
    assert sorted(manifest["files"]) == sorted(["model_float32.tflite", "model_int8.tflite", smoke_image.name])
    for path in (converted.float32, converted.int8, smoke_image):
        entry = manifest["files"][path.name]
        assert entry == {"size": path.stat().st_size, "sha256": sha256_file(path)}
        assert verify_file(path).ok
    assert manifest["source_model_sha256"] == sha256_file(converted.trained.model_path)
    assert manifest["calibration"]["count"] == CALIBRATION_SIZE
    assert manifest["calibration"]["seed"] == SEED
    assert not list(converted.out.glob(".*.tmp*")), "a temporary file was left behind"


READ_WITHOUT_TENSORFLOW = textwrap.dedent("""
    import importlib.abc, json, sys

    class BlockTensorFlow(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("tensorflow", "keras", "tf_keras"):
                raise ImportError(f"{name} is blocked in this test")
            return None

    sys.meta_path.insert(0, BlockTensorFlow())
    from edge_runtime.classify import Classifier
    from edge_runtime.model_file.metadata import read_metadata

    model_path, image_path = sys.argv[1], sys.argv[2]
    metadata = read_metadata(model_path)
    classifier = Classifier(model_path, threads=1)
    top = classifier.classify(classifier.load(image_path))[0]
    print(json.dumps({
        "labels": metadata.labels,
        "preprocess": metadata.preprocess.to_dict(),
        "info": metadata.info,
        "backend": classifier.backend,
        "top_index": top.index,
        "top_label": top.label,
        "heavy_modules": sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras")),
    }))
""")


@pytest.mark.parametrize("variant", ["float32", "int8"])
def test_labels_and_preprocessing_read_back_without_tensorflow(converted: Converted, variant: str,
                                                               keras_test_probabilities: np.ndarray) -> None:
    from edge_runtime.preprocess import DEFAULT_SPEC

    model_path = converted.out / f"model_{variant}.tflite"
    image_path = converted.trained.dataset.test_paths[0]
    completed = subprocess.run([sys.executable, "-c", READ_WITHOUT_TENSORFLOW, str(model_path), image_path],
                               cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
                               env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    assert completed.returncode == 0, completed.stderr
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    assert result["heavy_modules"] == []
    assert result["labels"] == list(CLASS_NAMES)
    assert result["preprocess"] == DEFAULT_SPEC.to_dict()
    assert result["info"]["variant"] == variant
    assert result["backend"] == "ai_edge_litert"
    assert result["top_index"] == int(keras_test_probabilities[0].argmax())
    assert result["top_label"] == CLASS_NAMES[result["top_index"]]


def _pixel_keys(images: np.ndarray) -> set[bytes]:
    return {image.tobytes() for image in np.asarray(images, dtype=np.uint8)}


def test_calibration_sees_training_images_only(converted: Converted) -> None:
    from converter.calibration import calibration_indices
    from edge_runtime.preprocess import scale_pixels

    dataset = converted.trained.dataset
    train_keys, test_keys = _pixel_keys(dataset.train_images), _pixel_keys(dataset.test_images)
    assert not train_keys & test_keys, "precondition: every test image must be distinguishable from training"
    calibration = converted.calibration
    assert calibration.shape == (CALIBRATION_SIZE, 32, 32, 3)
    assert calibration.dtype == np.float32
    # What the converter was fed is exactly the training preprocessing of seeded training images...
    indices = calibration_indices(len(dataset.train_images), CALIBRATION_SIZE, SEED)
    assert np.array_equal(calibration, scale_pixels(dataset.train_images[indices]))
    # ...so turning it back into pixels finds every image in the training set and none in the test set.
    pixels = np.rint(calibration * PIXEL_SCALE).astype(np.uint8)
    fed = _pixel_keys(pixels)
    assert len(fed) == CALIBRATION_SIZE
    assert fed <= train_keys
    assert not fed & test_keys


def test_calibration_indices_are_seeded_distinct_and_bounded() -> None:
    from converter.calibration import calibration_indices

    first = calibration_indices(1000, 500, seed=3)
    assert np.array_equal(first, calibration_indices(1000, 500, seed=3))
    assert not np.array_equal(first, calibration_indices(1000, 500, seed=4))
    assert len(np.unique(first)) == 500 and first.min() >= 0 and first.max() < 1000
    assert np.array_equal(calibration_indices(40, 500, seed=3), np.arange(40))


@pytest.mark.parametrize("num_train,size,message", [
    (100, 0, "empty calibration set: the calibration size is 0; int8 needs at least one training image"),
    (0, 500, "empty calibration set: the data set has no training images"),
])
def test_empty_calibration_set_is_refused(num_train: int, size: int, message: str) -> None:
    from converter.calibration import calibration_indices
    from edge_runtime.errors import DataError

    with pytest.raises(DataError) as caught:
        calibration_indices(num_train, size, seed=0)
    assert str(caught.value) == message


def test_parse_variants_orders_and_validates() -> None:
    from converter.variants import parse_variants

    assert parse_variants("int8, float32,int8") == ("float32", "int8")
    assert parse_variants(["float16", "dynamic", "int8", "float32"]) == ("float32", "int8", "dynamic", "float16")
    with pytest.raises(ValueError, match="unknown variant int4; choose from float32, int8, uint8, dynamic, float16"):
        parse_variants("float32,int4")


# --- the command line -------------------------------------------------------------------------------

def _convert(args: list[str]):
    from converter.cli import main

    return CliRunner().invoke(main, args)


def _one_line_error(result) -> str:
    assert "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    return lines[-1]


def test_cli_missing_keras_file_says_to_train_first(tmp_path: Path) -> None:
    missing = tmp_path / "nothing.keras"
    result = _convert(["--model", str(missing), "--out", str(tmp_path / "out")])
    assert result.exit_code == 1
    assert _one_line_error(result) == (f"Error: {missing}: no such file; train a model first "
                                       f"(make train OUT={tmp_path}, or edge-train --out {tmp_path})")
    assert not (tmp_path / "out").exists()


def test_cli_default_model_missing_names_make_train(tmp_path: Path) -> None:
    """What `make convert` prints in a fresh checkout: the whole message, on one line."""
    from converter.cli import main

    runner = CliRunner()
    with runner.isolated_filesystem(temp_dir=tmp_path):
        result = runner.invoke(main, [])
    assert result.exit_code == 1
    assert result.output == ("Loading artifacts/model.keras\n"
                             "Error: artifacts/model.keras: no such file; train a model first "
                             "(make train, or edge-train --out artifacts)\n")


def test_cli_corrupt_keras_file(tmp_path: Path) -> None:
    corrupt = tmp_path / "model.keras"
    corrupt.write_bytes(b"this is not a zip archive" * 40)
    result = _convert(["--model", str(corrupt)])
    assert result.exit_code == 1
    assert _one_line_error(result) == (f"Error: {corrupt}: not a Keras model "
                                       "(the file is damaged or not a .keras archive)")


def test_cli_keras_archive_without_a_model(tmp_path: Path) -> None:
    archive = tmp_path / "model.keras"
    with zipfile.ZipFile(archive, "w") as handle:
        handle.writestr("notes.txt", "no model here")
    result = _convert(["--model", str(archive)])
    assert result.exit_code == 1
    assert _one_line_error(result).startswith(f"Error: {archive}: cannot load the Keras model (")
    assert "config.json" in _one_line_error(result)


def test_cli_label_count_must_match_model_outputs(trained_model: TrainedModel, tmp_path: Path) -> None:
    labels = tmp_path / "labels.txt"
    labels.write_text("circle\ncross\nstripes\n", encoding="utf-8")
    result = _convert(["--model", str(trained_model.model_path), "--labels", str(labels),
                       "--out", str(tmp_path / "out")])
    assert result.exit_code == 1
    assert _one_line_error(result) == (f"Error: {labels}: 3 labels for a model with 4 outputs "
                                       "(the model and labels.txt come from different trainings?)")
    assert not (tmp_path / "out").exists()


def test_cli_calibration_size_zero_is_an_empty_calibration_set(trained_model: TrainedModel, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = _convert(["--model", str(trained_model.model_path), "--calibration-size", "0", "--out", str(out)])
    assert result.exit_code == 1
    assert _one_line_error(result) == ("Error: empty calibration set: the calibration size is 0; "
                                       "int8 needs at least one training image")
    assert not out.exists()


def test_cli_data_set_without_training_images(trained_model: TrainedModel, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import dataclasses

    import converter.cli as cli

    dataset = trained_model.dataset
    no_training = dataclasses.replace(dataset, train_images=dataset.train_images[:0],
                                      train_labels=dataset.train_labels[:0], train_paths=[])
    monkeypatch.setattr(cli, "load_data", lambda choice, **options: no_training)
    out = tmp_path / "out"
    result = _convert(["--model", str(trained_model.model_path), "--out", str(out)])
    assert result.exit_code == 1
    assert _one_line_error(result) == "Error: empty calibration set: the data set has no training images"
    assert not out.exists() or not list(out.glob("*.tflite"))


@pytest.mark.parametrize("under_make, knob", [(False, "--data PATH"), (True, "DATA=PATH")])
def test_cli_needs_data_when_there_is_no_training_json(trained_model: TrainedModel, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch, under_make: bool,
                                                       knob: str) -> None:
    from trainer.invocation import MAKE_ENV

    if under_make:
        monkeypatch.setenv(MAKE_ENV, "1")
    else:
        monkeypatch.delenv(MAKE_ENV, raising=False)
    folder = tmp_path / "bare"
    folder.mkdir()
    shutil.copy(trained_model.model_path, folder / "model.keras")
    shutil.copy(trained_model.labels_path, folder / "labels.txt")
    result = _convert(["--model", str(folder / "model.keras")])
    assert result.exit_code == 1
    assert _one_line_error(result) == (f"Error: no data set given and no training.json beside "
                                       f"{folder / 'model.keras'} to say which data the model was trained on "
                                       f"(pass {knob})")


def test_cli_unknown_variant_is_a_usage_error(tmp_path: Path) -> None:
    result = _convert(["--model", str(tmp_path / "model.keras"), "--variants", "float32,int4"])
    assert result.exit_code == 2
    assert "Invalid value for '--variants': unknown variant int4" in result.output


def test_cli_same_seed_gives_the_same_int8_file_in_a_new_process(converted: Converted, tmp_path: Path) -> None:
    """The command, run as its own process with training.json's data and seed, rebuilds the identical file."""
    from edge_runtime.model_file.manifest import read_manifest, sha256_file

    out = tmp_path / "again"
    completed = subprocess.run(
        [sys.executable, "-m", "converter.cli", "--model", str(converted.trained.model_path),
         "--calibration-size", str(CALIBRATION_SIZE), "--variants", "int8", "--out", str(out)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert completed.returncode == 0, completed.stderr
    assert sha256_file(out / "model_int8.tflite") == sha256_file(converted.int8)
    assert read_manifest(out / "manifest.json")["files"]["model_int8.tflite"]["sha256"] == sha256_file(converted.int8)
    # Progress goes to stderr, and names the step and the size; stdout stays clean.
    assert f"Calibration: {CALIBRATION_SIZE} of {converted.trained.dataset.train_count} training images, seed {SEED}" \
        in completed.stderr
    assert "Converting int8" in completed.stderr
    # Calibration needs the drawn training images only: test/ and the rest of train/ are not even decoded,
    # and the file above is still the same bytes as from the whole decoded split.
    train_count = converted.trained.dataset.train_count
    assert (f"loading {min(CALIBRATION_SIZE, train_count):,} images from {converted.trained.data_root} (train/) "
            f"(picked from {train_count:,} in train/)" in completed.stderr.splitlines())
    assert "Wrote" in completed.stderr and "KiB" in completed.stderr
    assert completed.stdout == ""
    # One of the drawn files rides along as the smoke-test image, and the int8 file labels it as listed.
    from edge_runtime.classify import Classifier

    smoke = read_manifest(out / "manifest.json")["smoke_test"]
    assert f"Wrote {out / smoke['image']} (smoke-test image: {smoke['label']}, from " in completed.stderr
    assert read_manifest(out / "manifest.json")["files"][smoke["image"]]["sha256"] == sha256_file(out / smoke["image"])
    classifier = Classifier(out / "model_int8.tflite", threads=1)
    assert classifier.classify(classifier.load(out / smoke["image"]))[0].label == smoke["label"]


def test_cli_calibration_never_draws_a_test_image_of_a_split_tree(trained_model: TrainedModel, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """One class-folder tree split by seed in training: a different --seed for calibration still
    splits as training did (training.json's seed and fraction), and calibration draws from train only."""
    import keras

    import converter.tflite_export as tflite_export
    from converter_fixtures import write_trainer_outputs
    from synthetic import write_image_folder
    from trainer.progress import Progress
    from trainer.sources import load_dataset

    tree = write_image_folder(tmp_path / "tree", per_class=25, seed=5)
    test_fraction = 0.4
    dataset = load_dataset(tree, seed=SEED, test_fraction=test_fraction, progress=Progress(quiet=True))
    folder = tmp_path / "artifacts"
    model = keras.models.load_model(trained_model.model_path)
    write_trainer_outputs(folder, model, dataset, {"loss": [1.0], "accuracy": [0.5]}, tree, SEED,
                          test_accuracy=0.5, test_fraction=test_fraction)
    recorded: list[np.ndarray] = []
    original = tflite_export.representative_dataset

    def recording(calibration: np.ndarray):
        recorded.append(np.array(calibration, copy=True))
        return original(calibration)

    monkeypatch.setattr(tflite_export, "representative_dataset", recording)
    result = _convert(["--model", str(folder / "model.keras"), "--variants", "int8", "--seed", str(SEED + 1),
                       "--calibration-size", "1000", "--quiet"])
    assert result.exit_code == 0, result.output
    train_keys, test_keys = _pixel_keys(dataset.train_images), _pixel_keys(dataset.test_images)
    assert len(test_keys) == 40 and not train_keys & test_keys
    fed = _pixel_keys(np.rint(np.concatenate(recorded) * PIXEL_SCALE).astype(np.uint8))
    # More asked for than there are: every training image, and not one of training's test images.
    assert fed == train_keys
    assert not fed & test_keys


def test_importing_the_commands_loads_neither_tensorflow_nor_matplotlib() -> None:
    """`edge-convert --help` and `edge-report --help` stay instant: heavy imports happen inside functions."""
    code = ("import sys, converter.cli, converter.convert, converter.report, converter.report_render; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras', 'matplotlib')))")
    completed = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True,
                               timeout=60, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == "[]"


@pytest.mark.slow
def test_optional_variants_convert_and_agree_with_keras(converted: Converted, keras_test_probabilities: np.ndarray,
                                                        tmp_path: Path) -> None:
    """dynamic (int8 weights, float activations) and float16 (half-size weights): smaller files, same answers."""
    from converter.convert import convert_model
    from edge_runtime.model_file.metadata import read_metadata

    result = convert_model(converted.trained.model_path, tmp_path, variants=("dynamic", "float16"))
    float32_size = converted.float32.stat().st_size
    test_paths = converted.trained.dataset.test_paths
    keras_top1 = keras_test_probabilities.argmax(axis=1)
    for variant, max_size_ratio in (("dynamic", 0.3), ("float16", 0.55)):
        path = result.model(variant).path
        assert path == tmp_path / f"model_{variant}.tflite"
        assert path.stat().st_size <= max_size_ratio * float32_size
        assert read_metadata(path).labels == list(CLASS_NAMES)
        top1 = runtime_test_probabilities(path, test_paths).argmax(axis=1)
        assert np.mean(top1 == keras_top1) >= INT8_MIN_AGREEMENT
