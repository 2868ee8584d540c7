"""Errors raised by the local inference package, rooted in aifleet's one error tree."""

from __future__ import annotations

from streams.errors import AifleetError


class ModelError(AifleetError):
    """Something about a local model: its weights, its build or its runtime."""


class ModelNotInstalled(ModelError):
    """The package that ships a model's weights is not installed (or is missing files)."""


class WeightsMismatch(ModelError):
    """The shipped weights are not the ones this build was written for."""


class ExecutionProviderUnavailable(ModelError):
    """An execution provider was asked for but is not the one onnxruntime actually uses."""
