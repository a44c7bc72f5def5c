"""Checkpoints in OUT/checkpoints/ and what a run folder already holds.

The checkpoint is the last completed epoch (model with optimizer state, plus history) and the best
epoch so far. Here: reading and writing it, whether a run may resume from it, whether the run in a
folder is already finished, and the rule that a fresh run never silently replaces another.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from edge_runtime.atomic import atomic_path, write_text
from edge_runtime.errors import EdgeError

from .config import TrainConfig
from .invocation import knob, resume_command, under_make
from .keep import KeptEpoch, best_validation_epoch
from .models import ARCHS, CONSTANT, DEFAULT_ARCH
from .outputs import LABELS_FILE, MODEL_FILE, PLOT_FILE, REPORT_FILE, TrainResult
from .progress import Progress

if TYPE_CHECKING:  # pragma: no cover
    import keras

logger = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
CHECKPOINT_STATE = "state.json"
CHECKPOINT_MODEL_PATTERN = "epoch-{epoch:03d}.keras"
CHECKPOINT_MODEL_GLOB = "epoch-*.keras"
# Fields of the configuration that decide what a run computes; a resumed run must match them.
# The network comes first: when it differs, that is what the person needs to hear.
RECIPE_FIELDS = ("arch", "data", "seed", "batch_size", "validation_fraction", "test_fraction", "image_size",
                 "augment", "learning_rate", "alpha", "weights", "freeze_epochs")
# What a checkpoint made before --arch existed was trained with.
LEGACY_RECIPE = {"arch": DEFAULT_ARCH, "image_size": ARCHS[DEFAULT_ARCH].image_size, "augment": False,
                 "learning_rate": ARCHS[DEFAULT_ARCH].learning_rate, "alpha": None, "weights": None,
                 "freeze_epochs": None}


class CheckpointError(EdgeError):
    """There is no checkpoint to resume from, or it belongs to a different run."""


class RunExists(CheckpointError):
    """A fresh run would replace a finished or unfinished run in the same folder."""


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """The last completed epoch of a run, as stored in OUT/checkpoints/."""

    epoch: int
    model_path: Path
    history: dict[str, list[float]]
    recipe: dict[str, Any]
    class_names: list[str]
    training_seconds: float
    best_epoch: int | None = None  # the best validation epoch so far; its model file is kept beside the last
    best_model_path: Path | None = None


def read_checkpoint(out: str | os.PathLike) -> Checkpoint | None:
    """The checkpoint in OUT/checkpoints, None if there is none; CheckpointError if it is damaged."""
    folder = Path(out) / CHECKPOINT_DIR
    state_path = folder / CHECKPOINT_STATE
    if not state_path.is_file():
        return None
    try:
        state = json.loads(state_path.read_text(encoding="utf-8"))
        best_model = state.get("best_model")
        checkpoint = Checkpoint(
            epoch=int(state["epoch"]),
            model_path=folder / state["model"],
            history={key: [float(v) for v in values] for key, values in state["history"].items()},
            recipe=dict(state["recipe"]),
            class_names=[str(name) for name in state["class_names"]],
            training_seconds=float(state.get("training_seconds", 0.0)),
            best_epoch=None if state.get("best_epoch") is None else int(state["best_epoch"]),
            best_model_path=None if best_model is None else folder / best_model,
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise CheckpointError(f"{state_path}: damaged checkpoint state ({error}); "
                              f"start afresh without --resume") from error
    if not checkpoint.model_path.is_file():
        raise CheckpointError(f"{checkpoint.model_path}: checkpoint model is missing; start afresh without --resume")
    if checkpoint.best_model_path is not None and not checkpoint.best_model_path.is_file():
        raise CheckpointError(f"{checkpoint.best_model_path}: the best epoch's checkpoint model is missing; "
                              f"start afresh without --resume")
    return checkpoint


def write_checkpoint(folder: Path, model: "keras.Model", epoch: int, history: dict[str, list[float]],
                     recipe: dict[str, Any], class_names: Sequence[str], training_seconds: float) -> None:
    """Save the model for `epoch`, then point state.json at it and at the best epoch so far, then drop
    every other epoch file.

    The best validation epoch's file stays beside the last one, so a resumed run can still keep it.
    state.json is replaced last, so it always names complete model files: a crash at any point
    leaves either the previous checkpoint or this one.
    """
    model_name = CHECKPOINT_MODEL_PATTERN.format(epoch=epoch)
    with atomic_path(folder / model_name) as tmp:
        model.save(tmp)
    best_epoch = best_validation_epoch(history)
    best_name = None if best_epoch is None else CHECKPOINT_MODEL_PATTERN.format(epoch=best_epoch)
    if best_name is not None and not (folder / best_name).is_file():
        raise CheckpointError(f"{folder / best_name}: the best epoch's checkpoint model is missing")
    state = {"epoch": epoch, "model": model_name, "best_epoch": best_epoch, "best_model": best_name,
             "history": history, "recipe": recipe, "class_names": list(class_names),
             "training_seconds": training_seconds}
    write_text(folder / CHECKPOINT_STATE, json.dumps(state, indent=1) + "\n")
    logger.debug("checkpointed epoch %d in %s (best so far: %s)", epoch, folder / model_name, best_epoch)
    for old in folder.glob(CHECKPOINT_MODEL_GLOB):
        if old.name not in (model_name, best_name):
            old.unlink(missing_ok=True)


def check_resumable(checkpoint: Checkpoint, config: TrainConfig, folder: Path) -> None:
    """Refuse to continue a checkpoint with settings that would make a different run."""
    wanted = config.recipe()
    for field in RECIPE_FIELDS:
        made_with = checkpoint.recipe.get(field, LEGACY_RECIPE.get(field))
        if made_with != wanted[field]:
            raise CheckpointError(
                f"{folder}: the checkpoint was made with {field} {made_with!r}, "
                f"not {wanted[field]!r}; resume with the same settings or start afresh without --resume")
    planned = checkpoint.recipe.get("epochs")
    if config.network.schedule != CONSTANT and planned is not None and planned != config.epochs:
        raise CheckpointError(f"{folder}: the checkpoint's learning-rate schedule was planned for {planned} epochs, "
                              f"not {config.epochs}; resume with --epochs {planned} or start afresh")
    if checkpoint.best_epoch is None and checkpoint.history.get("val_accuracy"):
        raise CheckpointError(f"{folder}: this checkpoint was made by an earlier edge-train that did not keep "
                              f"the best epoch; start afresh with --force")
    if checkpoint.epoch > config.epochs:
        raise CheckpointError(f"{folder}: the checkpoint already has {checkpoint.epoch} epochs, "
                              f"more than the {config.epochs} asked for")


def finished_result(out: Path, config: TrainConfig, checkpoint: Checkpoint) -> TrainResult | None:
    """The result of the run in `out` when it is already complete as `config` asks, else None.

    Complete means: the checkpoint has every epoch, and model.keras and a training.json written
    from that checkpoint with the same keep rule are in place. Anything less is finished by resuming.
    """
    if checkpoint.epoch != config.epochs:
        return None
    paths = {"model": out / MODEL_FILE, "labels": out / LABELS_FILE, "plot": out / PLOT_FILE,
             "report": out / REPORT_FILE}
    if not all(path.is_file() for path in paths.values()):
        return None
    try:
        report = json.loads(paths["report"].read_text(encoding="utf-8"))
        kept = KeptEpoch(**report["kept"])
        history = {key: [float(v) for v in values] for key, values in report["history"].items()}
        test_loss, test_accuracy = float(report["test"]["loss"]), float(report["test"]["accuracy"])
        last_accuracy = float(report["test_last_epoch"]["accuracy"])
        resumed_from = int(report.get("resumed_from_epoch", 0))
        durations = dict(report.get("durations", {}))
        one_class = report["test"].get("one_class_answer")
    except (OSError, ValueError, KeyError, TypeError) as error:
        logger.debug("%s does not describe a finished run (%s); finishing it", paths["report"], error)
        return None
    if kept.keep != config.keep or history != checkpoint.history:
        return None
    return TrainResult(out=out, model_path=paths["model"], labels_path=paths["labels"], report_path=paths["report"],
                       plot_path=paths["plot"], history=history, test_loss=test_loss, test_accuracy=test_accuracy,
                       epochs_completed=config.epochs, resumed_from_epoch=resumed_from, durations=durations,
                       kept=kept, last_epoch_test_accuracy=last_accuracy, already_complete=True,
                       one_class_answer=None if one_class is None else str(one_class))


def refuse_to_replace(out: Path, force: bool, progress: Progress) -> None:
    """A fresh run never silently replaces another: refuse, or with `force` say what is replaced.

    The refusal names the knobs the person has (`trainer.invocation`: FORCE=1 and OUT= under make)
    and says what is true of the run found: a finished one is complete, an unfinished one can continue.
    """
    try:
        earlier = read_checkpoint(out)
    except CheckpointError:
        earlier = None  # a damaged checkpoint is nothing to continue; the outputs below still count
    finished = [name for name in (MODEL_FILE, REPORT_FILE) if (out / name).is_file()]
    replace = f"replace it with {knob('--force')}"
    elsewhere = f"train into another folder with {knob('--out', 'FOLDER')}"
    # make has no resume: there it is edge-train's whole command.
    resume = resume_command(out) if under_make() else "--resume"
    if earlier is not None and earlier.epoch < int(earlier.recipe.get("epochs", 0)):
        what = f"an unfinished run (epoch {earlier.epoch} of {earlier.recipe.get('epochs')} in {out / CHECKPOINT_DIR})"
        advice = f"continue it with {resume}, {replace}, or {elsewhere}"
    elif finished:
        what = f"a finished run ({', '.join(finished)})"
        advice = f"it is complete: {replace}, or {elsewhere}"
    elif earlier is not None:
        what = f"a run whose {earlier.epoch} epochs are all trained but whose {MODEL_FILE} was not written"
        advice = f"write its outputs with {resume}, {replace}, or {elsewhere}"
    else:
        return
    if not force:
        raise RunExists(f"{out}: already holds {what}; {advice}")
    progress.warning(f"{out}: replacing {what} ({knob('--force')})")
