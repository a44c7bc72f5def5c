"""A model we did not train: Coral's public uint8 MobileNet v2 with official TFLite metadata.

edge-classify must find its normalization (mean 127.5, std 127.5) and its 1001 labels (index 0
`background`) in the file itself and answer as the model's README measured. Needs
../shared/models/coral/ beside the checkout; skips with the reason without it.
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

# The README's answers (bilinear resize, pixels fed as they are): label and score.
EXPECTED = {"grace_hopper.bmp": ("military uniform", 0.922), "cat_720p.jpg": ("Egyptian cat", 0.820)}
# Our input is (pixel - 127.5) / 127.5 requantized at scale 1/128, which moves pixels by up to half
# a step against the README's raw pixels: scores stay within a few hundredths.
SCORE_TOLERANCE = 0.03
IMAGENET_CLASSES_WITH_BACKGROUND = 1001


@pytest.mark.parametrize("image", sorted(EXPECTED))
def test_coral_model_answers_with_its_own_labels_and_normalization(image: str) -> None:
    result = CliRunner().invoke(main, ["--model", str(MODEL), "--json", str(CORAL / image)])
    assert result.exit_code == 0, result.output
    assert result.stderr == ""  # nothing was guessed
    record = json.loads(result.stdout)
    label, score = EXPECTED[image]
    assert record["label"] == label
    assert record["score"] == pytest.approx(score, abs=SCORE_TOLERANCE)


def test_coral_info_says_labels_and_normalization_come_from_its_metadata() -> None:
    result = CliRunner().invoke(main, ["--info", str(MODEL), "--json"])
    assert result.exit_code == 0, result.output
    facts = json.loads(result.stdout)
    assert len(facts["labels"]) == IMAGENET_CLASSES_WITH_BACKGROUND and facts["labels"][0] == "background"
    assert facts["labels"][653] == "military uniform"
    assert facts["labels_source"] == "TFLite metadata, imagenet_labels.txt"
    assert facts["normalization"]["source"] == "TFLite metadata NormalizationOptions"
    assert facts["normalization"]["rule"] == "(pixel - 127.5) / 127.5, then the input's scale and zero point"
    assert facts["preprocess"]["resize"] == "stretch"
    assert facts["tflite_metadata"]["name"] == "ImageClassifier"
