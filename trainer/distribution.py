"""Training over several devices with tf.distribute.MirroredStrategy (`--distribute`): the strategy, its
scope, and the check that the batches split evenly over the replicas."""

from __future__ import annotations

from typing import Any

from edge_runtime.errors import DataError

from .progress import Progress
from .tensorflow_env import import_tensorflow


def distribution_strategy(distribute: bool, progress: Progress) -> Any:
    """tf.distribute.MirroredStrategy over every GPU, or every logical CPU where there is no GPU; None when off."""
    if not distribute:
        return None
    tf = import_tensorflow()
    devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
    strategy = tf.distribute.MirroredStrategy(devices=[device.name for device in devices])
    progress.message(f"distributing over {strategy.num_replicas_in_sync} device(s) with MirroredStrategy: "
                     f"{', '.join(device.name for device in devices)}")
    return strategy


def strategy_scope(strategy: Any) -> Any:
    """The strategy's scope, or a scope that does nothing."""
    import contextlib

    return strategy.scope() if strategy is not None else contextlib.nullcontext()


def check_replicas(replicas: int, batch_size: int, train_count: int) -> None:
    """Refuse a distributed run whose training batches the devices cannot share evenly (DataError)."""
    if replicas == 1:
        return
    if batch_size % replicas:
        raise DataError(f"batch size {batch_size} does not split evenly over {replicas} devices; "
                        f"give a multiple of {replicas}")
    if train_count < batch_size:
        raise DataError(f"{train_count} training image(s) are fewer than one batch of {batch_size}; "
                        f"a distributed run trains on whole batches only")
