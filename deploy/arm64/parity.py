"""The pure half of `make arm64-check`: compare edge-classify's answers on arm64 with x86's, and report.

Nothing here runs a program or touches a root filesystem. It reads what `edge-classify --json
--top-k ALL` printed on each side (one JSON object per image, every class with its score) and the
`--info --json` facts, and turns them into small named results, the `runs` records of
`arm64-check.json` and the summary a person reads. The other modules of deploy/arm64/ are the shell around it.

The parity rules: a float32 model must give the same top-1 class for every image and scores within
`FLOAT32_TOLERANCE` (the issue's rule). An int8 model must give the same top-1 and no score more than
`INT8_MAX_STEPS` quantization steps away; whether every score was bit-identical is reported as well.
The issue asked for bit-identical int8 scores, but LiteRT's optimized int8 kernels are not the same
code on arm64 (NEON) and x86 (AVX2): measured on the CIFAR-10 CNN, 1 of 2,140 int8 scores (XNNPACK) and
166 of 2,140 (the builtin optimized kernels) differ by one to four steps between the machines, while
the portable reference kernels give bit-identical outputs under the same emulation. The check
therefore also requires the reference kernels' raw int8 outputs to be bit-identical.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Iterable, Mapping, NamedTuple, Sequence

FLOAT32_TOLERANCE = 1e-5
# One step of the output's int8 grid: the most that NEON and AVX2 rounding was seen to differ (XNNPACK).
INT8_MAX_STEPS = 1
# edge-classify --json writes scores with 6 decimals: two int8 steps print differently when the
# output scale is above twice the last printed digit's half (1e-6), which every real model's is.
JSON_SCORE_RESOLUTION = 1e-6
EMULATED_TIMING_NOTE = "emulated under qemu-user on an x86 host: not a Raspberry Pi timing"
# --info facts that legitimately differ between the two machines.
INFO_KEYS_ALLOWED_TO_DIFFER = ("backend",)
MAX_MISMATCHES_SHOWN = 5


class ScoredImage(NamedTuple):
    """One image's answer: every class's score, in the order edge-classify printed them (best first)."""

    path: str
    scores: dict[str, float]
    top1: str
    error: str | None = None


class Mismatch(NamedTuple):
    """One difference between the two machines, named by file."""

    path: str
    detail: str


@dataclasses.dataclass(frozen=True)
class Parity:
    """How one model's answers on arm64 compare with x86's on the same images."""

    model: str
    quantized: bool
    images: int
    scores_identical: bool
    max_abs_diff: float
    top1_identical: bool
    mismatches: tuple[Mismatch, ...]             # differences beyond the rules: the run fails
    differences: tuple[Mismatch, ...] = ()       # int8 scores within the allowed steps: reported only
    max_steps: int = 0                           # int8: the largest difference in quantization steps

    @property
    def ok(self) -> bool:
        if self.images == 0 or self.mismatches or not self.top1_identical:
            return False
        if self.quantized:
            return self.max_steps <= INT8_MAX_STEPS
        return self.max_abs_diff <= FLOAT32_TOLERANCE


class ParseError(ValueError):
    """edge-classify's JSON lines could not be read."""


def parse_results(text: str, source: str) -> dict[str, ScoredImage]:
    """edge-classify's `--json` lines, keyed by the image path as given on its command line."""
    images: dict[str, ScoredImage] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            path = record["path"]
            if "error" in record:
                images[path] = ScoredImage(path, {}, "", str(record["error"]))
                continue
            scores = {entry["label"]: float(entry["score"]) for entry in record["top_k"]}
            images[path] = ScoredImage(path, scores, record["top_k"][0]["label"])
        except (ValueError, KeyError, TypeError, IndexError) as error:
            raise ParseError(f"{source}, line {number}: not an edge-classify --json result ({error})") from error
    return images


def compare_models(model: str, int8_scale: float | None, reference: Mapping[str, ScoredImage],
                   candidate: Mapping[str, ScoredImage]) -> Parity:
    """Compare one model's answers image by image: x86 `reference` against arm64 `candidate`.

    int8 (`int8_scale` is the output's scale): equal top-1 and no score more than INT8_MAX_STEPS steps
    apart. float32 (`int8_scale` None): equal top-1 and |diff| within the tolerance. A missing image,
    an extra one, a class set that differs or an image that failed on one side only is a mismatch too.
    """
    quantized = int8_scale is not None
    mismatches: list[Mismatch] = []
    differences: list[Mismatch] = []
    max_steps = 0
    scores_identical = True
    top1_identical = True
    max_abs_diff = 0.0
    for path in sorted(set(reference) | set(candidate)):
        ours, theirs = reference.get(path), candidate.get(path)
        if ours is None or theirs is None:
            where = "x86" if ours is None else "arm64"
            mismatches.append(Mismatch(path, f"no result on {where}"))
            scores_identical = top1_identical = False
            continue
        if ours.error or theirs.error:
            if ours.error != theirs.error:
                mismatches.append(Mismatch(path, f"error differs: x86 {ours.error!r}, arm64 {theirs.error!r}"))
                scores_identical = top1_identical = False
            continue
        if set(ours.scores) != set(theirs.scores):
            mismatches.append(Mismatch(path, "the classes differ: x86 " + ",".join(sorted(ours.scores))
                                       + "; arm64 " + ",".join(sorted(theirs.scores))))
            scores_identical = top1_identical = False
            continue
        label, diff = max(((name, abs(ours.scores[name] - theirs.scores[name])) for name in ours.scores),
                          key=lambda pair: pair[1])
        max_abs_diff = max(max_abs_diff, diff)
        same_top1 = ours.top1 == theirs.top1 or _tied_top1(ours, theirs)
        if not same_top1:
            top1_identical = False
            mismatches.append(Mismatch(path, f"top-1 differs: x86 {ours.top1} {ours.scores[ours.top1]:.6f}, "
                                             f"arm64 {theirs.top1} {theirs.scores[theirs.top1]:.6f}"))
        if diff > 0:
            scores_identical = False
            if quantized:
                steps = round(diff / int8_scale)
                max_steps = max(max_steps, steps)
                found = Mismatch(path, f"int8 score of {label} differs by {steps} step{'s' if steps != 1 else ''}: "
                                       f"x86 {ours.scores[label]:.6f}, arm64 {theirs.scores[label]:.6f}")
                (mismatches if steps > INT8_MAX_STEPS else differences).append(found)
            elif diff > FLOAT32_TOLERANCE:
                mismatches.append(Mismatch(path, f"float32 score of {label} differs by {diff:.2e} "
                                                 f"(x86 {ours.scores[label]:.6f}, arm64 {theirs.scores[label]:.6f}; "
                                                 f"allowed {FLOAT32_TOLERANCE:.0e})"))
    images = sum(1 for path in candidate if path in reference)
    return Parity(model, quantized, images, scores_identical, max_abs_diff, top1_identical, tuple(mismatches),
                  tuple(differences), max_steps)


def _tied_top1(ours: ScoredImage, theirs: ScoredImage) -> bool:
    """Both machines' best classes have the same, highest score on both: a tie printed in another order."""
    best = ours.scores[ours.top1]
    return (theirs.scores[theirs.top1] == best and ours.scores.get(theirs.top1) == best
            and theirs.scores.get(ours.top1) == best)


def info_differences(reference: Mapping[str, Any], candidate: Mapping[str, Any]) -> list[str]:
    """The `--info --json` facts that differ between x86 and arm64, other than the backend's name."""
    differing = []
    for key in sorted(set(reference) | set(candidate)):
        if key in INFO_KEYS_ALLOWED_TO_DIFFER:
            continue
        if reference.get(key) != candidate.get(key):
            differing.append(f"{key}: x86 {reference.get(key)!r}, arm64 {candidate.get(key)!r}")
    return differing


@dataclasses.dataclass
class RunOutcome:
    """Everything measured for one distro, install path and CPU model."""

    distro: str
    install: str
    cpu: str
    machine: str
    python: str
    backend: str
    backend_version: str
    numpy_version: str
    pillow_version: str
    tensorflow_installed: bool
    seconds: float
    parities: list[Parity] = dataclasses.field(default_factory=list)
    problems: list[str] = dataclasses.field(default_factory=list)   # info, verify, benchmark, install
    benchmarks: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    # int8 model -> whether its raw outputs under the portable reference kernels equal x86's, every image
    reference_kernels: dict[str, bool] = dataclasses.field(default_factory=dict)

    @property
    def ok(self) -> bool:
        int8_models = {parity.model for parity in self.parities if parity.quantized}
        return (self.machine == "aarch64" and not self.tensorflow_installed and not self.problems
                and bool(self.parities) and all(parity.ok for parity in self.parities)
                and all(self.reference_kernels.get(model) is True for model in int8_models))

    def record(self) -> dict[str, Any]:
        """The `runs` entry of arm64-check.json: the issue's fields first, then the details."""
        int8 = [parity for parity in self.parities if parity.quantized]
        float32 = [parity for parity in self.parities if not parity.quantized]
        return {
            "distro": self.distro,
            "cpu": self.cpu,
            "machine": self.machine,
            "python": self.python,
            "backend": self.backend,
            "backend_version": self.backend_version,
            "images": max((parity.images for parity in self.parities), default=0),
            "int8_identical": all(p.scores_identical for p in int8) if int8 else None,
            "float32_max_abs_diff": max(p.max_abs_diff for p in float32) if float32 else None,
            "top1_identical": all(p.top1_identical for p in self.parities) if self.parities else None,
            "tensorflow_installed": self.tensorflow_installed,
            "seconds": round(self.seconds, 1),
            "ok": self.ok,
            "int8_max_steps": max((p.max_steps for p in int8), default=None),
            "int8_scores_differing": sum(len(p.differences) + len(p.mismatches) for p in int8) if int8 else None,
            "reference_kernels_int8_identical": (all(self.reference_kernels.get(p.model) is True for p in int8)
                                                 if int8 else None),
            "install": self.install,
            "numpy": self.numpy_version,
            "pillow": self.pillow_version,
            "models": {p.model: {"images": p.images, "quantized": p.quantized,
                                 "scores_identical": p.scores_identical, "max_abs_diff": p.max_abs_diff,
                                 "top1_identical": p.top1_identical, "max_steps": p.max_steps, "ok": p.ok,
                                 "reference_kernels_identical": self.reference_kernels.get(p.model),
                                 "mismatches": [m._asdict() for m in p.mismatches],
                                 "within_one_step": [m._asdict() for m in p.differences]}
                       for p in self.parities},
            "problems": list(self.problems),
            "benchmark": {"note": EMULATED_TIMING_NOTE, **self.benchmarks},
        }


def mismatch_lines(outcome: RunOutcome) -> list[str]:
    """One line per difference, naming the run, the model, the file and the difference."""
    where = f"{outcome.distro}/{outcome.install}/{outcome.cpu}"
    lines = [f"{where}: {problem}" for problem in outcome.problems]
    if outcome.machine != "aarch64":
        lines.append(f"{where}: uname -m says {outcome.machine!r}, not aarch64")
    if outcome.tensorflow_installed:
        lines.append(f"{where}: TensorFlow is installed in the device environment")
    for parity in outcome.parities:
        if parity.quantized and outcome.reference_kernels.get(parity.model) is False:
            lines.append(f"{where}: {parity.model}: raw int8 outputs under the reference kernels differ from x86")
        elif parity.quantized and parity.model not in outcome.reference_kernels:
            lines.append(f"{where}: {parity.model}: the reference-kernel comparison did not run")
        if parity.images == 0:
            lines.append(f"{where}: {parity.model}: no image was compared")
        for mismatch in parity.mismatches[:MAX_MISMATCHES_SHOWN]:
            lines.append(f"{where}: {parity.model}: {mismatch.path}: {mismatch.detail}")
        hidden = len(parity.mismatches) - MAX_MISMATCHES_SHOWN
        if hidden > 0:
            lines.append(f"{where}: {parity.model}: {hidden} more differences in arm64-check.json")
    return lines


def summary_lines(outcomes: Sequence[RunOutcome], notes: Iterable[str] = ()) -> list[str]:
    """The table a person reads after the run, then every mismatch, then the notes.

    The int8 column says `identical`, or `NxKstep`: N scores differed, by at most K quantization steps.
    """
    lines = [f"{'distro':<9} {'install':<7} {'cpu':<10} {'python':<7} {'backend':<22} {'images':>6} "
             f"{'int8':<9} {'float32 max|dp|':>15} {'top-1':<5} {'TF':<3} {'seconds':>7}  result"]
    for outcome in outcomes:
        record = outcome.record()
        steps = record["int8_max_steps"]
        int8 = ("-" if record["int8_identical"] is None else "identical" if record["int8_identical"]
                else f"{record['int8_scores_differing']}x{steps}step")
        float_diff = record["float32_max_abs_diff"]
        float_text = "-" if float_diff is None else f"{float_diff:.1e}"
        top1 = {True: "same", False: "DIFF", None: "-"}[record["top1_identical"]]
        backend = f"{outcome.backend} {outcome.backend_version}"
        lines.append(f"{outcome.distro:<9} {outcome.install:<7} {outcome.cpu:<10} {outcome.python:<7} "
                     f"{backend:<22} {record['images']:>6} {int8:<9} {float_text:>15} {top1:<5} "
                     f"{'yes' if outcome.tensorflow_installed else 'no':<3} {record['seconds']:>7.1f}  "
                     f"{'ok' if outcome.ok else 'FAILED'}")
    for outcome in outcomes:
        lines.extend(mismatch_lines(outcome))
    for outcome in outcomes:
        for parity in outcome.parities:
            for difference in parity.differences[:MAX_MISMATCHES_SHOWN]:
                lines.append(f"{outcome.distro}/{outcome.install}/{outcome.cpu}: {parity.model}: {difference.path}: "
                             f"{difference.detail} (allowed: within {INT8_MAX_STEPS} step)")
    lines.extend(notes)
    return lines


def benchmark_line(outcome: RunOutcome) -> list[str]:
    """The emulated latencies, each saying it is not a Pi timing."""
    lines = []
    for model, result in sorted(outcome.benchmarks.items()):
        lines.append(f"{outcome.distro}/{outcome.install}/{outcome.cpu} {model}: mean "
                     f"{result['mean_ms']:.2f} ms over {result['runs']} runs ({EMULATED_TIMING_NOTE})")
    return lines
