"""`make arm64-check`'s comparison and report logic, without emulation: the parity rules, the `runs`
records, the summary's lines, the README commands it runs, and its exit 2 where emulation cannot run.

The emulated runs themselves need root, qemu-user-static and a Debian mirror; they run in CI through
`make arm64-check`, never in this suite.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from deploy.arm64 import chroot, cli, host, inputs, install
from deploy.arm64.parity import (EMULATED_TIMING_NOTE, FLOAT32_TOLERANCE, Mismatch, ParseError, RunOutcome,
                                 ScoredImage, benchmark_line, compare_models, info_differences, parse_results,
                                 summary_lines)

REPO_ROOT = Path(__file__).resolve().parent.parent
INT8_STEP = 1 / 256  # the output scale of the converter's int8 models
# The fields the issue lists for each entry of arm64-check.json's `runs`, in that order.
RUN_FIELDS = ["distro", "cpu", "machine", "python", "backend", "backend_version", "images", "int8_identical",
              "float32_max_abs_diff", "top1_identical", "tensorflow_installed", "seconds", "ok"]


def result_line(path: str, scores: dict[str, float]) -> str:
    """One `edge-classify --json --top-k ALL` line, best class first, scores printed as the CLI prints them."""
    ranked = sorted(scores.items(), key=lambda pair: -pair[1])
    top_k = ", ".join(f'{{"label": "{label}", "score": {score:.6f}}}' for label, score in ranked)
    return (f'{{"path": "{path}", "label": "{ranked[0][0]}", "score": {ranked[0][1]:.6f}, "top_k": [{top_k}], '
            f'"latency_ms": 0.500}}')


def answers(rows: dict[str, dict[str, float]]) -> dict[str, ScoredImage]:
    return parse_results("\n".join(result_line(path, scores) for path, scores in rows.items()), "test")


INT8_ROWS = {"images/cat.jpg": {"cat": 200 * INT8_STEP, "dog": 50 * INT8_STEP, "ship": 6 * INT8_STEP},
             "images/dog.png": {"cat": 10 * INT8_STEP, "dog": 240 * INT8_STEP, "ship": 6 * INT8_STEP}}
FLOAT_ROWS = {"images/cat.jpg": {"cat": 0.7, "dog": 0.2, "ship": 0.1},
              "images/dog.png": {"cat": 0.3, "dog": 0.6, "ship": 0.1}}


def with_score(rows: dict[str, dict[str, float]], path: str, label: str, score: float) -> dict[str, dict[str, float]]:
    changed = {name: dict(scores) for name, scores in rows.items()}
    changed[path][label] = score
    return changed


def test_parse_reads_every_class_and_failed_inputs() -> None:
    text = result_line("a.jpg", {"cat": 0.75, "dog": 0.25}) + '\n{"path": "b.jpg", "error": "file is empty"}\n'
    parsed = parse_results(text, "x86")
    assert parsed["a.jpg"] == ScoredImage("a.jpg", {"cat": 0.75, "dog": 0.25}, "cat")
    assert parsed["b.jpg"].error == "file is empty"


def test_parse_names_the_source_and_line_of_a_bad_result() -> None:
    with pytest.raises(ParseError, match=r"^trixie models/m.tflite, line 2: not an edge-classify --json result"):
        parse_results(result_line("a.jpg", {"cat": 1.0}) + "\nTraceback (most recent call last):\n",
                      "trixie models/m.tflite")


def test_identical_int8_scores_pass() -> None:
    parity = compare_models("model_int8.tflite", INT8_STEP, answers(INT8_ROWS), answers(INT8_ROWS))
    assert parity.ok and parity.scores_identical and parity.top1_identical
    assert parity.images == 2 and parity.max_abs_diff == 0.0 and parity.mismatches == ()


def test_one_int8_step_passes_but_is_reported_as_not_identical() -> None:
    arm = with_score(INT8_ROWS, "images/dog.png", "ship", 7 * INT8_STEP)
    parity = compare_models("model_int8.tflite", INT8_STEP, answers(INT8_ROWS), answers(arm))
    assert parity.ok and not parity.scores_identical and parity.top1_identical and parity.max_steps == 1
    assert parity.mismatches == ()
    assert parity.differences == (Mismatch("images/dog.png",
                                           "int8 score of ship differs by 1 step: x86 0.023438, arm64 0.027344"),)


def test_two_int8_steps_fail_and_name_the_file_class_and_values() -> None:
    arm = with_score(INT8_ROWS, "images/dog.png", "ship", 8 * INT8_STEP)
    parity = compare_models("model_int8.tflite", INT8_STEP, answers(INT8_ROWS), answers(arm))
    assert not parity.ok and parity.max_steps == 2
    assert parity.mismatches == (Mismatch("images/dog.png",
                                          "int8 score of ship differs by 2 steps: x86 0.023438, arm64 0.031250"),)


def test_float32_within_the_tolerance_passes_but_is_not_called_identical() -> None:
    arm = with_score(FLOAT_ROWS, "images/cat.jpg", "dog", 0.2 + 4e-6)
    parity = compare_models("model_float32.tflite", None, answers(FLOAT_ROWS), answers(arm))
    assert parity.ok and parity.top1_identical and not parity.scores_identical
    assert parity.max_abs_diff == pytest.approx(4e-6, abs=1e-7)


def test_float32_beyond_the_tolerance_fails_with_the_difference() -> None:
    arm = with_score(FLOAT_ROWS, "images/cat.jpg", "dog", 0.2 + 3e-5)
    parity = compare_models("model_float32.tflite", None, answers(FLOAT_ROWS), answers(arm))
    assert not parity.ok and parity.top1_identical
    assert parity.max_abs_diff > FLOAT32_TOLERANCE
    [mismatch] = parity.mismatches
    assert mismatch.path == "images/cat.jpg"
    assert mismatch.detail == ("float32 score of dog differs by 3.00e-05 (x86 0.200000, arm64 0.200030; "
                               "allowed 1e-05)")


def test_a_changed_top1_fails_even_for_a_small_difference() -> None:
    reference = {"images/close.jpg": {"cat": 0.500004, "dog": 0.499996}}
    arm = {"images/close.jpg": {"cat": 0.499996, "dog": 0.500004}}
    parity = compare_models("model_float32.tflite", None, answers(reference), answers(arm))
    assert not parity.ok and not parity.top1_identical
    assert parity.mismatches[0].detail == "top-1 differs: x86 cat 0.500004, arm64 dog 0.500004"


def test_a_tie_printed_in_another_order_is_the_same_top1() -> None:
    text_a = ('{"path": "t.png", "label": "cat", "score": 0.5, "top_k": [{"label": "cat", "score": 0.5}, '
              '{"label": "dog", "score": 0.5}], "latency_ms": 1.0}')
    text_b = ('{"path": "t.png", "label": "dog", "score": 0.5, "top_k": [{"label": "dog", "score": 0.5}, '
              '{"label": "cat", "score": 0.5}], "latency_ms": 1.0}')
    parity = compare_models("m", INT8_STEP, parse_results(text_a, "a"), parse_results(text_b, "b"))
    assert parity.ok and parity.top1_identical


def test_missing_and_failed_images_are_mismatches() -> None:
    arm = parse_results(result_line("images/cat.jpg", INT8_ROWS["images/cat.jpg"])
                        + '\n{"path": "images/extra.gif", "error": "cannot identify image file"}', "arm64")
    parity = compare_models("model_int8.tflite", INT8_STEP, answers(INT8_ROWS), arm)
    assert not parity.ok
    assert set(parity.mismatches) == {Mismatch("images/dog.png", "no result on arm64"),
                                      Mismatch("images/extra.gif", "no result on x86")}


def test_the_same_failure_on_both_machines_is_not_a_mismatch() -> None:
    failed = '{"path": "images/empty.jpg", "error": "file is empty (0 bytes)"}'
    both = "\n".join([result_line(p, s) for p, s in INT8_ROWS.items()] + [failed])
    parity = compare_models("model_int8.tflite", INT8_STEP, parse_results(both, "x86"), parse_results(both, "arm64"))
    assert parity.ok and parity.images == 3


def test_no_image_compared_is_not_a_pass() -> None:
    assert not compare_models("model_int8.tflite", INT8_STEP, {}, {}).ok


def test_info_differences_ignore_only_the_backend_name() -> None:
    x86 = {"backend": "ai_edge_litert", "sha256": "ab", "labels": ["cat"]}
    arm = {"backend": "tflite_runtime", "sha256": "ab", "labels": ["dog"]}
    assert info_differences(x86, arm) == ["labels: x86 ['cat'], arm64 ['dog']"]
    assert info_differences(x86, {**x86, "backend": "other"}) == []


def outcome(**changes) -> RunOutcome:
    fields = dict(distro="bookworm", install="edge", cpu="cortex-a72", machine="aarch64", python="3.11.2",
                  backend="ai_edge_litert", backend_version="2.3.0", numpy_version="1.24.2 (Debian's)",
                  pillow_version="12.0.0", tensorflow_installed=False, seconds=12.34)
    fields.update(changes)
    result = RunOutcome(**fields)
    result.parities.append(compare_models("model_int8.tflite", INT8_STEP, answers(INT8_ROWS), answers(INT8_ROWS)))
    result.parities.append(compare_models("model_float32.tflite", None, answers(FLOAT_ROWS),
                                          answers(with_score(FLOAT_ROWS, "images/cat.jpg", "cat", 0.7 + 2e-6))))
    result.benchmarks["model_int8.tflite"] = {"runs": 20, "mean_ms": 12.5}
    result.reference_kernels["model_int8.tflite"] = True
    return result


def test_run_record_has_the_issue_fields_in_order_and_their_values() -> None:
    record = outcome().record()
    assert list(record)[:len(RUN_FIELDS)] == RUN_FIELDS
    assert record["ok"] is True and record["int8_identical"] is True and record["top1_identical"] is True
    assert record["float32_max_abs_diff"] == pytest.approx(2e-6, abs=5e-8)
    assert record["images"] == 2 and record["seconds"] == 12.3 and record["machine"] == "aarch64"
    assert record["benchmark"]["note"] == EMULATED_TIMING_NOTE
    json.dumps(record)  # the report is JSON


@pytest.mark.parametrize("changes, reason", [
    ({"machine": "x86_64"}, "uname -m says 'x86_64', not aarch64"),
    ({"tensorflow_installed": True}, "TensorFlow is installed in the device environment"),
])
def test_not_arm64_or_tensorflow_present_fails_the_run(changes: dict, reason: str) -> None:
    failed = outcome(**changes)
    assert not failed.ok and failed.record()["ok"] is False
    assert f"bookworm/edge/cortex-a72: {reason}" in summary_lines([failed])


def test_summary_has_one_row_per_run_then_each_mismatch_by_file() -> None:
    good = outcome()
    bad = outcome(distro="trixie", python="3.13.5")
    bad.parities[0] = compare_models("model_int8.tflite", INT8_STEP, answers(INT8_ROWS),
                                     answers(with_score(INT8_ROWS, "images/cat.jpg", "dog", 53 * INT8_STEP)))
    lines = summary_lines([good, bad], ["a note"])
    assert lines[1].startswith("bookworm  edge    cortex-a72 3.11.2  ai_edge_litert 2.3.0") and lines[1].endswith("ok")
    assert " identical " in lines[1] and " 1x3step " in lines[2] and lines[2].endswith("FAILED")
    assert lines[3:] == ["trixie/edge/cortex-a72: model_int8.tflite: images/cat.jpg: int8 score of dog differs by "
                         "3 steps: x86 0.195312, arm64 0.207031", "a note"]


def test_summary_shows_allowed_one_step_differences_without_failing() -> None:
    near = outcome()
    near.parities[0] = compare_models("model_int8.tflite", INT8_STEP, answers(INT8_ROWS),
                                      answers(with_score(INT8_ROWS, "images/cat.jpg", "dog", 51 * INT8_STEP)))
    lines = summary_lines([near])
    assert near.ok and " 1x1step " in lines[1] and lines[1].endswith("ok")
    assert lines[2] == ("bookworm/edge/cortex-a72: model_int8.tflite: images/cat.jpg: int8 score of dog differs by "
                        "1 step: x86 0.195312, arm64 0.199219 (allowed: within 1 step)")
    assert near.record()["int8_identical"] is False and near.record()["int8_max_steps"] == 1


@pytest.mark.parametrize("reference_kernels, reason", [
    (False, "raw int8 outputs under the reference kernels differ from x86"),
    (None, "the reference-kernel comparison did not run"),
])
def test_int8_needs_bit_identical_reference_kernels(reference_kernels, reason: str) -> None:
    run = outcome()
    if reference_kernels is None:
        del run.reference_kernels["model_int8.tflite"]
    else:
        run.reference_kernels["model_int8.tflite"] = reference_kernels
    assert not run.ok and run.record()["reference_kernels_int8_identical"] is False
    assert f"bookworm/edge/cortex-a72: model_int8.tflite: {reason}" in summary_lines([run])


def test_every_emulated_timing_says_it_is_not_a_pi_timing() -> None:
    [line] = benchmark_line(outcome())
    assert "12.50 ms over 20 runs" in line and "not a Raspberry Pi timing" in line


def readme_step1_commands() -> list[str]:
    text = (REPO_ROOT / "deploy" / "README.md").read_text(encoding="utf-8")
    block = text.split("On the Pi:", 1)[1].split("```sh", 1)[1].split("```", 1)[0]
    return [line.strip() for line in block.strip().splitlines()]


def test_the_edge_install_runs_the_readme_commands_verbatim() -> None:
    script = install.readme_install_script("edge_image_toolkit-0.1.0-py3-none-any.whl", install.INSTALLS[0])
    lines = script.splitlines()
    for command in readme_step1_commands():
        if command.startswith("sudo apt"):
            continue  # apt's packages are in the root filesystem (python3-picamera2 is not in Debian)
        assert command.replace("--help", "--help >/dev/null") in lines, command


def test_the_tflite_install_swaps_only_the_extra_and_the_folder() -> None:
    edge, tflite = install.INSTALLS
    assert tflite.distros == ("bookworm",)
    script = install.readme_install_script("w.whl", tflite)
    assert '~/edge-venv-tflite/bin/pip install "./w.whl[tflite]" "numpy==$SYSTEM_NUMPY"' in script.splitlines()


def test_test_images_are_picked_round_robin_over_sorted_classes(tmp_path: Path) -> None:
    for name, count in (("bird", 3), ("airplane", 1), ("cat", 2)):
        (tmp_path / name).mkdir()
        for number in range(count):
            (tmp_path / name / f"{number:04d}.jpg").write_bytes(b"x")
    picked = [f"{p.parent.name}/{p.name}" for p in inputs.pick_test_images(tmp_path, 5)]
    assert picked == ["airplane/0000.jpg", "bird/0000.jpg", "cat/0000.jpg", "bird/0001.jpg", "cat/0001.jpg"]


def test_format_images_cover_the_modes_the_preprocessing_tests_cover(tmp_path: Path) -> None:
    import numpy as np
    from PIL import Image

    inputs.write_format_images(tmp_path, np, Image)
    modes = {path.name: Image.open(path).mode for path in tmp_path.iterdir()}
    assert {"RGBA", "P", "L", "CMYK"} <= set(modes.values())
    assert modes["grey16.png"] in ("I;16", "I")
    assert {Path(name).suffix for name in modes} >= {".png", ".jpg", ".bmp", ".webp", ".gif", ".tiff"}
    assert Image.open(tmp_path / "exif-rotated.jpg").getexif()[0x0112] == 6


@pytest.mark.parametrize("cpu, part", [("cortex-a72", "0xd08"), ("cortex-a76", "0xd0b")])
def test_cpuinfo_names_the_pi_cpu(tmp_path: Path, cpu: str, part: str) -> None:
    text = chroot.cpuinfo_file(tmp_path, cpu).read_text(encoding="utf-8")
    assert text.count(f"CPU part\t: {part}") == chroot.PI_CORES
    assert "CPU implementer\t: 0x41" in text


@pytest.fixture
def models_and_wheel(tmp_path: Path) -> list[str]:
    out = tmp_path / "out"
    out.mkdir()
    (out / "model_int8.tflite").write_bytes(b"model")
    wheel = tmp_path / "edge_image_toolkit-0.1.0-py3-none-any.whl"
    wheel.write_bytes(b"wheel")
    return ["--out", str(out), "--wheel", str(wheel), "--cache", str(tmp_path / "cache")]


def run_main(args: list[str]):
    return CliRunner().invoke(cli.main, args)


def test_not_root_exits_2_with_the_reason(monkeypatch: pytest.MonkeyPatch, models_and_wheel: list[str]) -> None:
    monkeypatch.setattr(host.os, "geteuid", lambda: 1000)
    result = run_main(models_and_wheel)
    assert result.exit_code == 2
    assert result.output.strip() == ("arm64-check: cannot run: must run as root (debootstrap, chroot and mounts need "
                                     "it): try `sudo make arm64-check`")


def test_an_unreachable_mirror_exits_2_naming_it(monkeypatch: pytest.MonkeyPatch,
                                                  models_and_wheel: list[str]) -> None:
    monkeypatch.setattr(host.os, "geteuid", lambda: 0)
    monkeypatch.setattr(host.shutil, "which", lambda tool: f"/usr/bin/{tool}")
    monkeypatch.setattr(host, "enable_binfmt", lambda: None)
    result = run_main(models_and_wheel + ["--mirror", "http://127.0.0.1:9/debian"])
    assert result.exit_code == 2
    assert re.fullmatch(r"arm64-check: cannot run: the Debian mirror cannot be reached "
                        r"\(http://127\.0\.0\.1:9/debian/dists/bookworm/Release: .+\)\n", result.output)


def test_a_binfmt_handler_without_fix_binary_exits_2(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                     models_and_wheel: list[str]) -> None:
    binfmt = tmp_path / "binfmt_misc"
    binfmt.mkdir()
    (binfmt / "status").write_text("enabled\n")
    (binfmt / "qemu-aarch64").write_text("enabled\ninterpreter /usr/bin/qemu-aarch64\nflags: P\noffset 0\n")
    monkeypatch.setattr(host, "BINFMT_DIR", binfmt)
    monkeypatch.setattr(host, "BINFMT_ENTRY", binfmt / "qemu-aarch64")
    monkeypatch.setattr(host.os, "geteuid", lambda: 0)
    monkeypatch.setattr(host.shutil, "which", lambda tool: f"/usr/bin/{tool}")
    result = run_main(models_and_wheel)
    assert result.exit_code == 2
    assert "lacks the F (fix-binary) flag" in result.output


def test_no_models_in_out_exits_2_and_says_so(tmp_path: Path) -> None:
    wheel = tmp_path / "w.whl"
    wheel.write_bytes(b"w")
    result = run_main(["--out", str(tmp_path), "--wheel", str(wheel), "--cache", str(tmp_path / "cache")])
    assert result.exit_code == 2
    assert result.output.startswith(f"arm64-check: cannot run: OUT={tmp_path} has no .tflite models to check: "
                                    "run `make train convert` first")
