"""Errors a user can cause. The CLI prints them in one line and exits with status 2."""

from __future__ import annotations


class DawntrainError(Exception):
    """Base class: the message names the input at fault and says what to do."""


class ConfigError(DawntrainError):
    """An unknown key, a wrong type or an impossible value in a config or on the command line."""


class DataError(DawntrainError):
    """A data source that is missing, malformed or inconsistent."""


class RecordError(DataError):
    """A TFRecord file or an encoded Example/TensorProto that cannot be read."""


class CheckpointError(DawntrainError):
    """A checkpoint that is missing, unreadable or belongs to another model or config."""
