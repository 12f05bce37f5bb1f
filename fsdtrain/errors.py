"""Error types for input a user can fix.

The CLI prints any :class:`FsdtrainError` as one line (``fsdtrain: error: ...``) and exits
non-zero, without a traceback. Everything else is a bug and keeps its traceback.
"""

from __future__ import annotations

__all__ = ["FsdtrainError", "ConfigError", "DataError", "StoreError", "ObjectMissing"]


class FsdtrainError(Exception):
    """Base class for errors caused by input the user controls (config, data, store, flags)."""


class ConfigError(FsdtrainError, ValueError):
    """A configuration value is invalid; the message names the field and how to fix it."""


class DataError(FsdtrainError):
    """A shard, manifest or sample is missing, corrupt, or does not follow the clip schema."""


class StoreError(FsdtrainError):
    """The object store cannot be reached, refuses the credentials, or lacks an object."""


class ObjectMissing(StoreError):
    """The object (or file) read does not exist: a caller that can tell why (another process moved it) catches this one."""
