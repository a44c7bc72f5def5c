"""What a run writes into OUT: model.keras, labels.txt, accuracy.png and training.json, each atomically;
the contents of training.json; and the result a finished run returns."""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from edge_runtime.atomic import atomic_path, write_text
from edge_runtime.model_file.labels import write_labels

from .config import TrainConfig, streams_batches
from .dataset import Dataset
from .keep import KeptEpoch
from .phases import training_phases

if TYPE_CHECKING:  # pragma: no cover
    import keras

MODEL_FILE = "model.keras"
LABELS_FILE = "labels.txt"
REPORT_FILE = "training.json"
PLOT_FILE = "accuracy.png"
REPORT_FORMAT_VERSION = 4  # 2: adds "kept" and "test_last_epoch"; 3: adds "arch"; 4: adds test.one_class_answer


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """What a finished run produced."""

    out: Path
    model_path: Path
    labels_path: Path
    report_path: Path
    plot_path: Path
    history: dict[str, list[float]]
    test_loss: float
    test_accuracy: float
    epochs_completed: int
    resumed_from_epoch: int
    durations: dict[str, float]
    kept: KeptEpoch
    last_epoch_test_accuracy: float
    already_complete: bool = False  # --resume found the run finished and did nothing
    one_class_answer: str | None = None  # the class the kept model answers for every test image, if only one


def one_class_answer(predictions: np.ndarray, labels: np.ndarray) -> int | None:
    """The class a model answered for every test image, when it answered one class only and the test
    images are of more than one (a model that has not learned to tell them apart); else None."""
    answered = np.unique(np.asarray(predictions))
    if len(answered) != 1 or len(np.unique(np.asarray(labels))) < 2:
        return None
    return int(answered[0])


def training_report(config: TrainConfig, dataset: Dataset, history: dict[str, list[float]], test_loss: float,
                    test_accuracy: float, durations: dict[str, float], resumed_from_epoch: int,
                    validation_count: int, train_count: int, parameters: int, kept: KeptEpoch,
                    last_epoch_test: dict[str, float], one_class: str | None = None) -> dict[str, Any]:
    """The contents of training.json: `test` is the kept model's, `test_last_epoch` the final epoch's.

    `test.one_class_answer` names the class the kept model answers for every test image, when it
    answers only one (null otherwise).
    """
    counts = dataset.counts()
    return {
        "format_version": REPORT_FORMAT_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "test": {"loss": test_loss, "accuracy": test_accuracy, "count": dataset.test_count,
                 "one_class_answer": one_class},
        "kept": kept.to_dict(),
        "test_last_epoch": dict(last_epoch_test, count=dataset.test_count),
        "history": history,
        "epochs": len(history.get("loss", [])),
        "resumed_from_epoch": resumed_from_epoch,
        "config": config.recipe(),
        "seed": config.seed,
        "data": {
            "source": dataset.source,
            "class_names": list(dataset.class_names),
            "train": train_count,
            "validation": validation_count,
            "test": dataset.test_count,
            "skipped": dataset.skipped_count,
            "skipped_files": [{"path": path, "reason": reason} for path, reason in dataset.skipped],
            "train_per_class": counts["train_per_class"],
            "test_per_class": counts["test_per_class"],
        },
        "model": {"parameters": parameters, "file": MODEL_FILE},
        "arch": arch_report(config),
        "preprocess": config.spec().to_dict(),
        "durations": durations,
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cpus": os.cpu_count()},
        "versions": package_versions(),
    }


def arch_report(config: TrainConfig) -> dict[str, Any]:
    """training.json's "arch": the network, its registry defaults and the settings this run used."""
    arch = config.network
    settings = {"image_size": config.image_size, "scale": arch.scale, "offset": arch.offset,
                "optimizer": arch.optimizer, "learning_rate": config.learning_rate, "schedule": arch.schedule,
                "warmup_epochs": arch.warmup_epochs, "epochs": config.epochs, "batch_size": config.batch_size,
                "augment": config.augment,
                "augmentation": arch.augmentation.to_dict() if config.augment else None,
                "input_pipeline": "stream" if streams_batches(config) else "arrays",
                "phases": [phase.to_dict() for phase in training_phases(config)],
                "distribute": config.distribute}
    for name in arch.options:
        settings[name] = config.recipe()[name]
    if arch.backbone is not None:
        settings.update(freeze_epochs=config.freeze_epochs, fine_tune_factor=arch.fine_tune_factor)
    return {"name": arch.name, "summary": arch.summary, "defaults": arch.defaults(), "settings": settings}


def package_versions() -> dict[str, str]:
    """Versions of what produced the model, for training.json."""
    from importlib import metadata

    versions = {"python": platform.python_version()}
    for name in ("tensorflow", "keras", "numpy", "pillow", "matplotlib", "edge-image-toolkit"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def write_outputs(out: Path, model: "keras.Model", class_names: Sequence[str], history: dict[str, list[float]],
                  report: dict[str, Any], kept_epoch: int | None = None) -> dict[str, Path]:
    """Write model.keras, labels.txt, accuracy.png and (last) training.json, each atomically."""
    from .plots import plot_training_curves

    out.mkdir(parents=True, exist_ok=True)
    paths = {"model": out / MODEL_FILE, "labels": out / LABELS_FILE, "plot": out / PLOT_FILE,
             "report": out / REPORT_FILE}
    with atomic_path(paths["model"]) as tmp:
        model.save(tmp)
    write_labels(paths["labels"], list(class_names))
    plot_training_curves(history, paths["plot"], kept_epoch=kept_epoch)
    write_text(paths["report"], json.dumps(report, indent=2) + "\n")
    return paths
