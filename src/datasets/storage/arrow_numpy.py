"""Arrow columns of numbers and booleans as numpy arrays, without pandas.

pyarrow's own ``to_numpy`` imports pandas on its first call, a cost in time and memory for every
process that builds a dataset, every rank and spawned worker (bench/RESULTS.md), though nothing here
needs it: a fixed-width column is a numpy view of its buffer, a boolean one a bit unpacking.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa

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
    if values.null_count and fill is None:
        raise ValueError(f'a {values.type} column with {values.null_count} nulls needs a fill value')
    if pa.types.is_boolean(values.type):
        array = bits(values.buffers()[1], values.offset, len(values))
    else:
        dtype = np.dtype(_DTYPES[values.type])
        array = np.frombuffer(values.buffers()[1], dtype, count=len(values), offset=values.offset * dtype.itemsize)
    if values.null_count:  # by the validity bits: pyarrow's fill_null imports pandas
        array = array.copy()
        array[~bits(values.buffers()[0], values.offset, len(values))] = fill
    return array


def bits(buffer, offset: int, count: int) -> np.ndarray:
    """``count`` bits of an Arrow bitmap (values of a bool column, or validity) from bit ``offset``."""
    unpacked = np.unpackbits(np.frombuffer(buffer, np.uint8), count=offset + count, bitorder='little')
    return unpacked[offset:].view(np.bool_)
