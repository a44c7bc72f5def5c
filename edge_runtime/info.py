"""`edge-classify --info`: the facts about a model file a user checks before trusting it."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from .classify import Classifier
from .errors import ModelError
from .output import LABEL_SEPARATOR

PREVIEW_LABELS = 10
CALIBRATION_KEY = "calibration"
MAX_LAYER_NAME = 100  # longer names, or other values, in a pooling record are shown raw, not formatted
MAX_MAP_SIDE = 100_000


def model_facts(classifier: Classifier) -> dict[str, Any]:
    """`Classifier.describe()` plus the file's size and sha256 and the embedded model info,
    asked of the classifier's `ModelFile` (the file is not opened again for what it has read)."""
    model_file = classifier.model_file
    facts = classifier.describe()
    official_error = None
    if facts["tflite_metadata"] is None and classifier.metadata is not None:
        # The classifier skips the official metadata of our own files; --info shows it all the same.
        # Asked first: the sha256 below is then taken of the bytes it read.
        try:
            official = model_file.official
        except ModelError as error:
            official_error = str(error)
        else:
            facts["tflite_metadata"] = official.summary() if official else None
    facts["size_bytes"] = model_file.size
    facts["sha256"] = model_file.sha256
    facts["info"] = dict(classifier.metadata.info) if classifier.metadata else {}
    if official_error is not None:
        facts["tflite_metadata_error"] = official_error
    return facts


def facts_text(facts: dict[str, Any], as_json: bool, choice_reason: str | None = None) -> str:
    """What `--info` prints: the facts as JSON (with `model_choice`), else `format_facts` with the
    reason a model was chosen among several, when it was."""
    if as_json:
        return json.dumps({**facts, "model_choice": choice_reason}, indent=2, sort_keys=True)
    lines = format_facts(facts)
    if choice_reason:
        lines.insert(1, f"{'chosen:':<13} {choice_reason}")
    return "\n".join(lines)


def run_once(classifier: Classifier) -> None:
    """Run the model once on a blank image: ModelError when it loads but cannot run."""
    classifier.scores(np.zeros((classifier.spec.height, classifier.spec.width, 3), dtype=np.uint8))


def _tensor_line(tensor: dict[str, Any]) -> str:
    text = f"{tensor['shape']} {tensor['dtype']}"
    quantization = tensor.get("quantization")
    if quantization:
        text += f", scale {quantization['scale']:.6g}, zero point {quantization['zero_point']}"
    return text


def describe_calibration(calibration: dict[str, Any] | None) -> str | None:
    """One line on how int8 was calibrated, from the info edge-convert embedded; None when unknown."""
    if not calibration:
        return None
    text = f"{calibration.get('count', '?')} {calibration.get('split', 'training')} images, seed {calibration.get('seed')}"
    logit_range = calibration.get("logit_range")
    if isinstance(logit_range, dict) and "low" in logit_range:
        if not all(_is_number(logit_range.get(key)) for key in ("low", "high")):
            return None  # written by something else: shown as it is
        text += (f"; logits quantized from {logit_range['low']:g} up to at most {logit_range['high']:g} "
                 "(lowest winning logit - ln 256 to highest logit)")
    elif isinstance(logit_range, dict):
        text += "; logits quantized over their full calibrated min/max"
    pooling = calibration.get("pooling")
    if pooling is not None:
        layer, size = (pooling.get("layer"), pooling.get("map")) if isinstance(pooling, dict) else (None, None)
        if not (isinstance(layer, str) and layer.isprintable() and len(layer) <= MAX_LAYER_NAME
                and isinstance(size, list) and len(size) == 2 and all(_is_count(side) for side in size)):
            return None  # written by something else: shown as it is
        text += f"; average pool {layer!r} over the whole {size[0]}x{size[1]} map quantized as a mean"
    return text


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value <= MAX_MAP_SIDE


def _official_line(facts: dict[str, Any]) -> str:
    """The official TFLite metadata in one line: what a tool like MediaPipe or Netron reads."""
    if facts.get("tflite_metadata_error"):
        return f"official TFLite metadata unreadable ({facts['tflite_metadata_error']})"
    official = facts.get("tflite_metadata")
    if not official:
        return "no official TFLite metadata"
    parts = ["official TFLite metadata " + repr(official["name"]) + (f" version {official['version']}" if official["version"] else "")]
    if official["normalization"]:
        parts.append(f"mean {_values(official['normalization']['mean'])}, std {_values(official['normalization']['std'])}")
    if official["color_space"]:
        parts.append(official["color_space"])
    parts.append(f"labels {official['labels_file']}" if official["labels_file"] else "no labels")
    if official["score_calibration"]:
        parts.append(f"score calibration ({official['score_calibration']})")
    return ", ".join(parts)


def _values(numbers: list[float]) -> str:
    shown = [f"{number:g}" for number in numbers]
    return shown[0] if len(set(shown)) == 1 else "[" + ", ".join(shown) + "]"


def format_facts(facts: dict[str, Any]) -> list[str]:
    """The facts for people, one per line."""
    labels = facts["labels"]
    if labels:
        preview = list(labels[:PREVIEW_LABELS]) + (["..."] if len(labels) > PREVIEW_LABELS else [])
        label_text = f"{len(labels)} ({facts['labels_source']}): {LABEL_SEPARATOR.join(preview)}"
    else:
        label_text = f"none ({facts['num_classes']} classes shown as indices)"
    spec = facts["preprocess"]
    normalization = facts["normalization"]
    threads = facts["threads"]
    lines = [
        f"model:        {facts['model']}",
        f"size:         {facts['size_bytes']:,} bytes",
        f"sha256:       {facts['sha256']}",
        f"backend:      {facts['backend']}, {threads} thread{'s' if threads != 1 else ''}",
        f"input:        {_tensor_line(facts['input'])}",
        f"output:       {_tensor_line(facts['output'])}",
        f"quantized:    {'yes' if facts['quantized'] else 'no'}",
        f"labels:       {label_text}",
        f"preprocess:   {spec['width']}x{spec['height']} {spec['color_order']}, {spec['resize']}, {spec['resample']}",
        f"input values: {normalization['rule']} ({normalization['source']})",
        f"metadata:     {_official_line(facts)}",
    ]
    for key, value in sorted(facts["info"].items()):
        shown = value if isinstance(value, (str, int, float)) else json.dumps(value, sort_keys=True)
        if key == CALIBRATION_KEY and isinstance(value, dict):
            shown = describe_calibration(value) or shown
        lines.append(f"{key + ':':<13} {shown}")
    return lines
