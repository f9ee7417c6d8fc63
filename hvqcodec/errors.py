"""Exceptions for user-facing problems; the CLI prints them as one-line errors."""


class HvqError(Exception):
    """Base class: a problem with the user's input or environment, not a bug."""


class DataError(HvqError):
    """Missing, empty or unreadable image data."""


class ModelError(HvqError):
    """Unknown model name, missing or corrupt weights, hash mismatch."""


class CheckpointError(HvqError):
    """A training checkpoint that is missing, unreadable or of the wrong kind."""
