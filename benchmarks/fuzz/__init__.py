"""The fuzzer of the model readers that `make fuzz` runs (benchmarks/fuzz_models.py, the command).

- `archives.py`: zip archives written byte by byte, honest or lying, and deflate bombs.
- `seeds.py`: the valid models the cases start from (built once with TensorFlow), saved for the worker.
- `graph.py`: the values of a model's graph that only the interpreter reads, found and rewritten.
- `mutations.py`: the hypothesis strategy of cases: a seed and how it is damaged.
- `run.py`: one case read and run as edge-classify would, under a time cap, counted in a Tally; the
  worker process that runs a budget of cases under an address-space cap.
- `parent.py`: the workers started (and restarted after a crash), their figures merged, the summary
  printed and the record written.
"""
