"""Where a ResNet-8 training epoch's time goes on this machine (issue 24, "measure first").

Each configuration runs in a fresh Python (TensorFlow's thread settings hold only before its first op),
trains MLPerf Tiny's ResNet-8 as the trainer compiles it (trainer.phases: SGD with Nesterov momentum,
label smoothing, the arch's XLA setting) on 32x32 CIFAR-like batches, and reports the time per image
of three things measured apart:

- `step`: the compiled training step alone, on one batch held in memory (tf.data repeats it): the
  kernels, the optimizer and Keras' per-step Python;
- `input`: the trainer's own input pipeline alone (trainer.batches.training_stream: order, gather, flip
  and shift, scale to float32, one-hot, as TensorFlow ops in tf.data), no model;
- `fit`: both as the trainer runs them (training_stream handed to fit);
- `fit-generator`: fit over the pipeline the trainer had until 2026-12-07, numpy batches handed to tf.data
  through a Python generator (from_generator), here without augmentation (which made no difference to its
  time in a first trial), as the baseline of that change;
- `step-arrays`: the step fed from float32 arrays held in memory (Keras' own array batching, no shuffle),
  which every Keras backend accepts: with `--jax-python`, the same network, optimizer, loss and arrays also run
  under Keras 3's JAX backend (KERAS_BACKEND=jax, the step compiled by jax.jit), side by side with
  TensorFlow's. That interpreter needs keras (the trainer's version), jax, numpy, pillow and click; this
  checkout is put on its path.

The FLOP rate counts a training image as 3 x 2 x the multiply-accumulates of one forward pass (the
forward pass, and a backward pass of about twice its work), from the model's own layer shapes.
Timings start after a warm-up epoch (tracing and XLA compilation left out). Pictures are random: the
time of a step does not depend on them.

    .venv/bin/python benchmarks/bench_resnet8_step.py [--images 8192] [--batches 32,64,128,256] [--xla-flags=...]
        [--jax-python PYTHON]

Prints one Markdown table; nothing is asserted (figures for BENCHMARKS.md).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import click

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from benchmarks.harness import cpu_model  # noqa: E402

ARCH = "resnet8"
CLASSES = 10
IMAGE_SIZE = 32
DEFAULT_IMAGES = 8192
DEFAULT_BATCHES = "32,64,128,256"
# Images in the array the input pipeline draws from (CIFAR-10 has 47,500 in resnet8's training share).
POOL_IMAGES = 47_500
FLOPS_PER_MAC = 2
TRAINING_PASSES = 3  # forward, and a backward pass of about twice the forward's work
RUN_TIMEOUT_S = 900


def forward_macs(model) -> int:
    """Multiply-accumulates of one image's forward pass through the convolutions and dense layers."""
    import keras

    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            kernel_h, kernel_w, channels_in, channels_out = layer.kernel.shape
            _, out_h, out_w, _ = layer.output.shape
            total += out_h * out_w * kernel_h * kernel_w * channels_in * channels_out
        elif isinstance(layer, keras.layers.Dense):
            total += layer.kernel.shape[0] * layer.kernel.shape[1]
    return int(total)


def compiled_network(jit: bool):
    """ResNet-8 compiled as trainer.phases.prepare_phase compiles it for resnet8."""
    import keras

    from trainer.models import SGD_MOMENTUM, get_arch
    from trainer.models.cnn import METRICS

    arch = get_arch(ARCH)
    model = arch.build(CLASSES, IMAGE_SIZE)
    optimizer = keras.optimizers.SGD(learning_rate=arch.learning_rate / 10, momentum=SGD_MOMENTUM, nesterov=True)
    model.compile(optimizer=optimizer, loss=keras.losses.CategoricalCrossentropy(label_smoothing=arch.label_smoothing),
                  metrics=list(METRICS), jit_compile=jit)
    return model


class EpochClock:
    """A Keras callback keeping each epoch's wall time."""

    def __new__(cls):
        import keras

        class Clock(keras.callbacks.Callback):
            def __init__(self) -> None:
                super().__init__()
                self.seconds: list[float] = []

            def on_epoch_begin(self, epoch, logs=None) -> None:
                self.started = time.perf_counter()

            def on_epoch_end(self, epoch, logs=None) -> None:
                self.seconds.append(time.perf_counter() - self.started)

        return Clock()


def generator_stream(tf, pool, labels, batch: int):
    """The former pipeline's shape: shuffled numpy batches, scaled and one-hot in Python, via from_generator."""
    import numpy as np

    from edge_runtime.preprocess import scale_pixels
    from trainer.batches import one_hot

    def batches():
        rng = np.random.default_rng(0)
        while True:
            order = rng.permutation(len(pool))
            for start in range(0, len(order), batch):
                chosen = order[start:start + batch]
                yield scale_pixels(pool[chosen]), one_hot(labels[chosen], CLASSES)

    signature = (tf.TensorSpec((None, IMAGE_SIZE, IMAGE_SIZE, 3), tf.float32),
                 tf.TensorSpec((None, CLASSES), tf.float32))
    return tf.data.Dataset.from_generator(batches, output_signature=signature).prefetch(2)


def timed_fit(model, data, steps: int, batch: int, **arrays) -> float:
    """Seconds per image of the second of two epochs of `steps` steps (the first compiles)."""
    clock = EpochClock()
    model.fit(data, epochs=2, steps_per_epoch=steps, verbose=0, callbacks=[clock], **arrays)
    return clock.seconds[-1] / (steps * batch)


def arrays_run(batch: int, images: int, jit: bool) -> dict:
    """The step fed from float32 arrays in memory, under whichever Keras backend this process has."""
    import keras
    import numpy as np

    steps = max(1, images // batch)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(steps * batch, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8).astype(np.float32)
    y = np.eye(CLASSES, dtype=np.float32)[rng.integers(0, CLASSES, size=steps * batch)]
    model = compiled_network(jit)
    seconds = timed_fit(model, x, steps, batch, y=y, batch_size=batch, shuffle=False)
    return {"mode": "step-arrays", "batch": batch, "jit": jit, "steps": steps, "backend": keras.backend.backend(),
            "intra": None, "inter": None, "forward_macs": forward_macs(model), "seconds_per_image": seconds}


def one_run(mode: str, batch: int, images: int, jit: bool) -> dict:
    """Measure one configuration in this process; seconds per image of the timed epoch."""
    import numpy as np

    if mode == "step-arrays":
        return arrays_run(batch, images, jit)
    from edge_runtime.preprocess import PreprocessSpec
    from trainer.batches import DEFAULT_AUGMENTATION, training_stream
    from trainer.tensorflow_env import import_tensorflow

    tf = import_tensorflow()
    steps = max(1, images // batch)
    rng = np.random.default_rng(0)
    pool = rng.integers(0, 256, size=(POOL_IMAGES, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    labels = rng.integers(0, CLASSES, size=POOL_IMAGES)
    index = np.arange(POOL_IMAGES)
    spec = PreprocessSpec(width=IMAGE_SIZE, height=IMAGE_SIZE, scale=1.0, offset=0.0)
    result = {"mode": mode, "batch": batch, "jit": jit, "steps": steps, "backend": "tensorflow",
              "intra": tf.config.threading.get_intra_op_parallelism_threads(),
              "inter": tf.config.threading.get_inter_op_parallelism_threads()}
    if mode == "input":
        batches = iter(training_stream(pool, labels, index, CLASSES, spec, batch, 0, 0, DEFAULT_AUGMENTATION))
        next(batches)
        started = time.perf_counter()
        for _ in range(steps):
            next(batches)
        result["seconds_per_image"] = (time.perf_counter() - started) / (steps * batch)
        return result
    model = compiled_network(jit)
    result["forward_macs"] = forward_macs(model)
    if mode == "step":
        x = tf.constant(pool[:batch].astype(np.float32))
        y = tf.constant(np.eye(CLASSES, dtype=np.float32)[labels[:batch]])
        data = tf.data.Dataset.from_tensors((x, y)).repeat()
    elif mode == "fit-generator":
        data = generator_stream(tf, pool, labels, batch)
    else:
        data = training_stream(pool, labels, index, CLASSES, spec, batch, 0, 0, DEFAULT_AUGMENTATION)
    result["seconds_per_image"] = timed_fit(model, data, steps, batch)
    return result


def run_child(mode: str, batch: int, images: int, jit: bool, intra: int | None, inter: int | None,
              xla_flags: str | None = None, jax_python: str | None = None) -> dict:
    """One configuration in a fresh Python (with XLA_FLAGS set to `xla_flags` when given; under Keras'
    JAX backend in `jax_python` when given); its result line."""
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), TF_CPP_MIN_LOG_LEVEL="2")
    if xla_flags is not None:
        env["XLA_FLAGS"] = xla_flags
    python = sys.executable
    if jax_python is not None:
        env["KERAS_BACKEND"] = "jax"
        python = jax_python
    command = [python, __file__, "--child", json.dumps({"mode": mode, "batch": batch, "images": images,
                                                         "jit": jit, "intra": intra, "inter": inter})]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=RUN_TIMEOUT_S, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        backend = " (JAX)" if jax_python else ""
        raise click.ClickException(f"{mode} batch {batch}{backend} failed (exit {done.returncode}): "
                                   f"{(done.stderr.strip().splitlines() or ['no output'])[-1]}")
    return json.loads(lines[-1])


def child(settings: dict) -> None:
    """The child's side: thread settings first, then the run; one JSON line."""
    if settings["intra"] is not None or settings["inter"] is not None:
        from trainer.tensorflow_env import import_tensorflow

        tf = import_tensorflow()
        if settings["intra"] is not None:
            tf.config.threading.set_intra_op_parallelism_threads(settings["intra"])
        if settings["inter"] is not None:
            tf.config.threading.set_inter_op_parallelism_threads(settings["inter"])
    print(json.dumps(one_run(settings["mode"], settings["batch"], settings["images"], settings["jit"])))


def row(result: dict, label: str) -> str:
    per_image_ms = result["seconds_per_image"] * 1000
    epoch_s = result["seconds_per_image"] * POOL_IMAGES
    flops = ""
    if result.get("forward_macs"):
        rate = TRAINING_PASSES * FLOPS_PER_MAC * result["forward_macs"] / result["seconds_per_image"] / 1e9
        flops = f"{rate:.1f}"
    xla = "-" if result["mode"] == "input" else "on" if result["jit"] else "off"  # no model in the input run
    if result.get("backend", "tensorflow") != "tensorflow":
        label = f"{label}, Keras on {result['backend']}"
    return (f"| {label} | {result['mode']} | {result['batch']} | {xla} | "
            f"{per_image_ms:.3f} | {1 / result['seconds_per_image']:,.0f} | {epoch_s:.0f} | {flops} |")


@click.command()
@click.option("--images", type=click.IntRange(min=256), default=DEFAULT_IMAGES, show_default=True,
              help="Images per timed epoch of each configuration.")
@click.option("--batches", default=DEFAULT_BATCHES, show_default=True, help="Batch sizes, comma-separated.")
@click.option("--rounds", type=click.IntRange(min=1), default=1, show_default=True,
              help="Times the per-batch rows are run, one round after another (the VM's speed drifts).")
@click.option("--settings/--no-settings", default=True, show_default=True,
              help="Also the no-XLA and thread-count rows.")
@click.option("--xla-flags", "xla_flag_sets", multiple=True,
              help="XLA_FLAGS for extra step and fit rows at the first batch size, beside rows without them in "
                   "the same round (repeatable), e.g. --xla-flags=--xla_cpu_use_thunk_runtime=false.")
@click.option("--jax-python", type=click.Path(exists=True, dir_okay=False), default=None,
              help="A Python with keras and jax: adds step-arrays rows under Keras' JAX backend, beside "
                   "TensorFlow's, at the first batch size of each round.")
@click.option("--child", "child_settings", default=None, hidden=True)
def main(images: int, batches: str, rounds: int, settings: bool, xla_flag_sets: tuple[str, ...],
         jax_python: str | None, child_settings: str | None) -> None:
    """Time ResNet-8's training step, input pipeline and both together, per batch size and setting."""
    if child_settings is not None:
        child(json.loads(child_settings))
        return
    sizes = [int(size) for size in batches.split(",")]
    plan: list[tuple[str, str, int, bool, int | None, int | None, str | None, str | None]] = []
    for _ in range(rounds):
        if jax_python is not None:
            plan += [("default threads", "step-arrays", sizes[0], True, None, None, None, python)
                     for python in (None, jax_python)]
        for size in sizes:
            plan += [("default threads", mode, size, True, None, None, None, None)
                     for mode in ("step", "input", "fit", "fit-generator")]
        for flags in xla_flag_sets:
            plan += [(f"XLA_FLAGS={flags}", mode, sizes[0], True, None, None, flags, None) for mode in ("step", "fit")]
    middle = sizes[len(sizes) // 2]
    for size in (sizes[0], middle) if settings else ():
        plan.append(("no XLA", "step", size, False, None, None, None, None))
    if settings:
        plan += [("intra 2, inter 1", "step", middle, True, 2, 1, None, None),
                 ("intra 1, inter 1", "step", middle, True, 1, 1, None, None),
                 ("intra 2, inter 1", "fit", middle, True, 2, 1, None, None)]
    click.echo(f"machine: {cpu_model()}, {os.cpu_count()} CPUs; {images} images per timed epoch")
    lines = ["| setting | what | batch | XLA | ms per image | images/s | s per 47,500 | GFLOP/s |",
             "|---|---|---:|---|---:|---:|---:|---:|"]
    macs = None
    for label, mode, size, jit, intra, inter, flags, python in plan:
        began = time.monotonic()
        result = run_child(mode, size, images, jit, intra, inter, flags, python)
        macs = result.get("forward_macs") or macs
        lines.append(row(result, label))
        click.echo(f"  {lines[-1]}  ({time.monotonic() - began:.0f} s; threads {result['intra']}/{result['inter']})")
    click.echo("")
    if macs:
        click.echo(f"ResNet-8 forward pass: {macs / 1e6:.2f} M multiply-accumulates per image; a training image "
                   f"counts {TRAINING_PASSES * FLOPS_PER_MAC * macs / 1e6:.0f} MFLOP")
    click.echo("\n".join(lines))


if __name__ == "__main__":
    main()
