"""Shared pytest setup: quiet TensorFlow, and synthetic data sets built per session."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# Tests run on machines without the internet or ../shared; TensorFlow's C++ logging is only noise here.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).parent))

from synthetic import write_split_dataset  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def decoded_cache_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The decoded-image cache of every test (and of the commands tests start) lives in a temporary
    folder, never in the user's ~/.cache."""
    folder = tmp_path_factory.mktemp("decoded-cache")
    previous = os.environ.get("EDGE_TOOLKIT_CACHE")
    os.environ["EDGE_TOOLKIT_CACHE"] = str(folder)
    yield folder
    if previous is None:
        os.environ.pop("EDGE_TOOLKIT_CACHE", None)
    else:
        os.environ["EDGE_TOOLKIT_CACHE"] = previous


@pytest.fixture(scope="session")
def split_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small image-folder data set with train/ and test/ splits (4 classes, PNG)."""
    return write_split_dataset(tmp_path_factory.mktemp("dataset"))
