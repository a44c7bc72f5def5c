"""`edge-train`: train a network of the registry and write model.keras, labels.txt, training.json and accuracy.png.

A thin shell over `trainer.train.train`: it parses options, turns errors into one line and an exit
code (1 for data and checkpoint problems, 2 for usage, 130 for Ctrl-C), and tells how to resume.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from edge_runtime.errors import EdgeError

from .checkpoint import read_checkpoint
from .config import DEFAULT_OUT, TrainConfig
from .dataset import DEFAULT_SEED, DEFAULT_TEST_FRACTION
from .invocation import resume_command
from .tensorflow_env import require_packages
from .keep import KEEP_BEST, KEEP_CHOICES, KEEP_LAST, RULE_BEST
from .models import ARCH_NAMES, ARCHS, DEFAULT_ARCH, DEFAULT_VALIDATION_FRACTION
from .models.mobilenetv2 import IMAGENET
from .outputs import TrainResult
from .progress import Progress
from .train import TrainingInterrupted, train

EXIT_DATA_ERROR = 1
EXIT_INTERRUPTED = 130  # the shell's convention for a program stopped by SIGINT
# Options that --resume takes from the checkpoint when they are not given on the command line.
RESUMABLE_OPTIONS = ("data", "epochs", "batch_size", "validation_fraction", "seed", "test_fraction", "keep", "arch",
                     "image_size", "augment", "learning_rate", "alpha", "weights", "freeze_epochs", "distribute")
# Options that only some networks take, with their flags.
ARCH_ONLY_OPTIONS = {"alpha": "--alpha", "weights": "--weights"}
BACKBONE_OPTIONS = {"freeze_epochs": "--freeze-epochs"}


def arch_defaults_epilog() -> str:
    """The help's closing paragraph: each network's defaults, one line each (click keeps the lines)."""
    lines = "\n".join(f"  {ARCHS[name].help_line()}" for name in ARCH_NAMES)
    return f"\b\nNetworks (--arch) and their defaults:\n{lines}"


@click.command(context_settings={"help_option_names": ["-h", "--help"]}, epilog=arch_defaults_epilog())
@click.option("--arch", type=click.Choice(ARCH_NAMES), default=DEFAULT_ARCH, show_default=True,
              help="The network; its defaults for the options below marked 'the arch's' are listed at the end.")
@click.option("--data", type=click.Path(path_type=Path), default=None,
              help="Local data set: a folder with train/ and test/ class folders, a single class-folder "
                   "tree, cifar-10-python.tar.gz or its cifar-10-batches-py folder. "
                   "Default: CIFAR-10 through Keras' download.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=DEFAULT_OUT, show_default=True,
              help="Folder for model.keras, labels.txt, training.json, accuracy.png and checkpoints/.")
@click.option("--epochs", type=click.IntRange(min=1), default=None,
              help="Total number of epochs.  [default: the arch's]")
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="Images per training step (over all devices with --distribute).  [default: the arch's]")
@click.option("--lr", "learning_rate", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Peak learning rate (after the warm-up, where the arch's schedule has one).  [default: the arch's]")
@click.option("--image-size", type=click.IntRange(min=1), default=None,
              help="Side of the square input, in pixels; images are decoded at it.  [default: the arch's]")
@click.option("--augment/--no-augment", default=None,
              help="Horizontal flips and shifts of the training batches, as the arch's line at the end says "
                   "(never part of the saved model).  [default: the arch's]")
@click.option("--alpha", type=click.FloatRange(min=0, min_open=True), default=None,
              help="mobilenetv2: width multiplier.  [default: 0.35]")
@click.option("--weights", default=None,
              help=f"mobilenetv2: start from pretrained backbone weights, '{IMAGENET}' (Keras downloads them) or "
                   f"the path of a weights file; the backbone is frozen for the first epochs, then fine-tuned at "
                   f"a lower rate.  [default: from scratch]")
@click.option("--freeze-epochs", type=click.IntRange(min=0), default=None,
              help="mobilenetv2 with --weights: epochs with the backbone frozen before fine-tuning.  [default: 5]")
@click.option("--distribute", is_flag=True,
              help="Train through tf.distribute.MirroredStrategy over every GPU (every logical CPU without one).")
@click.option("--validation-fraction", type=click.FloatRange(0.0, 1.0, max_open=True),
              default=None,
              help="Share of the (shuffled) training images held out for validation.  [default: the arch's: "
                   + ", ".join([f"{DEFAULT_VALIDATION_FRACTION:g}"] + [
                       f"{arch.name} {arch.validation_fraction:g}" for arch in ARCHS.values()
                       if arch.validation_fraction != DEFAULT_VALIDATION_FRACTION]) + "]")
@click.option("--test-fraction", type=click.FloatRange(0.0, 1.0, min_open=True, max_open=True),
              default=DEFAULT_TEST_FRACTION, show_default=True,
              help="Share of each class held out for testing when --data is a single class-folder tree.")
@click.option("--seed", type=int, default=DEFAULT_SEED, show_default=True,
              help="Seed for the shuffle, the splits and the weights.")
@click.option("--keep", type=click.Choice(KEEP_CHOICES), default=KEEP_BEST, show_default=True,
              help=f"Which epoch's weights model.keras holds: '{KEEP_BEST}', the epoch with the highest validation "
                   f"accuracy (every epoch still runs; the test set plays no part), or '{KEEP_LAST}', the final "
                   f"epoch, as the documented script does.")
@click.option("--resume", is_flag=True,
              help="Continue the interrupted run in --out from its last completed epoch "
                   "(options not given are taken from the checkpoint). On a finished run it says so and exits 0.")
@click.option("--force", is_flag=True,
              help="Start afresh even if --out holds a finished or unfinished run (it is replaced).")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Processes decoding image files. Default: one per CPU.")
@click.option("--quiet", "-q", is_flag=True, help="Only warnings, errors and the final result.")
@click.pass_context
def main(ctx: click.Context, arch: str, data: Path | None, out: Path, epochs: int | None, batch_size: int | None,
         learning_rate: float | None, image_size: int | None, augment: bool | None, alpha: float | None,
         weights: str | None, freeze_epochs: int | None, distribute: bool, validation_fraction: float | None, test_fraction: float, seed: int,
         keep: str, resume: bool, force: bool, workers: int | None, quiet: bool) -> None:
    """Train a network (default: the documented CIFAR-10 CNN, 15 epochs, batch 64, Adam) and write its
    outputs to --out.

    model.keras keeps the epoch with the best validation accuracy unless --keep last is given.
    A folder that already holds a run is never overwritten silently: use --resume or --force.
    """
    if resume and force:
        raise click.UsageError("--resume continues the run in --out and --force replaces it; give one of them")
    options = {"data": data, "epochs": epochs, "batch_size": batch_size,
               "validation_fraction": validation_fraction, "seed": seed, "test_fraction": test_fraction,
               "keep": keep, "arch": arch, "image_size": image_size, "augment": augment,
               "learning_rate": learning_rate, "alpha": alpha, "weights": weights,
               "freeze_epochs": freeze_epochs, "distribute": distribute}
    try:
        require_packages("edge-train")  # a device install (no [train] extra) hears what to install, first
        if resume:
            options.update(_options_from_checkpoint(ctx, out))
        _check_arch_options(ctx, options)
        config = TrainConfig(out=out, resume=resume, force=force, workers=workers, **options)
        result = train(config, Progress(quiet=quiet))
    except TrainingInterrupted as interrupt:
        click.echo(f"Interrupted after epoch {interrupt.epochs_completed} of {interrupt.epochs}; "
                   f"continue with: {resume_command(out)}", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except KeyboardInterrupt:
        click.echo(_interrupted_message(out), err=True)
        sys.exit(EXIT_INTERRUPTED)
    except EdgeError as error:
        raise click.ClickException(str(error)) from error
    click.echo(final_line(result))
    if result.one_class_answer is not None:
        click.echo(one_class_line(result), err=True)


def _check_arch_options(ctx: click.Context, options: dict) -> None:
    """Usage errors for options the chosen network does not take, or an input size it cannot."""
    network = ARCHS[options["arch"]]
    for name, flag in ARCH_ONLY_OPTIONS.items():
        if options[name] is not None and name not in network.options:
            takers = ", ".join(arch.name for arch in ARCHS.values() if name in arch.options)
            raise click.BadParameter(f"applies to --arch {takers} only, not {network.name}", ctx=ctx,
                                     param_hint=f"'{flag}'")
    for name, flag in BACKBONE_OPTIONS.items():
        if options[name] is not None and network.backbone is None:
            takers = ", ".join(arch.name for arch in ARCHS.values() if arch.backbone is not None)
            raise click.BadParameter(f"applies to --arch {takers} only, not {network.name}", ctx=ctx,
                                     param_hint=f"'{flag}'")
    if options["image_size"] is not None and options["image_size"] < network.min_image_size:
        raise click.BadParameter(f"{network.name} needs at least {network.min_image_size} pixels, not "
                                 f"{options['image_size']}", ctx=ctx, param_hint="'--image-size'")
    weights = options["weights"]
    if (weights is not None and weights != IMAGENET and ctx.get_parameter_source("weights")
            != click.core.ParameterSource.DEFAULT and not Path(weights).expanduser().is_file()):
        raise click.BadParameter(f"{weights}: no such file (give '{IMAGENET}' or a weights file)", ctx=ctx,
                                 param_hint="'--weights'")


def final_line(result: TrainResult) -> str:
    """The last line of a run: which epoch was kept and why, its validation and test accuracy, where it is."""
    kept = result.kept
    validation = "" if kept.val_accuracy is None else f", validation accuracy {kept.val_accuracy:.4f}"
    why = "best validation accuracy" if kept.rule == RULE_BEST else "the last epoch"
    head = "the run is already complete; nothing to do. " if result.already_complete else ""
    return (f"{head}kept epoch {kept.epoch} of {result.epochs_completed} ({why}{validation}): "
            f"test accuracy {result.test_accuracy:.4f}; model in {result.model_path}")


def one_class_line(result: TrainResult) -> str:
    """The summary's warning for a kept model that answers one class for every test image."""
    return (f"warning: the kept model answers \"{result.one_class_answer}\" for every test image: it has not "
            f"learned to tell the classes apart (its test accuracy is that class's share of the test set)")


def _interrupted_message(out: Path) -> str:
    """What to say about Ctrl-C outside the epochs (loading data, writing outputs)."""
    try:
        checkpoint = read_checkpoint(out)
    except EdgeError:
        checkpoint = None
    if checkpoint is None:
        return "Interrupted; no new outputs were written."
    return f"Interrupted; the last checkpoint is epoch {checkpoint.epoch}: continue with: {resume_command(out)}"


def _options_from_checkpoint(ctx: click.Context, out: Path) -> dict:
    """The checkpoint's settings for every resumable option left at its default on the command line."""
    checkpoint = read_checkpoint(out)
    if checkpoint is None:
        return {}  # train() reports the missing checkpoint
    taken = {}
    for name in RESUMABLE_OPTIONS:
        if ctx.get_parameter_source(name) == click.core.ParameterSource.DEFAULT and name in checkpoint.recipe:
            taken[name] = checkpoint.recipe[name]
    return taken


if __name__ == "__main__":
    main()
