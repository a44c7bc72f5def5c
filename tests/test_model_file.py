"""`ModelFile` reads each fact of a model file once, and what asks it does not read the file again.

The Classifier, `--info` and the converter's report used to read the same file several times
(our metadata three times for an int8 model in one report); here the file's opens and the
metadata reads are counted.
"""

from __future__ import annotations

import builtins
import hashlib
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from edge_runtime.classify import Classifier
from edge_runtime.info import model_facts
from edge_runtime.model_file import reader as reader_module
from edge_runtime.model_file.conventions import EMBEDDED, QUANTIZED_PIXELS
from edge_runtime.model_file.reader import ModelFile
from synthetic import CLASS_NAMES

pytest_plugins = ("runtime_fixtures",)


def count_opens(monkeypatch: pytest.MonkeyPatch, path: Path) -> list[str]:
    """The modes `path` is opened with from now on, through `open` (what every reader here calls)."""
    opened: list[str] = []
    real_open = builtins.open
    target = os.fspath(path)

    def counting(file, mode="r", *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and os.fspath(file) == target:
            opened.append(mode)
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", counting)
    return opened


def count_metadata_reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The paths whose embedded metadata is read from now on."""
    reads: list[str] = []
    real_read = reader_module.read_metadata

    def counting(path):
        reads.append(os.fspath(path))
        return real_read(path)

    monkeypatch.setattr(reader_module, "read_metadata", counting)
    return reads


def test_a_model_file_reads_nothing_until_asked_then_each_fact_once(runtime_models, monkeypatch) -> None:
    expected_sha256 = hashlib.sha256(runtime_models.int8.read_bytes()).hexdigest()
    opens = count_opens(monkeypatch, runtime_models.int8)
    model = ModelFile(runtime_models.int8)
    assert model.path == str(runtime_models.int8) and opens == []
    for _ in range(2):
        assert model.metadata is not None and model.metadata.labels == list(CLASS_NAMES)
        assert model.labels().source == EMBEDDED
        assert model.input_rule(np.dtype(np.int8), 32, 32).kind == EMBEDDED
        assert model.official_in_use is None  # ours says everything: the official metadata is not read
    assert opens == ["rb"]  # the appended archive, read in place
    for _ in range(2):
        assert model.official is None  # the fixture carries no official metadata
        assert model.sha256 == expected_sha256
    assert opens == ["rb", "rb"]  # the whole file, once: the sha256 is of the bytes the official reader read
    assert len(model.data) == model.size == runtime_models.int8.stat().st_size


def test_the_sha256_of_a_file_whose_bytes_were_not_read_is_streamed(runtime_models) -> None:
    model = ModelFile(runtime_models.float32)
    assert model.sha256 == hashlib.sha256(runtime_models.float32.read_bytes()).hexdigest()
    assert not model.holds_data  # not held in memory for a sha256 alone


def test_a_classifier_built_from_a_model_file_uses_its_answers(runtime_models, monkeypatch) -> None:
    model = ModelFile(runtime_models.int8)
    metadata = model.metadata
    reads = count_metadata_reads(monkeypatch)
    classifier = Classifier(model)
    assert reads == []
    assert classifier.model_file is model and classifier.metadata is metadata
    assert classifier.model_path == str(runtime_models.int8) and classifier.labels == list(CLASS_NAMES)
    from_path = Classifier(runtime_models.int8)  # as before: a path, read once
    assert reads == [str(runtime_models.int8)]
    assert from_path.model_file.path == from_path.model_path == str(runtime_models.int8)


@pytest.mark.parametrize("name", ["int8", "plain_int8"])
def test_info_reads_the_whole_file_once_and_a_classifier_keeps_no_copy_of_it(runtime_models, monkeypatch,
                                                                              name: str) -> None:
    """Ours: --info reads the bytes once for the official metadata and the sha256. A model from
    elsewhere: the classifier read them for its official metadata and let them go (the interpreter
    holds the model; a second copy would stay for the whole run, in every worker), so --info
    streams the file once for the sha256."""
    path = getattr(runtime_models, name)
    expected_sha256 = hashlib.sha256(path.read_bytes()).hexdigest()
    classifier = Classifier(path)
    assert not classifier.model_file.holds_data
    opens = count_opens(monkeypatch, path)
    facts = model_facts(classifier)
    assert opens == ["rb"]
    assert facts["sha256"] == expected_sha256 and facts["size_bytes"] == path.stat().st_size
    assert facts["tflite_metadata"] is None and "tflite_metadata_error" not in facts
    assert classifier.input_rule.kind == (EMBEDDED if name == "int8" else QUANTIZED_PIXELS)


class ConstantKeras:
    """Just enough of a Keras model for `build_report`: the same probabilities for every image."""

    outputs = [SimpleNamespace(shape=(None, len(CLASS_NAMES)))]

    def predict(self, inputs: np.ndarray, batch_size: int, verbose: int) -> np.ndarray:
        return np.full((len(inputs), len(CLASS_NAMES)), 1.0 / len(CLASS_NAMES), dtype=np.float32)


def test_the_report_reads_each_models_metadata_once(runtime_models, synthetic_test_images, monkeypatch) -> None:
    """The notes, the evaluation through the Classifier and the int8 calibration ask one ModelFile."""
    from converter.report import build_report

    images, labels = synthetic_test_images
    models = [("float32", runtime_models.float32), ("int8", runtime_models.int8)]
    reads = count_metadata_reads(monkeypatch)
    report = build_report(ConstantKeras(), models, images, labels, list(CLASS_NAMES))
    assert sorted(reads) == sorted(str(path) for _, path in models)
    assert [result.name for result in report.formats][1:] == ["float32", "int8"]
