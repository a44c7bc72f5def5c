"""Embedded labels and preprocessing: round trip, determinism, refusal of non-models, atomic writes."""

from __future__ import annotations

import os
import struct

import pytest

from edge_runtime import atomic
from edge_runtime.errors import ModelError
from edge_runtime.model_file.metadata import (ModelMetadata, embed_metadata, is_tflite_flatbuffer, read_metadata,
                                              read_metadata_bytes)
from edge_runtime.preprocess import PreprocessSpec

# A stand-in flatbuffer: root offset, then the TFLite identifier, then padding bytes.
FAKE_FLATBUFFER = struct.pack("<I", 16) + b"TFL3" + bytes(range(256)) * 4
LABELS = ["airplane", "automobile", "bird", "cat with spaces", "été"]


def test_metadata_round_trips_unchanged() -> None:
    spec = PreprocessSpec(height=40, width=48, resize="stretch", background=(0, 0, 0))
    model = embed_metadata(FAKE_FLATBUFFER, ModelMetadata(LABELS, spec, {"variant": "int8"}))
    assert model.startswith(FAKE_FLATBUFFER), "the flatbuffer must stay byte-identical at the front"
    back = read_metadata_bytes(model)
    assert back is not None
    assert back.labels == LABELS
    assert back.preprocess == spec
    assert back.info["variant"] == "int8"
    assert back.info["format_version"] == 1


def test_embedding_is_deterministic() -> None:
    metadata = ModelMetadata(LABELS, PreprocessSpec())
    assert embed_metadata(FAKE_FLATBUFFER, metadata) == embed_metadata(FAKE_FLATBUFFER, metadata)


def test_model_without_metadata_reads_as_none(tmp_path) -> None:
    path = tmp_path / "plain.tflite"
    path.write_bytes(FAKE_FLATBUFFER)
    assert read_metadata(path) is None


def test_refuses_to_embed_into_non_tflite_bytes() -> None:
    with pytest.raises(ModelError, match="not a TFLite flatbuffer"):
        embed_metadata(b"GIF89a" + bytes(100), ModelMetadata(LABELS, PreprocessSpec()))
    assert not is_tflite_flatbuffer(b"TFL3")


def test_refuses_to_embed_twice() -> None:
    once = embed_metadata(FAKE_FLATBUFFER, ModelMetadata(LABELS, PreprocessSpec()))
    with pytest.raises(ModelError, match="already carries"):
        embed_metadata(once, ModelMetadata(LABELS, PreprocessSpec()))


def test_unknown_preprocessing_is_reported_as_damaged() -> None:
    model = embed_metadata(FAKE_FLATBUFFER, ModelMetadata(LABELS, PreprocessSpec()))
    damaged = model.replace(b'"RGB"', b'"BGR"')
    with pytest.raises(ModelError, match="embedded metadata is damaged"):
        read_metadata_bytes(damaged)


def test_atomic_write_leaves_old_file_when_writer_crashes(tmp_path) -> None:
    target = tmp_path / "model.bin"
    target.write_bytes(b"old contents")
    with pytest.raises(RuntimeError):
        with atomic.atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("crash while writing")
    assert target.read_bytes() == b"old contents"
    assert sorted(os.listdir(tmp_path)) == ["model.bin"], "the temporary file must be cleaned up"


def test_atomic_write_replaces_and_keeps_extension(tmp_path) -> None:
    target = tmp_path / "sub" / "plot.png"
    with atomic.atomic_path(target) as tmp:
        assert tmp.suffix == ".png" and tmp.parent == target.parent
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new"
    assert oct(target.stat().st_mode & 0o777) == oct(atomic.DEFAULT_FILE_MODE)
