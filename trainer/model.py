"""The documented network, kept importable under its old name: it lives in `trainer.models.cnn`."""

from __future__ import annotations

from .models.cnn import (CONV_FILTERS, DEFAULT_INPUT_SHAPE, DEFAULT_NUM_CLASSES, DENSE_UNITS,  # noqa: F401
                         FIRST_CONV_FILTERS, KERNEL_SIZE, LOSS, METRICS, MODEL_NAME, POOL_SIZE,
                         RECIPE_PARAMETER_COUNT, build_model, compile_model)
