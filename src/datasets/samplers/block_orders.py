"""The orders of a block shuffle (``BlockShuffleSampler``): an epoch's blocks, a rank's share of
them, the lanes its DataLoader workers read, and epochs read under deals that changed at a resume.

A *deal* is what lays an epoch's blocks out into batches: the ranks, the DataLoader's batch size,
its workers, the block size and the batch the workers' lanes are laid in. The batches of an epoch
depend on it, so a run resumed with another deal cannot skip "the first k batches" of its own
order: :class:`Passes` replays the deals a run went through (``[iteration, *deal]`` entries, the
first at 0), marks what each one read of the epoch it was cut in, and lets the new deal read the
rest of that epoch, each record once, before the epochs of its own.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np


def _whole_blocks(size: int, block_size: int, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
    """The order of the whole blocks of an epoch, drawn by (``seed``, ``epoch``)."""
    whole = size // block_size
    return np.random.default_rng([seed, epoch]).permutation(whole) if shuffle else np.arange(whole)


def block_order(size: int, block_size: int, seed: int, epoch: int, shuffle: bool = True) -> np.ndarray:
    """All ``size`` indices, in blocks of ``block_size`` neighbours, the blocks in an order drawn by
    (``seed``, ``epoch``) (in order without ``shuffle``). A last, shorter block stays last, so
    that every other block starts at a multiple of ``block_size`` in the order (a batch of
    ``block_size`` is one block)."""
    order = _whole_blocks(size, block_size, seed, epoch, shuffle)
    order = np.append(order, np.arange(len(order), math.ceil(size / block_size)))
    starts = order * block_size
    indices = (starts[:, None] + np.arange(block_size)[None, :]).ravel()
    return indices[indices < size]


def unread_order(size: int, block_size: int, seed: int, epoch: int, shuffle: bool,
                 read: np.ndarray | None) -> np.ndarray:
    """``block_order`` of the epoch without the indices in ``read`` (None: all of them): blocks partly
    read keep their rest, in place."""
    order = block_order(size, block_size, seed, epoch, shuffle)
    return order if read is None else order[~read[order]]


def rank_shares(order: np.ndarray, block_size: int, world_size: int) -> np.ndarray:
    """Every rank's chunks of ``order`` (``[rank, chunk, block_size]``, a view): every
    ``world_size``-th chunk of ``block_size``, the order first padded from its start so that every
    rank gets as many chunks."""
    span = block_size * world_size
    padded = np.resize(order, math.ceil(len(order) / span) * span)  # repeats from the start
    return padded.reshape(-1, world_size, block_size).transpose(1, 0, 2)


def rank_share(order: np.ndarray, block_size: int, rank: int, world_size: int) -> np.ndarray:
    """Rank ``rank``'s indices of ``order`` (its row of :func:`rank_shares`)."""
    return rank_shares(order, block_size, world_size)[rank].ravel()


def worker_lanes(share: np.ndarray, block_size: int, batch_size: int, workers: int) -> np.ndarray:
    """``share`` (whole blocks of ``block_size``) reordered so that batch ``k`` of ``batch_size``
    comes from lane ``k % workers``, each lane reading its blocks (every ``workers``-th) whole and in
    turn: torch's DataLoader gives batch ``k`` to worker ``k % workers``, so each block is read by one
    worker. The same indices, a multiple of ``block_size`` long. Where the blocks do not divide
    among the workers, the last ones' batches go to the workers in turn (each fetching the rest of
    the block from its batch: a few requests and bytes more at an epoch's end)."""
    if workers <= 1 or block_size % batch_size:
        return share
    blocks = share.reshape(-1, block_size)
    lanes = [blocks[w::workers].reshape(-1, batch_size) for w in range(workers)]
    rounds = max(len(lane) for lane in lanes)
    batches = [lane[r] for r in range(rounds) for lane in lanes if r < len(lane)]
    return np.concatenate(batches) if batches else share


def block_places(size: int, block_size: int, seed: int, epoch: int, shuffle: bool = True) -> np.ndarray:
    """Where each whole block stands in ``block_order(size, block_size, seed, epoch)``, for
    :func:`places_of`."""
    order = _whole_blocks(size, block_size, seed, epoch, shuffle)
    where = np.empty(len(order), dtype=np.int64)
    where[order] = np.arange(len(order))
    return where


def places_of(indices: np.ndarray, where: np.ndarray, block_size: int) -> np.ndarray:
    """The places of ``indices`` in their epoch's block order (``where``: :func:`block_places`): a
    record's randomness key, which no deal moves."""
    indices = np.asarray(indices, dtype=np.int64)
    block = indices // block_size
    tail = block >= len(where)  # the last, shorter block stays where it is
    inside = where[np.minimum(block, max(len(where) - 1, 0))] if len(where) else block
    return np.where(tail, indices, inside * block_size + indices % block_size)


class Deal(NamedTuple):
    """How an epoch's blocks are laid out into batches: ``world_size`` ranks, the DataLoader's
    ``batch_size``, its ``workers``, ``block_size``, and ``lane_batch``, the batch the workers'
    lanes are laid in (the sampler's ``batch_size``)."""

    world_size: int
    batch_size: int
    workers: int
    block_size: int
    lane_batch: int

    def describe(self) -> str:
        return (f'{self.world_size} ranks x batch {self.batch_size}, {self.workers} workers, '
                f'blocks of {self.block_size}')


def dealt(order: np.ndarray, deal: Deal, rank: int) -> np.ndarray:
    """Rank ``rank``'s indices of ``order`` under ``deal``, in the order its workers read them."""
    share = rank_share(order, deal.block_size, rank, deal.world_size)
    return worker_lanes(share, deal.block_size, deal.lane_batch, deal.workers)


def rank_length(count: int, deal: Deal) -> int:
    """The indices each rank reads of ``count`` under ``deal`` (padded to whole blocks on every rank)."""
    return math.ceil(count / (deal.block_size * deal.world_size)) * deal.block_size


def part_steps(count: int, deal: Deal) -> int:
    """The global batches (steps) in which ``deal`` reads ``count`` indices."""
    return math.ceil(rank_length(count, deal) / deal.batch_size)


@dataclass(frozen=True)
class Part:
    """What one deal reads of one epoch: from global batch ``first`` (at ``position`` of the global
    sample stream), ``steps`` batches, of the epoch's ``count`` indices not in ``read`` (None: all
    of them); a whole epoch may stand for ``epochs`` alike, one after another."""

    epoch: int
    first: int
    deal: Deal
    read: np.ndarray | None
    steps: int
    position: int
    count: int
    epochs: int = 1

    def covers(self, epoch: int) -> bool:
        return self.epoch <= epoch < self.epoch + self.epochs

    def after(self, epochs: int) -> 'Part':
        """The whole epoch ``epochs`` after this one (a whole epoch), under the same deal."""
        batch = self.deal.world_size * self.deal.batch_size
        return Part(self.epoch + epochs, self.first + epochs * self.steps, self.deal, None, self.steps,
                    self.position + epochs * self.steps * batch, self.count)


class Passes:
    """The epochs of ``size`` records shuffled in blocks by (``seed``, ``shuffle``), read under
    ``deals`` (``[iteration, *Deal]``, the first at 0): the parts each deal read, a deal changed
    inside an epoch reading what its predecessor left of it. Replaying costs O(size) per change
    inside an epoch; whole epochs are counted, not made."""

    def __init__(self, size: int, seed: int, shuffle: bool, deals: list):
        self.size, self.seed, self.shuffle = size, seed, shuffle
        self.parts: list[Part] = []
        epoch, read, step, position = 0, None, 0, 0
        for number, (start, *fields) in enumerate(deals):
            deal = Deal(*fields)
            end = deals[number + 1][0] if number + 1 < len(deals) else None
            while size:
                count = size if read is None else size - int(read.sum())
                steps = part_steps(count, deal)
                if end is not None and step + steps > end:  # the next deal begins inside this epoch
                    if end > step:
                        self.parts.append(Part(epoch, step, deal, read, end - step, position, count))
                        read = self.mark(epoch, deal, read, end - step)
                        position += (end - step) * deal.world_size * deal.batch_size
                        step = end
                    break
                whole = read is None
                # whole epochs before the next deal are counted in one part, not replayed one by one
                epochs = max((end - step) // steps, 1) if whole and end is not None else 1
                self.parts.append(Part(epoch, step, deal, read, steps, position, count, epochs))
                position += epochs * steps * deal.world_size * deal.batch_size
                step, epoch, read = step + epochs * steps, epoch + epochs, None
                if (end is None and whole) or step == end:  # the last deal: replayed up to a whole epoch
                    break
            if not size:
                break

    def mark(self, epoch: int, deal: Deal, read: np.ndarray | None, steps: int) -> np.ndarray:
        """``read`` with what every rank of ``deal`` read in its first ``steps`` batches of ``epoch``
        (of the epoch's indices not in ``read``, in block order: blocks partly read keep their rest)."""
        order = unread_order(self.size, deal.block_size, self.seed, epoch, self.shuffle, read)
        read = np.zeros(self.size, dtype=bool) if read is None else read.copy()
        # Every rank's share at once (a rank's, dealt(), is one row): O(size), not O(size) a rank.
        shares = rank_shares(order, deal.block_size, deal.world_size).reshape(deal.world_size, -1)
        lanes = worker_lanes(np.arange(shares.shape[1]), deal.block_size, deal.lane_batch, deal.workers)
        read[shares[:, lanes[:steps * deal.batch_size]]] = True
        return read

    def part(self, epoch: int) -> Part:
        """The last part of ``epoch``: the one its last deal reads (past the replayed parts, a whole
        epoch of the last deal)."""
        last = self.parts[-1]
        if epoch > last.epoch:
            return last.after(epoch - last.epoch)
        part = [part for part in self.parts if part.covers(epoch)][-1]
        return part if part.epoch == epoch else part.after(epoch - part.epoch)

    def epoch_start(self, epoch: int) -> int:
        """The global batches before ``epoch``."""
        first = [part for part in self.parts if part.covers(epoch)]
        return first[0].first + (epoch - first[0].epoch) * first[0].steps if first else self.part(epoch).first

    def epoch_of(self, step: int) -> int:
        """The epoch global batch ``step`` belongs to."""
        last = self.parts[-1]
        if step >= last.first:
            return last.epoch + (step - last.first) // last.steps
        return next(part.epoch + (step - part.first) // part.steps for part in self.parts
                    if part.first <= step < part.first + part.steps * part.epochs)
