"""One model file, opened once: what it says about itself, each fact read when first asked for.

`ModelFile(path)` reads nothing when it is made. The first question about a fact reads it and the
answer is kept, so the Classifier, `edge-classify --info` and `--verify`, and the converter's
report ask one ModelFile instead of each reading the file again:

- our embedded metadata is read from the appended archive in place (its directory and entries,
  not the whole model);
- the whole file's bytes are read only for what needs them: the official TFLite metadata, whose
  parser is imported only then, and which the Classifier asks for only of models without ours;
- the sha256 is taken of those bytes when they are already read, else streamed from the file.

Errors are those of the readers below (`metadata`, `official_metadata`, `manifest`): ModelError
naming the file, or OSError where the file cannot be read, for the caller to word.
"""

from __future__ import annotations

import functools
import os
from typing import TYPE_CHECKING

from .conventions import InputRule, LabelChoice, resolve_input, resolve_labels
from .metadata import ModelMetadata, read_metadata

if TYPE_CHECKING:  # for annotations only: these load when a question needs them
    import numpy as np

    from ..preprocess import Normalization
    from .manifest import Verification
    from .official_metadata import OfficialMetadata


class ModelFile:
    """A `.tflite` file and what it says: bytes, our metadata, the official metadata, labels,
    input rule, sha256 and manifest check, each read once, when first asked for."""

    def __init__(self, path: str | os.PathLike):
        self.path: str = os.fspath(path)  # a str: pathlib is not imported on the one-photo path

    @classmethod
    def of(cls, model: ModelFile | str | os.PathLike) -> ModelFile:
        """`model` itself when it is a ModelFile already, else a new one for that path."""
        return model if isinstance(model, ModelFile) else cls(model)

    def __repr__(self) -> str:
        return f"ModelFile({self.path!r})"

    @functools.cached_property
    def data(self) -> bytes:
        """The whole file, read once (OSError when it cannot be read)."""
        with open(self.path, "rb") as handle:
            return handle.read()

    @property
    def holds_data(self) -> bool:
        """Whether the file's bytes are in memory now."""
        return "data" in self.__dict__

    def release_data(self) -> None:
        """Let go of the file's bytes; the facts read from them stay. What keeps a ModelFile for
        long (a Classifier, for its whole run, in each worker) must not keep a second copy of
        the model beside the interpreter's."""
        self.__dict__.pop("data", None)

    @functools.cached_property
    def metadata(self) -> ModelMetadata | None:
        """Our embedded labels and preprocessing; None when the model carries none.

        ModelError naming the file when they are damaged or over the limits of `limits`.
        """
        return read_metadata(self.path)

    @functools.cached_property
    def official(self) -> OfficialMetadata | None:
        """The official TFLite metadata; None when the model carries none (ModelError naming the file
        when it is damaged or over the limits). Parsed on the first question, from `data`."""
        from .official_metadata import read_official_metadata

        return read_official_metadata(self.data, self.path)

    @property
    def official_in_use(self) -> OfficialMetadata | None:
        """The official metadata where it decides preprocessing and labels: for a model without ours.

        Our own metadata says everything classification needs, so for our models the official
        metadata is not read (nor its parser imported) here, and this is None.
        """
        return self.official if self.metadata is None else None

    def labels(self, labels_path: str | os.PathLike | None = None) -> LabelChoice:
        """The labels the model's classes are shown with (`conventions.resolve_labels`)."""
        return resolve_labels(self.metadata, self.official_in_use, labels_path)

    def input_rule(self, dtype: np.dtype, height: int, width: int,
                   override: Normalization | None = None) -> InputRule:
        """How pixels become the values of an input tensor of `dtype`, `height` x `width`
        (`conventions.resolve_input`)."""
        return resolve_input(self.metadata, self.official_in_use, dtype, height, width, override)

    @property
    def size(self) -> int:
        """The file's size in bytes."""
        return os.path.getsize(self.path)

    @functools.cached_property
    def sha256(self) -> str:
        """Hex sha256 of the file: of `data` when it is read already, else streamed in chunks."""
        if "data" in self.__dict__:
            import hashlib

            return hashlib.sha256(self.data).hexdigest()
        from .manifest import sha256_file  # the manifest's writer imports tempfile: not on the one-photo path

        return sha256_file(self.path)

    def verify(self, manifest_path: str | os.PathLike | None = None) -> Verification:
        """Check the file's size and sha256 against its manifest (default: manifest.json beside it)."""
        from .manifest import verify_file

        return verify_file(self.path, manifest_path)
