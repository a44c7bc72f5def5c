"""The network registry: each arch builds with its expected parameter count and structure; the table's defaults."""

from __future__ import annotations

import pytest

from edge_runtime.preprocess import PreprocessSpec, scale_pixels
from trainer.models import ARCH_NAMES, ARCHS, CONSTANT, WARMUP_COSINE, get_arch
from trainer.models.cnn import RECIPE_PARAMETER_COUNT
from trainer.models.resnet8 import REFERENCE_PARAMETER_COUNT

# keras.applications.MobileNetV2(alpha=0.35, include_top=False, pooling="avg") has 410,208 parameters at any
# input size; the 10-class head adds 1280 * 10 + 10.
MOBILENETV2_035_PARAMETERS = 410_208 + 1280 * 10 + 10


def test_the_registry_has_the_three_families_with_cnn_first() -> None:
    assert ARCH_NAMES == ("cnn", "resnet8", "mobilenetv2")
    with pytest.raises(ValueError, match="unknown arch 'vgg'; choose from cnn, resnet8, mobilenetv2"):
        get_arch("vgg")


def test_cnn_defaults_are_the_documented_recipe() -> None:
    cnn = ARCHS["cnn"]
    assert (cnn.image_size, cnn.optimizer, cnn.learning_rate, cnn.schedule, cnn.epochs, cnn.batch_size,
            cnn.augment) == (32, "adam", 1e-3, CONSTANT, 15, 64, False)
    assert cnn.spec() == PreprocessSpec()  # x / 255 at 32x32: the default everything else assumes


@pytest.mark.parametrize("name, scale, offset, low, high", [("cnn", 1 / 255, 0.0, 0.0, 1.0),
                                                            ("resnet8", 1.0, 0.0, 0.0, 255.0),
                                                            ("mobilenetv2", 2 / 255, -1.0, -1.0, 1.0)])
def test_each_arch_has_its_own_input_range(name: str, scale: float, offset: float, low: float, high: float) -> None:
    spec = ARCHS[name].spec(48)
    assert (spec.height, spec.width) == (48, 48)
    assert (spec.scale, spec.offset) == pytest.approx((scale, offset))
    import numpy as np

    values = scale_pixels(np.array([0, 255], dtype=np.uint8), spec)
    assert values.tolist() == pytest.approx([low, high], abs=1e-6)


def test_schedules_and_help_lines() -> None:
    assert ARCHS["resnet8"].schedule == ARCHS["mobilenetv2"].schedule == WARMUP_COSINE
    assert ARCHS["resnet8"].help_line() == ("resnet8: MLPerf Tiny ResNet-8; 32px raw 0-255, sgd (Nesterov momentum "
                                            "0.9) lr 0.1 3 warm-up epochs + cosine, 60 epochs, batch 32, augment on, "
                                            "label smoothing 0.1, 5% held out for validation")
    assert ARCHS["resnet8"].defaults()["momentum"] == 0.9 and "momentum" not in ARCHS["cnn"].defaults()
    assert ARCHS["cnn"].help_line().endswith("adam lr 0.001 constant, 15 epochs, batch 64, augment off, "
                                             "20% held out for validation")
    assert "96px [-1,1]" in ARCHS["mobilenetv2"].help_line() and "alpha 0.35" in ARCHS["mobilenetv2"].help_line()


def test_cnn_through_the_registry_is_the_documented_network() -> None:
    model = ARCHS["cnn"].build(10, 32)
    assert model.count_params() == RECIPE_PARAMETER_COUNT
    assert [layer.name for layer in model.layers][-1] == "probabilities"


def test_resnet8_is_the_mlperf_tiny_network() -> None:
    model = ARCHS["resnet8"].build(10, 32)
    assert REFERENCE_PARAMETER_COUNT == 78_666
    assert model.count_params() == REFERENCE_PARAMETER_COUNT
    convolutions = [layer for layer in model.layers if layer.__class__.__name__ == "Conv2D"]
    # stem, 2 + 2 + 2 stack convs, 2 projections
    assert [layer.filters for layer in convolutions] == [16, 16, 16, 32, 32, 32, 64, 64, 64]
    assert sum(1 for layer in convolutions if tuple(layer.kernel_size) == (1, 1)) == 2
    for layer in convolutions:
        assert layer.kernel_initializer.__class__.__name__ == "HeNormal"
        assert layer.kernel_regularizer.l2 == pytest.approx(1e-4)
    assert len([layer for layer in model.layers if layer.__class__.__name__ == "BatchNormalization"]) == 7
    assert len([layer for layer in model.layers if layer.__class__.__name__ == "Add"]) == 3
    pool = model.get_layer("pool")
    assert tuple(pool.pool_size) == (8, 8) and tuple(pool.input.shape[1:]) == (8, 8, 64)
    head = model.layers[-1]
    assert (head.units, head.activation.__name__) == (10, "softmax")
    # Any input size: the pool covers the whole final map, so the parameter count stays.
    assert ARCHS["resnet8"].build(10, 48).count_params() == REFERENCE_PARAMETER_COUNT


def test_mobilenetv2_at_96_with_alpha_035() -> None:
    model = ARCHS["mobilenetv2"].build(10, 96)
    assert model.count_params() == MOBILENETV2_035_PARAMETERS == 423_018
    assert tuple(model.input_shape) == (None, 96, 96, 3)
    assert model.get_layer("backbone").count_params() == 410_208
    head = model.layers[-1]
    assert (head.units, head.activation.__name__) == (10, "softmax")
    wider = ARCHS["mobilenetv2"].build(4, 32, alpha=0.5)
    assert wider.count_params() > model.count_params() - 6 * 1281
