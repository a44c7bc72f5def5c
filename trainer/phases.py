"""Training phases: the whole run with one optimizer, or, from pretrained weights, epochs with the backbone
frozen and then fine-tuning at a lower rate; each phase compiled with its optimizer, loss and schedule."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from .averaging import averaging_optimizer_options
from .config import TrainConfig, averages_weights
from .models import CONSTANT, SGD, SGD_MOMENTUM

if TYPE_CHECKING:  # pragma: no cover
    import keras


@dataclasses.dataclass(frozen=True)
class Phase:
    """Epochs first_epoch..end_epoch-1 (0-based) trained with one optimizer: the whole run, or with
    pretrained weights a frozen-backbone phase and then a fine-tuning one at a lower rate."""

    first_epoch: int
    end_epoch: int
    learning_rate: float
    backbone_trainable: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {"epochs": [self.first_epoch + 1, self.end_epoch], "learning_rate": self.learning_rate,
                "backbone_trainable": self.backbone_trainable}


def training_phases(config: TrainConfig) -> list[Phase]:
    """The run's phases: one, or with pretrained weights a frozen one then fine-tuning (`Arch.freeze_epochs`)."""
    arch = config.network
    freeze = min(config.freeze_epochs or 0, config.epochs) if config.weights is not None and arch.backbone else 0
    if freeze == 0:
        return [Phase(0, config.epochs, config.learning_rate)]
    phases = [Phase(0, freeze, config.learning_rate, backbone_trainable=False)]
    if freeze < config.epochs:
        phases.append(Phase(freeze, config.epochs, config.learning_rate * arch.fine_tune_factor))
    return phases


def learning_rate_schedule(config: TrainConfig, phase: Phase, steps: int) -> Any:
    """The phase's learning rate: constant, or a linear warm-up from 0 and a cosine decay to 0 at its end."""
    if config.network.schedule == CONSTANT:
        return phase.learning_rate
    import keras

    total = steps * (phase.end_epoch - phase.first_epoch)
    warmup = min(config.network.warmup_epochs * steps, total // 2)
    return keras.optimizers.schedules.CosineDecay(initial_learning_rate=0.0, decay_steps=max(1, total - warmup),
                                                  warmup_target=phase.learning_rate, warmup_steps=warmup)


def prepare_phase(model: "keras.Model", config: TrainConfig, phase: Phase, steps: int) -> None:
    """Freeze or unfreeze the backbone for `phase` and compile with a fresh optimizer at its learning rate."""
    import keras

    from .models.cnn import LOSS, METRICS

    arch = config.network
    if arch.backbone is not None:
        model.get_layer(arch.backbone).trainable = phase.backbone_trainable
    learning_rate = learning_rate_schedule(config, phase, steps)
    loss = keras.losses.CategoricalCrossentropy(label_smoothing=arch.label_smoothing) if arch.label_smoothing else LOSS
    averaging = averaging_optimizer_options(arch.weight_average if averages_weights(config) else None)
    if arch.optimizer == SGD:
        optimizer = keras.optimizers.SGD(learning_rate=learning_rate, momentum=SGD_MOMENTUM, nesterov=True,
                                         **averaging)
    else:
        optimizer = keras.optimizers.Adam(learning_rate=learning_rate, **averaging)
    # XLA is left out under tf.distribute: the replicated step is not what it was measured on.
    jit = arch.jit_compile and not config.distribute
    if config.distribute:
        # Distributed evaluation pads its batches with zero-weight copies (trainer.batches): the accuracy
        # must weigh them, so it counts real images only. (The loss's divisor still counts the copies of
        # the last batch: a slight bias of the validation and test loss, never of the accuracy.)
        model.compile(optimizer=optimizer, loss=loss, weighted_metrics=list(METRICS), jit_compile=jit)
    else:
        model.compile(optimizer=optimizer, loss=loss, metrics=list(METRICS), jit_compile=jit)
