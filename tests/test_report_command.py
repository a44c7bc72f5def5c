"""edge-report end to end: on the converted fixture model (its numbers against an independent
computation, the files and pictures, the calibration line, the thresholds failing with one line),
without the files it needs (what to run first), through `python -m converter.cli report` and the
benchmark script.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

pytest.register_assert_rewrite("converter_fixtures")
from converter_fixtures import SEED, Converted  # noqa: E402
from synthetic import CLASS_NAMES  # noqa: E402

pytest_plugins = ("converter_fixtures",)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
FLOAT32_MAX_PROBABILITY_DIFFERENCE = 1e-4
PIXEL_SCALE = 255.0


def _report(args: list[str]):
    from converter.cli import report_main

    return CliRunner().invoke(report_main, args)


@pytest.fixture(scope="module")
def report_run(converted: Converted):
    """`edge-report` on the fixture's float32 and int8 files, with CI-like thresholds that pass."""
    result = _report(["--model", str(converted.trained.model_path), "--max-drop", "2", "--min-agreement", "95"])
    return converted, result


def _independent_accuracies(converted: Converted) -> tuple[float, float, float]:
    """Keras, int8 accuracy and int8/Keras agreement computed without the converter or the runtime."""
    import keras
    from ai_edge_litert.interpreter import Interpreter

    dataset = converted.trained.dataset
    pixels = np.stack([np.asarray(Image.open(path).convert("RGB")) for path in dataset.test_paths])
    model = keras.models.load_model(converted.trained.model_path)
    keras_top1 = model.predict(pixels.astype(np.float32) / PIXEL_SCALE, verbose=0).argmax(axis=1)
    interpreter = Interpreter(model_path=str(converted.int8))
    interpreter.allocate_tensors()
    tensor_in, tensor_out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    scale, zero_point = tensor_in["quantization"]
    int8_top1 = []
    for image in pixels:
        quantized = np.clip(np.round(image / PIXEL_SCALE / scale + zero_point), -128, 127).astype(np.int8)
        interpreter.set_tensor(tensor_in["index"], quantized[None])
        interpreter.invoke()
        int8_top1.append(int(interpreter.get_tensor(tensor_out["index"])[0].argmax()))
    int8_top1 = np.array(int8_top1)
    labels = dataset.test_labels
    return (float(np.mean(keras_top1 == labels)), float(np.mean(int8_top1 == labels)),
            float(np.mean(int8_top1 == keras_top1)))


@pytest.mark.slow
def test_report_numbers_match_an_independent_computation(report_run) -> None:
    converted, result = report_run
    assert result.exit_code == 0, result.output
    data = json.loads((converted.out / "report.json").read_text(encoding="utf-8"))
    formats = {entry["name"]: entry for entry in data["formats"]}
    assert [entry["name"] for entry in data["formats"]] == ["keras", "float32", "int8"]
    keras_accuracy, int8_accuracy, int8_agreement = _independent_accuracies(converted)
    assert formats["keras"]["accuracy"] == keras_accuracy
    assert formats["int8"]["accuracy"] == int8_accuracy
    assert formats["int8"]["agreement"] == int8_agreement
    assert formats["int8"]["accuracy_change_pp"] == pytest.approx(100 * (int8_accuracy - keras_accuracy))
    assert formats["float32"]["agreement"] == 1.0
    assert formats["float32"]["max_abs_prob_diff"] < FLOAT32_MAX_PROBABILITY_DIFFERENCE
    assert data["data"]["images"] == converted.trained.dataset.test_count
    assert data["data"]["tflite_input"] == "files"
    assert data["data"]["pixel_mismatches"] == 0
    assert data["labels"] == list(CLASS_NAMES)
    assert data["runtime"] == {"backend": "ai_edge_litert", "threads": 1}
    for name in ("float32", "int8"):
        entry = formats[name]
        assert entry["size_bytes"] == (converted.out / entry["file"]).stat().st_size
        assert entry["latency_ms"] > 0
        assert len(entry["per_class_accuracy"]) == len(CLASS_NAMES)
        assert sum(map(sum, entry["confusion"])) == converted.trained.dataset.test_count
    assert formats["int8"]["size_vs_float32"] == formats["int8"]["size_bytes"] / formats["float32"]["size_bytes"]
    assert formats["keras"]["latency_ms"] is None
    assert data["threshold_failures"] == []
    assert data["notes"] == []


@pytest.mark.slow
def test_report_files_and_pictures(report_run) -> None:
    converted, result = report_run
    markdown = (converted.out / "report.md").read_text(encoding="utf-8")
    for picture in ("confusion_int8.png", "per_class_accuracy.png"):
        path = converted.out / picture
        assert path.read_bytes()[:8] == PNG_SIGNATURE
        with Image.open(path) as image:
            assert min(image.size) >= 300
        assert f"]({picture})" in markdown
    data = json.loads((converted.out / "report.json").read_text(encoding="utf-8"))
    int8 = next(entry for entry in data["formats"] if entry["name"] == "int8")
    row = next(line for line in markdown.splitlines() if line.startswith("| int8 |"))
    assert f"{int8['accuracy'] * 100:.2f}%" in row
    assert f"{int8['agreement'] * 100:.2f}%" in row
    assert "| circle |" in markdown  # per-class table and confusion rows name the classes
    assert not list(converted.out.glob(".*.tmp*")), "a temporary file was left behind"
    assert not (converted.out / "training_curves.png").exists()  # the trainer's accuracy.png is the one picture


@pytest.mark.slow
def test_report_says_how_int8_was_calibrated(report_run) -> None:
    """The int8 calibration (count, seed, logit range) comes from the int8 file itself, as convert wrote it."""
    from edge_runtime.model_file.manifest import read_manifest

    converted, _ = report_run
    manifest = read_manifest(converted.out / "manifest.json")["calibration"]
    data = json.loads((converted.out / "report.json").read_text(encoding="utf-8"))
    assert data["int8_calibration"]["logit_range"] == manifest["logit_range"]
    assert (data["int8_calibration"]["count"], data["int8_calibration"]["seed"]) == (manifest["count"], manifest["seed"])
    markdown = (converted.out / "report.md").read_text(encoding="utf-8")
    line = next(line for line in markdown.splitlines() if line.startswith("- int8 calibration:"))
    assert f"{manifest['count']} train images, seed {manifest['seed']}" in line
    assert f"from {manifest['logit_range']['low']:g} up to at most {manifest['logit_range']['high']:g}" in line


@pytest.mark.slow
def test_report_decodes_only_the_test_images(report_run) -> None:
    converted, result = report_run
    dataset = converted.trained.dataset
    loading = [line for line in result.stderr.splitlines() if line.startswith("loading ")]
    assert loading == [f"loading {dataset.test_count:,} images from {converted.trained.data_root} (test/)"]


@pytest.mark.slow
def test_report_prints_the_main_table(report_run) -> None:
    converted, result = report_run
    lines = result.stdout.splitlines()
    assert lines[0].split()[:3] == ["Format", "Size", "Accuracy"]
    assert [line.split()[0] for line in lines[2:5]] == ["keras", "float32", "int8"]
    assert re.search(r"int8 file is \d+\.\d% of the float32 file's size", result.stdout)


@pytest.fixture(scope="module")
def bad_int8_folder(converted: Converted, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The trained model beside an int8 file converted from an untrained copy (chance-level accuracy)."""
    import keras

    from converter.convert import convert_model
    from trainer.models.cnn import build_model

    dataset = converted.trained.dataset
    folder = tmp_path_factory.mktemp("bad_int8")
    keras.utils.set_random_seed(SEED)
    untrained = build_model(num_classes=len(CLASS_NAMES))
    untrained.save(folder / "untrained.keras")
    shutil.copy(converted.trained.labels_path, folder / "labels.txt")
    convert_model(folder / "untrained.keras", folder, variants=["int8"], train_images=dataset.train_images,
                  calibration_size=50, seed=SEED)
    shutil.copy(converted.trained.model_path, folder / "model.keras")  # no training.json: no history
    return folder


@pytest.mark.slow
def test_max_drop_fails_the_report_with_one_line(bad_int8_folder: Path, converted: Converted) -> None:
    result = _report(["--model", str(bad_int8_folder / "model.keras"), "--data", str(converted.trained.data_root),
                      "--seed", str(SEED), "--max-drop", "2", "--max-images", "40", "--quiet"])
    assert result.exit_code == 1
    last = result.output.strip().splitlines()[-1]
    match = re.fullmatch(r"Error: int8 loses (\d+\.\d\d) percentage points of accuracy against Keras, "
                         r"more than the allowed 2", last)
    assert match, last
    data = json.loads((bad_int8_folder / "report.json").read_text(encoding="utf-8"))
    int8 = next(entry for entry in data["formats"] if entry["name"] == "int8")
    assert float(match.group(1)) == pytest.approx(-int8["accuracy_change_pp"], abs=0.005)
    assert data["threshold_failures"] == [last.removeprefix("Error: ")]
    assert data["data"]["images"] == 40
    # The int8 file came from another model.keras: the report says so rather than compare silently.
    stale = ("model_int8.tflite was converted from a different Keras model than the one evaluated "
             "(run edge-convert again)")
    assert data["notes"] == [stale]
    assert f"note: {stale}" in result.output
    # No accuracy.png from the trainer in this folder: the report has no training section, and draws none.
    assert not (bad_int8_folder / "training_curves.png").exists()
    assert "## Training" not in (bad_int8_folder / "report.md").read_text(encoding="utf-8")


@pytest.mark.slow
def test_min_agreement_fails_the_report(bad_int8_folder: Path, converted: Converted) -> None:
    result = _report(["--model", str(bad_int8_folder / "model.keras"), "--data", str(converted.trained.data_root),
                      "--seed", str(SEED), "--min-agreement", "95", "--max-images", "40", "--quiet"])
    assert result.exit_code == 1
    assert re.fullmatch(r"Error: int8 agrees with Keras on \d+\.\d\d% of test images, less than the required 95%",
                        result.output.strip().splitlines()[-1])


def _fake_keras_file(path: Path) -> Path:
    """A file that passes the checks made before TensorFlow is imported (a non-empty .keras zip)."""
    import zipfile

    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("config.json", "{}")
    return path


def test_report_without_a_keras_model_says_to_train_first(tmp_path: Path) -> None:
    result = _report(["--model", str(tmp_path / "model.keras")])
    assert result.exit_code == 1
    assert result.output.strip() == (f"Error: {tmp_path / 'model.keras'}: no such file; train a model first "
                                     f"(make train OUT={tmp_path}, or edge-train --out {tmp_path})")


def test_report_without_tflite_models_says_to_convert_first(tmp_path: Path) -> None:
    runner = CliRunner()
    with runner.isolated_filesystem(temp_dir=tmp_path):
        from converter.cli import report_main

        _fake_keras_file(Path("artifacts/model.keras"))
        result = runner.invoke(report_main, [])
        assert result.exit_code == 1
        assert result.output == ("Error: artifacts: no .tflite models to evaluate; convert the model first "
                                 "(make convert, or edge-convert --model artifacts/model.keras)\n")
        # A model outside the report's folder: only edge-convert can write there, with both paths.
        _fake_keras_file(Path("elsewhere/model.keras"))
        result = runner.invoke(report_main, ["--model", "elsewhere/model.keras", "--out", "artifacts"])
        assert result.exit_code == 1
        assert result.output == ("Error: artifacts: no .tflite models to evaluate; convert the model first "
                                 "(edge-convert --model elsewhere/model.keras --out artifacts)\n")


def test_module_entry_runs_the_report_subcommand(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """`python -m converter.cli report --out DIR` (what `make report` runs) reaches edge-report."""
    from converter.cli import module_main

    _fake_keras_file(tmp_path / "model.keras")
    with pytest.raises(SystemExit) as exited:
        module_main(["report", "--out", str(tmp_path)])
    assert exited.value.code == 1
    assert capsys.readouterr().err.strip() == (f"Error: {tmp_path}: no .tflite models to evaluate; convert the "
                                               f"model first (make convert OUT={tmp_path}, or edge-convert "
                                               f"--model {tmp_path / 'model.keras'})")


@pytest.mark.slow
def test_benchmark_script_checks_the_targets(converted: Converted, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """benchmarks/bench_convert.py (what `make bench` runs) on the fixture model: two conversions, one report."""
    import importlib.util

    folder = tmp_path / "bench"
    folder.mkdir()
    for name in ("model.keras", "labels.txt", "training.json"):
        shutil.copy(converted.out / name, folder / name)
    script = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_convert.py"
    spec = importlib.util.spec_from_file_location("bench_convert", script)
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, bench)  # dataclasses look their module up there
    spec.loader.exec_module(bench)
    summary = bench.run_benchmark(folder, calibration_size=50, quiet=True, compare_seeds=1)
    assert summary["int8_same_sha256"] is True
    assert summary["int8_sha256"] == summary["int8_sha256_second_run"]
    assert summary["calibration_images"] == 50
    assert summary["float32_agreement_percent"] == 100.0
    report = json.loads((folder / "report.json").read_text(encoding="utf-8"))
    int8 = next(entry for entry in report["formats"] if entry["name"] == "int8")
    assert summary["int8_accuracy_change_pp"] == int8["accuracy_change_pp"]
    assert summary["int8_size_ratio"] == int8["size_vs_float32"]
    assert [check["passed"] for check in summary["checks"]] == [True] * 5
    assert summary["passed"] is True
    # The side-by-side logit-range comparison: one calibration draw, both ways, through the runtime.
    (row,) = summary["logit_range_comparison"]
    assert row["seed"] == json.loads((folder / "training.json").read_text(encoding="utf-8"))["seed"]
    for name in ("clipped", "minmax"):
        assert 95.0 <= row[f"{name}_agreement_percent"] <= 100.0
    assert row["disagreement_ratio"] == pytest.approx(
        (100.0 - row["clipped_agreement_percent"]) / max(100.0 - row["minmax_agreement_percent"], 1e-9))
    table = bench.format_comparison(summary["logit_range_comparison"])
    assert table.splitlines()[-1].split()[0] == "mean"


@pytest.mark.slow
def test_max_images_decodes_only_the_sampled_test_files(bad_int8_folder: Path, converted: Converted) -> None:
    from converter.report import sample_indices

    result = _report(["--model", str(bad_int8_folder / "model.keras"), "--data", str(converted.trained.data_root),
                      "--seed", str(SEED), "--max-images", "40"])
    assert result.exit_code == 0, result.output
    test_count = converted.trained.dataset.test_count
    assert (f"loading 40 images from {converted.trained.data_root} (test/) (picked from {test_count:,} in test/)"
            in result.output.splitlines())
    data = json.loads((bad_int8_folder / "report.json").read_text(encoding="utf-8"))
    assert data["data"]["images"] == 40
    # The same 40 images as the draw over the whole decoded split would have evaluated.
    expected = np.bincount(converted.trained.dataset.test_labels[sample_indices(test_count, 40, SEED)],
                           minlength=converted.trained.dataset.num_classes)
    per_class = [sum(row) for row in data["formats"][0]["confusion"]]
    assert per_class == expected.tolist()
