"""Fuzz everything edge_runtime reads from a .tflite file (issue 14): `make fuzz`.

Mutates valid models, ours (converter-style: official metadata plus our labels, preprocess.json
and model_info.json) and third-party-style ones (official metadata with labels and a score
calibration file, stored or deflated), and reads each through what every path that opens a model
reads: `read_metadata` on the file and `read_official_metadata` on its bytes, then the summary
`--info` prints. A mutant the readers accept is then opened as edge-classify opens it: a
Classifier is built (the interpreter loads the model) and classifies one image, which invokes it,
so a graph damaged where only invoke notices is covered too. A case passes when the readers
return or raise ModelError (one line), and then the Classifier returns scores or raises
ModelError (one line); anything else is a traceback.

Seeds: a Conv2D-GlobalAveragePooling-Dense network (ours, official, official-deflated), and the
documented CNN's layer kinds in miniature, Conv2D-MaxPool-Flatten-Dense (ours-flatten,
official-flatten, and ours-flatten-int8): its resizable batch makes the converter compute the
Reshape's shape at run time (SHAPE, STRIDED_SLICE, PACK of a constant), and its int8 form carries
scales and zero points that the XNNPACK delegate checks at the first invoke.

Mutations: byte flips, interesting integers, truncations, splices, flatbuffer offsets out of range
(in the TFLITE_METADATA buffer and the model's own tables), central-directory edits and lies about
sizes, deflate bombs, archives with many entries, hostile JSON and labels; and graph writes, which
rewrite a value only the interpreter reads, found through flatbuffer_check's bounds-checked reader
of the model's tables: an element of a small constant buffer (shape constants, slice bounds,
biases), a quantization scale or zero point, a tensor's shape or shape signature, an operator's
tensor index or a field of its options. Hypothesis draws them, from a fixed seed.

The cases run in a worker process with an address-space cap (so a runaway allocation fails as a
MemoryError, counted as a traceback) and a per-case time cap (a case over it counts as a hang);
the parent builds the seed models (TensorFlow), runs the worker, prints and records the figures.
A case that kills the worker (a crash in the interpreter's native code) is counted as a crash, its
model is kept in the record, and a new worker runs the cases left, drawn from a seed derived from
the run's seed and the number of the restart (so the same seed still draws the same run):

    .venv/bin/python benchmarks/fuzz_models.py --cases 10000 --record artifacts/fuzz.json

tests/test_fuzz_models.py runs the same strategy for a few seconds in the default suite.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: the repository root is one folder up
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.fuzz.parent import parent  # noqa: E402
from benchmarks.fuzz.run import worker  # noqa: E402

DEFAULT_CASES = 10_000
DEFAULT_SEED = 14
# A case slower than this counts as a hang (the slowest valid read measured is a few ms).
DEFAULT_TIME_CAP_S = 2.0
# Address space the worker may add after loading the seeds: a case that needs more fails.
DEFAULT_ADDRESS_SPACE_MIB = 512
# The peak resident memory the worker may add above what it holds before the first case.
DEFAULT_MEMORY_CAP_MIB = 64


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=DEFAULT_CASES, help="mutated models to read")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="hypothesis seed (same seed, same cases)")
    parser.add_argument("--time-cap", type=float, default=DEFAULT_TIME_CAP_S, help="seconds a case may take")
    parser.add_argument("--memory-cap-mib", type=int, default=DEFAULT_MEMORY_CAP_MIB,
                        help="peak resident MiB the cases may add")
    parser.add_argument("--address-space-mib", type=int, default=DEFAULT_ADDRESS_SPACE_MIB,
                        help="address space the worker may add after loading (0: no cap)")
    parser.add_argument("--record", help="write the figures to this JSON file")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--seeds", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    parser.add_argument("--restart", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    return worker(args) if args.worker else parent(args)


if __name__ == "__main__":
    sys.exit(main())
