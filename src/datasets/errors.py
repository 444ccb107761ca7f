"""The errors of the data layer: what went wrong with one sample, and what is wrong with an index."""
from __future__ import annotations


class SampleError(Exception):
    """One sample cannot be used. The dataset replaces it (a bounded number of times) and counts it.

    ``reason`` is a short, stable category ('missing-file', 'bad-image', 'too-small', ...) used to
    count failures; the message says which file and what exactly is wrong.
    """

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


class DatasetConfigError(ValueError):
    """A dataset's options do not fit its data (a ``cap_source`` none of its records has); the
    message says which and what is there. The tools print it as one line."""


class IndexFormatError(ValueError):
    """The index file (data.json, .jsonl, parquet) cannot be read; the message names file and place."""
