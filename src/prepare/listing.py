"""The files an index builder may use, listed once: ``PathListing``, a set of relative paths held as
Arrow strings.

Midjourney-23M lists 23M image paths. As a Python set they took 2-3 GB (a string object and a hash
slot each); as Arrow strings they are their bytes and an offset each (about 0.6 GB at 23M), and the
one question a 23M builder asks, "which of these rows' files exist", is one ``pc.is_in`` over a
whole column. Builders of the smaller datasets iterate the paths, or probe them one by one (a
Python set is then made once, on the first probe).
"""
from __future__ import annotations

from typing import Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from src.datasets.arrow_numpy import to_numpy

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
                chunks.append(pa.array(pending, pa.string()))
                pending = []
        if pending:
            chunks.append(pa.array(pending, pa.string()))
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

    def contains_all(self, candidates: pa.ChunkedArray | pa.Array) -> np.ndarray:
        """Per value of ``candidates``: whether it is listed (nulls: no). One hash table over the
        listing, in Arrow."""
        listed = self._paths if self._paths.type == candidates.type else self._paths.cast(candidates.type)
        found = pc.is_in(candidates, value_set=listed)  # chunked: no copy of the listing into one array
        return to_numpy(found, fill=False)
