"""edge-classify's answers on either machine: the commands run for one model and what they printed, read
into ModelAnswers; for an int8 model also its raw outputs under LiteRT's portable reference kernels."""

from __future__ import annotations

import dataclasses
import json
import subprocess
from typing import Any

from .parity import ParseError, ScoredImage, parse_results

BENCHMARK_RUNS = 20
COMMAND_TIMEOUT_S = 10 * 60


# Run with the device environment's python from the work folder: the raw int8 output bytes of every
# image under LiteRT's portable reference kernels (no XNNPACK, no NEON/AVX2 paths), one line per image.
# Equal lines on both machines show that the emulated arm64 userland computes exactly what x86 does.
REFERENCE_KERNEL_PROBE = """
import glob, importlib, sys
from edge_runtime.classify import Classifier
from edge_runtime.interpreter import BACKEND_MODULES, load_interpreter_class
model = sys.argv[1]
name, interpreter_class = load_interpreter_class(None)
resolver = importlib.import_module(BACKEND_MODULES[name]).OpResolverType.BUILTIN_REF
classifier = Classifier(model)
interpreter = interpreter_class(model_path=model, experimental_op_resolver_type=resolver, num_threads=1)
interpreter.allocate_tensors()
source, target = interpreter.get_input_details()[0]["index"], interpreter.get_output_details()[0]["index"]
for path in sorted(glob.glob("images/**/*.*", recursive=True)):
    interpreter.set_tensor(source, classifier.quantize_input(classifier.load(path)))
    interpreter.invoke()
    print(path, interpreter.get_tensor(target).tobytes().hex())
"""


@dataclasses.dataclass
class ModelAnswers:
    """What one machine's edge-classify said about one model."""

    results: dict[str, ScoredImage]
    info: dict[str, Any]
    verify: tuple[int, str]
    benchmark: dict[str, Any] | None
    problems: list[str]
    reference_kernels: str | None = None   # int8 models: REFERENCE_KERNEL_PROBE's output


def answer_commands(model: str, classes: int) -> dict[str, list[str]]:
    """The edge-classify commands run on both machines, from the work folder, for one model."""
    return {
        "info": ["--info", model, "--json"],
        "verify": ["--verify", model],
        "classify": ["-m", model, "--json", "--top-k", str(classes), "-r", "images"],
        "benchmark": ["--benchmark", model, "--runs", str(BENCHMARK_RUNS), "--json"],
    }


def collect_answers(run: Any, model: str, classes: int, where: str, python: Any = None) -> ModelAnswers:
    """Run the four commands through `run(args) -> CompletedProcess` and read what they printed; for an
    int8 model also the reference-kernel probe through `python(args)`."""
    commands = answer_commands(model, classes)
    problems: list[str] = []
    info: dict[str, Any] = {}
    results: dict[str, ScoredImage] = {}
    benchmark = None

    completed = run(commands["info"])
    if completed.returncode == 0:
        info = json.loads(completed.stdout)
    else:
        problems.append(f"{model}: edge-classify --info failed on {where}: {first_error(completed)}")
    verify = run(commands["verify"])
    verify_answer = (verify.returncode, verify.stdout.strip())
    if verify.returncode != 0:
        problems.append(f"{model}: edge-classify --verify failed on {where}: {first_error(verify)}")
    classified = run(commands["classify"])
    if classified.returncode != 0:
        problems.append(f"{model}: edge-classify on the images exited {classified.returncode} on {where}: "
                        f"{first_error(classified)}")
    try:
        results = parse_results(classified.stdout, f"{where} {model}")
    except ParseError as error:
        problems.append(str(error))
    timed = run(commands["benchmark"])
    if timed.returncode == 0:
        benchmark = json.loads(timed.stdout)
    else:
        problems.append(f"{model}: edge-classify --benchmark failed on {where}: {first_error(timed)}")
    reference_kernels = None
    if python is not None and info.get("output", {}).get("quantization"):
        probed = python(["-c", REFERENCE_KERNEL_PROBE, model])
        if probed.returncode == 0 and probed.stdout.strip():
            reference_kernels = probed.stdout
        else:
            problems.append(f"{model}: the reference-kernel probe failed on {where}: {first_error(probed)}")
    return ModelAnswers(results, info, verify_answer, benchmark, problems, reference_kernels)


def first_error(completed: subprocess.CompletedProcess) -> str:
    lines = [line for line in (completed.stderr or completed.stdout or "").splitlines() if line.strip()]
    errors = [line for line in lines if "rror" in line or "qemu" in line or "ignal" in line]
    return (errors or lines or [f"exit {completed.returncode}, no message"])[-1].strip()
