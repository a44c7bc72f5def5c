"""Saving frames for the next training: rules, the per-minute cap, the page's save, folder names,
file names that never replace a file, a real full (and read-only) disk, concurrent writers, and
`edge-train --data DIR` training on a folder collected this way.

The full disk is a 64 KiB tmpfs mounted for the test (root only; skipped with the reason elsewhere).
"""

from __future__ import annotations

import datetime
import errno
import json
import os
import shutil
import subprocess
import threading
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
from PIL import Image

from edge_runtime import capture
from edge_runtime.capture import (CAPTURE_LOG, CaptureError, FrameSaver, SaveError, SaveRule, check_label, parse_rule,
                                  safe_label)
from edge_runtime.classify import Class
from edge_runtime.errors import EdgeError
from edge_runtime.sources.live import LiveStatus
from synthetic import CLASS_NAMES, synthetic_arrays

# 2026-12-07 05:30:12.123456 UTC, exactly representable enough for microseconds.
FIXED_TIME = datetime.datetime(2026, 12, 7, 5, 30, 12, 123456, tzinfo=datetime.timezone.utc).timestamp()
FIXED_STEM = "20261207T053012.123456Z"
FIXED_ISO = "2026-12-07T05:30:12.123456Z"
FRAME_SHAPE = (48, 64, 3)
JPEG_MEAN_ERROR = 3.0  # mean absolute difference a quality-92 JPEG of a smooth frame stays under
TINY_DISK = "size=64k"
BIG_FRAME_SIDE = 400  # noise this large encodes to far more than the tiny disk holds
THREAD_SAVES = 20
THREAD_TIMEOUT_S = 60
TRAIN_FRAMES_PER_CLASS = 12


def answer(best: str, score: float, threshold: float = 0.0, second: str = "other", frame: int = 1) -> LiveStatus:
    """A frame's status as classify_frames makes it: `best` first, "uncertain" under `threshold`."""
    uncertain = score < threshold
    classes = (Class(0, best, score), Class(1, second, round(1.0 - score, 6)))
    return LiveStatus(frame, "uncertain" if uncertain else best, score, 12.5, uncertain, classes, 4.2,
                      FIXED_TIME)


def smooth_frame(shape: tuple[int, int, int] = FRAME_SHAPE) -> np.ndarray:
    """Gradients in each channel (JPEG keeps them closely) with red growing down and green across."""
    height, width, _ = shape
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([y * 255 // height, x * 255 // width, np.full_like(y, 90)], axis=-1).astype(np.uint8)


def noise_frame(side: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)


def log_records(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / CAPTURE_LOG).read_text().splitlines()]


def every_file(folder: Path) -> list[str]:
    """Every file under `folder`, hidden ones included, relative and sorted."""
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*") if path.is_file())


class FakeClock:
    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def saver_at(folder: Path, rules: list[str], per_minute: int | None = None, clock: FakeClock | None = None,
             wall_time: float = FIXED_TIME) -> FrameSaver:
    return FrameSaver(folder, [parse_rule(rule) for rule in rules], per_minute=per_minute,
                      clock=clock or FakeClock(), wall_clock=lambda: wall_time)


@pytest.mark.parametrize("text, expected", [
    ("unsure:0.6", SaveRule("unsure:0.6", threshold=0.6)),
    (" Unsure: 1 ", SaveRule("unsure:1", threshold=1.0)),
    ("label:cat", SaveRule("label:cat", label="cat")),
    ("label: tabby, tabby cat ", SaveRule("label:tabby, tabby cat", label="tabby, tabby cat")),
])
def test_rules_parse(text: str, expected: SaveRule) -> None:
    assert parse_rule(text) == expected


@pytest.mark.parametrize("text, message", [
    ("sure:0.6", "'sure:0.6': not a save rule; use " + capture.RULE_FORMS),
    ("cat", "'cat': not a save rule; use " + capture.RULE_FORMS),
    ("unsure:", "'unsure:': the threshold must be a number with 0 < T <= 1 (unsure:T, e.g. unsure:0.6)"),
    ("unsure:0", "'unsure:0': the threshold must be a number with 0 < T <= 1 (unsure:T, e.g. unsure:0.6)"),
    ("unsure:1.5", "'unsure:1.5': the threshold must be a number with 0 < T <= 1 (unsure:T, e.g. unsure:0.6)"),
    ("unsure:nan", "'unsure:nan': the threshold must be a number with 0 < T <= 1 (unsure:T, e.g. unsure:0.6)"),
    ("label: ", "'label: ': the label is empty (label:NAME, e.g. label:cat)"),
])
def test_bad_rules_say_which_and_the_accepted_forms(text: str, message: str) -> None:
    with pytest.raises(ValueError) as raised:
        parse_rule(text)
    assert str(raised.value) == message
    assert capture.RULE_FORMS == ("unsure:T (save when the top score is under T, 0 < T <= 1) or "
                                  "label:NAME (save when the model answers NAME)")


def test_rules_match_the_score_and_the_best_class_even_when_uncertain() -> None:
    unsure, cat, uncertain = parse_rule("unsure:0.6"), parse_rule("label:cat"), parse_rule("label:uncertain")
    assert unsure.matches(answer("cat", 0.59)) and not unsure.matches(answer("cat", 0.6))
    assert cat.matches(answer("cat", 0.9))
    assert cat.matches(answer("cat", 0.4, threshold=0.5))  # shown as "uncertain", still the model's best: cat
    assert not cat.matches(answer("dog", 0.9, second="cat"))
    assert uncertain.matches(answer("cat", 0.4, threshold=0.5)) and not uncertain.matches(answer("cat", 0.9))


def test_rule_saves_land_in_the_best_class_folder_with_their_line(tmp_path: Path) -> None:
    saver = saver_at(tmp_path, ["unsure:0.6", "label:cat"])
    frame = smooth_frame()
    sure_cat, unsure_dog, sure_dog = answer("cat", 0.9), answer("dog", 0.5, threshold=0.55), answer("dog", 0.9)
    by_label = saver.consider(frame, sure_cat)
    by_score = saver.consider(frame, unsure_dog)
    assert saver.consider(frame, sure_dog) is None

    assert by_label is not None and by_score is not None
    assert (by_label.file, by_label.label, by_label.reason) == (f"cat/{FIXED_STEM}.jpg", "cat", "label:cat")
    assert (by_score.file, by_score.label, by_score.reason) == (f"dog/{FIXED_STEM}.jpg", "dog", "unsure:0.6")
    assert by_score.path == tmp_path / "dog" / f"{FIXED_STEM}.jpg"
    assert every_file(tmp_path) == [CAPTURE_LOG, f"cat/{FIXED_STEM}.jpg", f"dog/{FIXED_STEM}.jpg"]
    for saved in (by_label, by_score):
        with Image.open(saved.path) as image:
            assert (image.format, image.mode, image.size) == ("JPEG", "RGB", (FRAME_SHAPE[1], FRAME_SHAPE[0]))
    assert log_records(tmp_path) == [
        {"file": f"cat/{FIXED_STEM}.jpg", "label": "cat", "reason": "label:cat", "answer": sure_cat.to_dict(),
         "time": FIXED_ISO},
        {"file": f"dog/{FIXED_STEM}.jpg", "label": "dog", "reason": "unsure:0.6", "answer": unsure_dog.to_dict(),
         "time": FIXED_ISO},
    ]
    assert log_records(tmp_path)[1]["answer"]["label"] == "uncertain"
    assert (saver.saved, saver.skipped_by_cap, saver.last_saved, saver.error) == (2, 0, by_score.path, None)
    assert saver.summary_line() == f"saved 2 frames to {tmp_path}"


def test_a_flipped_view_is_saved_as_the_pixels_it_shows(tmp_path: Path) -> None:
    bgr = np.ascontiguousarray(smooth_frame()[:, :, ::-1])
    rgb_view = bgr[:, :, ::-1]  # what camera.bgr_to_rgb may hand over: not contiguous
    assert not rgb_view.flags["C_CONTIGUOUS"]
    saved = saver_at(tmp_path, ["label:cat"]).consider(rgb_view, answer("cat", 0.9))
    decoded = np.asarray(Image.open(saved.path).convert("RGB"), dtype=np.float32)
    assert np.abs(decoded - smooth_frame()).mean() < JPEG_MEAN_ERROR


def test_nothing_is_encoded_when_no_rule_matches_or_the_cap_is_reached(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    saver = saver_at(tmp_path, ["label:cat"], per_minute=1)
    assert saver.consider(smooth_frame(), answer("cat", 0.9)) is not None
    encoded = []
    monkeypatch.setattr(capture, "encode_jpeg", lambda *args: encoded.append(args) or b"")
    assert saver.consider(smooth_frame(), answer("dog", 0.9)) is None
    assert saver.consider(smooth_frame(), answer("cat", 0.9)) is None  # over the cap
    assert encoded == [] and saver.skipped_by_cap == 1


def test_model_labels_that_are_not_folder_names_are_made_safe(tmp_path: Path) -> None:
    saved = saver_at(tmp_path, ["unsure:1"]).consider(smooth_frame(), answer("a/b", 0.5))
    assert saved.file == f"a_b/{FIXED_STEM}.jpg"
    record = log_records(tmp_path)[0]
    assert record["label"] == "a_b" and record["answer"]["top_k"][0]["label"] == "a/b"
    assert [safe_label(label) for label in ("bow tie, bow-tie, bowtie", "..", ".cache", "a\\b\x00c", "train",
                                            "x" * 70, " / ")] == [
        "bow tie, bow-tie, bowtie", "_.", "_cache", "a_b_c", "train_", "x" * capture.MAX_LABEL_CHARS, "_"]


def test_the_cap_holds_in_any_60_seconds_and_counts_what_it_skips(tmp_path: Path) -> None:
    clock = FakeClock()
    saver = saver_at(tmp_path, ["unsure:0.6"], per_minute=3, clock=clock)
    results = []
    for second in range(10):
        clock.now = float(second)
        results.append(saver.consider(smooth_frame(), answer("cat", 0.3, frame=second + 1)))
    assert [result is not None for result in results] == [True] * 3 + [False] * 7
    assert (saver.saved, saver.skipped_by_cap) == (3, 7)
    clock.now = 59.9
    assert saver.consider(smooth_frame(), answer("cat", 0.3)) is None
    clock.now = 60.0  # the save at 0 s has left the window: one more
    assert saver.consider(smooth_frame(), answer("cat", 0.3)) is not None
    assert saver.consider(smooth_frame(), answer("cat", 0.3)) is None
    assert (saver.saved, saver.skipped_by_cap) == (4, 9)
    assert len(log_records(tmp_path)) == 4 and len(list((tmp_path / "cat").iterdir())) == 4
    assert saver.summary_line() == f"saved 4 frames to {tmp_path} (9 over the 3-a-minute cap not saved)"


def test_the_page_saves_under_a_new_class_without_the_cap(tmp_path: Path) -> None:
    saver = saver_at(tmp_path, ["unsure:0.6"], per_minute=1)
    saver.consider(smooth_frame(), answer("cat", 0.3))
    assert saver.folder_labels() == ["cat"]
    status = answer("cat", 0.3, frame=2)
    saved = [saver.save(smooth_frame(), " robin ", status), saver.save(smooth_frame(), "robin", None)]
    assert [frame.file for frame in saved] == [f"robin/{FIXED_STEM}.jpg", f"robin/{FIXED_STEM}-1.jpg"]
    assert [(record["label"], record["reason"], record["answer"]) for record in log_records(tmp_path)[1:]] == [
        ("robin", "page", status.to_dict()), ("robin", "page", None)]
    (tmp_path / ".thumbnails").mkdir()
    assert saver.folder_labels() == ["cat", "robin"]
    assert saver.saved == 3 and saver.skipped_by_cap == 0


@pytest.mark.parametrize("label, reason", [
    ("  ", "it is empty"),
    ("a/b", 'it contains "/"'),
    ("a\\b", 'it contains "\\"'),
    ("a\x00b", "it contains a control character"),
    ("..", '".." is not a folder of its own'),
    (".", '"." is not a folder of its own'),
    (".cats", 'it starts with "." (hidden folders are not read by edge-train)'),
    ("test", '"test" would make edge-train read the folder as a train/test split'),
    ("x" * 65, "longer than 64 characters"),
])
def test_bad_class_names_are_refused_and_nothing_is_written(tmp_path: Path, label: str, reason: str) -> None:
    saver = saver_at(tmp_path, [])
    with pytest.raises(CaptureError) as raised:
        saver.save(smooth_frame(), label, None)
    assert str(raised.value) == f"class name {label!r} cannot be a folder name: {reason}"
    assert isinstance(raised.value, EdgeError) and not isinstance(raised.value, SaveError)
    assert list(tmp_path.iterdir()) == [] and saver.saved == 0
    assert check_label(" bow tie, bow-tie, bowtie ") == "bow tie, bow-tie, bowtie"


def test_a_file_already_named_for_the_same_microsecond_is_never_replaced(tmp_path: Path) -> None:
    (tmp_path / "cat").mkdir()
    taken = tmp_path / "cat" / f"{FIXED_STEM}.jpg"
    taken.write_bytes(b"someone else's image")
    saver = saver_at(tmp_path, ["label:cat"])
    names = [saver.consider(smooth_frame(), answer("cat", 0.9)).path.name for _ in range(2)]
    assert names == [f"{FIXED_STEM}-1.jpg", f"{FIXED_STEM}-2.jpg"]
    assert taken.read_bytes() == b"someone else's image"
    assert every_file(tmp_path) == [CAPTURE_LOG, f"cat/{FIXED_STEM}-1.jpg", f"cat/{FIXED_STEM}-2.jpg",
                                    f"cat/{FIXED_STEM}.jpg"]


def mount_tmpfs(mount_point: Path, options: str) -> Iterator[Path]:
    """Mount a tmpfs with `options` at `mount_point` for a test; skipped where mounting is not allowed."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root and mount(8)")
    mount_point.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mount_point)],
                            capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], capture_output=True, timeout=30, check=True)


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    yield from mount_tmpfs(tmp_path / "tiny", TINY_DISK)


@pytest.fixture
def read_only_disk(tmp_path: Path) -> Iterator[Path]:
    yield from mount_tmpfs(tmp_path / "read-only", f"ro,{TINY_DISK}")


def test_a_full_disk_is_one_error_leaves_nothing_and_stops_the_rules(tiny_disk: Path) -> None:
    folder = tiny_disk / "captures"
    saver = saver_at(folder, ["unsure:0.6"])
    assert saver.consider(noise_frame(BIG_FRAME_SIDE), answer("cat", 0.3)) is None
    assert isinstance(saver.error, SaveError)
    assert str(saver.error) == f"{folder}: cannot save frame (No space left on device)"
    assert saver.error.errno == errno.ENOSPC
    assert every_file(folder) == []  # no temporary file, no log line
    # A small frame would fit, but the rules have stopped: one error, not one per frame.
    assert saver.consider(smooth_frame(), answer("cat", 0.3)) is None
    assert every_file(folder) == [] and saver.saved == 0
    assert saver.summary_line() == (f"saved 0 frames to {folder}; stopped saving: "
                                    f"{folder}: cannot save frame (No space left on device)")
    # The page still tries (a person may have freed space), and says why it failed.
    with pytest.raises(SaveError) as raised:
        saver.save(noise_frame(BIG_FRAME_SIDE), "cat", None)
    assert str(raised.value) == f"{folder}: cannot save frame (No space left on device)"
    assert every_file(folder) == []
    assert saver.save(smooth_frame(), "cat", None).file == f"cat/{FIXED_STEM}.jpg"


def test_an_image_whose_line_does_not_fit_is_taken_back(tiny_disk: Path) -> None:
    folder = tiny_disk / "captures"
    (folder / "cat").mkdir(parents=True)
    jpeg_blocks = -(-len(capture.encode_jpeg(smooth_frame())) // os.statvfs(tiny_disk).f_bsize)
    stats = os.statvfs(tiny_disk)
    (tiny_disk / "filler").write_bytes(b"\0" * ((stats.f_bavail - jpeg_blocks) * stats.f_bsize))
    assert os.statvfs(tiny_disk).f_bavail == jpeg_blocks  # room for the image, none for the log
    saver = saver_at(folder, [])
    with pytest.raises(SaveError) as raised:
        saver.save(smooth_frame(), "cat", None)
    assert (str(raised.value), raised.value.errno) == (
        f"{folder}: cannot save frame (No space left on device)", errno.ENOSPC)
    assert every_file(folder) in ([], [CAPTURE_LOG]) and (folder / CAPTURE_LOG).stat().st_size == 0
    assert saver.saved == 0 and saver.last_saved is None


def test_a_read_only_disk_is_one_line_with_its_errno(read_only_disk: Path) -> None:
    saver = saver_at(read_only_disk, [])
    with pytest.raises(SaveError) as raised:
        saver.save(smooth_frame(), "cat", None)
    assert (str(raised.value), raised.value.errno) == (
        f"{read_only_disk}: cannot save frame (Read-only file system)", errno.EROFS)


def test_concurrent_writers_keep_every_line_and_every_image(tmp_path: Path) -> None:
    # The same microsecond for every save: every name collides, and two savers stand for two processes.
    rule_saver = saver_at(tmp_path, ["unsure:1"])
    other_saver = saver_at(tmp_path, [])
    failures: list[BaseException] = []

    def run(save) -> None:
        try:
            for index in range(THREAD_SAVES):
                save(index)
        except BaseException as error:  # reported by the assertion below
            failures.append(error)

    threads = [
        threading.Thread(target=run, args=(lambda i: rule_saver.consider(smooth_frame(), answer("cat", 0.5,
                                                                                                  frame=i)),)),
        threading.Thread(target=run, args=(lambda i: rule_saver.save(smooth_frame(), "cat", None),)),
        threading.Thread(target=run, args=(lambda i: other_saver.save(smooth_frame(), "cat", None),)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(THREAD_TIMEOUT_S)
    assert not any(thread.is_alive() for thread in threads) and failures == []
    records = log_records(tmp_path)
    total = 3 * THREAD_SAVES
    assert len(records) == total and len({record["file"] for record in records}) == total
    assert sorted(record["file"] for record in records) == [name for name in every_file(tmp_path)
                                                            if name != CAPTURE_LOG]
    assert sorted(record["reason"] for record in records) == ["page"] * (2 * THREAD_SAVES) + ["unsure:1"] * THREAD_SAVES
    assert rule_saver.saved + other_saver.saved == total


@pytest.mark.slow
def test_edge_train_trains_on_a_folder_collected_this_way(tmp_path: Path) -> None:
    from click.testing import CliRunner

    import trainer.cli as trainer_cli

    folder = tmp_path / "captures"
    clock = FakeClock()
    saver = FrameSaver(folder, [parse_rule("unsure:0.6")], clock=clock)  # the real cap and wall clock
    images, labels = synthetic_arrays(TRAIN_FRAMES_PER_CLASS, seed=5)
    for index, (image, label) in enumerate(zip(images, labels)):
        clock.now = index * 10.0  # a frame every 10 s: 6 a minute, under the cap
        name = CLASS_NAMES[int(label)]
        if index % 4 == 0:
            saver.save(image, name, answer(name, 0.9, frame=index + 1))  # chosen on the page
        else:
            assert saver.consider(image, answer(name, 0.4, frame=index + 1)) is not None
    count = len(images)
    assert saver.saved == count and saver.folder_labels() == sorted(CLASS_NAMES)

    out = tmp_path / "model"
    result = CliRunner().invoke(trainer_cli.main, ["--data", str(folder), "--out", str(out), "--epochs", "1",
                                                   "--batch-size", "16"])
    assert result.exit_code == 0, result.output
    assert (out / "labels.txt").read_text().splitlines() == sorted(CLASS_NAMES)
    data = json.loads((out / "training.json").read_text())["data"]
    assert data["class_names"] == sorted(CLASS_NAMES)
    assert data["train"] + data["validation"] + data["test"] == count and data["skipped"] == 0
    assert data["source"].startswith(f"image folder {folder} ")


def test_a_line_the_disk_took_only_part_of_is_cut_off_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    saver = saver_at(tmp_path, [])
    first = saver.save(smooth_frame(), "cat", None)
    log_before = (tmp_path / CAPTURE_LOG).read_bytes()
    real_write = os.write

    def half_write(fd: int, data: bytes) -> int:  # what a nearly full disk may do
        return real_write(fd, data[:len(data) // 2])

    monkeypatch.setattr(capture.os, "write", half_write)
    with pytest.raises(SaveError) as raised:
        saver.save(smooth_frame(), "cat", None)
    assert (str(raised.value), raised.value.errno) == (
        f"{tmp_path}: cannot save frame (No space left on device)", errno.ENOSPC)
    assert (tmp_path / CAPTURE_LOG).read_bytes() == log_before
    assert every_file(tmp_path) == [CAPTURE_LOG, first.file]
