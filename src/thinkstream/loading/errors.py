"""Typed errors of the loaders. Every message names the file and the problem."""

from __future__ import annotations


class ModelLoadError(Exception):
    """Base class: a model could not be located or read."""


class ModelNotFoundError(ModelLoadError):
    """The model path does not exist, or the package that ships it is not installed."""


class CorruptModelError(ModelLoadError):
    """A file is truncated, malformed, or missing a required part (config.json, tokenizer.json)."""


class UnsupportedArchitectureError(ModelLoadError):
    """The checkpoint's architecture (or tensor encoding) is not one thinkstream implements."""


class MissingWeightError(ModelLoadError):
    """A tensor the architecture needs is not in the checkpoint."""
