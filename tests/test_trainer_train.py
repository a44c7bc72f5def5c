"""Training: outputs and their contents, shuffling before the validation split, checkpoints and resume,
atomic writes under simulated crashes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edge_runtime.errors import DataError
from edge_runtime.model_file.labels import read_labels
from edge_runtime.preprocess import scale_pixels
from synthetic import CLASS_NAMES, write_image_folder
from trainer_fixtures import InterruptAfterEpoch
from trainer.checkpoint import CHECKPOINT_DIR, CheckpointError, RunExists, read_checkpoint, write_checkpoint
from trainer.config import TrainConfig
from trainer.invocation import MAKE_ENV, resume_command
from trainer.outputs import one_class_answer, write_outputs
from trainer.progress import Progress
from trainer.sources import load_dataset
from trainer.train import TrainingInterrupted, train
from trainer.validation import MIN_VALIDATION_IMAGES, shuffled_split, validation_count, validation_warning

QUIET = Progress(quiet=True)
HISTORY_KEYS = ["accuracy", "loss", "val_accuracy", "val_loss"]
CHANCE = 1 / len(CLASS_NAMES)
# 60 per class, 4 classes: 240 training images, floor(240 * 0.8) = 192 to train on, 48 to validate.
TRAIN_IMAGES, FIT_IMAGES, VALIDATION_IMAGES, TEST_IMAGES = 240, 192, 48, 80
SMALL_BATCH = 32


def leftovers(folder: Path) -> list[str]:
    """Temporary files an atomic write would leave if it failed to clean up."""
    return sorted(p.name for p in folder.rglob(".*") if p.is_file())


@pytest.fixture(scope="module")
def fit_calls() -> list[dict]:
    """What `model.fit` received in the module's training run (filled by `trained`)."""
    return []


@pytest.fixture(scope="module")
def trained(split_dataset: Path, tmp_path_factory: pytest.TempPathFactory, fit_calls: list[dict]):
    """One small run for the whole module, with `model.fit` spied on to see the validation split."""
    import trainer.models.cnn

    real_build = trainer.models.cnn.build_model

    def spying_build(*args, **kwargs):
        model = real_build(*args, **kwargs)
        real_fit = model.fit

        def fit(x, y, **fit_kwargs):
            fit_calls.append({"train_labels": np.argmax(y, axis=1),
                              "validation_labels": np.argmax(fit_kwargs["validation_data"][1], axis=1)})
            return real_fit(x, y, **fit_kwargs)

        model.fit = fit
        return model

    out = tmp_path_factory.mktemp("run")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(trainer.models.cnn, "build_model", spying_build)
        return train(TrainConfig(data=split_dataset, out=out, epochs=3, batch_size=SMALL_BATCH, seed=7), QUIET)


def test_shuffled_split_holds_out_every_class_not_the_last_ones() -> None:
    labels = np.repeat(np.arange(5), 20)  # sorted by class, like the CIFAR-10 JPEG copy
    train_index, validation_index = shuffled_split(len(labels), 0.2, seed=0)
    assert (len(train_index), len(validation_index)) == (80, 20)
    assert sorted(np.concatenate([train_index, validation_index]).tolist()) == list(range(100))
    assert len(np.unique(labels[validation_index])) == 5
    again = shuffled_split(len(labels), 0.2, seed=0)
    assert np.array_equal(again[1], validation_index)


def test_validation_set_is_drawn_from_every_class(trained, fit_calls: list[dict]) -> None:
    assert len(fit_calls) == 1
    counts = np.bincount(fit_calls[0]["validation_labels"], minlength=len(CLASS_NAMES))
    assert counts.sum() == VALIDATION_IMAGES
    # Unshuffled, the last 20% of this class-sorted set would be 48 images of the last class.
    assert (counts >= 5).all(), counts
    assert len(fit_calls[0]["train_labels"]) == FIT_IMAGES


def test_outputs_are_written_with_their_contents(trained, split_dataset: Path) -> None:
    out = trained.out
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["model.keras", "labels.txt", "training.json", "accuracy.png", CHECKPOINT_DIR])
    assert read_labels(out / "labels.txt") == sorted(CLASS_NAMES)
    with Image.open(out / "accuracy.png") as plot:
        assert plot.format == "PNG" and plot.size[0] >= 400
    assert leftovers(out) == []

    report = json.loads((out / "training.json").read_text())
    assert sorted(report["history"]) == HISTORY_KEYS
    assert all(len(values) == 3 for values in report["history"].values())
    assert report["epochs"] == 3 and report["resumed_from_epoch"] == 0
    assert report["seed"] == 7 and report["config"]["batch_size"] == SMALL_BATCH
    assert report["config"]["data"] == str(split_dataset.resolve())
    data = report["data"]
    assert (data["train"], data["validation"], data["test"], data["skipped"]) == (
        FIT_IMAGES, VALIDATION_IMAGES, TEST_IMAGES, 0)
    assert data["class_names"] == sorted(CLASS_NAMES)
    assert report["model"]["parameters"] == 319_178 - 6 * 65
    assert all(report["durations"][key] > 0 for key in ("loading_seconds", "training_seconds",
                                                        "evaluation_seconds"))
    assert report["versions"]["tensorflow"][0].isdigit() and "python" in report["versions"]
    assert report["preprocess"]["scale"] == pytest.approx(1 / 255)
    # The synthetic classes are learnable: well above chance after three small epochs.
    assert report["test"]["accuracy"] > CHANCE + 0.25
    assert report["test"]["accuracy"] == pytest.approx(trained.test_accuracy)


def test_saved_model_reproduces_the_reported_test_accuracy(trained, split_dataset: Path) -> None:
    import keras

    model = keras.models.load_model(trained.model_path)
    dataset = load_dataset(split_dataset, progress=QUIET)
    predictions = model.predict(scale_pixels(dataset.test_images), verbose=0).argmax(axis=1)
    accuracy = float((predictions == dataset.test_labels).mean())
    assert accuracy == pytest.approx(trained.test_accuracy, abs=1e-6)


def test_checkpoint_of_the_last_epoch_is_kept(trained) -> None:
    checkpoint = read_checkpoint(trained.out)
    assert checkpoint.epoch == 3
    assert checkpoint.model_path.name == "epoch-003.keras"
    # The last epoch's model, and the best validation epoch's beside it when that is another one.
    best = checkpoint.best_epoch
    assert best == trained.kept.epoch and checkpoint.best_model_path.name == f"epoch-{best:03d}.keras"
    assert sorted(p.name for p in (trained.out / CHECKPOINT_DIR).iterdir()) == sorted(
        {"epoch-003.keras", f"epoch-{best:03d}.keras", "state.json"})
    assert checkpoint.history == trained.history


def test_interrupted_run_resumes_to_the_same_epoch_count(split_dataset: Path, tmp_path: Path) -> None:
    config = TrainConfig(data=split_dataset, out=tmp_path, epochs=3, batch_size=SMALL_BATCH, seed=5)
    with pytest.raises(TrainingInterrupted) as interrupted:
        train(config, QUIET, callbacks=[InterruptAfterEpoch(1)])
    assert (interrupted.value.epochs_completed, interrupted.value.epochs) == (1, 3)
    assert isinstance(interrupted.value, KeyboardInterrupt)
    # Nothing final was written; the checkpoint of epoch 1 is complete.
    assert sorted(p.name for p in tmp_path.iterdir()) == [CHECKPOINT_DIR]
    assert leftovers(tmp_path) == []
    checkpoint = read_checkpoint(tmp_path)
    assert checkpoint.epoch == 1 and all(len(v) == 1 for v in checkpoint.history.values())

    resumed = train(TrainConfig(data=split_dataset, out=tmp_path, epochs=3, batch_size=SMALL_BATCH, seed=5,
                                resume=True), QUIET)
    assert resumed.resumed_from_epoch == 1 and resumed.epochs_completed == 3
    assert sorted(resumed.history) == HISTORY_KEYS
    assert all(len(values) == 3 for values in resumed.history.values())
    for key in HISTORY_KEYS:  # epoch 1 comes from the interrupted run, unchanged
        assert resumed.history[key][0] == checkpoint.history[key][0]
    report = json.loads(resumed.report_path.read_text())
    assert report["epochs"] == 3 and report["resumed_from_epoch"] == 1
    assert report["test"]["accuracy"] > CHANCE + 0.25
    assert read_checkpoint(tmp_path).epoch == 3


def test_resume_refuses_a_checkpoint_from_different_settings(small_model, split_dataset: Path,
                                                            tmp_path: Path) -> None:
    made_with = TrainConfig(data=split_dataset, out=tmp_path, epochs=2, batch_size=SMALL_BATCH)
    write_checkpoint(tmp_path / CHECKPOINT_DIR, small_model, 2, {"loss": [1.0, 0.9]},
                     made_with.recipe(), sorted(CLASS_NAMES), 1.0)
    changed = TrainConfig(data=split_dataset, out=tmp_path, epochs=2, batch_size=16, resume=True)
    with pytest.raises(CheckpointError) as error:
        train(changed, QUIET)
    assert str(error.value) == (f"{tmp_path / CHECKPOINT_DIR}: the checkpoint was made with batch_size 32, "
                                f"not 16; resume with the same settings or start afresh without --resume")
    fewer_epochs = TrainConfig(data=split_dataset, out=tmp_path, epochs=1, batch_size=SMALL_BATCH, resume=True)
    with pytest.raises(CheckpointError, match="checkpoints: the checkpoint already has 2 epochs, more than the 1 asked"):
        train(fewer_epochs, QUIET)


def test_resume_without_a_checkpoint_says_so(split_dataset: Path, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"checkpoints: no checkpoint to resume from; run without --resume"):
        train(TrainConfig(data=split_dataset, out=tmp_path, resume=True), QUIET)


@pytest.mark.parametrize("make", [False, True], ids=["edge-train", "make"])
def test_fresh_start_refuses_to_replace_an_unfinished_run(small_model, split_dataset: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch, make: bool) -> None:
    recipe = TrainConfig(data=split_dataset, epochs=4).recipe()
    write_checkpoint(tmp_path / CHECKPOINT_DIR, small_model, 2, {"loss": [1.0, 0.9]}, recipe,
                     sorted(CLASS_NAMES), 1.0)
    before = sorted(p.name for p in (tmp_path / CHECKPOINT_DIR).iterdir())
    if make:
        monkeypatch.setenv(MAKE_ENV, "1")
    else:
        monkeypatch.delenv(MAKE_ENV, raising=False)
    with pytest.raises(RunExists) as refused:
        train(TrainConfig(data=split_dataset, out=tmp_path, epochs=1), QUIET)
    # make train cannot resume: there the whole edge-train command is named, with make's own knobs.
    advice = (f"continue it with {resume_command(tmp_path)}, replace it with FORCE=1, or train into another "
              f"folder with OUT=FOLDER" if make else
              "continue it with --resume, replace it with --force, or train into another folder with --out FOLDER")
    assert str(refused.value) == (
        f"{tmp_path}: already holds an unfinished run (epoch 2 of 4 in {tmp_path / CHECKPOINT_DIR}); {advice}")
    assert sorted(p.name for p in (tmp_path / CHECKPOINT_DIR).iterdir()) == before
    assert read_checkpoint(tmp_path).epoch == 2  # nothing replaced


def test_a_run_with_every_epoch_but_no_outputs_is_written_by_resuming(small_model, split_dataset: Path,
                                                                      tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(MAKE_ENV, raising=False)
    recipe = TrainConfig(data=split_dataset, epochs=2).recipe()
    write_checkpoint(tmp_path / CHECKPOINT_DIR, small_model, 2, {"loss": [1.0, 0.9]}, recipe,
                     sorted(CLASS_NAMES), 1.0)
    with pytest.raises(RunExists) as refused:
        train(TrainConfig(data=split_dataset, out=tmp_path, epochs=2), QUIET)
    assert str(refused.value) == (
        f"{tmp_path}: already holds a run whose 2 epochs are all trained but whose model.keras was not written; "
        f"write its outputs with --resume, replace it with --force, or train into another folder with --out FOLDER")


def test_force_replaces_a_run_and_says_so(small_model, split_dataset: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture) -> None:
    recipe = TrainConfig(data=split_dataset, epochs=4).recipe()
    write_checkpoint(tmp_path / CHECKPOINT_DIR, small_model, 3, {"loss": [1.0, 0.9, 0.8]}, recipe,
                     sorted(CLASS_NAMES), 1.0)
    result = train(TrainConfig(data=split_dataset, out=tmp_path, epochs=1, batch_size=SMALL_BATCH, force=True),
                   QUIET)
    assert capsys.readouterr().err.startswith(
        f"warning: {tmp_path}: replacing an unfinished run (epoch 3 of 4 in {tmp_path / CHECKPOINT_DIR}) (--force)\n")
    assert result.epochs_completed == 1 and read_checkpoint(tmp_path).epoch == 1
    assert sorted(p.name for p in (tmp_path / CHECKPOINT_DIR).iterdir()) == ["epoch-001.keras", "state.json"]


# --- too few validation images ------------------------------------------------------------------

def test_validation_warning_names_the_count_the_share_and_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(MAKE_ENV, raising=False)
    # resnet8's twentieth of a 300-image folder: 15 images, steps of 6.7 points.
    assert validation_warning(300, 0.05, "best") == (
        "validating on 15 of 300 training images (validation fraction 0.05): one image is 6.7 points of "
        "validation accuracy, too coarse to choose the kept epoch; hold out 100 or more with "
        "--validation-fraction 0.33")
    assert validation_count(300, 0.33) >= MIN_VALIDATION_IMAGES > validation_count(300, 0.32)
    # Too small for any reasonable share: keep the last epoch instead.
    assert validation_warning(150, 0.2, "best").endswith(
        "one image is 3.3 points of validation accuracy, too coarse to choose the kept epoch; the data set is "
        "too small to hold out 100: add images or --keep last")
    monkeypatch.setenv(MAKE_ENV, "1")
    assert validation_warning(150, 0.2, "best").endswith("add images or KEEP=last")
    assert validation_warning(300, 0.05, "best").endswith(
        "hold out 100 or more with edge-train --validation-fraction 0.33 (make has no variable for it)")


@pytest.mark.parametrize("count, fraction, keep", [(2000, 0.05, "best"), (500, 0.2, "best"), (300, 0.05, "last"),
                                                   (300, 0.0, "best")])
def test_no_validation_warning_with_enough_images_or_nothing_to_choose(count: int, fraction: float,
                                                                       keep: str) -> None:
    assert validation_warning(count, fraction, keep) is None


class StopAtTrainBegin:
    """Ctrl-C as training begins: everything said before the first step is said, nothing is trained."""

    def __new__(cls):
        import keras

        class Stop(keras.callbacks.Callback):
            def on_train_begin(self, logs=None):
                raise KeyboardInterrupt

        return Stop()


@pytest.mark.parametrize("fraction, held_out, warned", [(0.2, 48, True), (0.45, 108, False)])
def test_training_warns_about_a_tiny_validation_set_only(split_dataset: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch,
                                                         fraction: float, held_out: int, warned: bool) -> None:
    monkeypatch.delenv(MAKE_ENV, raising=False)
    with pytest.raises(TrainingInterrupted):
        train(TrainConfig(data=split_dataset, out=tmp_path, epochs=1, batch_size=SMALL_BATCH,
                          validation_fraction=fraction), QUIET, callbacks=[StopAtTrainBegin()])
    assert validation_count(TRAIN_IMAGES, fraction) == held_out
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning: ")]
    assert warnings == ([f"warning: validating on 48 of 240 training images (validation fraction 0.2): one image "
                         f"is 2.1 points of validation accuracy, too coarse to choose the kept epoch; hold out 100 "
                         f"or more with --validation-fraction 0.42"] if warned else [])


# --- a model that answers one class -----------------------------------------------------------------

def test_one_class_answer_is_found_only_when_every_answer_is_the_same() -> None:
    labels = np.array([0, 1, 2, 1])
    assert one_class_answer(np.array([2, 2, 2, 2]), labels) == 2
    assert one_class_answer(np.array([2, 2, 1, 2]), labels) is None
    # Test images of one class only: answering it is no sign of a model that learned nothing.
    assert one_class_answer(np.array([1, 1]), np.array([1, 1])) is None


def test_too_few_images_for_a_validation_split(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "tiny", per_class=2, class_names=("a", "b"))
    # One training image per class; floor(2 * (1 - 0.6)) = 0 would be left to train on.
    with pytest.raises(DataError, match=r"2 training image\(s\) are too few to hold out 60% for validation"):
        train(TrainConfig(data=root, out=tmp_path / "out", test_fraction=0.5, validation_fraction=0.6), QUIET)


# --- atomic outputs -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small_model():
    from trainer.models.cnn import build_model

    return build_model(num_classes=len(CLASS_NAMES))


HISTORY = {"accuracy": [0.5, 0.7], "val_accuracy": [0.4, 0.6], "loss": [1.0, 0.8], "val_loss": [1.1, 0.9]}


def test_crash_while_saving_the_model_leaves_no_model_file(small_model, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    def crashing_save(path, *args, **kwargs):
        Path(path).write_bytes(b"PK\x03\x04 half a zip")
        raise OSError("disk full")

    monkeypatch.setattr(small_model, "save", crashing_save)
    with pytest.raises(OSError, match="disk full"):
        write_outputs(tmp_path, small_model, CLASS_NAMES, HISTORY, {"test": {}})
    assert list(tmp_path.iterdir()) == []


def test_crash_while_plotting_keeps_the_old_plot_and_report(small_model, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    write_outputs(tmp_path, small_model, CLASS_NAMES, HISTORY, {"run": "first"})
    old_plot = (tmp_path / "accuracy.png").read_bytes()
    from matplotlib.figure import Figure

    def crashing_savefig(self, path, *args, **kwargs):
        Path(path).write_bytes(old_plot[:100])
        raise RuntimeError("renderer crashed")

    monkeypatch.setattr(Figure, "savefig", crashing_savefig)
    with pytest.raises(RuntimeError, match="renderer crashed"):
        write_outputs(tmp_path, small_model, CLASS_NAMES, {"accuracy": [0.1], "val_accuracy": [0.2]},
                      {"run": "second"})
    assert (tmp_path / "accuracy.png").read_bytes() == old_plot
    # training.json is written last: the old one still describes the old outputs.
    assert json.loads((tmp_path / "training.json").read_text()) == {"run": "first"}
    assert leftovers(tmp_path) == []


def test_crash_while_checkpointing_keeps_the_previous_checkpoint(small_model, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / CHECKPOINT_DIR
    recipe = TrainConfig(data=tmp_path).recipe()
    write_checkpoint(folder, small_model, 1, {"loss": [1.0]}, recipe, CLASS_NAMES, 2.0)

    def crashing_save(path, *args, **kwargs):
        Path(path).write_bytes(b"PK\x03\x04 half")
        raise KeyboardInterrupt

    monkeypatch.setattr(small_model, "save", crashing_save)
    with pytest.raises(KeyboardInterrupt):
        write_checkpoint(folder, small_model, 2, {"loss": [1.0, 0.9]}, recipe, CLASS_NAMES, 4.0)
    checkpoint = read_checkpoint(tmp_path)
    assert (checkpoint.epoch, checkpoint.history, checkpoint.training_seconds) == (1, {"loss": [1.0]}, 2.0)
    assert sorted(p.name for p in folder.iterdir()) == ["epoch-001.keras", "state.json"]
