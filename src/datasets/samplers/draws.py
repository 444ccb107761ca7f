"""``Draw``: a dataset index that also says where it stands in the global sample stream.

A sampler hands these to the dataset as plain values (they pickle to DataLoader workers, and a
``ConcatDataset``'s offset keeps them), and ``CaptionDataset`` keys a sample's crop, caption
dropout and replacements on (seed, :attr:`Draw.key`): the same sample whatever the number of ranks
and workers that read it, whether the run was resumed or not, and whatever the global batch.

The key is the draw's place in a stream that batching does not move: for a bucket stream
(``BucketSampler``, a source of ``FixedBatchMultiSourceSampler``) the record's place in its
bucket's stream, ``('b', source, bucket, pass, slot)`` (``slot``: its place in the pass's
permutation); for mmengine's ``DefaultSampler`` its place in the epoch's permutation, ``(epoch,
place)``; for ``InfiniteSampler`` its place in the endless stream, ``(0, place)``. A draw made
without one keys on ``(epoch, position)``.
"""
from __future__ import annotations


class Draw(int):
    """Index ``index`` at ``position`` of the global stream (counted from the run's first sample,
    over every rank: global batch ``t`` holds positions ``t * G`` to ``(t + 1) * G - 1``), drawn in
    ``epoch`` under sampler ``seed``; ``key`` (a short tuple, see the module) is what its
    randomness is keyed on, ``(epoch, position)`` when not given. ``ahead``: an :class:`Ahead`'s
    (kept from ``index`` when it is one). Arithmetic with an int keeps the rest but ``ahead``
    (indices of the dataset the sampler drew from, not of a part of it)."""

    def __new__(cls, index: int, position: int, seed: int, epoch: int = 0, key: tuple | None = None,
                ahead: tuple | None = None):
        draw = super().__new__(cls, index)
        draw.position, draw.seed, draw.epoch = position, seed, epoch
        draw.key = (epoch, position) if key is None else tuple(key)
        draw.ahead = getattr(index, 'ahead', None) if ahead is None else ahead
        return draw

    def _like(self, index: int) -> 'Draw':
        return Draw(index, self.position, self.seed, self.epoch, self.key)

    def __add__(self, other):
        return self._like(int(self) + other) if isinstance(other, int) else NotImplemented

    __radd__ = __add__

    def __sub__(self, other):
        return self._like(int(self) - other) if isinstance(other, int) else NotImplemented

    def __reduce__(self):
        return Draw, (int(self), self.position, self.seed, self.epoch, self.key, self.ahead)

    def __repr__(self) -> str:
        return f'Draw({int(self)}, position={self.position}, epoch={self.epoch})'  # failure_policy reads it


class Ahead(int):
    """An index that begins a run of a block shuffle's block, with ``ahead``: the indices the same
    reader (DataLoader worker) reads next, its next block, which it fetches while it reads this one."""

    def __new__(cls, index: int, ahead: tuple):
        value = super().__new__(cls, index)
        value.ahead = tuple(ahead)
        return value

    def __reduce__(self):
        return Ahead, (int(self), self.ahead)


def keyed(index: int, key: tuple) -> Draw:
    """``index`` with only its randomness key (a bucket stream's place; :func:`placed` adds the rest)."""
    return Draw(index, None, 0, 0, key)


def placed(index: int, position: int, seed: int, epoch: int) -> Draw:
    """``index`` as a draw at global ``position``, keeping the randomness key ``index`` already has."""
    return Draw(index, position, seed, epoch, getattr(index, 'key', None))


def stream_position(history: list, number: int) -> int:
    """The global stream position of global batch ``number``'s first sample, the global batch
    having changed as ``history`` says (``[batch, global batch, ...]`` entries, the first at batch 0)."""
    position, (start, size) = 0, history[0][:2]
    for batch, new in (entry[:2] for entry in history[1:]):
        position += (batch - start) * size
        start, size = batch, new
    return position + (number - start) * size
