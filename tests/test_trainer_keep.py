"""Keeping the best validation epoch: the rule, real runs whose best epoch is not the last, resume,
the plot that marks the kept epoch, and the in-epoch status line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from synthetic import CLASS_NAMES
from trainer_fixtures import InterruptAfterEpoch
from trainer.checkpoint import CHECKPOINT_DIR, read_checkpoint
from trainer.config import TrainConfig
from trainer.epochs import epoch_status
from trainer.keep import (KEEP_BEST, KEEP_LAST, RULE_BEST, RULE_LAST, RULE_LAST_NO_VALIDATION, KeptEpoch,
                          choose_epoch)
from trainer.progress import Progress
from trainer.train import TrainingInterrupted, train

QUIET = Progress(quiet=True)
SMALL_BATCH = 32
EPOCHS = 3
# The synthetic test split is balanced (20 images in each of 4 classes): a model that answers one
# class for every image scores exactly this.
CONSTANT_ANSWER_ACCURACY = 1 / len(CLASS_NAMES)


# --- the rule ------------------------------------------------------------------------------------

def test_best_is_the_highest_validation_accuracy_not_the_last() -> None:
    history = {"loss": [1.0, 0.8, 0.6, 0.4], "val_accuracy": [0.50, 0.70, 0.65, 0.60],
               "val_loss": [1.0, 0.9, 1.1, 1.3]}
    assert choose_epoch(history, KEEP_BEST) == KeptEpoch(2, RULE_BEST, KEEP_BEST, 0.70)
    assert choose_epoch(history, KEEP_LAST) == KeptEpoch(4, RULE_LAST, KEEP_LAST, 0.60)


def test_accuracy_ties_go_to_the_lower_validation_loss_then_the_earlier_epoch() -> None:
    history = {"loss": [1.0] * 4, "val_accuracy": [1.0, 1.0, 1.0, 0.9], "val_loss": [0.30, 0.05, 0.05, 0.01]}
    assert choose_epoch(history, KEEP_BEST).epoch == 2


def test_without_validation_the_last_epoch_is_kept_and_the_rule_says_why() -> None:
    history = {"loss": [1.0, 0.5], "accuracy": [0.4, 0.6]}
    assert choose_epoch(history, KEEP_BEST) == KeptEpoch(2, RULE_LAST_NO_VALIDATION, KEEP_BEST, None)


@pytest.mark.parametrize("history, keep, message", [
    ({"loss": [1.0]}, "first", "keep must be one of best, last, not 'first'"),
    ({"loss": []}, KEEP_BEST, "the history has no epochs to choose from"),
])
def test_bad_rules_and_empty_histories_are_refused(history: dict, keep: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        choose_epoch(history, keep)


# --- real runs whose best epoch is not the last ---------------------------------------------------

class ZeroWeightsFrom:
    """From epoch `first` (1-based) on, zero every weight before the epoch trains.

    A zeroed ReLU network learns nothing but its output bias, so those epochs answer one class for
    every image: validation accuracy far below epoch 1's, whatever the machine's arithmetic. That
    makes a run whose best epoch is certainly not its last.
    """

    def __new__(cls, first: int):
        import keras

        class ZeroWeights(keras.callbacks.Callback):
            def on_epoch_begin(self, index, logs=None):
                if index + 1 >= first:
                    self.model.set_weights([np.zeros_like(w) for w in self.model.get_weights()])

        return ZeroWeights()


def weights_of(path: Path) -> list[np.ndarray]:
    import keras

    return keras.models.load_model(path).get_weights()


def config(data: Path, out: Path, **changes) -> TrainConfig:
    return TrainConfig(data=data, out=out, epochs=EPOCHS, batch_size=SMALL_BATCH, seed=3, **changes)


@pytest.fixture(scope="module")
def uninterrupted(split_dataset: Path, tmp_path_factory: pytest.TempPathFactory):
    """Three epochs; epochs 2 and 3 start from zeroed weights, so epoch 1 is the best on validation."""
    out = tmp_path_factory.mktemp("best")
    return train(config(split_dataset, out), QUIET, callbacks=[ZeroWeightsFrom(2)])


@pytest.mark.slow
def test_best_epoch_is_kept_when_it_is_not_the_last(uninterrupted) -> None:
    out = uninterrupted.out
    report = json.loads((out / "training.json").read_text())
    validation = report["history"]["val_accuracy"]
    assert validation[0] > max(validation[1:])  # the construction worked: epoch 1 is the best
    assert report["kept"] == {"epoch": 1, "rule": RULE_BEST, "keep": KEEP_BEST, "val_accuracy": validation[0]}
    assert uninterrupted.kept.epoch == 1 and report["epochs"] == EPOCHS  # every epoch still ran
    # model.keras is epoch 1's model, and its test accuracy is reported; the last epoch's is there too.
    checkpoint = read_checkpoint(out)
    assert checkpoint.epoch == EPOCHS and checkpoint.best_epoch == 1
    for kept, saved in zip(weights_of(out / "model.keras"), weights_of(checkpoint.best_model_path)):
        assert np.array_equal(kept, saved)
    assert report["test_last_epoch"]["accuracy"] == pytest.approx(CONSTANT_ANSWER_ACCURACY)
    assert report["test"]["accuracy"] > CONSTANT_ANSWER_ACCURACY + 0.25
    assert report["test"]["accuracy"] == pytest.approx(uninterrupted.test_accuracy)
    assert report["test"]["one_class_answer"] is None and uninterrupted.one_class_answer is None


@pytest.mark.slow
def test_keep_last_keeps_the_final_epoch(split_dataset: Path, tmp_path: Path) -> None:
    result = train(config(split_dataset, tmp_path, keep=KEEP_LAST), QUIET, callbacks=[ZeroWeightsFrom(2)])
    report = json.loads((tmp_path / "training.json").read_text())
    assert report["kept"]["epoch"] == EPOCHS and report["kept"]["rule"] == RULE_LAST
    assert report["config"]["keep"] == KEEP_LAST
    assert result.test_accuracy == pytest.approx(CONSTANT_ANSWER_ACCURACY)
    assert {key: report["test"][key] for key in ("loss", "accuracy", "count")} == report["test_last_epoch"]
    # The zeroed network answers one class (its output bias' largest) for every test image, and says so.
    import keras

    from edge_runtime.preprocess import scale_pixels
    from trainer.sources import load_dataset

    dataset = load_dataset(split_dataset, progress=QUIET)
    answers = keras.models.load_model(tmp_path / "model.keras").predict(scale_pixels(dataset.test_images), verbose=0)
    (answered,) = set(np.argmax(answers, axis=1).tolist())
    assert result.one_class_answer == report["test"]["one_class_answer"] == dataset.class_names[answered]
    final = read_checkpoint(tmp_path).model_path
    for kept, saved in zip(weights_of(tmp_path / "model.keras"), weights_of(final)):
        assert np.array_equal(kept, saved)


@pytest.mark.slow
def test_resumed_run_keeps_the_same_epoch_as_an_uninterrupted_one(uninterrupted, split_dataset: Path,
                                                                  tmp_path: Path) -> None:
    with pytest.raises(TrainingInterrupted):
        train(config(split_dataset, tmp_path), QUIET, callbacks=[ZeroWeightsFrom(2), InterruptAfterEpoch(2)])
    # The checkpoint holds the last epoch (2) and, beside it, the best so far (1).
    assert sorted(p.name for p in (tmp_path / CHECKPOINT_DIR).iterdir()) == [
        "epoch-001.keras", "epoch-002.keras", "state.json"]
    best_before = weights_of(tmp_path / CHECKPOINT_DIR / "epoch-001.keras")

    resumed = train(config(split_dataset, tmp_path, resume=True), QUIET, callbacks=[ZeroWeightsFrom(2)])
    assert resumed.resumed_from_epoch == 2
    assert resumed.kept == uninterrupted.kept
    kept_weights = weights_of(tmp_path / "model.keras")
    for kept, before in zip(kept_weights, best_before):
        assert np.array_equal(kept, before)
    # Epoch 1 is the same computation in both runs (same seed, same data).
    for kept, other in zip(kept_weights, weights_of(uninterrupted.model_path)):
        np.testing.assert_allclose(kept, other, atol=1e-5)


# --- the plot ------------------------------------------------------------------------------------

HISTORY = {"accuracy": [0.5, 0.7, 0.8], "val_accuracy": [0.45, 0.6, 0.55],
           "loss": [1.2, 0.8, 0.6], "val_loss": [1.3, 1.0, 1.1]}


def test_plot_has_accuracy_and_loss_panels_with_the_kept_epoch_marked() -> None:
    from trainer.plots import KEPT_COLOUR, training_figure

    figure = training_figure(HISTORY, kept_epoch=2)
    accuracy, loss = figure.axes
    assert (accuracy.get_ylabel(), loss.get_ylabel()) == ("Accuracy", "Loss")
    for axes in (accuracy, loss):
        assert list(axes.get_xticks()) == [1, 2, 3]
        marks = [line for line in axes.get_lines() if line.get_color() == KEPT_COLOUR]
        assert [list(mark.get_xdata()) for mark in marks] == [[2, 2]]  # the vertical line at epoch 2
    # One legend, on the accuracy panel (the loss curves rise into the loss panel's corners).
    assert "kept: epoch 2" in [text.get_text() for text in accuracy.get_legend().get_texts()]
    assert loss.get_legend() is None



def test_one_epoch_gets_one_integer_tick() -> None:
    from trainer.plots import training_figure

    figure = training_figure({key: values[:1] for key, values in HISTORY.items()}, kept_epoch=1)
    assert [list(axes.get_xticks()) for axes in figure.axes] == [[1], [1]]


def test_plot_is_written_as_png(tmp_path: Path) -> None:
    from PIL import Image

    from trainer.plots import plot_training_curves

    path = plot_training_curves(HISTORY, tmp_path / "accuracy.png", kept_epoch=3)
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size[0] > image.size[1]  # two panels side by side


# --- progress within an epoch ---------------------------------------------------------------------

def test_epoch_status_reports_steps_rate_and_time_left() -> None:
    # Step 1 ended at 0.05 s; the 199 steps after it took 9.95 s: 0.05 s a step.
    assert epoch_status(3, 15, 200, 625, 64, 10.0, 0.05) == (
        "epoch 3/15  step 200/625  1,280 images/s  0:21 left in this epoch")


def test_time_left_leaves_out_the_first_step_which_compiles_the_graph() -> None:
    # Step 1 took 12 s (building and compiling the graph); each step after it takes 0.1 s.
    first = 12.0
    assert epoch_status(1, 15, 1, 100, 64, first, first) == "epoch 1/15  step 1/100"  # nothing to estimate from
    assert epoch_status(1, 15, 11, 100, 64, first + 1.0, first) == (
        "epoch 1/15  step 11/100  640 images/s  0:09 left in this epoch")  # from all 11 steps: 1:45
    assert epoch_status(1, 15, 11, 100, 64, first + 1.0, None) == "epoch 1/15  step 11/100"
    assert epoch_status(1, 15, 11, 0, 64, first + 1.0, first) == "epoch 1/15  step 11/?  640 images/s"


def test_status_line_of_the_training_callback_starts_timing_after_step_1(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from trainer import epochs

    callback = epochs.epoch_callback(tmp_path, {}, {}, CLASS_NAMES, 15, 64, 0.0, Progress(live=True))
    callback.set_params({"steps": 100})
    clock = iter([100.0, 112.0, *(112.0 + 0.1 * step for step in range(1, 11))])
    monkeypatch.setattr(epochs.time, "perf_counter", lambda: next(clock))
    callback.on_epoch_begin(0)
    for batch in range(11):  # step 1 ends 12 s in, then a step every 0.1 s
        callback.on_train_batch_end(batch)
    drawn = [line.rstrip() for line in capsys.readouterr().err.split("\r") if line]
    assert drawn[0] == "epoch 1/15  step 1/100"
    assert drawn[-1] == "epoch 1/15  step 11/100  640 images/s  0:09 left in this epoch"


def test_status_is_redrawn_on_a_terminal_and_never_in_a_log(capsys: pytest.CaptureFixture) -> None:
    terminal = Progress(live=True)
    terminal.status("epoch 1/2  step 10/20")
    terminal.status("epoch 1/2  step 20/20")
    terminal.message("epoch 1/2  accuracy 0.5")
    err = capsys.readouterr().err
    assert err == ("\repoch 1/2  step 10/20" "\repoch 1/2  step 20/20" "\r" + " " * 21 + "\r"
                   "epoch 1/2  accuracy 0.5\n")
    log = Progress(live=False)
    log.status("epoch 1/2  step 10/20")
    log.message("epoch 1/2  accuracy 0.5")
    assert capsys.readouterr().err == "epoch 1/2  accuracy 0.5\n"
    assert Progress(quiet=True, live=True).live is False
