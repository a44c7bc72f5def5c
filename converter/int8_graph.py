"""The Keras graph the full-integer files are converted from: the model's own layers and weights, changed
only where the change alters no float result but decides what the int8 kernels can represent.

Two changes, each made only where it applies:

- **A whole-map average pool before the classifier becomes a mean.** ResNet-8 (MLPerf Tiny's network) ends
  in AveragePooling2D over its whole 8x8 map, then Flatten and the Dense head. TFLite's int8
  AVERAGE_POOL_2D must give its output the scale of its input, so the 64 pooled features, which lie
  between 0 and about 1.6, were quantized on the range of the last residual block's output, 0 to about
  27: a step of 0.107, some 15 levels for the numbers the classifier reads. A mean over the map (TFLite's
  MEAN) computes the same float function and requantizes its output, so the pooled features get their own
  range from calibration (a step of about 0.006 there). On two 26-epoch ResNet-8 models this alone took
  int8's agreement with Keras on the validation share from 96.6% and 97.5% to 99.2% and 98.8%
  (BENCHMARKS.md). Models without such a pool (the CNN, MobileNetV2, whose global pooling is already a
  mean) keep their graph.
- **The logits are clipped** to the range that decides the answer (`converter.logit_range`).

Float32, float16 and dynamic-range files keep the Keras graph as it is.
"""

from __future__ import annotations

from typing import Any

from converter.logit_range import LogitRange, softmax_head

SPATIAL_AXES = (1, 2)  # height and width of a channels-last feature map


def _producer(tensor: Any) -> Any | None:
    """The layer that computed a symbolic Keras tensor, or None for a model input."""
    history = getattr(tensor, "_keras_history", None)
    return history.operation if history is not None else None


def whole_map_pool(model: Any) -> Any | None:
    """The AveragePooling2D layer whose 1x1 output is flattened into the softmax head, if its pool covers the
    whole channels-last map (so it is a mean over height and width); else None."""
    import keras

    head = softmax_head(model)
    flatten = _producer(head.input) if head is not None else None
    if not isinstance(flatten, keras.layers.Flatten):
        return None
    pool = _producer(flatten.input)
    if not isinstance(pool, keras.layers.AveragePooling2D) or pool.data_format != "channels_last":
        return None
    height, width = pool.input.shape[1:3]
    if height is None or tuple(pool.pool_size) != (height, width) or pool.padding != "valid":
        return None
    return pool


def int8_graph(model: Any, bounds: LogitRange | None, pool: Any | None) -> Any:
    """The graph to convert to int8: `model` itself where nothing applies, else the same layers and weights
    with `pool` (`whole_map_pool`'s answer, or None to keep it) as a mean and the logits clipped to `bounds`
    (None: not clipped)."""
    import keras

    head = softmax_head(model)
    if head is None or (pool is None and bounds is None):
        return model
    features = keras.ops.mean(pool.input, axis=SPATIAL_AXES) if pool is not None else head.input
    logits = keras.ops.add(keras.ops.matmul(features, head.kernel), head.bias)
    if bounds is not None:
        logits = keras.ops.clip(logits, bounds.low, bounds.high)
    return keras.Model(model.inputs, keras.ops.softmax(logits, axis=-1), name=f"{model.name}_int8_graph")


def pooling_info(pool: Any | None) -> dict[str, Any] | None:
    """JSON-ready account of the pooling change for the manifest and each file's metadata; None without one."""
    if pool is None:
        return None
    height, width = pool.input.shape[1:3]
    return {"layer": pool.name, "map": [int(height), int(width)],
            "rule": "whole-map average pool converted as a mean, so the pooled features get their own int8 range"}
