"""Loading mmengine 0.10.6's checkpoints under torch >= 2.6, whose ``torch.load`` defaults to
``weights_only=True`` and refuses the message hub's ``HistoryBuffer`` objects in them.

Only what mmengine's own checkpoint holds is allowed: the ``HistoryBuffer`` class, the numpy arrays
of its history, and the ``getattr(HistoryBuffer, <statistic>)`` calls its pickled
``statistics_methods`` make, answered by a function that gives those statistics methods and nothing
else (plain ``getattr`` would let a crafted file reach any attribute, and so run code). Every other
global stays refused: the weights-only safety holds for everything but these.

mmengine's checkpoint loaders (a local file for ``resume``/``load_from``, http, s3, the model zoos)
call ``torch.load`` without ``weights_only``, so ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` in the
environment would turn them back into plain pickle loads, which run code.
:func:`force_weights_only_checkpoints` gives mmengine's checkpoint module a ``torch`` whose ``load``
always passes ``weights_only=True`` (an explicit argument, which that variable does not override).
"""
from __future__ import annotations

import importlib
import pickle
import types
from functools import partial

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


class _WeightsOnlyTorch(types.ModuleType):
    """``torch`` as mmengine's checkpoint loaders see it: ``load`` is always weights-only."""

    def __getattr__(self, name):
        return getattr(torch, name)

    @staticmethod
    def load(f, map_location=None, **kwargs):
        kwargs.pop('weights_only', None)
        return torch.load(f, map_location=map_location, weights_only=True, **kwargs)


def force_weights_only_checkpoints() -> None:
    """Every checkpoint mmengine loads (``mmengine.runner.checkpoint``: a local file, s3, a URL or a
    model zoo) goes through ``torch.load(weights_only=True)``, whatever the environment says; its
    URL loader (torch's ``load_state_dict_from_url``, ``weights_only=False`` by default) too."""
    module = importlib.import_module('mmengine.runner.checkpoint')
    if not isinstance(module.torch, _WeightsOnlyTorch):
        module.torch = _WeightsOnlyTorch('torch')
        module.load_url = partial(torch.hub.load_state_dict_from_url, weights_only=True)
