"""The smoke-test image edge-convert bundles: chosen among the calibration files, labelled right by every model,
listed in manifest.json with its sha256 and named by its `smoke_test` entry (what the deploy role classifies)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

pytest.register_assert_rewrite("converter_fixtures")
from converter_fixtures import CALIBRATION_SIZE, SEED, Converted, TrainedModel  # noqa: E402
from synthetic import CLASS_NAMES  # noqa: E402

pytest_plugins = ("converter_fixtures",)

MODEL_NAMES = ("model_float32.tflite", "model_int8.tflite")
NO_DATA_LINE = ("No smoke-test image: no images were given to choose one from "
                "(edge-convert reads them for int8 or uint8 only)")
NOT_A_CLASS = "not-a-class"


# --- the pure parts: names, margins, candidates ---------------------------------------------------------

@pytest.mark.parametrize("label, suffix, name", [
    ("cat", ".JPG", "smoke_cat.jpg"),
    ("golden retriever", ".png", "smoke_golden_retriever.png"),
    ("../../etc/passwd", ".png", "smoke_etc_passwd.png"),
    ("café au lait", ".webp", "smoke_caf_au_lait.webp"),
    ("$(reboot)", ".png", "smoke_reboot.png"),
    ("...", ".png", "smoke_image.png"),
    ("x" * 60, ".png", "smoke_" + "x" * 48 + ".png"),
])
def test_smoke_file_name_is_the_label_made_safe(label: str, suffix: str, name: str) -> None:
    from converter.smoke_image import smoke_file_name

    assert smoke_file_name(label, suffix) == name


def test_label_margin_is_top1_minus_runner_up_only_for_the_expected_label() -> None:
    from converter.smoke_image import label_margin

    labels = ["cat", "dog", "fox"]
    assert label_margin(np.array([0.1, 0.7, 0.2]), labels, "dog") == pytest.approx(0.5)
    assert math.isnan(label_margin(np.array([0.1, 0.7, 0.2]), labels, "cat"))
    # Equal best scores: edge-classify answers the first, but no margin makes it a reliable test.
    assert math.isnan(label_margin(np.array([0.4, 0.4, 0.2]), labels, "cat"))


def test_clearest_candidate_maximises_the_smallest_margin_over_the_models() -> None:
    from converter.smoke_image import clearest_candidate

    nan = math.nan
    # Candidate 0 is clear in one model only; 2 is wrong in the second model; 1 is the clearest in both.
    assert clearest_candidate(np.array([[0.9, 0.5, 0.95], [0.3, 0.6, nan]])) == 1
    assert clearest_candidate(np.array([[0.5, 0.5], [0.5, 0.5]])) == 0  # a tie: the first
    assert clearest_candidate(np.array([[nan, 0.8], [0.2, nan]])) is None
    assert clearest_candidate(np.zeros((2, 0))) is None


def test_candidates_are_readable_small_image_files_in_the_given_order(tmp_path: Path) -> None:
    from converter.smoke_image import SmokeCandidate, SmokeSource, smoke_candidates

    small, large, text, missing, second = (tmp_path / name for name in
                                           ("a.png", "b.png", "c.txt", "d.png", "e.JPG"))
    cap = 2048
    small.write_bytes(b"p" * cap)
    large.write_bytes(b"p" * (cap + 1))
    text.write_bytes(b"t")
    second.write_bytes(b"j" * 10)
    source = SmokeSource(paths=[str(p) for p in (small, large, text, missing, second)],
                         labels=["cat", "dog", "cat", "dog", "fox"], origin="image folders x")
    candidates, reason = smoke_candidates(source, indices=[4, 3, 2, 1, 0], max_bytes=cap)
    assert (candidates, reason) == ([SmokeCandidate(second, "fox"), SmokeCandidate(small, "cat")], None)
    assert smoke_candidates(source, max_bytes=cap, limit=1) == ([SmokeCandidate(small, "cat")], None)
    assert smoke_candidates(source, indices=[1, 2, 3], max_bytes=cap) == (
        [], "none of the 3 images read is an image file the runtime reads of at most 2 KiB")


@pytest.mark.parametrize("source, reason", [
    (None, "no images were given to choose one from (edge-convert reads them for int8 or uint8 only)"),
    ("archive", "CIFAR-10 (keras.datasets.cifar10) holds no image files to copy "
                "(calibrate on image folders to bundle one)"),
])
def test_no_files_to_choose_from_gives_the_reason(source: str | None, reason: str) -> None:
    from converter.smoke_image import SmokeSource, smoke_candidates

    if source == "archive":
        source = SmokeSource(paths=None, labels=["cat"] * 3, origin="CIFAR-10 (keras.datasets.cifar10)")
    assert smoke_candidates(source) == ([], reason)


def test_array_images_become_lossless_png_candidates_in_the_given_order(tmp_path: Path) -> None:
    from PIL import Image

    from converter.smoke_image import SmokeSource, png_candidates, smoke_candidates

    images = np.random.default_rng(0).integers(0, 256, size=(4, 6, 5, 3), dtype=np.uint8)
    source = SmokeSource(paths=None, labels=["cat", "dog", "fox", "cat"], origin="arrays", images=images)
    written = png_candidates(source, tmp_path, indices=[2, 0, 3], limit=2)
    assert written.labels == ["fox", "cat"] and written.origin == "arrays"
    for path, index in zip(written.paths, (2, 0)):
        with Image.open(path) as image:
            assert image.format == "PNG" and np.array_equal(np.asarray(image), images[index])
    candidates, reason = smoke_candidates(written)
    assert reason is None and [c.label for c in candidates] == ["fox", "cat"]
    # A source with files is left as it is.
    assert png_candidates(written, tmp_path / "unused") is written


# --- the export -----------------------------------------------------------------------------------------

def _manifest(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text(encoding="utf-8"))


def _calibration_files(trained: TrainedModel) -> list[Path]:
    from converter.calibration import calibration_indices

    dataset = trained.dataset
    return [Path(dataset.train_paths[i]) for i in calibration_indices(len(dataset.train_paths), CALIBRATION_SIZE, SEED)]


@pytest.mark.slow
def test_export_bundles_a_calibration_file_listed_with_its_sha256(converted: Converted) -> None:
    from edge_runtime.model_file.manifest import sha256_file

    manifest = _manifest(converted.out)
    entry = manifest["smoke_test"]
    assert sorted(entry) == ["image", "label"] and entry["label"] in CLASS_NAMES
    image = converted.out / entry["image"]
    assert entry["image"] == f"smoke_{entry['label']}.png"
    assert sorted(manifest["files"]) == sorted([*MODEL_NAMES, entry["image"]])
    assert manifest["files"][entry["image"]] == {"size": image.stat().st_size, "sha256": sha256_file(image)}
    # The very bytes of a calibration image of that class, not a re-encoding.
    sources = [path for path in _calibration_files(converted.trained) if path.read_bytes() == image.read_bytes()]
    assert sources and all(path.parent.name == entry["label"] for path in sources)


@pytest.mark.slow
def test_every_model_labels_the_bundled_image_as_the_manifest_says_and_it_is_the_clearest(
        converted: Converted) -> None:
    """Through the device's own Classifier on the exported folder; and no candidate had a larger smallest margin."""
    from converter.smoke_image import MAX_CANDIDATES
    from edge_runtime.classify import Classifier

    entry = _manifest(converted.out)["smoke_test"]
    classifiers = [Classifier(converted.out / name, threads=1) for name in MODEL_NAMES]

    def smallest_margin(path: Path, label: str) -> float:
        margins = []
        for classifier in classifiers:
            scores = classifier.scores(classifier.load(path))
            best, runner_up = np.sort(scores)[-1], np.sort(scores)[-2]
            margins.append(float(best - runner_up) if classifier.labels[int(scores.argmax())] == label else -1.0)
        return min(margins)

    for classifier in classifiers:
        assert classifier.classify(classifier.load(converted.out / entry["image"]))[0].label == entry["label"]
    chosen = smallest_margin(converted.out / entry["image"], entry["label"])
    assert chosen > 0
    candidates = _calibration_files(converted.trained)[:MAX_CANDIDATES]
    others = [smallest_margin(path, path.parent.name) for path in candidates]
    assert chosen == pytest.approx(max(others))


@pytest.mark.slow
def test_edge_classify_verify_and_the_report_still_read_the_export(converted: Converted) -> None:
    from converter.report import tflite_models
    from edge_runtime.cli import main

    for name in MODEL_NAMES:
        result = CliRunner().invoke(main, ["--verify", str(converted.out / name)])
        assert result.exit_code == 0, result.output
        assert result.output.startswith(f"OK {converted.out / name} (")
    assert tflite_models(converted.out) == [("float32", converted.float32), ("int8", converted.int8)]


@pytest.mark.slow
def test_candidates_no_model_labels_right_give_no_image_and_say_why(converted: Converted, tmp_path: Path) -> None:
    from converter.convert import bundle_smoke_image
    from converter.smoke_image import SmokeCandidate, SmokeSource, choose_smoke_image

    models = [converted.out / name for name in MODEL_NAMES]
    good = _calibration_files(converted.trained)[0]
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    # An unreadable file counts as wrong, as does a label no model has.
    chosen, reason = choose_smoke_image(models, [SmokeCandidate(broken, good.parent.name),
                                                 SmokeCandidate(good, good.parent.name)])
    assert reason is None and chosen.source == good and chosen.label == good.parent.name
    assert choose_smoke_image(models, [SmokeCandidate(good, NOT_A_CLASS)]) == (
        None, "none of the 1 candidate images got its own label from every model "
              "(model_float32.tflite, model_int8.tflite)")
    # A model the runtime cannot open never fails the export: one line, no image.
    lines: list[str] = []
    source = SmokeSource(paths=[str(good)], labels=[good.parent.name], origin="image folders")
    assert bundle_smoke_image(tmp_path, [tmp_path / "missing.tflite"], source, None, lines.append) is None
    assert len(lines) == 1 and lines[0].startswith("No smoke-test image: ") and "missing.tflite" in lines[0]
    assert not list(tmp_path.glob("smoke_*"))


@pytest.mark.slow
def test_convert_without_data_bundles_nothing_says_so_and_drops_the_old_image(converted: Converted,
                                                                               tmp_path: Path) -> None:
    """float32 alone reads no images: no entry, no file, one line; the previous export's image goes with its entry."""
    from converter.cli import main

    out = tmp_path / "out"
    out.mkdir()
    entry = _manifest(converted.out)["smoke_test"]
    shutil.copy(converted.out / "manifest.json", out / "manifest.json")
    shutil.copy(converted.out / entry["image"], out / entry["image"])
    result = CliRunner().invoke(main, ["--model", str(converted.trained.model_path), "--variants", "float32",
                                       "--out", str(out)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert [line for line in lines if "smoke-test image" in line] == [
        NO_DATA_LINE, f"Removed {out / entry['image']} (the previous smoke-test image)"]
    manifest = _manifest(out)
    assert "smoke_test" not in manifest
    assert sorted(manifest["files"]) == ["model_float32.tflite"]
    assert sorted(path.name for path in out.iterdir()) == ["manifest.json", "model_float32.tflite"]


@pytest.mark.slow
def test_array_data_bundles_a_png_of_the_very_pixels_every_model_labels_right(converted: Converted,
                                                                              tmp_path: Path) -> None:
    """Data that came as arrays (CIFAR-10 through keras.datasets) gets a PNG smoke image, the calibration pixels exactly."""
    from PIL import Image

    from converter.calibration import calibration_indices
    from converter.convert import bundle_smoke_image
    from converter.smoke_image import SmokeSource
    from edge_runtime.classify import Classifier

    dataset = converted.trained.dataset
    names = list(dataset.class_names)
    source = SmokeSource(paths=None, labels=[names[int(i)] for i in dataset.train_labels], origin="arrays x",
                         images=dataset.train_images)
    order = calibration_indices(len(dataset.train_images), CALIBRATION_SIZE, SEED)
    lines: list[str] = []
    models = [converted.out / name for name in MODEL_NAMES]
    smoke = bundle_smoke_image(tmp_path, models, source, order, lines.append)
    assert smoke is not None and smoke.name == f"smoke_{smoke.label}.png"
    written = tmp_path / smoke.name
    assert smoke.source == written and len(lines) == 1 and lines[0].startswith(f"Wrote {written} ")
    assert " of arrays x; " in lines[0]
    index = int(lines[0].split("from image ", 1)[1].split(" ", 1)[0])
    assert index in list(order)
    with Image.open(written) as image:
        assert np.array_equal(np.asarray(image.convert("RGB")), dataset.train_images[index])
    assert names[int(dataset.train_labels[index])] == smoke.label
    for model in models:
        classifier = Classifier(model)
        assert classifier.labels[int(np.argmax(classifier.scores(classifier.load(written))))] == smoke.label
