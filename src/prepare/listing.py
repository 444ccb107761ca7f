"""The files an index builder may use, listed once: ``PathListing``, a set of relative paths held as
Arrow strings.

Midjourney-23M lists 23M image paths. A Python set holds a string object and a hash slot each; Arrow
strings hold their bytes and an offset each, several times less at 23M (bench/RESULTS.md). The
one question a 23M builder asks, "which of these rows' files exist", is answered with 64-bit
hashes of the paths, sorted once (8 bytes a path), and a binary search of the rows' hashes: Arrow's
``is_in`` would build a hash table of every path's bytes, gigabytes more at 23M. A hash that matches
without the path (about one in 10^5 over a 23M-path dataset) lets a missing file through, which the
dataset then counts as a missing file when it reads it. Builders of the smaller datasets iterate the
paths, or probe them one by one (a Python set is then made once, on the first probe).
"""
from __future__ import annotations

from typing import Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from src.datasets.storage.arrow_numpy import to_numpy

CHUNK = 65_536  # paths turned into Arrow at a time while scanning: few Python strings held at once


class PathListing:
    """Distinct relative paths (no order). Build with :meth:`of` or :meth:`collect`."""

    def __init__(self, paths: pa.ChunkedArray | pa.Array):
        self._paths = paths if isinstance(paths, pa.ChunkedArray) else pa.chunked_array([paths], paths.type)
        self._set = None

    @classmethod
    def of(cls, paths: Iterable[str] | pa.Array | pa.ChunkedArray) -> 'PathListing':
        """The listing of ``paths`` (strings, or an Arrow string column), which are distinct as a
        folder scan or a tar member index gives them (no 23M-entry pass to remove duplicates)."""
        if isinstance(paths, pa.Array):
            paths = pa.chunked_array([paths], type=paths.type)
        if not isinstance(paths, pa.ChunkedArray):
            return cls.collect(paths)
        return cls(paths)

    @classmethod
    def collect(cls, paths: Iterable[str]) -> 'PathListing':
        """From an iterable of strings (a folder scan), turned into Arrow a chunk at a time."""
        chunks, pending = [], []
        for path in paths:
            pending.append(path)
            if len(pending) == CHUNK:
                chunks.append(string_array(pending))
                pending = []
        if pending:
            chunks.append(string_array(pending))
        return cls(pa.chunked_array(chunks, pa.string()))

    def __len__(self) -> int:
        return len(self._paths)

    def __iter__(self) -> Iterator[str]:
        for chunk in self._paths.chunks:
            for start in range(0, len(chunk), CHUNK):
                yield from chunk.slice(start, CHUNK).to_pylist()

    def __contains__(self, path: str) -> bool:
        if self._set is None:  # probes one by one: the smaller datasets' builders
            self._set = set(self)
        return path in self._set

    def __eq__(self, other) -> bool:
        return set(self) == set(other)

    def contains_all(self, candidates: pa.ChunkedArray | pa.Array, prefix: str = '',
                     hashes: np.ndarray | None = None) -> np.ndarray:
        """Per value of ``candidates``: whether ``prefix + value`` is listed (nulls: no).
        ``hashes``: the candidates' :func:`string_hashes`, where the caller has them already.
        The listing's own hashes are made for the call and let go (8 bytes a path)."""
        listed = np.sort(string_hashes(self._paths, prefix))
        wanted = string_hashes(candidates) if hashes is None else hashes
        at = np.minimum(np.searchsorted(listed, wanted), max(len(listed) - 1, 0))
        found = listed[at] == wanted if len(listed) else np.zeros(len(wanted), bool)
        valid = pc.is_valid(candidates)
        return found & to_numpy(valid, fill=False)


def string_array(values: list[str]) -> pa.Array:
    """``pa.array(values, pa.string())`` built from its buffers: ``pa.array`` imports pandas (half
    a second, whatever the size) to ask whether a list is one of its arrays. A name that is no
    UTF-8 goes to ``pa.array``, which says so as it always did."""
    try:
        data = [value.encode() for value in values]
    except (AttributeError, UnicodeEncodeError):
        return pa.array(values, pa.string())
    offsets = np.zeros(len(data) + 1, np.int64)
    np.cumsum(np.fromiter(map(len, data), np.int64, len(data)), out=offsets[1:])
    if offsets[-1] >= 2 ** 31:
        return pa.array(values, pa.string())
    return pa.Array.from_buffers(pa.string(), len(data), [None, pa.py_buffer(offsets.astype(np.int32)),
                                                          pa.py_buffer(b''.join(data))])


def bool_array(mask: np.ndarray) -> pa.Array:
    """``pa.array(mask)`` of a numpy bool array, built from its bits (``pa.array`` imports pandas)."""
    bits = np.packbits(np.asarray(mask, np.bool_), bitorder='little')
    return pa.Array.from_buffers(pa.bool_(), len(mask), [None, pa.py_buffer(bits)])


def row_array(rows: np.ndarray) -> pa.Array:
    """Row numbers (numpy) as an Arrow int64 array for ``take``, from their buffer (``pa.array`` imports pandas)."""
    rows = np.ascontiguousarray(rows, np.int64)
    return pa.Array.from_buffers(pa.int64(), len(rows), [None, pa.py_buffer(rows)])


def string_hashes(strings: pa.ChunkedArray | pa.Array, prefix: str = '') -> np.ndarray:
    """A 64-bit hash of each string (Python's own, this process's), a chunk at a time; with
    ``prefix``, of what follows it in the strings that start with it (the others: a hash no
    candidate has, -1, which Python never gives a string). Nulls hash as ''."""
    if isinstance(strings, pa.Array):
        strings = pa.chunked_array([strings], strings.type)
    out = np.empty(len(strings), np.int64)
    at = 0
    cut = len(prefix)
    for chunk in strings.chunks:
        for start in range(0, len(chunk), CHUNK):
            values = chunk.slice(start, CHUNK).to_pylist()
            if cut:
                hashes = (hash(v[cut:]) if v is not None and v.startswith(prefix) else -1 for v in values)
            else:
                hashes = (hash(v or '') for v in values)
            out[at:at + len(values)] = np.fromiter(hashes, np.int64, len(values))
            at += len(values)
    return out
