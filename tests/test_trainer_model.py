"""The documented network, exactly: layer types, settings, output shapes, parameter count, compilation."""

from __future__ import annotations

import pytest

from trainer.models.cnn import RECIPE_PARAMETER_COUNT, build_model

# (layer class, output shape without the batch axis) in the documented order.
RECIPE_LAYERS = (
    ("Conv2D", (32, 32, 32)),
    ("MaxPooling2D", (16, 16, 32)),
    ("Conv2D", (16, 16, 64)),
    ("MaxPooling2D", (8, 8, 64)),
    ("Conv2D", (8, 8, 64)),
    ("Flatten", (4096,)),
    ("Dense", (64,)),
    ("Dense", (10,)),
)


@pytest.fixture(scope="module")
def recipe_model():
    return build_model()


def test_layers_and_output_shapes_are_the_documented_ones(recipe_model) -> None:
    assert recipe_model.__class__.__name__ == "Sequential"
    assert tuple(recipe_model.input_shape) == (None, 32, 32, 3)
    actual = tuple((layer.__class__.__name__, tuple(layer.output.shape[1:])) for layer in recipe_model.layers)
    assert actual == RECIPE_LAYERS


def test_parameter_count_is_319178(recipe_model) -> None:
    assert RECIPE_PARAMETER_COUNT == 319_178
    assert recipe_model.count_params() == RECIPE_PARAMETER_COUNT


def test_layer_settings(recipe_model) -> None:
    convolutions = [layer for layer in recipe_model.layers if layer.__class__.__name__ == "Conv2D"]
    assert [layer.filters for layer in convolutions] == [32, 64, 64]
    for layer in convolutions:
        assert tuple(layer.kernel_size) == (3, 3)
        assert layer.padding == "same"
        assert layer.activation.__name__ == "relu"
    pools = [layer for layer in recipe_model.layers if layer.__class__.__name__ == "MaxPooling2D"]
    assert [tuple(layer.pool_size) for layer in pools] == [(2, 2), (2, 2)]
    hidden, output = [layer for layer in recipe_model.layers if layer.__class__.__name__ == "Dense"]
    assert (hidden.units, hidden.activation.__name__) == (64, "relu")
    assert (output.units, output.activation.__name__) == (10, "softmax")


def test_compiled_with_adam_defaults_and_categorical_crossentropy(recipe_model) -> None:
    optimizer = recipe_model.optimizer
    assert optimizer.__class__.__name__ == "Adam"
    assert float(optimizer.learning_rate) == pytest.approx(0.001)
    assert (optimizer.beta_1, optimizer.beta_2, optimizer.epsilon) == (0.9, 0.999, 1e-7)
    assert recipe_model.loss == "categorical_crossentropy"


def test_class_count_changes_only_the_last_layer() -> None:
    model = build_model(num_classes=4)
    assert tuple(model.output_shape) == (None, 4)
    assert model.count_params() == RECIPE_PARAMETER_COUNT - 6 * (64 + 1)


def test_fewer_than_two_classes_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 2 classes, not 1"):
        build_model(num_classes=1)
