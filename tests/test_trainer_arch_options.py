"""`edge-train --arch` and its options: defaults from the registry, overrides, usage errors, resume."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

import trainer.cli as cli
from synthetic import CLASS_NAMES
from trainer.checkpoint import CHECKPOINT_DIR, Checkpoint, CheckpointError, check_resumable, write_checkpoint
from trainer.config import TrainConfig, streams_batches
from trainer.models import ARCHS
from trainer.phases import Phase, prepare_phase, training_phases
from trainer.train import build_network

EXIT_USAGE = 2


def run(*args: str):
    return CliRunner().invoke(cli.main, [str(arg) for arg in args])


def test_unset_settings_take_the_arch_defaults_and_given_ones_win() -> None:
    cnn = TrainConfig()
    assert (cnn.arch, cnn.epochs, cnn.batch_size, cnn.image_size, cnn.augment, cnn.learning_rate, cnn.alpha) == (
        "cnn", 15, 64, 32, False, 1e-3, None)
    resnet = TrainConfig(arch="resnet8")
    assert (resnet.epochs, resnet.batch_size, resnet.augment, resnet.spec().scale) == (60, 32, True, 1.0)
    # ResNet-8 holds out a twentieth for validation, the others a fifth; a given share wins.
    assert (cnn.validation_fraction, resnet.validation_fraction) == (0.2, 0.05)
    assert TrainConfig(arch="resnet8", validation_fraction=0.0).validation_fraction == 0.0
    assert resnet.recipe()["validation_fraction"] == 0.05
    mobile = TrainConfig(arch="mobilenetv2", epochs=2, image_size=48, augment=False, learning_rate=0.01)
    assert (mobile.epochs, mobile.image_size, mobile.augment, mobile.learning_rate, mobile.alpha) == (
        2, 48, False, 0.01, 0.35)
    assert (mobile.spec().height, mobile.spec().offset) == (48, -1.0)
    recipe = mobile.recipe()
    assert {key: recipe[key] for key in ("arch", "image_size", "augment", "learning_rate", "alpha", "weights")} == {
        "arch": "mobilenetv2", "image_size": 48, "augment": False, "learning_rate": 0.01, "alpha": 0.35,
        "weights": None}


def test_only_the_documented_path_keeps_float_arrays_in_memory() -> None:
    assert not streams_batches(TrainConfig())
    assert streams_batches(TrainConfig(augment=True))
    assert streams_batches(TrainConfig(arch="resnet8"))
    assert streams_batches(TrainConfig(arch="mobilenetv2", augment=False))  # 96 px: never float32 all at once
    assert not streams_batches(TrainConfig(arch="resnet8", augment=False))


def test_pretrained_weights_freeze_the_backbone_first_then_fine_tune_slower(tmp_path: Path) -> None:
    weights = tmp_path / "backbone.weights.h5"
    assert training_phases(TrainConfig(arch="mobilenetv2", epochs=8)) == [Phase(0, 8, 1e-3)]
    assert training_phases(TrainConfig(arch="mobilenetv2", epochs=8, weights=str(weights))) == [
        Phase(0, 5, 1e-3, backbone_trainable=False), Phase(5, 8, pytest.approx(1e-4))]
    assert training_phases(TrainConfig(arch="mobilenetv2", epochs=3, weights="imagenet")) == [
        Phase(0, 3, 1e-3, backbone_trainable=False)]
    assert training_phases(TrainConfig(arch="mobilenetv2", epochs=3, weights="imagenet", freeze_epochs=0)) == [
        Phase(0, 3, 1e-3)]
    assert TrainConfig(arch="mobilenetv2", weights=str(weights)).recipe()["weights"] == str(weights.resolve())


@pytest.mark.parametrize("args, message", [
    (["--alpha", "0.5"], "Invalid value for '--alpha': applies to --arch mobilenetv2 only, not cnn"),
    (["--arch", "resnet8", "--weights", "imagenet"],
     "Invalid value for '--weights': applies to --arch mobilenetv2 only, not resnet8"),
    (["--arch", "resnet8", "--freeze-epochs", "1"],
     "Invalid value for '--freeze-epochs': applies to --arch mobilenetv2 only, not resnet8"),
    (["--arch", "mobilenetv2", "--image-size", "16"],
     "Invalid value for '--image-size': mobilenetv2 needs at least 32 pixels, not 16"),
    (["--arch", "vgg"], "Invalid value for '--arch': 'vgg' is not one of 'cnn', 'resnet8', 'mobilenetv2'"),
    (["--lr", "0"], "Invalid value for '--lr'"),
])
def test_options_a_network_cannot_take_are_usage_errors(tmp_path: Path, args: list[str], message: str) -> None:
    result = run("--data", tmp_path, "--out", tmp_path / "out", *args)
    assert result.exit_code == EXIT_USAGE, result.output
    assert message in result.stderr
    assert "Traceback" not in result.output and not (tmp_path / "out").exists()


def test_a_missing_weights_file_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.weights.h5"
    result = run("--data", tmp_path, "--out", tmp_path / "out", "--arch", "mobilenetv2", "--weights", missing)
    assert result.exit_code == EXIT_USAGE
    assert f"Invalid value for '--weights': {missing}: no such file (give 'imagenet' or a weights file)" in (
        result.stderr)


def test_help_lists_each_network_with_its_defaults() -> None:
    result = run("--help")
    assert result.exit_code == 0
    for name in ARCHS:
        assert ARCHS[name].help_line() in result.output
    assert "--arch [cnn|resnet8|mobilenetv2]" in result.output and "--augment / --no-augment" in result.output


def checkpoint_of(config: TrainConfig, recipe_changes: dict | None = None) -> Checkpoint:
    recipe = dict(config.recipe(), **(recipe_changes or {}))
    return Checkpoint(epoch=1, model_path=Path("epoch-001.keras"), history={"loss": [1.0]}, recipe=recipe,
                      class_names=["a", "b"], training_seconds=1.0)


def test_resume_refuses_another_network_or_a_changed_schedule(tmp_path: Path) -> None:
    made = TrainConfig(data=tmp_path, arch="resnet8", epochs=4)
    check_resumable(checkpoint_of(made), made, tmp_path)  # the same settings resume
    with pytest.raises(CheckpointError, match="made with arch 'resnet8', not 'cnn'"):
        check_resumable(checkpoint_of(made), TrainConfig(data=tmp_path, epochs=4), tmp_path)
    with pytest.raises(CheckpointError, match="made with augment True, not False"):
        check_resumable(checkpoint_of(made), TrainConfig(data=tmp_path, arch="resnet8", epochs=4,
                                                         augment=False), tmp_path)
    with pytest.raises(CheckpointError, match="schedule was planned for 4 epochs, not 6; resume with --epochs 4"):
        check_resumable(checkpoint_of(made), TrainConfig(data=tmp_path, arch="resnet8", epochs=6),
                        tmp_path)
    # The documented CNN's constant learning rate may be given more epochs, as before.
    cnn = TrainConfig(data=tmp_path, epochs=4)
    check_resumable(checkpoint_of(cnn), TrainConfig(data=tmp_path, epochs=6), tmp_path)


def test_a_checkpoint_from_before_arch_existed_resumes_as_the_documented_cnn(tmp_path: Path) -> None:
    config = TrainConfig(data=tmp_path, epochs=4)
    legacy = {key: value for key, value in config.recipe().items()
              if key in ("data", "epochs", "batch_size", "validation_fraction", "seed", "test_fraction", "keep")}
    old = Checkpoint(epoch=1, model_path=Path("m"), history={"loss": [1.0]}, recipe=legacy, class_names=["a"],
                     training_seconds=1.0)
    check_resumable(old, config, tmp_path)
    with pytest.raises(CheckpointError, match="made with arch 'cnn', not 'resnet8'"):
        check_resumable(old, TrainConfig(data=tmp_path, epochs=4, arch="resnet8"), tmp_path)


def test_resume_takes_the_network_from_the_checkpoint(split_dataset: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    made_with = TrainConfig(data=split_dataset, out=tmp_path, arch="resnet8", epochs=3, augment=False,
                            learning_rate=0.002)
    model = ARCHS["resnet8"].build(len(CLASS_NAMES), 32)
    write_checkpoint(tmp_path / CHECKPOINT_DIR, model, 1, {"loss": [1.0]}, made_with.recipe(),
                     sorted(CLASS_NAMES), 3.0)
    configs = []

    def capture(config, progress):
        configs.append(config)
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "train", capture)
    run("--out", tmp_path, "--resume")
    (resumed,) = configs
    assert resumed.recipe() == made_with.recipe()
    assert (resumed.arch, resumed.augment, resumed.learning_rate, resumed.batch_size) == ("resnet8", False, 0.002, 32)


def test_resnet8_compiles_with_label_smoothing_and_the_documented_cnn_without() -> None:
    import keras
    import numpy as np

    for arch, smoothing in (("resnet8", 0.1), ("cnn", 0.0)):
        config = TrainConfig(arch=arch, epochs=4)
        model = build_network(config, 10)
        prepare_phase(model, config, training_phases(config)[0], steps=2)
        target, predicted = np.eye(10, dtype=np.float32)[:1], np.eye(10, dtype=np.float32)[:1] * 0.9 + 0.01
        # Cross-entropy against the smoothed target (0.91 for the class, 0.01 for each other one).
        smoothed = target * (1 - smoothing) + smoothing / 10
        expected = float(-(smoothed * np.log(predicted)).sum())
        loss = model.loss if callable(model.loss) else keras.losses.get(model.loss)
        assert float(np.mean(loss(target, predicted))) == pytest.approx(expected, rel=1e-4)
        assert ARCHS[arch].defaults()["label_smoothing"] == smoothing  # what training.json records
