"""Peak memory of training at 96x96 on the 50,000 CIFAR-10 training images (issue 10: aim under 4 GiB).

Each phase runs in a fresh process, which reports its own peak resident memory (VmHWM from
/proc/self/status, file-backed pages of the memory-mapped cache included) and its wall time:

- `decode, cold cache`: `load_dataset` at 96x96 (train/ and test/, 60,000 files) into an empty cache;
- `decode, warm cache`: the same again, now read from the cache;
- `decode, no cache`: the same with the cache off (`EDGE_TOOLKIT_CACHE=off`), uint8 arrays in memory;
- `train steps`: warm load, then MobileNetV2 (alpha 0.35, 96x96) trained for `--steps` batches of 32
  through the trainer's own stream (augmented, shuffled over all training images), and validated on
  `--steps` batches. Memory is flat after the first steps (one batch at a time is float32), so a
  full epoch is not needed to find the peak; the phase says how many steps it ran.

For comparison it prints what float32 copies of the whole set would take.

    python benchmarks/bench_memory.py [--data ../shared/datasets/cifar10-jpeg] [--steps 60] [--json out.json]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import click

from bench_train import DEFAULT_DATA, REPO_ROOT, echo, machine

SIZE = 96
GIB = 1024 ** 3
MIB = 1024 ** 2
TARGET_GIB = 4.0

PHASE = r"""
import json, sys, time
import numpy as np
started = time.perf_counter()
from edge_runtime.preprocess import PreprocessSpec
from trainer.progress import Progress
from trainer.sources import load_dataset
from trainer.models import get_arch

arch = get_arch("mobilenetv2")
spec = arch.spec(int(sys.argv[2]))
dataset = load_dataset(sys.argv[1], progress=Progress(quiet=True), spec=spec)
result = {"train_images": int(dataset.train_count), "test_images": int(dataset.test_count),
          "shape": list(dataset.train_images.shape[1:]), "memory_mapped": isinstance(dataset.train_images, np.memmap)}
steps = int(sys.argv[3])
if steps:
    import keras
    from trainer.batches import DEFAULT_AUGMENTATION, as_tensor, evaluation_stream, training_stream

    index = np.arange(dataset.train_count)
    model = arch.build(dataset.num_classes, spec.height)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="categorical_crossentropy", metrics=["accuracy"])
    train = training_stream(as_tensor(dataset.train_images), dataset.train_labels, index, dataset.num_classes,
                            spec, 32, 0, 0, DEFAULT_AUGMENTATION)
    model.fit(train, epochs=1, steps_per_epoch=steps, verbose=0)
    test = evaluation_stream(dataset.test_images, dataset.test_labels, None, dataset.num_classes, spec, 32)
    model.evaluate(test, steps=steps, verbose=0)
    result["steps"] = steps
result["seconds"] = round(time.perf_counter() - started, 1)
for line in open("/proc/self/status"):
    if line.startswith("VmHWM:"):
        result["peak_bytes"] = int(line.split()[1]) * 1024
print(json.dumps(result))
"""


def run_phase(name: str, data: Path, steps: int, cache: str) -> dict[str, Any]:
    """One phase in a fresh process with the decoded cache at `cache` ("off" to turn it off)."""
    env = {**os.environ, "EDGE_TOOLKIT_CACHE": cache, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(REPO_ROOT)}
    echo(f"== {name}")
    completed = subprocess.run([sys.executable, "-c", PHASE, str(data), str(SIZE), str(steps)], cwd=REPO_ROOT,
                               env=env, capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        raise click.ClickException(f"{name} failed: {completed.stderr.strip().splitlines()[-1:]}")
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    result["phase"] = name
    echo(f"   {result['seconds']:.1f} s, peak {result['peak_bytes'] / MIB:,.0f} MiB"
         f" ({'memory-mapped' if result['memory_mapped'] else 'in memory'})")
    return result


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--data", type=click.Path(exists=True, file_okay=False, path_type=Path), default=DEFAULT_DATA,
              show_default=True, help="Image folders with train/ and test/.")
@click.option("--steps", type=click.IntRange(min=1), default=60, show_default=True,
              help="Training (and validation) batches of the training phase.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the results here.")
def main(data: Path, steps: int, json_path: Path | None) -> None:
    """Peak memory of decoding and training at 96x96 on the whole data set, phase by phase."""
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-memory-cache-") as cache:
        results.append(run_phase("decode, cold cache", data, 0, cache))
        results.append(run_phase("decode, warm cache", data, 0, cache))
        results.append(run_phase(f"train steps ({steps} of 32, warm cache)", data, steps, cache))
    results.append(run_phase("decode, no cache", data, 0, "off"))
    images = results[0]["train_images"] + results[0]["test_images"]
    uint8_bytes = images * SIZE * SIZE * 3
    click.echo(f"\n{images:,} images at {SIZE}x{SIZE}: uint8 {uint8_bytes / GIB:.2f} GiB; "
               f"float32 copies would be {uint8_bytes * 4 / GIB:.2f} GiB")
    for result in results:
        verdict = "under" if result["peak_bytes"] < TARGET_GIB * GIB else "OVER"
        click.echo(f"{result['phase']:40s} {result['seconds']:7.1f} s   peak {result['peak_bytes'] / GIB:5.2f} GiB "
                   f"({verdict} {TARGET_GIB:g} GiB)")
    if json_path is not None:
        json_path.write_text(json.dumps({"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                                         "machine": machine(), "size": SIZE, "results": results}, indent=2))


if __name__ == "__main__":
    main()
