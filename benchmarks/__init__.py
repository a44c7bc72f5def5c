"""benchmarks: the measurements behind BENCHMARKS.md, each a script run from a checkout.

- `bench_train.py`, `bench_arch.py`, `bench_seeds.py`, `bench_memory.py`, `plain_recipe.py`: training
  time, accuracy and memory of the recipes;
- `bench_convert.py`: the conversion and its accuracy targets;
- `bench_runtime.py`, `bench_folders.py`, `bench_cold_start.py` and the `baseline_*.py` loops they run
  against: edge-classify's speed beside the plain interpreter loop;
- `fuzz_models.py` over the `fuzz/` package: `make fuzz`, the model readers under mutated files;
- `harness.py`: what the scripts share (processes measured, targets checked, the machine's name).
"""
