"""The small set of exceptions the toolkit raises, each with a message a user can act on."""

from __future__ import annotations


class EdgeError(Exception):
    """Base class: every error the toolkit expects to report as one line."""


class ImageError(EdgeError):
    """An input image cannot be read or decoded (the message names the file and the reason)."""


class ModelError(EdgeError):
    """A model file is missing, damaged or not usable for image classification."""


class BackendError(EdgeError):
    """No usable TFLite interpreter package is installed, or the chosen one cannot run here."""


class DataError(EdgeError):
    """A training or calibration data set is missing, empty or inconsistent."""


class MissingPackageError(EdgeError):
    """A command needs a package this install lacks (TensorFlow on a device); the message names the extra."""
