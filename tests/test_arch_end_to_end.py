"""Every network end to end on tiny data: train, convert (float32 + int8), report, and `edge-classify` with
the network's own preprocessing embedded; no augmentation in what is exported."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import converter.cli as converter_cli
import edge_runtime.cli as runtime_cli
from edge_runtime.model_file.metadata import read_metadata
from edge_runtime.preprocess import PreprocessSpec, load_image, scale_pixels
from synthetic import write_split_dataset
from trainer.config import TrainConfig
from trainer.models import ARCHS
from trainer.progress import Progress
from trainer.train import train

pytestmark = pytest.mark.slow

# mobilenetv2 at a small size keeps the test fast; resnet8 at its own 32.
IMAGE_SIZES = {"resnet8": 32, "mobilenetv2": 32}
EPOCHS, BATCH = 2, 16
PROBABILITY_TOLERANCE = 1e-4  # float32 TFLite against Keras on the same input
WEIGHTS_SEED = 123  # the written backbone weights differ from what the run's seed would initialise


def write_backbone_weights(path: Path, image_size: int) -> list[np.ndarray]:
    """A MobileNetV2 (alpha 0.35) backbone weights file, as Keras writes one; returns its weights."""
    import keras

    keras.utils.set_random_seed(WEIGHTS_SEED)
    backbone = keras.applications.MobileNetV2(input_shape=(image_size, image_size, 3), alpha=0.35,
                                              include_top=False, weights=None, pooling="avg")
    backbone.save_weights(path)
    return [weight.copy() for weight in backbone.get_weights()]


class BackboneRecorder:
    """A Keras callback keeping the backbone's weights and trainability at the end of every epoch."""

    def __new__(cls, epochs: list):
        import keras

        class Recorder(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                backbone = self.model.get_layer("backbone")
                epochs.append((backbone.trainable, [weight.copy() for weight in backbone.get_weights()]))

        return Recorder()


@pytest.fixture(scope="module", params=sorted(IMAGE_SIZES))
def run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One network after train, convert and report, as `make train convert report` would do.

    mobilenetv2 starts from a weights file written here, frozen for the first of its two epochs.
    """
    arch = request.param
    data = write_split_dataset(tmp_path_factory.mktemp("data"), train_per_class=12, test_per_class=4)
    out = tmp_path_factory.mktemp(arch)
    options, callbacks, recorded, written = {}, [], [], None
    if arch == "mobilenetv2":
        weights = tmp_path_factory.mktemp("weights") / "backbone.weights.h5"
        written = write_backbone_weights(weights, IMAGE_SIZES[arch])
        options = {"weights": str(weights), "freeze_epochs": 1}
        callbacks = [BackboneRecorder(recorded)]
    train(TrainConfig(data=data, out=out, arch=arch, epochs=EPOCHS, batch_size=BATCH,
                      image_size=IMAGE_SIZES[arch], **options), Progress(quiet=True), callbacks=callbacks)
    runner = CliRunner()
    converted = runner.invoke(converter_cli.main, ["--model", str(out / "model.keras"), "-q"])
    assert converted.exit_code == 0, converted.output
    reported = runner.invoke(converter_cli.report_main, ["--out", str(out), "-q"])
    assert reported.exit_code == 0, reported.output
    return {"arch": arch, "out": out, "data": data, "written": written, "recorded": recorded}


def trained_spec(out: Path) -> PreprocessSpec:
    return PreprocessSpec.from_dict(json.loads((out / "training.json").read_text())["preprocess"])


def test_training_records_the_network_and_its_preprocessing(run) -> None:
    arch, out = run["arch"], run["out"]
    report = json.loads((out / "training.json").read_text())
    assert report["arch"]["name"] == arch and report["config"]["arch"] == arch
    assert report["arch"]["defaults"] == ARCHS[arch].defaults()
    settings = report["arch"]["settings"]
    assert (settings["epochs"], settings["batch_size"], settings["augment"]) == (EPOCHS, BATCH, True)
    assert settings["input_pipeline"] == "stream"
    assert trained_spec(out) == ARCHS[arch].spec(IMAGE_SIZES[arch])


@pytest.mark.parametrize("variant", ["float32", "int8"])
def test_each_file_carries_the_network_s_own_preprocessing(run, variant: str) -> None:
    out = run["out"]
    metadata = read_metadata(out / f"model_{variant}.tflite")
    assert metadata.preprocess == trained_spec(out)


def test_int8_input_is_calibrated_on_the_network_s_input_range(run) -> None:
    """Raw pixels (resnet8) span 255 and [-1, 1] (mobilenetv2) spans 2: the int8 input step follows."""
    from edge_runtime.interpreter import load_interpreter_class

    out = run["out"]
    spec = trained_spec(out)
    _, interpreter_class = load_interpreter_class()
    interpreter = interpreter_class(model_path=str(out / "model_int8.tflite"))
    scale, _ = interpreter.get_input_details()[0]["quantization"]
    assert scale == pytest.approx(255 * spec.scale / 255, rel=0.05)


def test_float32_agrees_with_keras_everywhere_and_int8_was_evaluated(run) -> None:
    out = run["out"]
    report = json.loads((out / "report.json").read_text())
    formats = {result["name"]: result for result in report["formats"]}
    assert formats["float32"]["agreement"] == 1.0
    assert formats["float32"]["max_abs_prob_diff"] < PROBABILITY_TOLERANCE
    assert 0.0 <= formats["int8"]["agreement"] <= 1.0 and formats["int8"]["size_bytes"] > 0
    assert report["notes"] == [] or all("decode differently" not in note for note in report["notes"])


def test_edge_classify_gives_keras_answer_with_the_embedded_preprocessing(run) -> None:
    import keras

    out, data = run["out"], run["data"]
    image = sorted((data / "test").rglob("*.png"))[0]
    spec = trained_spec(out)
    expected = keras.models.load_model(out / "model.keras").predict(
        scale_pixels(load_image(image, spec)[None], spec), verbose=0)[0]
    labels = (out / "labels.txt").read_text().split()
    result = CliRunner().invoke(runtime_cli.main, ["--model", str(out / "model_float32.tflite"), "--json",
                                                   "--top-k", str(len(labels)), str(image)])
    assert result.exit_code == 0, result.output
    answer = json.loads(result.stdout.splitlines()[0])
    assert answer["label"] == labels[int(np.argmax(expected))]
    scores = {entry["label"]: entry["score"] for entry in answer["top_k"]}
    for label, probability in zip(labels, expected):
        assert scores[label] == pytest.approx(float(probability), abs=PROBABILITY_TOLERANCE)


def test_no_augmentation_is_exported_and_outputs_are_deterministic(run) -> None:
    import keras

    from edge_runtime.classify import Classifier

    out, data = run["out"], run["data"]
    model = keras.models.load_model(out / "model.keras")
    layer_types = set()
    stack = list(model.layers)
    while stack:
        layer = stack.pop()
        layer_types.add(layer.__class__.__name__)
        stack.extend(getattr(layer, "layers", []))
    assert not [name for name in layer_types if name.startswith("Random") or "Augment" in name]
    spec = trained_spec(out)
    images = np.stack([load_image(path, spec) for path in sorted((data / "test").rglob("*.png"))[:4]])
    inputs = scale_pixels(images, spec)
    np.testing.assert_array_equal(model.predict(inputs, verbose=0), model.predict(inputs, verbose=0))
    from edge_runtime.interpreter import load_interpreter_class

    _, interpreter_class = load_interpreter_class()
    for variant in ("float32", "int8"):
        path = out / f"model_{variant}.tflite"
        ops = {op["op_name"] for op in interpreter_class(model_path=str(path))._get_ops_details()}
        assert not [op for op in ops if "RANDOM" in op.upper()], ops
        np.testing.assert_array_equal(Classifier(path).scores(images[0]), Classifier(path).scores(images[0]))


@pytest.mark.parametrize("run", ["mobilenetv2"], indirect=True)
def test_weights_file_is_loaded_frozen_first_then_fine_tuned(run) -> None:
    (frozen, after_first), (trainable, after_second) = run["recorded"]
    assert (frozen, trainable) == (False, True)
    for loaded, written in zip(after_first, run["written"]):
        np.testing.assert_array_equal(loaded, written)  # the file's weights, untouched by the frozen epoch
    changed = [not np.array_equal(now, written) for now, written in zip(after_second, run["written"])]
    assert sum(changed) > len(changed) // 4  # fine-tuning moved the convolutions
    phases = json.loads((run["out"] / "training.json").read_text())["arch"]["settings"]["phases"]
    assert phases == [{"epochs": [1, 1], "learning_rate": 1e-3, "backbone_trainable": False},
                      {"epochs": [2, 2], "learning_rate": pytest.approx(1e-4), "backbone_trainable": True}]


def test_a_file_that_is_not_backbone_weights_is_one_line(tmp_path: Path, split_dataset: Path) -> None:
    import trainer.cli as trainer_cli

    bogus = tmp_path / "notes.weights.h5"
    bogus.write_text("not weights\n")
    result = CliRunner().invoke(trainer_cli.main, ["--arch", "mobilenetv2", "--image-size", "32", "--weights",
                                                   str(bogus), "--data", str(split_dataset), "--out",
                                                   str(tmp_path / "out"), "--epochs", "1", "-q"])
    assert result.exit_code == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"Error: {bogus}: cannot load it as MobileNetV2 (alpha 0.35) backbone weights (")
    assert "Traceback" not in result.output
