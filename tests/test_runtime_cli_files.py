"""`edge-classify` on files and folders: output formats, labels, folders and bad inputs, and how a
run ends (an unwritable output, Ctrl-C, a reader that goes away, NaN scores). The command's model
choice, --info and usage: test_runtime_cli.py."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from edge_runtime.classify import Classifier
from runtime_cli_fixtures import one_line_error, run
from runtime_fixtures import BOMB_SIDE, bad_files, png_declaring
from synthetic import CLASS_NAMES

pytest_plugins = ("runtime_fixtures", "runtime_cli_fixtures")

MIN_ACCURACY = 0.9
JSON_KEYS = {"path", "label", "score", "top_k", "latency_ms"}


# --- output -------------------------------------------------------------------------------------

def test_json_lines_carry_path_label_score_top_k_and_latency(runtime_models, split_dataset: Path) -> None:
    folder = split_dataset / "test" / "waves"
    result = run("--model", runtime_models.int8, "--json", "--top-k", "3", folder)
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["path"] for r in records] == sorted(str(p) for p in folder.iterdir())
    for record in records:
        assert set(record) == JSON_KEYS
        assert record["label"] == record["top_k"][0]["label"]
        assert record["score"] == record["top_k"][0]["score"]
        assert len(record["top_k"]) == 3
        assert set(record["top_k"][0]) == {"label", "score"}
        scores = [entry["score"] for entry in record["top_k"]]
        assert scores == sorted(scores, reverse=True)
        assert record["latency_ms"] > 0.0
    assert sum(r["label"] == "waves" for r in records) >= MIN_ACCURACY * len(records)
    assert result.stderr.startswith(f"classified {len(records)} of {len(records)} inputs in ")


def test_human_lines_show_top_k_classes_best_first(runtime_models, photo) -> None:
    result = run("--model", runtime_models.int8, "-k", "4", photo[0])
    assert result.exit_code == 0, result.output
    path, classes = result.stdout.strip().split(": ")
    shown = [item.rsplit(" ", 1) for item in classes.split(" | ")]
    assert sorted(name for name, _ in shown) == sorted(CLASS_NAMES)
    scores = [float(score) for _, score in shown]
    assert scores == sorted(scores, reverse=True) and abs(sum(scores) - 1.0) < 0.02
    assert shown[0][0] == photo[1]


def test_labels_with_commas_stay_apart_in_lines_and_info(runtime_models, photo, tmp_path: Path) -> None:
    names = ["circle, round thing", "cross", "stripes, lines", "waves"]  # CLASS_NAMES with commas added
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(names) + "\n")
    result = run("--model", runtime_models.plain_int8, "--labels", labels, "-k", "4", photo[0])
    assert result.exit_code == 0, result.output
    classes = result.stdout.strip().split(": ", 1)[1].split(" | ")
    assert sorted(item.rsplit(" ", 1)[0] for item in classes) == sorted(names)
    info = run("--info", runtime_models.plain_int8, "--labels", labels)
    assert info.exit_code == 0, info.output
    shown = f"labels:       4 ({labels}): circle, round thing | cross | stripes, lines | waves"
    assert shown in info.stdout.splitlines()


def test_threshold_says_uncertain_below_it(runtime_models, photo) -> None:
    confident = run("--model", runtime_models.int8, "--threshold", "0.5", photo[0])
    assert confident.stdout.strip().split(": ")[1].split()[0] == photo[1]
    doubtful = run("--model", runtime_models.int8, "--threshold", "1.0", photo[0])
    assert doubtful.exit_code == 0
    assert doubtful.stdout.strip().split(": ")[1].startswith(f"uncertain ({photo[1]} ")
    record = json.loads(run("--model", runtime_models.int8, "--threshold", "1.0", "--json", photo[0]).stdout)
    assert record["label"] == "uncertain" and record["uncertain"] is True
    assert record["top_k"][0]["label"] == photo[1] and record["score"] < 1.0


def test_threshold_and_top_k_ranges_are_checked(photo) -> None:
    assert run("--threshold", "1.5", photo[0]).exit_code == 2
    assert run("--top-k", "0", photo[0]).exit_code == 2


def test_output_file_is_written_and_stdout_stays_empty(runtime_models, split_dataset: Path, tmp_path: Path) -> None:
    target = tmp_path / "out" / "results.jsonl"
    target.parent.mkdir()
    result = run("--model", runtime_models.int8, "--json", "-o", target, split_dataset / "test" / "circle")
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    lines = target.read_text().splitlines()
    assert len(lines) == 20 and all(json.loads(line)["path"].endswith(".png") for line in lines)
    assert [p.name for p in target.parent.iterdir()] == ["results.jsonl"]  # no temporary left behind


def test_output_into_a_missing_folder_says_so_and_creates_nothing(runtime_models, photo, tmp_path: Path) -> None:
    target = tmp_path / "not_yet" / "results.jsonl"
    result = run("--model", runtime_models.int8, "--json", "-o", target, photo[0])
    assert result.exit_code == 2
    assert one_line_error(result) == (f"Error: {target}: cannot write results "
                                      f"(folder {tmp_path / 'not_yet'} does not exist)")
    assert not (tmp_path / "not_yet").exists()


def test_odd_file_names_still_give_valid_json(runtime_models, photo, tmp_path: Path) -> None:
    odd = tmp_path / 'caf\u00e9 "quoted" \\ name.png'
    shutil.copy(photo[0], odd)
    record = json.loads(run("--model", runtime_models.int8, "--json", odd).stdout)
    assert record["path"] == str(odd) and record["label"] == photo[1]


# --- labels -------------------------------------------------------------------------------------

def test_model_without_labels_shows_indices_or_the_labels_file(runtime_models, photo) -> None:
    index = CLASS_NAMES.index(photo[1])
    plain = run("--model", runtime_models.plain_int8, photo[0])
    assert plain.stdout.split(": ")[1].split()[0] == str(index)
    named = run("--model", runtime_models.plain_int8, "--labels", runtime_models.labels_file, photo[0])
    assert named.stdout.split(": ")[1].split()[0] == photo[1]


def test_embedded_labels_win_over_a_labels_file_with_a_note(runtime_models, photo, tmp_path: Path) -> None:
    labels = tmp_path / "labels.txt"
    labels.write_text("a\nb\nc\nd\n")
    result = run("--model", runtime_models.int8, "--labels", labels, photo[0])
    assert result.exit_code == 0
    assert result.stdout.split(": ")[1].split()[0] == photo[1]
    assert result.stderr.strip() == (f"note: {runtime_models.int8} carries its own labels; "
                                     f"--labels {labels} is not used")


# --- folders and bad inputs ---------------------------------------------------------------------

def test_recursive_descends_and_plain_folder_asks_for_it(runtime_models, split_dataset: Path) -> None:
    test_root = split_dataset / "test"
    flat = run("--model", runtime_models.int8, test_root)
    assert flat.exit_code == 1
    assert flat.stderr.strip().splitlines()[0] == (f"{test_root}: error: folder has no image files, only "
                                                    "sub-folders: use -r (--recursive) to classify the images in them")
    deep = run("--model", runtime_models.int8, "--json", "-r", test_root)
    assert deep.exit_code == 0, deep.output
    records = [json.loads(line) for line in deep.stdout.splitlines()]
    expected = sorted(str(p) for p in test_root.rglob("*.png"))
    assert [r["path"] for r in records] == expected
    correct = sum(Path(r["path"]).parent.name == r["label"] for r in records)
    assert correct >= MIN_ACCURACY * len(records)


def images_at_the_top_and_below(photo: Path, folder: Path) -> Path:
    """`folder` with one image at its top, two in sub-folders and an empty sub-folder."""
    for name in ["top.png", "more/one.png", "more/deeper/two.png"]:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(photo, folder / name)
    (folder / "also").mkdir()
    return folder


def test_a_folder_without_r_says_which_sub_folders_it_did_not_search(runtime_models, photo, tmp_path: Path) -> None:
    folder = images_at_the_top_and_below(photo[0], tmp_path / "photos")
    note = f"note: {folder}: 2 sub-folders not searched (also, more): use -r (--recursive) to search sub-folders too"
    text = run("--model", runtime_models.int8, folder)
    assert text.exit_code == 0, text.output
    assert [line.split(": ")[0] for line in text.stdout.splitlines()] == [str(folder / "top.png")]
    assert text.stderr.splitlines() == [note]
    as_json = run("--model", runtime_models.int8, "--json", folder)
    assert as_json.exit_code == 0, as_json.output
    assert [json.loads(line)["path"] for line in as_json.stdout.splitlines()] == [str(folder / "top.png")]
    assert as_json.stderr.splitlines() == [note]
    deep = run("--model", runtime_models.int8, "-r", folder)
    assert deep.exit_code == 0 and len(deep.stdout.splitlines()) == 3 and "note:" not in deep.stderr


def test_a_folder_with_only_sub_folders_is_one_error_and_said_on_stderr_with_json(runtime_models, photo,
                                                                                  tmp_path: Path) -> None:
    folder = images_at_the_top_and_below(photo[0], tmp_path / "photos")
    (folder / "top.png").unlink()
    text = run("--model", runtime_models.int8, folder)
    assert text.exit_code == 1
    assert text.stderr.splitlines() == [f"{folder}: error: folder has no image files, only sub-folders: use -r "
                                        "(--recursive) to classify the images in them"]  # said once, not twice
    as_json = run("--model", runtime_models.int8, "--json", folder)
    assert as_json.exit_code == 1
    assert json.loads(as_json.stdout)["error"].startswith("folder has no image files, only sub-folders")
    assert as_json.stderr.splitlines() == [f"note: {folder}: 2 sub-folders not searched (also, more): use -r "
                                           "(--recursive) to search sub-folders too"]


def test_folder_answers_are_the_classifiers_answers(runtime_models, split_dataset: Path) -> None:
    folder = split_dataset / "test" / "stripes"
    records = [json.loads(line) for line in run("--model", runtime_models.float32, "--json", folder).stdout.splitlines()]
    classifier = Classifier(runtime_models.float32)
    for record in records:
        scores = classifier.scores(classifier.load(record["path"]))
        assert record["label"] == CLASS_NAMES[int(np.argmax(scores))]
        assert abs(record["score"] - float(scores.max())) < 1e-6


def test_bad_inputs_get_one_line_each_and_the_rest_is_classified(runtime_models, photo, tmp_path: Path) -> None:
    bad = bad_files(tmp_path / "bad")
    hidden = tmp_path / "bad" / ".thumbnail.jpg"
    hidden.write_bytes(b"junk")  # hidden files in folders are skipped, not reported
    (tmp_path / "bad" / "readme.txt").write_text("not an image extension: skipped")
    missing = tmp_path / "missing.jpg"
    result = run("--model", runtime_models.int8, photo[0], tmp_path / "bad", missing)
    assert result.exit_code == 1
    assert result.stdout.strip().split(": ")[0] == str(photo[0])
    errors = [line for line in result.stderr.strip().splitlines() if ": error: " in line]
    expected = {str(path): reason for path, reason in bad.values()}
    expected[str(missing)] = "no such file or folder"
    assert len(errors) == len(expected)
    for line in errors:
        path, reason = line.split(": error: ")
        assert reason.startswith(expected[path]), line
    assert "Traceback" not in result.output
    assert result.stderr.strip().splitlines()[-1].startswith(f"classified 1 of {len(expected) + 1} inputs in ")
    assert result.stderr.strip().endswith(f"; {len(expected)} failed")


def test_bad_inputs_in_json_are_path_and_error_records(runtime_models, tmp_path: Path) -> None:
    bad = bad_files(tmp_path / "bad")
    result = run("--model", runtime_models.int8, "--json", *[path for path, _ in bad.values()])
    assert result.exit_code == 1
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["path"] for r in records] == [str(path) for path, _ in bad.values()]
    for record, (_, reason) in zip(records, bad.values()):
        assert set(record) == {"path", "error"} and record["error"].startswith(reason)


def test_a_declared_bomb_is_refused_in_well_under_a_second(runtime_models, tmp_path: Path) -> None:
    import time

    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_declaring(BOMB_SIDE, BOMB_SIDE))
    large = tmp_path / "large.png"
    large.write_bytes(png_declaring(12_000, 10_000))
    started = time.perf_counter()
    result = run("--model", runtime_models.int8, bomb, large)
    assert time.perf_counter() - started < 1.0
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines()[:2] == [
        f"{bomb}: error: declares too many pixels to decode safely (possible decompression bomb)",
        f"{large}: error: declares 12000x10000 pixels, more than the limit of 100,000,000 "
        "(possible decompression bomb)",
    ]


# --- how a run ends -----------------------------------------------------------------------------

def test_unwritable_output_is_exit_2_one_line(runtime_models, photo, tmp_path: Path) -> None:
    blocker = tmp_path / "file.txt"
    blocker.write_text("a file where a folder would have to be")
    result = run("--model", runtime_models.int8, "-o", blocker / "out.jsonl", photo[0])
    assert result.exit_code == 2
    assert one_line_error(result).startswith(f"Error: {blocker / 'out.jsonl'}: cannot write results (")


def test_ctrl_c_during_a_folder_stops_with_exit_130_and_a_summary(runtime_models, split_dataset: Path,
                                                                  monkeypatch) -> None:
    original = Classifier.load
    calls = []

    def load(classifier: Classifier, path):
        calls.append(path)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return original(classifier, path)

    monkeypatch.setattr(Classifier, "load", load)
    result = run("--model", runtime_models.int8, split_dataset / "test" / "circle")
    assert result.exit_code == 130
    assert len(result.stdout.splitlines()) == 2
    assert result.stderr.strip().startswith("interrupted after 2 inputs: 2 classified in ")


def test_a_reader_that_goes_away_ends_the_run_quietly(runtime_models, split_dataset: Path) -> None:
    import subprocess
    import sys

    code = "import sys; from edge_runtime.cli import main; sys.exit(main())"
    train = str(split_dataset / "train")  # 240 images; four times, with 4 classes each: far more than a pipe holds
    process = subprocess.Popen([sys.executable, "-c", code, "--model", str(runtime_models.int8), "--json", "-r",
                                "--top-k", "4", train, train, train, train], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, cwd=Path(__file__).resolve().parent.parent)
    first = process.stdout.readline()
    process.stdout.close()  # like `| head -1`
    stderr = process.stderr.read().decode()
    assert process.wait(timeout=60) == 141
    assert json.loads(first)["path"].endswith(".png")
    assert "Traceback" not in stderr and "BrokenPipeError" not in stderr


def test_nan_scores_are_a_per_image_error_not_a_crash(runtime_models, photo, monkeypatch) -> None:
    monkeypatch.setattr(Classifier, "scores", lambda self, pixels: np.full(4, np.nan, dtype=np.float32))
    result = run("--model", runtime_models.float32, "--json", photo[0])
    assert result.exit_code == 1
    assert json.loads(result.stdout) == {"path": str(photo[0]), "error": "the model returned no usable scores (NaN)"}


def test_one_interpreter_serves_a_whole_folder(runtime_models, split_dataset: Path, monkeypatch) -> None:
    import edge_runtime.classify as classify_module

    built = []
    original = classify_module.make_interpreter

    def counting(*args, **kwargs):
        built.append(args)
        return original(*args, **kwargs)

    monkeypatch.setattr(classify_module, "make_interpreter", counting)
    result = run("--model", runtime_models.int8, "--json", "-r", split_dataset / "test")
    assert result.exit_code == 0
    assert len(result.stdout.splitlines()) == 80 and len(built) == 1
