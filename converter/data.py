"""Which data set the converter and the report load, and loading it as training did.

The options win; else `training.json` beside the model says which data set, seed and test
fraction the training run used, so that a single image tree is split into exactly that run's train
and test images. The images are decoded by the trainer's loader.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from converter.artifacts import TRAINING_INFO_NAME
from edge_runtime.errors import DataError
from edge_runtime.preprocess import DEFAULT_SPEC, PreprocessSpec
from trainer.invocation import knob


def read_training_info(model_path: str | os.PathLike) -> dict[str, Any]:
    """`training.json` beside the model ({} when there is none); DataError when it is unreadable."""
    path = Path(model_path).parent / TRAINING_INFO_NAME
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise DataError(f"{path}: not a readable training record ({error})") from error
    if not isinstance(data, dict):
        raise DataError(f"{path}: not a training record (expected a JSON object)")
    return data


@dataclasses.dataclass(frozen=True)
class DataChoice:
    """Which data set to load, how it was split in training, and the seed that draws samples from it."""

    source: str | None  # None: CIFAR-10 through Keras, the trainer's default
    seed: int  # draws the calibration images (and the report's --max-images sample)
    split_seed: int  # splits a single class-folder tree into train and test, as in training
    test_fraction: float | None  # likewise; None: the loader's default
    origin: str  # where the choice came from, for messages

    def describe(self) -> str:
        where = self.source if self.source is not None else "CIFAR-10 through Keras"
        split = f", split seed {self.split_seed}" if self.split_seed != self.seed else ""
        return f"{where} (seed {self.seed}{split}, from {self.origin})"


def resolve_data(model_path: str | os.PathLike, data: str | os.PathLike | None = None,
                 seed: int | None = None) -> DataChoice:
    """The data set and seed: the options when given, else what training.json beside the model records.

    The train/test split always follows training.json when there is one (its seed and test
    fraction), whatever `seed` says: a single image tree is then split into exactly the training
    run's train and test images, so calibration can never draw one of its test images.
    """
    info = read_training_info(model_path)
    config = info.get("config") if isinstance(info.get("config"), dict) else {}
    test_fraction = config.get("test_fraction")
    training_seed = info.get("seed", config.get("seed"))
    if data is not None:
        origin = "the command line"
        source: str | None = os.fspath(data)
    elif info:
        origin = f"{Path(model_path).parent / TRAINING_INFO_NAME}"
        source = config.get("data")
    else:
        raise DataError(f"no data set given and no {TRAINING_INFO_NAME} beside {model_path} to say which "
                        f"data the model was trained on (pass {knob('--data', 'PATH')})")
    for name, value in (("seed", training_seed), ("test fraction", test_fraction)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise DataError(f"{Path(model_path).parent / TRAINING_INFO_NAME}: {name} {value!r} is not a number")
    if training_seed is None:
        from trainer.dataset import DEFAULT_SEED

        training_seed = seed if seed is not None else DEFAULT_SEED
    return DataChoice(source=source, seed=int(seed if seed is not None else training_seed),
                      split_seed=int(training_seed),
                      test_fraction=float(test_fraction) if test_fraction is not None else None, origin=origin)


def load_data(choice: DataChoice, quiet: bool = False, splits: Sequence[str] = ("train", "test"),
              spec: PreprocessSpec = DEFAULT_SPEC, pick: Callable[[str, int], np.ndarray] | None = None) -> Any:
    """Load the data set through the trainer's loader (the same decoding, at `spec`'s size, and split as in
    training).

    `splits` names what the caller needs ("train" for calibration, "test" for the report); a
    train/ + test/ image tree then decodes only those files, and with `pick` (split, count) -> indices
    only the picked ones (the calibration draw, the report's --max-images sample).
    """
    from trainer.progress import Progress as LoadProgress
    from trainer.sources import load_dataset

    kwargs: dict[str, Any] = {"seed": choice.split_seed, "progress": LoadProgress(quiet=quiet), "splits": splits,
                              "spec": spec, "pick": pick}
    if choice.test_fraction is not None:
        kwargs["test_fraction"] = choice.test_fraction
    return load_dataset(choice.source, **kwargs)
