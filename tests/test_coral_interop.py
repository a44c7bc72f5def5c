"""A model we did not train: Coral's public uint8 MobileNet v2 with official TFLite metadata.

edge-classify must find its labels (1001, index 0 `background`) in the file itself and answer as
MediaPipe's ImageClassifier does: MediaPipe's resize, and the uint8 pixels fed as they are (the
metadata's mean 127.5 and std 127.5 are what the input's scale and zero point stand for). Needs
../shared/models/coral/ beside the checkout; skips with the reason without it. The comparison with
MediaPipe itself is in tests/test_mediapipe_parity.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from edge_runtime.cli import main

CORAL = Path(__file__).resolve().parent.parent.parent / "shared" / "models" / "coral"
MODEL = CORAL / "mobilenet_v2_1.0_224_quant.tflite"
pytestmark = pytest.mark.skipif(not MODEL.is_file(), reason=f"no Coral test model at {MODEL} (../shared is absent)")

# MediaPipe 1.2.3's answers, as the model's README measured them: label and score. (With Pillow's
# antialiased bilinear resize instead the README has 0.922 and 0.820.)
EXPECTED = {"grace_hopper.bmp": ("military uniform", 0.945), "cat_720p.jpg": ("Egyptian cat", 0.898)}
# The README rounds to three decimals; one output step (1/256 = 0.0039) is well beyond that.
SCORE_TOLERANCE = 0.001
IMAGENET_CLASSES_WITH_BACKGROUND = 1001


@pytest.mark.parametrize("image", sorted(EXPECTED))
def test_coral_model_answers_with_its_own_labels_as_mediapipe_does(image: str) -> None:
    result = CliRunner().invoke(main, ["--model", str(MODEL), "--json", str(CORAL / image)])
    assert result.exit_code == 0, result.output
    assert result.stderr == ""  # nothing was guessed
    record = json.loads(result.stdout)
    label, score = EXPECTED[image]
    assert record["label"] == label
    assert record["score"] == pytest.approx(score, abs=SCORE_TOLERANCE)


def test_coral_info_says_where_labels_and_input_values_come_from() -> None:
    result = CliRunner().invoke(main, ["--info", str(MODEL), "--json"])
    assert result.exit_code == 0, result.output
    facts = json.loads(result.stdout)
    assert len(facts["labels"]) == IMAGENET_CLASSES_WITH_BACKGROUND and facts["labels"][0] == "background"
    assert facts["labels"][653] == "military uniform"
    assert facts["labels_source"] == "TFLite metadata, imagenet_labels.txt"
    assert facts["normalization"]["source"] == ("MediaPipe's rule for uint8 inputs; the TFLite metadata's "
                                                "(pixel - 127.5) / 127.5 is what the input's scale and zero point "
                                                "stand for")
    assert facts["normalization"]["rule"] == "the pixel itself"
    assert (facts["preprocess"]["resize"], facts["preprocess"]["resample"]) == ("stretch", "fixed_point_bilinear")
    assert facts["tflite_metadata"]["name"] == "ImageClassifier"
