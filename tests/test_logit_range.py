"""int8 logit range: the bounds rule, the clipped graph, and that the converter really uses them."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest_plugins = ("converter_fixtures",)

from converter.logit_range import BOUND_GRID, OUTPUT_STEP_MARGIN, logit_range  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
INT8_STEPS = 255
CONFIDENCE_FACTOR = 4.0


def test_range_starts_ln256_below_the_lowest_winner_and_ends_at_the_highest_logit() -> None:
    logits = np.array([[2.3, -30.0, 0.1],     # winner 2.3
                       [-1.1, -1.9, -40.0],   # winner -1.1: the lowest winner
                       [9.7, 12.34, 3.0]])    # 12.34: the highest logit
    bounds = logit_range(logits)
    assert bounds.lowest_winner == pytest.approx(-1.1)
    assert bounds.low == math.floor((-1.1 - math.log(256)) * BOUND_GRID) / BOUND_GRID == -6.75
    assert bounds.high == math.ceil(12.34 * BOUND_GRID) / BOUND_GRID == 12.375
    assert bounds.images == 3
    # Outward rounding keeps every calibration winner and its one-output-step neighbourhood inside.
    assert bounds.low <= bounds.lowest_winner - OUTPUT_STEP_MARGIN and bounds.high >= logits.max()


def test_last_bit_float_noise_gives_the_same_bounds() -> None:
    rng = np.random.default_rng(3)
    logits = rng.normal(0.0, 6.0, size=(200, 10))
    noisy = logits * (1.0 + rng.uniform(-1e-7, 1e-7, size=logits.shape))
    exact, perturbed = logit_range(logits), logit_range(noisy)
    assert perturbed.lowest_winner != exact.lowest_winner
    assert (perturbed.low, perturbed.high) == (exact.low, exact.high)


@pytest.mark.parametrize("shape", [(0, 10), (5, 1), (10,)])
def test_range_refuses_logits_it_cannot_rank(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="logit range needs"):
        logit_range(np.zeros(shape))


def test_only_a_dense_softmax_head_is_clipped() -> None:
    import keras

    from converter.logit_range import softmax_head
    from trainer.models.cnn import build_model

    recipe = build_model(num_classes=4, input_shape=(32, 32, 3))
    assert softmax_head(recipe) is recipe.layers[-1]
    inputs = keras.Input((8,))
    linear = keras.Model(inputs, keras.layers.Dense(3)(inputs))
    separate = keras.Model(inputs, keras.layers.Softmax()(keras.layers.Dense(3)(inputs)))
    assert softmax_head(linear) is None
    assert softmax_head(separate) is None


@pytest.mark.slow
def test_clipped_graph_is_softmax_of_the_clipped_logits(trained_model) -> None:
    from converter.source_model import load_keras_model
    from converter.int8_graph import int8_graph
    from converter.logit_range import LogitRange, calibration_logits
    from edge_runtime.preprocess import scale_pixels

    model = load_keras_model(trained_model.model_path)
    pixels = scale_pixels(trained_model.dataset.test_images)
    logits = calibration_logits(model, pixels)
    # The head's own arithmetic: softmax of these logits is what Keras predicts.
    keras_probabilities = model.predict(pixels, verbose=0)
    assert np.abs(_softmax(logits) - keras_probabilities).max() < 1e-5

    # A range that holds every logit changes nothing...
    wide = logit_range(logits)
    assert np.abs(int8_graph(model, wide, None).predict(pixels, verbose=0) - keras_probabilities).max() < 1e-5
    # ...and a narrow one saturates exactly as softmax(clip(logits)) says.
    middle = float(np.median(logits))
    narrow = LogitRange(low=middle - 1.0, high=middle + 1.0, lowest_winner=middle, images=len(logits))
    clipped = int8_graph(model, narrow, None).predict(pixels, verbose=0)
    assert np.abs(clipped - _softmax(np.clip(logits, narrow.low, narrow.high))).max() < 1e-5
    assert np.abs(clipped - keras_probabilities).max() > 0.1


@pytest.mark.slow
def test_int8_file_quantizes_its_logits_over_the_recorded_range(converted) -> None:
    """The logits tensor spans the calibration logits, cut to the recorded bounds (here they do not bind)."""
    from converter.source_model import load_keras_model
    from converter.logit_range import calibration_logits
    from edge_runtime.model_file.manifest import read_manifest

    recorded = read_manifest(converted.out / "manifest.json")["calibration"]["logit_range"]
    logits = calibration_logits(load_keras_model(converted.trained.model_path), converted.calibration)
    assert recorded["lowest_winning_logit"] == pytest.approx(logits.max(axis=1).min(), abs=1e-3)
    _assert_logits_quantized_over(converted.int8, max(recorded["low"], logits.min()),
                                  min(recorded["high"], logits.max()))


@pytest.mark.slow
def test_confident_model_gets_a_finer_logit_step_than_plain_minmax(trained_model, tmp_path: Path) -> None:
    """Scores spread wide (the head scaled up, as long training does): the clip binds and the step shrinks."""
    import keras

    from converter.calibration import calibration_batch
    from converter.convert import convert_model
    from converter.source_model import load_keras_model
    from converter.logit_range import calibration_logits
    from converter_fixtures import CALIBRATION_SIZE, SEED
    from edge_runtime.model_file.manifest import read_manifest

    model = load_keras_model(trained_model.model_path)
    head = model.layers[-1]
    head.kernel.assign(head.kernel.numpy() * CONFIDENCE_FACTOR)
    head.bias.assign(head.bias.numpy() * CONFIDENCE_FACTOR)
    model_path = tmp_path / "confident.keras"
    model.save(model_path)
    dataset = trained_model.dataset
    logits = calibration_logits(model, calibration_batch(dataset.train_images, CALIBRATION_SIZE, SEED))

    steps = {}
    for clip in (True, False):
        out = tmp_path / ("clipped" if clip else "plain")
        convert_model(model_path, out, labels_path=trained_model.labels_path, variants=("int8",),
                      train_images=dataset.train_images, calibration_size=CALIBRATION_SIZE, seed=SEED,
                      clip_logits=clip)
        recorded = read_manifest(out / "manifest.json")["calibration"]["logit_range"]
        low, high = (recorded["low"], min(recorded["high"], logits.max())) if clip else (logits.min(), logits.max())
        assert not clip or recorded["low"] > logits.min(), "the clip must bind for this test to mean anything"
        steps[clip] = _assert_logits_quantized_over(out / "model_int8.tflite", low, high)
        keras.backend.clear_session()
    assert steps[True] < steps[False] * 0.8


@pytest.mark.slow
def test_minmax_logits_option_records_plain_calibration(converted, tmp_path: Path) -> None:
    from edge_runtime.model_file.manifest import read_manifest

    out = tmp_path / "minmax"
    completed = subprocess.run(
        [sys.executable, "-m", "converter.cli", "--model", str(converted.trained.model_path),
         "--calibration-size", "100", "--variants", "int8", "--minmax-logits", "--out", str(out), "-q"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert completed.returncode == 0, completed.stderr
    assert read_manifest(out / "manifest.json")["calibration"]["logit_range"] == {
        "rule": "min/max of the calibration images"}
    assert "logit_range" in read_manifest(converted.out / "manifest.json")["calibration"]


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def _assert_logits_quantized_over(path: Path, low: float, high: float) -> float:
    """Assert the int8 logits tensor of `path` covers [low, high] in 255 steps; return the step."""
    step = (high - low) / INT8_STEPS
    scales = _logit_tensor_scales(path)
    matching = [(scale, zero_point) for scale, zero_point in scales if math.isclose(scale, step, rel_tol=1e-3)]
    assert matching, (scales, low, high)
    scale, zero_point = matching[0]
    assert (-128 - zero_point) * scale == pytest.approx(low, abs=scale)
    return scale


def _logit_tensor_scales(path: Path) -> list[tuple[float, int]]:
    """(scale, zero point) of the int8 [1, classes] tensors before the output: the logits and their clips."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    interpreter.allocate_tensors()
    output = interpreter.get_output_details()[0]
    return [tuple(detail["quantization"]) for detail in interpreter.get_tensor_details()
            if detail["dtype"] == np.int8 and list(detail["shape"]) == list(output["shape"])
            and detail["index"] != output["index"]]


@pytest.mark.slow
def test_info_shows_how_the_int8_file_was_calibrated(converted) -> None:
    from click.testing import CliRunner

    from edge_runtime.cli import main
    from edge_runtime.model_file.manifest import read_manifest

    recorded = read_manifest(converted.out / "manifest.json")["calibration"]
    result = CliRunner().invoke(main, ["--info", str(converted.int8)])
    assert result.exit_code == 0, result.output
    line = next(line for line in result.stdout.splitlines() if line.startswith("calibration:"))
    low, high = recorded["logit_range"]["low"], recorded["logit_range"]["high"]
    assert line.split(":", 1)[1].strip() == (
        f"{recorded['count']} train images, seed {recorded['seed']}; logits quantized from {low:g} up to at most "
        f"{high:g} (lowest winning logit - ln 256 to highest logit)")
