"""Loading mmengine 0.10.6's checkpoints under torch >= 2.6, whose ``torch.load`` defaults to
``weights_only=True`` and refuses the message hub's ``HistoryBuffer`` objects in them.

Only what mmengine's own checkpoint holds is allowed: the ``HistoryBuffer`` class, the numpy arrays
of its history, and the ``getattr(HistoryBuffer, <statistic>)`` calls its pickled
``statistics_methods`` make, answered by a function that gives those statistics methods and nothing
else (plain ``getattr`` would let a crafted file reach any attribute, and so run code). Every other
global stays refused: the weights-only safety holds for everything but these.
"""
from __future__ import annotations

import pickle

import numpy as np
import torch
from mmengine.logging.history_buffer import HistoryBuffer

DEFAULT_STATISTICS = {'min', 'max', 'current', 'mean'}


def history_buffer_statistic(owner, name: str):
    """``getattr`` as mmengine's pickled ``HistoryBuffer.statistics_methods`` uses it, limited to that."""
    known = DEFAULT_STATISTICS | set(HistoryBuffer._statistics_methods)  # filled by the first instance
    if owner is HistoryBuffer and isinstance(name, str) and name in known:
        return getattr(HistoryBuffer, name)
    raise pickle.UnpicklingError(f'refused getattr({owner!r}, {name!r}) while loading a checkpoint: only '
                                 "mmengine HistoryBuffer's statistics methods are allowed")


def allow_mmengine_checkpoints() -> None:
    """Allow mmengine's own checkpoint contents in ``torch.load(weights_only=True)``, once per process."""
    numpy_types = [np.ndarray, np.dtype, np.dtypes.Float64DType, np.dtypes.Float32DType, np.dtypes.Int64DType,
                   np.dtypes.Int32DType, np.dtypes.BoolDType]
    torch.serialization.add_safe_globals([HistoryBuffer, (history_buffer_statistic, 'builtins.getattr'),
                                          np._core.multiarray._reconstruct, np._core.multiarray.scalar,
                                          *numpy_types])
