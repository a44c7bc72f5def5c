"""`edge-train`: exit codes and one-line messages, resume options, Ctrl-C, a light --help."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

import trainer.cli as cli
from synthetic import CLASS_NAMES, write_image_folder
from trainer.checkpoint import CHECKPOINT_DIR, write_checkpoint
from trainer.config import TrainConfig
from trainer.invocation import MAKE_ENV, train_program
from trainer.keep import KEEP_BEST, RULE_BEST, KeptEpoch
from trainer.outputs import TrainResult
from trainer.train import TrainingInterrupted

REPO_ROOT = Path(__file__).resolve().parent.parent
EXIT_USAGE = 2


def run(*args: str):
    return CliRunner().invoke(cli.main, [str(arg) for arg in args])


@pytest.fixture(autouse=True)
def as_edge_train(monkeypatch: pytest.MonkeyPatch) -> None:
    """Messages name edge-train's options unless a test says the command runs under make."""
    monkeypatch.delenv(MAKE_ENV, raising=False)


def test_help_does_not_import_tensorflow() -> None:
    code = ("import sys; from click.testing import CliRunner; import trainer.cli as c; "
            "r = CliRunner().invoke(c.main, ['--help']); assert r.exit_code == 0, r.output; "
            "assert '--resume' in r.output; "
            "print(sorted(m for m in ('tensorflow', 'keras', 'matplotlib') if m in sys.modules))")
    completed = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True,
                               timeout=60, check=False)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == "[]"


def test_missing_data_is_one_line_and_exit_1(tmp_path: Path) -> None:
    result = run("--data", tmp_path / "nowhere", "--out", tmp_path / "out")
    assert result.exit_code == 1
    assert result.stderr == f"Error: {tmp_path / 'nowhere'}: no such file or folder\n"
    assert not (tmp_path / "out").exists()


def test_single_class_folder_names_the_folder(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "data", per_class=2, class_names=("cats",))
    result = run("--data", root, "--out", tmp_path / "out")
    assert result.exit_code == 1
    assert result.stderr.splitlines()[-1] == (f"Error: {root}: found 1 class folder (cats); need at least two, "
                                              f"one sub-folder per class")
    assert "Traceback" not in result.output


@pytest.mark.parametrize("option, value, name", [("--epochs", "0", "--epochs"),
                                                 ("--batch-size", "-1", "--batch-size"),
                                                 ("--validation-fraction", "1", "--validation-fraction"),
                                                 ("--test-fraction", "0", "--test-fraction")])
def test_bad_option_values_are_usage_errors(tmp_path: Path, option: str, value: str, name: str) -> None:
    result = run("--data", tmp_path, option, value)
    assert result.exit_code == EXIT_USAGE
    assert f"Invalid value for '{name}'" in result.stderr


def test_resume_without_checkpoint_exits_1(split_dataset: Path, tmp_path: Path) -> None:
    result = run("--data", split_dataset, "--out", tmp_path, "--resume")
    assert result.exit_code == 1
    assert result.stderr == (f"Error: {tmp_path / CHECKPOINT_DIR}: no checkpoint to resume from; "
                             f"run without --resume to start\n")


def test_ctrl_c_during_training_says_how_to_resume(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "my run"

    def interrupted(config, progress):
        raise TrainingInterrupted(1, 3, config.out)

    monkeypatch.setattr(cli, "train", interrupted)
    result = run("--data", tmp_path, "--out", out, "--epochs", "3")
    assert result.exit_code == cli.EXIT_INTERRUPTED
    assert result.stderr == f"Interrupted after epoch 1 of 3; continue with: edge-train --resume --out '{out}'\n"


def test_ctrl_c_before_any_checkpoint_says_nothing_was_written(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(config, progress):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "train", interrupted)
    result = run("--data", tmp_path, "--out", tmp_path / "out")
    assert result.exit_code == cli.EXIT_INTERRUPTED
    assert result.stderr == "Interrupted; no new outputs were written.\n"


def test_resume_takes_unspecified_options_from_the_checkpoint(split_dataset: Path, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from trainer.models.cnn import build_model

    made_with = TrainConfig(data=split_dataset, out=tmp_path, epochs=5, batch_size=16, seed=9,
                            validation_fraction=0.25)
    write_checkpoint(tmp_path / CHECKPOINT_DIR, build_model(num_classes=len(CLASS_NAMES)), 2,
                     {"loss": [1.0, 0.9]}, made_with.recipe(), sorted(CLASS_NAMES), 3.0)
    configs = []

    def capture(config, progress):
        configs.append(config)
        raise KeyboardInterrupt  # stop here: only the options are under test

    monkeypatch.setattr(cli, "train", capture)
    result = run("--out", tmp_path, "--resume")
    assert result.stderr == (f"Interrupted; the last checkpoint is epoch 2: continue with: "
                             f"edge-train --resume --out {tmp_path}\n")
    run("--out", tmp_path, "--resume", "--epochs", "8")
    first, explicit = configs
    assert first.recipe() == made_with.recipe() and first.resume
    assert (explicit.epochs, explicit.batch_size, explicit.seed) == (8, 16, 9)


def test_training_through_the_cli(split_dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "artifacts"
    result = run("--data", split_dataset, "--out", out, "--epochs", "1", "--batch-size", "32")
    assert result.exit_code == 0, result.output
    report = json.loads((out / "training.json").read_text())
    assert result.stdout == (f"kept epoch 1 of 1 (best validation accuracy, validation accuracy "
                             f"{report['history']['val_accuracy'][0]:.4f}): test accuracy "
                             f"{report['test']['accuracy']:.4f}; model in {out / 'model.keras'}\n")
    progress = result.stderr.splitlines()
    # train/ and test/ are decoded (and cached) one after the other.
    assert "decoded images: 240/240" in progress and "decoded images: 80/80" in progress
    # Not a terminal: one line per epoch, no status line redrawn with carriage returns.
    assert [line for line in progress if line.startswith("epoch ")] == [
        line for line in progress if line.startswith("epoch 1/1  ") and "val_accuracy" in line]
    assert "\r" not in result.stderr
    assert (out / "model.keras").is_file()

    # 240 training images: a fifth held out is 48, fewer than the kept epoch should be chosen on.
    assert ("warning: validating on 48 of 240 training images (validation fraction 0.2): one image is 2.1 points "
            "of validation accuracy, too coarse to choose the kept epoch; hold out 100 or more with "
            "--validation-fraction 0.42") in progress
    assert report["test"]["one_class_answer"] is None and "answers" not in result.stderr

    # A second fresh run into the same folder refuses: the run is complete; --force or another --out.
    model_bytes = (out / "model.keras").read_bytes()
    checkpoint_files = sorted(p.name for p in (out / CHECKPOINT_DIR).iterdir())
    again = run("--data", split_dataset, "--out", out, "--epochs", "1", "--batch-size", "32")
    assert again.exit_code == 1
    assert again.stderr == (f"Error: {out}: already holds a finished run (model.keras, training.json); it is "
                            f"complete: replace it with --force, or train into another folder with --out FOLDER\n")
    assert (out / "model.keras").read_bytes() == model_bytes
    assert sorted(p.name for p in (out / CHECKPOINT_DIR).iterdir()) == checkpoint_files

    # --resume on the finished run: says so, exits 0, loads no data and trains nothing.
    done = run("--out", out, "--resume")
    assert done.exit_code == 0, done.output
    assert done.stdout.startswith("the run is already complete; nothing to do. kept epoch 1 of 1 ")
    assert "loading" not in done.stderr and "epoch 1/1" not in done.stderr
    assert (out / "model.keras").read_bytes() == model_bytes


def finished_run(folder: Path) -> Path:
    """A folder that looks like a finished run to the refusal (which only checks that the files are there)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("model.keras", "training.json"):
        (folder / name).write_text("stand-in\n")
    return folder


def test_under_make_the_refusal_names_make_variables(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = finished_run(tmp_path / "run")
    monkeypatch.setenv(MAKE_ENV, "1")
    result = run("--out", out)
    assert result.exit_code == 1
    assert result.stderr == (f"Error: {out}: already holds a finished run (model.keras, training.json); it is "
                             f"complete: replace it with FORCE=1, or train into another folder with OUT=FOLDER\n")


def test_under_make_ctrl_c_names_the_edge_train_beside_python(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(config, progress):
        raise TrainingInterrupted(1, 3, config.out)

    monkeypatch.setattr(cli, "train", interrupted)
    monkeypatch.setenv(MAKE_ENV, "1")
    result = run("--out", tmp_path, "--epochs", "3")
    assert result.exit_code == cli.EXIT_INTERRUPTED
    assert result.stderr == (f"Interrupted after epoch 1 of 3; continue with: {train_program()} --resume "
                             f"--out {tmp_path}\n")
    # The make recipe runs the venv's Python, whose edge-train need not be on PATH.
    beside = Path(sys.executable).parent / "edge-train"
    if beside.is_file():
        assert (Path.cwd() / train_program()).resolve() == beside.resolve()
    monkeypatch.delenv(MAKE_ENV)
    assert train_program() == "edge-train"


def test_summary_says_when_the_kept_model_answers_one_class(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def one_class(config, progress):
        return TrainResult(out=tmp_path, model_path=tmp_path / "model.keras", labels_path=tmp_path / "labels.txt",
                           report_path=tmp_path / "training.json", plot_path=tmp_path / "accuracy.png",
                           history={}, test_loss=1.4, test_accuracy=0.25, epochs_completed=2, resumed_from_epoch=0,
                           durations={}, kept=KeptEpoch(2, RULE_BEST, KEEP_BEST, 0.25), last_epoch_test_accuracy=0.25,
                           one_class_answer="cross")

    monkeypatch.setattr(cli, "train", one_class)
    result = run("--out", tmp_path, "--epochs", "2")
    assert result.exit_code == 0
    assert result.stdout.startswith("kept epoch 2 of 2 (best validation accuracy, validation accuracy 0.2500)")
    assert result.stderr == ('warning: the kept model answers "cross" for every test image: it has not learned to '
                             "tell the classes apart (its test accuracy is that class's share of the test set)\n")


def test_resume_and_force_together_is_a_usage_error(tmp_path: Path) -> None:
    result = run("--out", tmp_path, "--resume", "--force")
    assert result.exit_code == EXIT_USAGE
    assert "--resume continues the run in --out and --force replaces it; give one of them" in result.stderr


def test_keep_option_is_checked_and_explained() -> None:
    result = run("--keep", "first")
    assert result.exit_code == EXIT_USAGE
    assert "Invalid value for '--keep'" in result.stderr
    helped = run("--help")
    assert "--keep [best|last]" in helped.output and "--force" in helped.output
