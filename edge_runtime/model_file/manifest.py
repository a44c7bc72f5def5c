"""`manifest.json`: the size and sha256 of each exported model, and checking a copy against it."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from ..atomic import write_text
from ..errors import ModelError
from .limits import MANIFEST, read_file_bounded

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT_VERSION = 1
HASH_CHUNK_BYTES = 1 << 20


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(HASH_CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_entry(path: str | os.PathLike) -> dict[str, Any]:
    """The manifest entry of one file: size in bytes and sha256."""
    return {"size": os.path.getsize(path), "sha256": sha256_file(path)}


def write_manifest(folder: str | os.PathLike, file_names: list[str],
                   extra: dict[str, Any] | None = None) -> Path:
    """Write `folder/manifest.json` atomically for the named files (names relative to folder)."""
    folder = Path(folder)
    manifest = {
        "format_version": MANIFEST_FORMAT_VERSION,
        "files": {name: file_entry(folder / name) for name in sorted(file_names)},
        **(extra or {}),
    }
    path = folder / MANIFEST_NAME
    write_text(path, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return path


def read_manifest(path: str | os.PathLike) -> dict[str, Any]:
    """Read a manifest; ModelError names the file if it is missing, not a manifest or over
    `limits.MANIFEST_MAX_BYTES` (a manifest comes with a downloaded model: it is input from outside)."""
    try:
        raw = read_file_bounded(path, MANIFEST)
    except FileNotFoundError as error:
        raise ModelError(f"{path}: manifest not found") from error
    except OSError as error:
        raise ModelError(f"{path}: not a readable manifest ({error})") from error
    try:
        data = json.loads(raw)
    except RecursionError as error:
        raise ModelError(f"{path}: not a readable manifest (nested too deeply)") from error
    except ValueError as error:
        raise ModelError(f"{path}: not a readable manifest ({error})") from error
    if not isinstance(data, dict) or not isinstance(data.get("files"), dict):
        raise ModelError(f"{path}: not a manifest (no 'files' table)")
    return data


@dataclasses.dataclass(frozen=True)
class Verification:
    """The outcome of checking one file against its manifest entry."""

    path: Path
    ok: bool
    problems: list[str]
    expected: dict[str, Any] | None
    actual: dict[str, Any] | None

    def message(self) -> str:
        if self.ok:
            return f"OK {self.path} ({self.actual['size']} bytes, sha256 {self.actual['sha256']})"
        return f"FAILED {self.path}: " + "; ".join(self.problems)


def verify_file(model_path: str | os.PathLike, manifest_path: str | os.PathLike | None = None) -> Verification:
    """Check a file's size and sha256 against the manifest (default: manifest.json beside it)."""
    model = Path(model_path)
    manifest_file = Path(manifest_path) if manifest_path is not None else model.parent / MANIFEST_NAME
    if not model.is_file():
        raise ModelError(f"{model}: file not found")
    entries = read_manifest(manifest_file)["files"]
    expected = entries.get(model.name)
    if expected is not None and not isinstance(expected, dict):
        raise ModelError(f"{manifest_file}: not a manifest (the entry for {model.name} is not a table)")
    if expected is None:
        raise ModelError(f"{manifest_file}: has no entry for {model.name} "
                         f"(it lists {', '.join(sorted(entries)) or 'nothing'})")
    actual = file_entry(model)
    problems = []
    if actual["size"] != expected.get("size"):
        problems.append(f"size is {actual['size']} bytes, manifest says {expected.get('size')}")
    if actual["sha256"] != expected.get("sha256"):
        problems.append(f"sha256 is {actual['sha256']}, manifest says {expected.get('sha256')}")
    return Verification(path=model, ok=not problems, problems=problems, expected=expected, actual=actual)
