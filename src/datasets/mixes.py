"""Mixes of datasets read a batch at a time: a ``ConcatDataset`` whose ``__getitems__`` hands each
source its share of the batch through the source's own ``__getitems__``.

torch's DataLoader asks a dataset for a whole batch when it has ``__getitems__``; torch's, xtuner's
and mmengine's ``ConcatDataset`` have none, so they read a mixed batch a sample at a time, without
a source's batch prefetch from object storage or its batch tokenization. Here a batch is split by
source (the order of each source's samples kept, so each source's random stream sees the same
draws), each share read as one batch, and the samples returned in the batch's order: the same
samples as reading them one by one.

Configs reach it two ways: the project's :class:`ConcatDataset` (``configs/datasets/mix.py``,
xtuner's constructor: a list of dataset configs or datasets), or :func:`batched_mixes`, which the
project's tools apply to a loaded config, putting the batched counterpart in place of xtuner's,
mmengine's or torch's ``ConcatDataset`` (the upstream classes themselves are left alone).
"""
from __future__ import annotations

import bisect
from collections.abc import Sequence

from mmengine.dataset import ConcatDataset as MMEngineConcat
from mmengine.registry import DATASETS
from torch.utils.data import ConcatDataset as TorchConcat


def source_shares(cumulative_sizes: Sequence[int], indices: Sequence) -> dict[int, list[tuple[int, object]]]:
    """{source number: [(place in the batch, index within the source), ...]}, in the batch's order.
    An index keeps its type when offset (a ``Draw`` still says which draw it is)."""
    total = cumulative_sizes[-1] if cumulative_sizes else 0
    shares: dict[int, list[tuple[int, object]]] = {}
    for place, idx in enumerate(indices):
        if idx < 0:
            if -idx > total:
                raise IndexError(f'index {int(idx)} is out of range for a dataset of {total} samples')
            idx = idx + total
        source = bisect.bisect_right(cumulative_sizes, idx)
        if source >= len(cumulative_sizes):
            raise IndexError(f'index {int(idx)} is out of range for a dataset of {total} samples')
        # Offset even by 0: the index keeps its draw, and loses a hint of indices of the whole mix
        # (a block shuffle's ``Ahead``), which are not the source's.
        local = idx - (cumulative_sizes[source - 1] if source else 0)
        shares.setdefault(source, []).append((place, local))
    return shares


def read_by_source(concat, indices: Sequence) -> list:
    """The samples of ``indices`` of ``concat`` (a ConcatDataset), each source's share read as one
    batch (its ``__getitems__``, else one by one), returned in the batch's order."""
    if not getattr(concat, '_fully_initialized', True):  # mmengine's lazy_init
        concat.full_init()
    batch = [None] * len(indices)
    for source, share in source_shares(concat.cumulative_sizes, indices).items():
        dataset = concat.datasets[source]
        local = [idx for _, idx in share]
        getitems = getattr(dataset, '__getitems__', None)
        samples = getitems(local) if getitems is not None else [dataset[idx] for idx in local]
        for (place, _), sample in zip(share, samples):
            batch[place] = sample
    return batch


class BatchedMix:
    """A ``ConcatDataset`` mixin: batches read a source's share at a time (:func:`read_by_source`)."""

    def __getitems__(self, indices: Sequence) -> list:
        return read_by_source(self, indices)


@DATASETS.register_module(name='BatchedConcatDataset')
class ConcatDataset(BatchedMix, TorchConcat):
    """xtuner's ``ConcatDataset`` (``datasets``: dataset configs, built as mmengine builds them,
    or datasets), reading its batches a source's share at a time."""

    def __init__(self, datasets: Sequence):
        super().__init__([DATASETS.build(d) if isinstance(d, dict) else d for d in datasets])

    def __repr__(self) -> str:
        return 'Dataset as a concatenation of multiple datasets. \n' + ',\n'.join(map(repr, self.datasets))


@DATASETS.register_module(name='BatchedMMEngineConcatDataset')
class MMEngineConcatDataset(BatchedMix, MMEngineConcat):
    """mmengine's ``ConcatDataset`` (same arguments), reading its batches a source's share at a time."""


def _batched_type(kind):
    """The batched counterpart of a ConcatDataset type in a config, or None for any other type."""
    if kind is MMEngineConcat or kind == 'ConcatDataset':  # the name mmengine's registry resolves
        return MMEngineConcatDataset
    if kind is TorchConcat:
        return ConcatDataset
    if (isinstance(kind, type) and kind.__name__ == 'ConcatDataset'
            and kind.__module__.startswith('xtuner.') and not issubclass(kind, BatchedMix)):
        return ConcatDataset  # xtuner's: the same constructor (no import of xtuner here)
    return None


def batched_mixes(node):
    """``node`` (a dataset or dataloader config, nested ones too) with every ConcatDataset type
    replaced in place by its batched counterpart; returns ``node``."""
    if isinstance(node, dict):
        batched = _batched_type(node.get('type'))
        if batched is not None:
            node['type'] = batched
        for value in node.values():
            batched_mixes(value)
    elif isinstance(node, (list, tuple)):
        for value in node:
            batched_mixes(value)
    return node
