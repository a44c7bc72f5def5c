"""Pure pieces of the CLI: expanding inputs, picking the model, writing result lines."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest

from edge_runtime.classify import Class
from edge_runtime.errors import ModelError
from edge_runtime.model_file.choose import MODEL_ENV_VAR, find_model
from edge_runtime.output import BlockWriter, HumanWriter, JsonWriter, display_path, error_reason
from edge_runtime.sources.files import (FOLDER_NAMED_LIKE_IMAGE, InputItem, PassedOver, expand_inputs,
                                        has_image_extension, passed_over_notes)


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    for name in ["b.jpg", "a.PNG", "c.webp", "notes.txt", ".hidden.jpg", "sub/z.jpg", "sub/deeper/y.bmp",
                 "sub/.cache/x.jpg"]:
        touch(tmp_path / name)
    (tmp_path / "album.jpg").mkdir()
    return tmp_path


# --- inputs -------------------------------------------------------------------------------------

def test_folder_gives_its_images_sorted_skipping_hidden_and_other_files(tree: Path) -> None:
    items = list(expand_inputs([str(tree)]))
    assert items == [InputItem(str(tree / "a.PNG")), InputItem(str(tree / "album.jpg"), FOLDER_NAMED_LIKE_IMAGE),
                     InputItem(str(tree / "b.jpg")), InputItem(str(tree / "c.webp"))]


def test_recursive_walks_sub_folders_depth_first_in_name_order(tree: Path) -> None:
    paths = [item.path for item in expand_inputs([str(tree)], recursive=True)]
    assert paths == [str(tree / name) for name in
                     ["a.PNG", "album.jpg", "b.jpg", "c.webp", "sub/deeper/y.bmp", "sub/z.jpg"]]


def test_named_files_are_kept_in_order_whatever_their_extension(tree: Path) -> None:
    items = list(expand_inputs([str(tree / "notes.txt"), str(tree / "b.jpg"), str(tree / "gone.jpg")]))
    assert items == [InputItem(str(tree / "notes.txt")), InputItem(str(tree / "b.jpg")),
                     InputItem(str(tree / "gone.jpg"), "no such file or folder")]


def test_a_folder_named_like_an_image_is_an_error_even_when_named(tree: Path) -> None:
    assert list(expand_inputs([str(tree / "album.jpg") + os.sep])) == [
        InputItem(str(tree / "album.jpg") + os.sep, FOLDER_NAMED_LIKE_IMAGE)]


def test_an_empty_folder_is_reported_and_one_with_only_sub_folders_asks_for_r(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    touch(tmp_path / "nested" / "inside" / "a.jpg")
    touch(tmp_path / "nested" / "notes.txt")
    assert list(expand_inputs([str(tmp_path / "empty")], recursive=True)) == [
        InputItem(str(tmp_path / "empty"), "folder has no image files")]
    assert list(expand_inputs([str(tmp_path / "empty")])) == [
        InputItem(str(tmp_path / "empty"), "folder has no image files")]
    assert list(expand_inputs([str(tmp_path / "nested")])) == [
        InputItem(str(tmp_path / "nested"), "folder has no image files, only sub-folders: use -r (--recursive) "
                                            "to classify the images in them")]
    assert [item.path for item in expand_inputs([str(tmp_path / "nested")], recursive=True)] == [
        str(tmp_path / "nested" / "inside" / "a.jpg")]


def test_sub_folders_passed_over_without_r_are_recorded_by_name(tree: Path, tmp_path: Path) -> None:
    passed_over: list[PassedOver] = []
    list(expand_inputs([str(tree)], passed_over=passed_over))
    assert passed_over == [PassedOver(str(tree), ("sub",), reported=False)]  # album.jpg/ is an error item instead
    walked: list[PassedOver] = []
    list(expand_inputs([str(tree)], recursive=True, passed_over=walked))
    assert walked == []
    touch(tmp_path / "nested" / "inside" / "a.jpg")
    only_sub_folders: list[PassedOver] = []
    assert [item.error for item in expand_inputs([str(tmp_path / "nested")], passed_over=only_sub_folders)] == [
        "folder has no image files, only sub-folders: use -r (--recursive) to classify the images in them"]
    assert only_sub_folders == [PassedOver(str(tmp_path / "nested"), ("inside",), reported=True)]


def test_passed_over_notes_name_a_few_sub_folders_and_skip_folders_already_reported() -> None:
    passed_over = [PassedOver("photos", ("2023",)), PassedOver("trips", ("a", "b", "c", "d", "e")),
                   PassedOver("nested", ("x", "y"), reported=True)]
    hint = "use -r (--recursive) to search sub-folders too"
    assert passed_over_notes(passed_over, errors_shown=True) == [
        f"photos: 1 sub-folder not searched (2023): {hint}",
        f"trips: 5 sub-folders not searched (a, b, c and 2 more): {hint}"]
    assert passed_over_notes(passed_over, errors_shown=False)[2] == f"nested: 2 sub-folders not searched (x, y): {hint}"


def test_a_symlink_loop_is_walked_once(tmp_path: Path) -> None:
    touch(tmp_path / "a" / "one.jpg")
    (tmp_path / "a" / "loop").symlink_to(tmp_path / "a")
    assert [item.path for item in expand_inputs([str(tmp_path / "a")], recursive=True)] == [
        str(tmp_path / "a" / "one.jpg")]


@pytest.mark.parametrize("name, expected", [("x.JPG", True), ("x.jpeg", True), ("x.tif", True),
                                            ("x.heic", False), ("jpg", False), ("x.jpg.txt", False)])
def test_image_extensions(name: str, expected: bool) -> None:
    assert has_image_extension(name) is expected


# --- model selection ----------------------------------------------------------------------------

def test_find_model_order(tmp_path: Path) -> None:
    touch(tmp_path / "only.tflite")
    touch(tmp_path / "notes.txt")
    assert find_model("given.tflite", {MODEL_ENV_VAR: "env.tflite"}, tmp_path) == "given.tflite"
    assert find_model(None, {MODEL_ENV_VAR: "env.tflite"}, tmp_path) == "env.tflite"
    assert find_model(None, {MODEL_ENV_VAR: "  "}, tmp_path) == str(tmp_path / "only.tflite")
    assert find_model(None, {}, tmp_path) == str(tmp_path / "only.tflite")


def test_find_model_ignores_folders_named_tflite(tmp_path: Path) -> None:
    (tmp_path / "dir.tflite").mkdir()
    with pytest.raises(ModelError, match=r"\(none there\)$"):
        find_model(None, {}, tmp_path)


# --- writers ------------------------------------------------------------------------------------

CLASSES = [Class(2, "cat", 0.875), Class(0, "dog", 0.125)]


def test_json_writer_lines_parse_and_round_scores() -> None:
    out = io.StringIO()
    writer = JsonWriter(out)
    writer.result("a.jpg", CLASSES, False, 1.23456)
    writer.result("b.jpg", CLASSES[:1], True, 0.5)
    writer.error("c.jpg", 'bad "thing"')
    first, second, third = (json.loads(line) for line in out.getvalue().splitlines())
    assert first == {"path": "a.jpg", "label": "cat", "score": 0.875, "latency_ms": 1.235,
                     "top_k": [{"label": "cat", "score": 0.875}, {"label": "dog", "score": 0.125}]}
    assert second["label"] == "uncertain" and second["uncertain"] is True and second["score"] == 0.875
    assert third == {"path": "c.jpg", "error": 'bad "thing"'}


def test_json_writer_escapes_undecodable_file_names() -> None:
    out = io.StringIO()
    name = os.fsdecode(b"photo-\xff.jpg")  # a Linux name that is not UTF-8
    JsonWriter(out).result(name, CLASSES, False, 1.0)
    assert out.getvalue().isascii()
    assert json.loads(out.getvalue())["path"] == name


def test_human_writer_lines() -> None:
    out, err = io.StringIO(), io.StringIO()
    writer = HumanWriter(out, err)
    writer.result("a.jpg", CLASSES, False, 1.0)
    writer.result("b.jpg", CLASSES[:1], True, 1.0)
    writer.error("c.jpg", "file is empty (0 bytes)")
    assert out.getvalue() == "a.jpg: cat 0.875 | dog 0.125\nb.jpg: uncertain (cat 0.875)\n"
    assert err.getvalue() == "c.jpg: error: file is empty (0 bytes)\n"


def test_human_writer_keeps_labels_with_commas_apart() -> None:
    out = io.StringIO()
    classes = [Class(653, "military uniform", 0.926), Class(458, "bow tie, bow-tie, bowtie", 0.008),
               Class(752, "racket, racquet", 0.008)]
    writer = HumanWriter(out, io.StringIO())
    writer.result("grace_hopper.bmp", classes, False, 1.0)
    writer.result("grace_hopper.bmp", classes[1:2], True, 1.0)
    first, second = out.getvalue().splitlines()
    assert first == ("grace_hopper.bmp: military uniform 0.926 | bow tie, bow-tie, bowtie 0.008 | "
                     "racket, racquet 0.008")
    assert [item.rsplit(" ", 1)[0] for item in first.split(": ", 1)[1].split(" | ")] == [c.label for c in classes]
    assert second == "grace_hopper.bmp: uncertain (bow tie, bow-tie, bowtie 0.008)"


def test_display_path_replaces_undecodable_bytes() -> None:
    assert display_path(os.fsdecode(b"a\xffb.jpg")) == "a\ufffdb.jpg"
    assert display_path("plain.jpg") == "plain.jpg"


def test_error_reason_drops_the_leading_path() -> None:
    assert error_reason("x.jpg", "x.jpg: file is empty (0 bytes)") == "file is empty (0 bytes)"
    assert error_reason("x.jpg", "something else") == "something else"


class CountingStream(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


def test_block_writer_writes_once_per_block_and_on_flush() -> None:
    stream = CountingStream()
    block = BlockWriter(stream, block_lines=3)
    for number in range(7):
        block.write(f"{number}\n")
    assert stream.writes == 2 and stream.getvalue() == "0\n1\n2\n3\n4\n5\n"
    block.flush()
    assert stream.writes == 3 and stream.getvalue().splitlines() == [str(n) for n in range(7)]


def test_block_writer_counts_the_lines_of_multi_line_writes() -> None:
    stream = CountingStream()
    block = BlockWriter(stream, block_lines=4)
    block.write("0\n1\n2\n")
    assert stream.writes == 0
    block.write("3\n4\n")
    assert stream.writes == 1 and stream.getvalue() == "0\n1\n2\n3\n4\n"
    block.flush()
    assert stream.writes == 1
