"""The int8 graph: which pools become a mean, that the float function is unchanged, and that the int8 file's
pooled features then get their own range (where TFLite's average pool must keep its input's)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

LABELS = ["cat", "dog", "ship"]
IMAGES, SEED = 64, 3
FLOAT_TOLERANCE = 1e-4


def _resnet8():
    import keras

    from trainer.models import ARCHS

    keras.utils.set_random_seed(SEED)
    return ARCHS["resnet8"].build(len(LABELS), 32)


def _pixels() -> np.ndarray:
    return np.random.default_rng(SEED).integers(0, 256, size=(IMAGES, 32, 32, 3), dtype=np.uint8)


def _head_model(pooling) -> object:
    """A tiny model: conv, `pooling` layers, Dense softmax."""
    import keras

    inputs = keras.Input(shape=(8, 8, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(inputs)
    for layer in pooling:
        x = layer(x)
    return keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(x))


def test_only_a_pool_over_the_whole_map_before_the_head_is_found() -> None:
    import keras

    from converter.int8_graph import whole_map_pool
    from trainer.models import ARCHS

    assert whole_map_pool(_resnet8()).name == "pool"
    assert whole_map_pool(ARCHS["cnn"].build(3, 32)) is None  # no average pool at all
    layers = keras.layers
    assert whole_map_pool(_head_model([layers.AveragePooling2D(8), layers.Flatten()])) is not None
    assert whole_map_pool(_head_model([layers.AveragePooling2D(4), layers.Flatten()])) is None  # a 2x2 map left
    assert whole_map_pool(_head_model([layers.GlobalAveragePooling2D()])) is None  # already a mean
    assert whole_map_pool(_head_model([layers.MaxPooling2D(8), layers.Flatten()])) is None
    inputs = keras.Input(shape=(8, 8, 3))
    linear = keras.Model(inputs, layers.Dense(3)(layers.Flatten()(layers.AveragePooling2D(8)(inputs))))
    assert whole_map_pool(linear) is None  # no softmax head to rebuild


def test_the_mean_graph_computes_what_the_model_computes() -> None:
    from converter.int8_graph import int8_graph, whole_map_pool

    model = _resnet8()
    pixels = _pixels().astype(np.float32)
    expected = model.predict(pixels, verbose=0)
    graph = int8_graph(model, None, whole_map_pool(model))
    assert graph is not model
    assert np.abs(graph.predict(pixels, verbose=0) - expected).max() < FLOAT_TOLERANCE
    assert int8_graph(model, None, None) is model  # nothing to change: the model itself is converted


@pytest.fixture(scope="module")
def converted_pair(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One random-weight ResNet-8 converted to int8 twice: as the converter does, and with the pool kept."""
    import keras

    from converter.convert import convert_model
    from converter.int8_graph import whole_map_pool
    from edge_runtime.preprocess import scale_pixels
    from trainer.models import ARCHS

    folder = tmp_path_factory.mktemp("resnet8")
    model = _resnet8()
    model.save(folder / "model.keras")
    (folder / "labels.txt").write_text("\n".join(LABELS) + "\n")
    spec, pixels = ARCHS["resnet8"].spec(), _pixels()
    runs = {}
    for mean_pool in (True, False):
        out = folder / ("mean" if mean_pool else "pool")
        result = convert_model(folder / "model.keras", out, variants=("int8",), train_images=pixels,
                               calibration_size=IMAGES, seed=SEED, spec=spec, model=model, mean_pool=mean_pool)
        manifest = json.loads((out / "manifest.json").read_text())
        runs[mean_pool] = {"path": result.model("int8").path, "manifest": manifest}
    pool = whole_map_pool(model)
    features = keras.Model(model.inputs, pool.output).predict(scale_pixels(pixels, spec), verbose=0)
    return {"runs": runs, "feature_max": float(features.max())}


def _pooling_tensors(path: Path) -> tuple[str, float, float]:
    """(the op that pools, its input's int8 scale, its output's int8 scale) in an int8 file."""
    from edge_runtime.interpreter import load_interpreter_class

    _, interpreter_class = load_interpreter_class()
    interpreter = interpreter_class(model_path=str(path))
    scales = {tensor["index"]: tensor["quantization"][0] for tensor in interpreter.get_tensor_details()}
    (op,) = [op for op in interpreter._get_ops_details() if op["op_name"] in ("MEAN", "AVERAGE_POOL_2D")]
    return op["op_name"], scales[int(op["inputs"][0])], scales[int(op["outputs"][0])]


@pytest.mark.slow
def test_int8_pooled_features_get_their_own_range(converted_pair) -> None:
    name, map_scale, pooled_scale = _pooling_tensors(converted_pair["runs"][True]["path"])
    assert name == "MEAN"
    # The pooled features are quantized over their own calibrated range [0, max]...
    assert pooled_scale == pytest.approx(converted_pair["feature_max"] / 255, rel=0.02)
    assert pooled_scale < map_scale / 2
    # ...where TFLite's int8 average pool keeps the scale of the whole map it averages.
    name, map_scale, pooled_scale = _pooling_tensors(converted_pair["runs"][False]["path"])
    assert (name, pooled_scale) == ("AVERAGE_POOL_2D", map_scale)


@pytest.mark.slow
def test_the_manifest_says_the_pool_became_a_mean(converted_pair) -> None:
    calibration = converted_pair["runs"][True]["manifest"]["calibration"]
    assert calibration["pooling"]["layer"] == "pool" and calibration["pooling"]["map"] == [8, 8]
    assert "pooling" not in converted_pair["runs"][False]["manifest"]["calibration"]


@pytest.mark.slow
def test_edge_classify_info_says_the_pool_became_a_mean(converted_pair) -> None:
    from click.testing import CliRunner

    import edge_runtime.cli as runtime_cli

    result = CliRunner().invoke(runtime_cli.main, ["--model", str(converted_pair["runs"][True]["path"]), "--info"])
    assert result.exit_code == 0, result.output
    line = next(line for line in result.output.splitlines() if line.startswith("calibration:"))
    assert line.endswith("; average pool 'pool' over the whole 8x8 map quantized as a mean")
