"""The Classifier against a bare interpreter loop, input quantization, and scores to classes."""

from __future__ import annotations

import numpy as np
import pytest

from edge_runtime.bench import benchmark_model, latency_stats
from edge_runtime.classify import Class, Classifier, TensorInfo, make_input_quantizer, top_classes
from edge_runtime.errors import ModelError
from edge_runtime.preprocess import DEFAULT_SPEC, scale_pixels
from runtime_fixtures import MIN_SYNTHETIC_ACCURACY
from synthetic import CLASS_NAMES

pytest_plugins = ("runtime_fixtures",)

ALL_PIXELS = np.arange(256, dtype=np.uint8).reshape(16, 16, 1).repeat(3, axis=2)
MIN_INT8_FLOAT_AGREEMENT = 0.9


def tensor(dtype, scale: float, zero_point: int) -> TensorInfo:
    return TensorInfo(index=0, shape=(1, 16, 16, 3), dtype=np.dtype(dtype), scale=scale, zero_point=zero_point)


def reference_quantize(pixels: np.ndarray, info: TensorInfo) -> np.ndarray:
    """round(x / 255 / scale + zero_point), clipped: the textbook affine quantization."""
    limits = np.iinfo(info.dtype)
    values = pixels.astype(np.float64) / 255.0 / info.scale + info.zero_point
    return np.clip(np.round(values), limits.min, limits.max).astype(info.dtype)


# --- top classes --------------------------------------------------------------------------------

def test_top_classes_best_first_ties_in_index_order() -> None:
    scores = np.array([0.1, 0.4, 0.1, 0.4], dtype=np.float32)
    labels = ["a", "b", "c", "d"]
    assert top_classes(scores, labels, top_k=3) == [Class(1, "b", pytest.approx(0.4)), Class(3, "d", pytest.approx(0.4)),
                                                    Class(0, "a", pytest.approx(0.1))]
    assert top_classes(scores, labels, top_k=1) == [Class(1, "b", pytest.approx(0.4))]  # argmax path agrees


def test_top_classes_threshold_top_k_bounds_and_missing_labels() -> None:
    scores = np.array([0.2, 0.7, 0.1])
    assert [c.index for c in top_classes(scores, None, top_k=3, threshold=0.15)] == [1, 0]
    assert top_classes(scores, None, top_k=1, threshold=0.8) == []
    assert len(top_classes(scores, None, top_k=10)) == 3
    assert top_classes(scores, None, top_k=0) == []
    assert top_classes(scores, ["only one"], top_k=2)[0].label == "1"  # no label for index 1: its number


# --- input quantization -------------------------------------------------------------------------

def test_int8_fast_path_equals_the_affine_formula_for_every_pixel_value() -> None:
    info = tensor(np.int8, 1.0 / 255.0, -128)
    quantized = make_input_quantizer(info, DEFAULT_SPEC)(ALL_PIXELS)
    assert quantized.dtype == np.int8
    np.testing.assert_array_equal(quantized, reference_quantize(ALL_PIXELS, info))


def test_uint8_fast_path_is_the_identity() -> None:
    info = tensor(np.uint8, 1.0 / 255.0, 0)
    np.testing.assert_array_equal(make_input_quantizer(info, DEFAULT_SPEC)(ALL_PIXELS), ALL_PIXELS)


@pytest.mark.parametrize("dtype, scale, zero_point", [(np.int8, 0.0125, 3), (np.uint8, 0.005, 10),
                                                      (np.int8, 1.0 / 255.0, -127)])
def test_other_quantizations_use_the_tensors_own_scale_and_zero_point(dtype, scale: float, zero_point: int) -> None:
    info = tensor(dtype, scale, zero_point)
    quantized = make_input_quantizer(info, DEFAULT_SPEC)(ALL_PIXELS)
    assert quantized.dtype == dtype
    assert np.abs(quantized.astype(int) - reference_quantize(ALL_PIXELS, info).astype(int)).max() <= 1
    assert (quantized.astype(int) == reference_quantize(ALL_PIXELS, info).astype(int)).mean() > 0.99


def test_float_inputs_get_scale_pixels_and_unquantized_ints_are_refused() -> None:
    np.testing.assert_array_equal(make_input_quantizer(tensor(np.float32, 0.0, 0), DEFAULT_SPEC)(ALL_PIXELS),
                                  scale_pixels(ALL_PIXELS))
    with pytest.raises(ModelError, match="input tensor of type int8 has no usable quantization"):
        make_input_quantizer(tensor(np.int8, 0.0, 0), DEFAULT_SPEC)


# --- the Classifier against a bare interpreter --------------------------------------------------

def bare_scores(model_path, pixels: np.ndarray) -> np.ndarray:
    """What a minimal hand-written loop computes: quantize, set, invoke, get, dequantize."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(model_path), num_threads=1)
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    results = []
    for image in pixels:
        values = image.astype(np.float32) / np.float32(255.0)
        scale, zero_point = inp["quantization"]
        if scale:
            limits = np.iinfo(inp["dtype"])
            values = np.clip(np.round(values / scale + zero_point), limits.min, limits.max)
        interpreter.set_tensor(inp["index"], values[None].astype(inp["dtype"]))
        interpreter.invoke()
        raw = interpreter.get_tensor(out["index"])[0]
        out_scale, out_zero = out["quantization"]
        results.append(out_scale * (raw.astype(np.float64) - out_zero) if out_scale else raw)
    return np.array(results)


@pytest.mark.parametrize("kind", ["int8", "float32", "uint8"])
def test_classifier_scores_equal_the_bare_interpreter(runtime_models, synthetic_test_images, kind: str) -> None:
    images, _ = synthetic_test_images
    classifier = Classifier(getattr(runtime_models, kind))
    ours = np.array([classifier.scores(image) for image in images])
    assert ours.dtype == np.float32
    reference = bare_scores(getattr(runtime_models, kind), images)
    np.testing.assert_allclose(ours, reference, rtol=0, atol=1e-6)


def test_int8_and_float32_models_learned_and_agree(runtime_models, synthetic_test_images) -> None:
    images, labels = synthetic_test_images
    predictions = {}
    for kind in ("int8", "float32"):
        classifier = Classifier(getattr(runtime_models, kind))
        predictions[kind] = np.array([classifier.classify(image)[0].index for image in images])
        assert (predictions[kind] == labels).mean() >= MIN_SYNTHETIC_ACCURACY, kind
    assert (predictions["int8"] == predictions["float32"]).mean() >= MIN_INT8_FLOAT_AGREEMENT


def test_describe_names_tensors_labels_and_preprocessing(runtime_models) -> None:
    facts = Classifier(runtime_models.int8, threads=2).describe()
    assert facts["input"] == {"shape": [1, 32, 32, 3], "dtype": "int8",
                              "quantization": {"scale": pytest.approx(1 / 255), "zero_point": -128}}
    assert facts["labels"] == list(CLASS_NAMES) and facts["labels_source"] == "embedded"
    assert facts["threads"] == 2 and facts["backend"] == "ai_edge_litert"
    assert facts["preprocess"] == DEFAULT_SPEC.to_dict()


# --- benchmark ----------------------------------------------------------------------------------

def test_latency_stats_in_milliseconds() -> None:
    mean, p50, p90 = latency_stats(np.array([0.001] * 9 + [0.011]))
    assert mean == pytest.approx(2.0) and p50 == pytest.approx(1.0) and p90 == pytest.approx(2.0)


def test_benchmark_model_times_init_first_and_runs(runtime_models) -> None:
    ticks = iter(np.arange(0.0, 1000.0, 0.001))
    result = benchmark_model(runtime_models.int8, runs=5, clock=lambda: float(next(ticks)))
    assert result.runs == 5 and result.backend == "ai_edge_litert"
    assert result.init_ms == pytest.approx(1.0) and result.first_ms == pytest.approx(1.0)
    assert result.mean_ms == pytest.approx(1.0) and result.images_per_second == pytest.approx(1000.0)
    with pytest.raises(ValueError, match="runs must be at least 1"):
        benchmark_model(runtime_models.int8, runs=0)
