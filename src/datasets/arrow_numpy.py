"""Arrow columns of numbers and booleans as numpy arrays, without pandas.

pyarrow's own ``to_numpy`` imports pandas on its first call (0.1 s and 60 MB in every process that
builds a dataset, every rank and spawned worker), though nothing here needs it: a fixed-width
column is a numpy view of its buffer, a boolean one a bit unpacking.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

_DTYPES = {pa.int8(): np.int8, pa.int16(): np.int16, pa.int32(): np.int32, pa.int64(): np.int64,
           pa.uint8(): np.uint8, pa.uint16(): np.uint16, pa.uint32(): np.uint32, pa.uint64(): np.uint64,
           pa.float16(): np.float16, pa.float32(): np.float32, pa.float64(): np.float64, pa.bool_(): np.bool_}


def to_numpy(values: pa.Array | pa.ChunkedArray, fill=None) -> np.ndarray:
    """``values`` (numbers or booleans) as a numpy array: a read-only view of the buffer where the
    column has one chunk and no nulls, else a copy. Nulls become ``fill``, which must then be given."""
    if isinstance(values, pa.ChunkedArray):
        parts = [to_numpy(chunk, fill) for chunk in values.chunks]
        if len(parts) == 1:
            return parts[0]
        return np.concatenate(parts) if parts else np.zeros(0, _DTYPES[values.type])
    if not len(values):
        return np.zeros(0, _DTYPES[values.type])
    if values.null_count:
        if fill is None:
            raise ValueError(f'a {values.type} column with {values.null_count} nulls needs a fill value')
        values = pc.fill_null(values, fill)
    if pa.types.is_boolean(values.type):
        bits = np.frombuffer(values.buffers()[1], np.uint8)
        unpacked = np.unpackbits(bits, count=values.offset + len(values), bitorder='little')
        return unpacked[values.offset:].view(np.bool_)
    dtype = np.dtype(_DTYPES[values.type])
    return np.frombuffer(values.buffers()[1], dtype, count=len(values), offset=values.offset * dtype.itemsize)
