"""Models whose graph would crash LiteRT are refused in one line before it runs them (issue 20).

`make fuzz`'s graph writes found models that LiteRT loads and then crashes on (a segmentation fault,
no message): an operator writing into the graph's input or to no tensor, a convolution or dense
layer without its weights, a pooling window so damaged that its output has no pixels. The
interpreter module checks the graph before and after allocation; each case here is one of the
fuzzer's findings, rebuilt from its seed, and runs in a subprocess so that a crash fails the test
instead of ending pytest.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from benchmarks.fuzz.graph import graph_values, write_graph_value
from benchmarks.fuzz.seeds import build_seeds

REPO_ROOT = Path(__file__).resolve().parent.parent
TIMEOUT_S = 60
SIGSEGV_EXIT = -11
INT32_MIN = -2_147_483_648

# (seed, graph value, new value, what the one line says)
CASES = {
    "dense layer without its weights": ("ours-flatten", "op 6 input [1]", -1,
                                        "operator 6 (FULLY_CONNECTED) lacks one of its first 2 inputs"),
    "convolution without its weights": ("ours-flatten", "op 0 input [1]", -1,
                                        "operator 0 (CONV_2D) lacks one of its first 2 inputs"),
    "softmax writing into the input": ("ours-flatten", "op 7 output [0]", 0,
                                       "operator 7 (SOFTMAX) writes its result to the graph's input tensor 0"),
    "reshape writing into the input": ("official-flatten", "op 5 output [0]", 0,
                                       "operator 5 (RESHAPE) writes its result to the graph's input tensor 0"),
    "slice writing to no tensor": ("ours-flatten", "op 3 output [0]", -1,
                                   "operator 3 (STRIDED_SLICE) writes its result to no tensor"),
    "pooling window of -2^31 rows": ("ours-flatten", "op 1 option field 4", INT32_MIN,
                                     "has an empty shape [1, 0, 7, 4] after allocation"),
    "input of 268,649 rows": ("ours-flatten", "tensor 0 shape [1]", 268_649,
                              "larger than 4096 pixels a side"),
}


@pytest.fixture(scope="module")
def seeds():
    return {seed.name: seed for seed in build_seeds()}


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("photo") / "photo.png"
    Image.fromarray(np.full((16, 16, 3), 128, dtype=np.uint8)).save(path)
    return path


def damaged(seeds, tmp_path: Path, case: str) -> Path:
    seed_name, where, new, _ = CASES[case]
    seed = seeds[seed_name]
    value = next(value for value in graph_values(seed.data) if value.where == where)
    path = tmp_path / "damaged.tflite"
    path.write_bytes(write_graph_value(seed.data, value, new))
    return path


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CASES))
def test_a_graph_that_would_crash_the_interpreter_is_one_line_and_exit_2(seeds, photo, tmp_path, case) -> None:
    model = damaged(seeds, tmp_path, case)
    result = subprocess.run([sys.executable, "-m", "edge_runtime.cli", "--model", str(model), str(photo)],
                            capture_output=True, text=True, timeout=TIMEOUT_S, cwd=REPO_ROOT)
    assert result.returncode != SIGSEGV_EXIT, "the interpreter crashed"
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"Error: {model}: the model's graph is damaged ("), lines
    assert CASES[case][3] in lines[0]
    assert result.stdout == ""


@pytest.mark.slow
def test_the_undamaged_seeds_still_run(seeds, photo, tmp_path) -> None:
    """The checks refuse damage, not the seeds they were drawn from."""
    for name in ("ours-flatten", "official-flatten", "ours-flatten-int8"):
        model = tmp_path / f"{name}.tflite"
        model.write_bytes(seeds[name].data)
        result = subprocess.run([sys.executable, "-m", "edge_runtime.cli", "--model", str(model), str(photo)],
                                capture_output=True, text=True, timeout=TIMEOUT_S, cwd=REPO_ROOT)
        assert result.returncode == 0, (name, result.stderr)


def test_an_output_scale_that_overflows_is_refused_without_a_numpy_warning() -> None:
    """The fuzzer's float32-maximum output scale: numpy printed an overflow warning before the error."""
    import warnings

    from edge_runtime.classify import TensorInfo, dequantization_table
    from edge_runtime.errors import ModelError

    damaged_scale = TensorInfo(index=0, shape=(1, 3), dtype=np.dtype(np.int8), scale=3.4028235e38, zero_point=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ModelError, match=r"^output quantization \(scale 3\.40282e\+38, zero point 0\) gives "
                                             r"scores that are not finite numbers$"):
            dequantization_table(damaged_scale)
    honest = TensorInfo(index=0, shape=(1, 3), dtype=np.dtype(np.int8), scale=1 / 256, zero_point=-128)
    assert dequantization_table(honest)[0x80] == 0.0  # int8 -128 is probability 0


class _Listing:
    """A built interpreter as graph_problem sees it: its input, its operators, and a tensor count or none."""

    def __init__(self, count: int | None):
        if count is not None:
            self._interpreter = type("Wrapper", (), {"NumTensors": lambda self, subgraph: count})()

    def get_input_details(self):
        return [{"index": 0, "shape": np.array([1, 8, 8, 3])}]

    def _get_ops_details(self):
        return [{"index": 0, "op_name": "RELU", "inputs": np.array([0]), "outputs": np.array([5])}]


def test_tensor_indices_are_checked_against_the_graphs_own_count_not_the_named_tensors() -> None:
    """get_tensor_details() leaves out unnamed tensors: the count comes from the graph, and without one
    an index is not refused for being large."""
    from edge_runtime.interpreter import graph_problem

    assert graph_problem(_Listing(count=6)) is None
    assert graph_problem(_Listing(count=None)) is None
    assert graph_problem(_Listing(count=3)) == "operator 0 (RELU) names tensor 5 of 3"
