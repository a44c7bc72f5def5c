"""manifest.json: what write_manifest records, and verify_file on untouched, changed and missing files."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest

from edge_runtime.errors import ModelError
from edge_runtime.model_file.manifest import (MANIFEST_FORMAT_VERSION, MANIFEST_NAME, read_manifest, sha256_file,
                                              verify_file, write_manifest)

MODEL_NAME = "model_int8.tflite"
OTHER_NAME = "model_float32.tflite"
# Bigger than one hashing chunk (1 MiB), so the chunked reader is exercised across a boundary.
MODEL_BYTES = bytes(range(256)) * 5000
OTHER_BYTES = b"\x00\x00\x00\x00TFL3 another model"
CHANGED_OFFSET = 1_100_000


@pytest.fixture()
def exported(tmp_path: Path) -> Path:
    """A folder as edge-convert leaves it: two models and a manifest listing both."""
    (tmp_path / MODEL_NAME).write_bytes(MODEL_BYTES)
    (tmp_path / OTHER_NAME).write_bytes(OTHER_BYTES)
    write_manifest(tmp_path, [MODEL_NAME, OTHER_NAME], extra={"source": "test"})
    return tmp_path


def test_manifest_records_size_and_sha256_of_each_file(exported: Path):
    manifest = json.loads((exported / MANIFEST_NAME).read_text())
    assert manifest["format_version"] == MANIFEST_FORMAT_VERSION
    assert manifest["source"] == "test"
    assert manifest["files"] == {
        MODEL_NAME: {"size": len(MODEL_BYTES), "sha256": hashlib.sha256(MODEL_BYTES).hexdigest()},
        OTHER_NAME: {"size": len(OTHER_BYTES), "sha256": hashlib.sha256(OTHER_BYTES).hexdigest()},
    }
    assert sha256_file(exported / MODEL_NAME) == hashlib.sha256(MODEL_BYTES).hexdigest()


def test_untouched_file_passes(exported: Path):
    result = verify_file(exported / MODEL_NAME)
    assert result.ok
    assert result.problems == []
    assert result.actual == result.expected
    assert result.message() == (f"OK {exported / MODEL_NAME} ({len(MODEL_BYTES)} bytes, "
                                f"sha256 {hashlib.sha256(MODEL_BYTES).hexdigest()})")


def test_one_changed_byte_is_detected(exported: Path):
    model = exported / MODEL_NAME
    data = bytearray(MODEL_BYTES)
    data[CHANGED_OFFSET] ^= 0x01
    model.write_bytes(bytes(data))
    result = verify_file(model)
    assert not result.ok
    # Same size, so the only difference is the hash, and the message gives both values.
    assert result.problems == [f"sha256 is {hashlib.sha256(bytes(data)).hexdigest()}, "
                               f"manifest says {hashlib.sha256(MODEL_BYTES).hexdigest()}"]
    assert result.message().startswith(f"FAILED {model}: sha256 is ")


def test_wrong_size_is_detected(exported: Path):
    model = exported / MODEL_NAME
    truncated = MODEL_BYTES[:-1]
    model.write_bytes(truncated)
    result = verify_file(model)
    assert not result.ok
    assert result.problems[0] == f"size is {len(truncated)} bytes, manifest says {len(MODEL_BYTES)}"
    assert result.problems[1].startswith(f"sha256 is {hashlib.sha256(truncated).hexdigest()}")


def test_other_entries_do_not_matter(exported: Path):
    (exported / OTHER_NAME).write_bytes(b"changed")
    assert verify_file(exported / MODEL_NAME).ok
    assert not verify_file(exported / OTHER_NAME).ok


def test_explicit_manifest_path(exported: Path, tmp_path_factory: pytest.TempPathFactory):
    elsewhere = tmp_path_factory.mktemp("copy")
    (elsewhere / MODEL_NAME).write_bytes(MODEL_BYTES)
    # No manifest beside the copy: the default fails, the explicit one passes.
    with pytest.raises(ModelError, match="manifest not found"):
        verify_file(elsewhere / MODEL_NAME)
    assert verify_file(elsewhere / MODEL_NAME, exported / MANIFEST_NAME).ok


def test_missing_entry_names_what_the_manifest_lists(exported: Path):
    stranger = exported / "stranger.tflite"
    stranger.write_bytes(MODEL_BYTES)
    with pytest.raises(ModelError) as error:
        verify_file(stranger)
    assert str(error.value) == (f"{exported / MANIFEST_NAME}: has no entry for stranger.tflite "
                                f"(it lists {OTHER_NAME}, {MODEL_NAME})")


def test_missing_manifest(tmp_path: Path):
    model = tmp_path / MODEL_NAME
    model.write_bytes(MODEL_BYTES)
    with pytest.raises(ModelError) as error:
        verify_file(model)
    assert str(error.value) == f"{tmp_path / MANIFEST_NAME}: manifest not found"


def test_missing_model_file(exported: Path):
    (exported / MODEL_NAME).unlink()
    with pytest.raises(ModelError) as error:
        verify_file(exported / MODEL_NAME)
    assert str(error.value) == f"{exported / MODEL_NAME}: file not found"


@pytest.mark.parametrize("content, reason", [
    ("{not json", "not a readable manifest"),
    ('{"files": []}', "not a manifest (no 'files' table)"),
    ("[1, 2]", "not a manifest (no 'files' table)"),
])
def test_damaged_manifest_is_refused(exported: Path, content: str, reason: str):
    (exported / MANIFEST_NAME).write_text(content)
    with pytest.raises(ModelError, match=re.escape(reason)):
        read_manifest(exported / MANIFEST_NAME)
    with pytest.raises(ModelError, match=str(exported / MANIFEST_NAME)):
        verify_file(exported / MODEL_NAME)
