"""Where a rank's data stream stands, and how to place a sampler there without reading a sample.

A run's data position is the number of iterations done (mmengine's ``meta['iter']``) together
with the facts that turn it into a place in each rank's index stream (``src.engine.data_facts``:
batch size, world size, dataset size, sampler kind and seed, samples per epoch). :func:`plan_resume`
compares the facts a checkpoint saved with the run's own, maps or refuses a change, and gives the
:class:`StartPoint` (epoch, indices to skip). :class:`PositionedSampler` wraps the loader's sampler: it skips those
indices (in O(1) when the sampler has ``resume_at``, else by drawing bare integers, never
samples) and hands each index to the dataset as a :class:`Draw`, an ``int`` that also carries its
position in the global sample stream. The dataset keys a sample's randomness (crop, caption
dropout, replacements) on it, so that a resumed run gives the very samples an uninterrupted one
would, whatever the number of ranks sharing the global batch and of DataLoader workers.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, replace
from typing import Iterator

import torch
from mmengine.dataset import InfiniteSampler

from src.datasets.samplers.draws import Draw, stream_position
from src.datasets.samplers.multi_source_sampler import epoch_origin, source_batches_at
from src.engine.data_facts import DataFacts, ResumeError, checked_iteration, is_endless

__all__ = ['ELASTIC', 'Draw', 'batch_history', 'place_sampler', 'PositionedSampler', 'ResumeError', 'StartPoint',
           'epoch_iterations', 'plan_resume', 'restore_seed']


@dataclass(frozen=True)
class StartPoint:
    """Where the resumed stream starts: the sampler ``epoch``, the ``skip`` indices of that epoch
    already used by this rank, its draw number of the first index given out, for a mix the
    ``rebase`` (batch, batches per source) its turns go on from, and after a change of the global
    batch the positions of the epoch (an endless sampler: of the stream) drawn before."""

    epoch: int
    skip: int
    position: int
    note: str = ''
    rebase: tuple | None = None
    drawn: int | None = None  # global positions of the epoch (of the stream, endless) already drawn


def _check_same_data(saved: DataFacts, now: DataFacts, allow_data_change: bool) -> str:
    """Refuses other records, other filters or other buckets (unless ``allow_data_change``); a note when allowed."""
    if None not in (saved.data, now.data) and saved.data != now.data and saved.filters != now.filters:
        if not allow_data_change:
            raise ResumeError(
                f'cannot resume the data position: the dataset\'s filters changed (filters {saved.filters} when the '
                f'checkpoint was made, {now.filters} now): the position would land on other records. Resume with '
                'the same filters, or set allow_data_change=True in train_cfg to go on from the same position in '
                'the records the new filters keep.')
        return f'the filters changed ({saved.filters} -> {now.filters}); resumed at the same position, as asked'
    for name, what in (('data', 'the dataset holds other records than when the checkpoint was made (fingerprint '
                                '{then} then, {now} now: other records, or the same ones in another order)'),
                       ('buckets', 'the records fall into other buckets than when the checkpoint was made (bucket '
                                   'fingerprint {then} then, {now} now: another bucket table or options)')):
        then, current = getattr(saved, name), getattr(now, name)
        if then is None or current is None or then == current:
            continue
        if not allow_data_change:
            raise ResumeError(f'cannot resume the data position: {what.format(then=then, now=current)}. Resume on the '
                              'same index and buckets, or set allow_data_change=True in train_cfg to go on from the '
                              'same position in the new records.')
        return f'the {name} changed ({then} -> {current}); resumed at the same position, as asked'
    return ''


# Draws a rank of an endless sampler (InfiniteSampler) replayed at a resume, at most (about 5 minutes
# of draws here; a million iterations of 1024 a rank are a quarter of it).
ENDLESS_REPLAY = 1 << 32

# Samplers that go on from where their streams stood under another global batch.
ELASTIC = ('BucketSampler', 'FixedBatchMultiSourceSampler', 'DefaultSampler', 'InfiniteSampler', 'BlockShuffleSampler')


def epoch_and_drawn(history: list, size: int, iteration: int) -> tuple[int, int]:
    """The epoch of global batch ``iteration`` and the positions of that epoch drawn before it,
    epochs of ``size`` samples in batches of the global batch ``history`` gives (mmengine's
    ``DefaultSampler``: ``ceil(size / G)`` batches an epoch, the one a change falls in ending once
    its samples are drawn)."""
    batch, epoch, _, drawn = epoch_origin(history, size)
    global_batch = history[-1][1]
    rest, length = -(-(size - drawn) // global_batch), -(-size // global_batch)
    if iteration < batch + rest:
        return epoch, drawn + (iteration - batch) * global_batch
    epochs, done = divmod(iteration - batch - rest, length)
    return epoch + 1 + epochs, done * global_batch


def batch_history(iteration: int, saved: DataFacts | None, now: DataFacts) -> list | None:
    """The global batch's changes up to this run (None: never changed): the checkpoint's, and this
    run's own when its global batch differs, with each source's batches so far for a mix."""
    if saved is None or saved.global_batch == now.global_batch or now.sampler not in ELASTIC:
        return None if saved is None else saved.history
    mix = saved.repeat is not None and saved.origin is not None
    history = saved.history or [[0, saved.global_batch] + ([[0] * len(saved.origin[1])] if mix else [])]
    entry = [iteration, now.global_batch]
    if mix:
        entry.append(source_batches_at(list(saved.repeat), (saved.origin[0], saved.origin[1]), iteration))
    return history + [entry]


def plan_resume(iteration: int, saved: DataFacts | None, now: DataFacts, drop_last: bool = False,
                allow_data_change: bool = False, epoch_of_batch=None) -> StartPoint:
    """The start point of a run resumed after ``iteration`` iterations (global batches).

    ``saved`` is None for a checkpoint made by mmengine's own loop: the position is then derived as
    if nothing changed. The global batch (batch size x world size) may be split into other ranks:
    the global batches go on as in the uninterrupted run. Records or buckets other than the
    checkpoint's are refused unless ``allow_data_change``. ``epoch_of_batch``: the sampler's own
    ``(epoch, batches in it)`` of a global batch number, for samplers whose epochs differ in length."""
    note = ''
    if saved is None:
        saved = now
        note = 'the checkpoint has no data position (made by another loop): derived from its iteration count'
    note = _check_same_data(saved, now, allow_data_change) or note
    _check_same_size_and_sampler(saved, now)
    history = now.history if now.history is not None else batch_history(iteration, saved, now)
    note = _global_batch_change(saved, now, history) or note
    rebase, mix_note = _mix_rebase(iteration, saved, now)
    return _start_point(iteration, now, history, drop_last, epoch_of_batch, mix_note or note, rebase)


def _check_same_size_and_sampler(saved: DataFacts, now: DataFacts) -> None:
    """Refuse another dataset size (unless the records changed, as allowed) or another sampler."""
    data_changed = None not in (saved.data, now.data) and saved.data != now.data  # allowed, or refused before
    for name, what in (('dataset_size', 'dataset size'), ('sampler', 'sampler')):
        if name == 'dataset_size' and data_changed:  # other records, maybe another count
            continue
        if getattr(saved, name) != getattr(now, name):
            raise ResumeError(f'cannot resume the data position: the checkpoint was made with {what} '
                              f'{getattr(saved, name)}, this run has {getattr(now, name)}. Resume with the same '
                              f'{what}, or start a new run (load_from instead of resume).')


def _global_batch_change(saved: DataFacts, now: DataFacts, history: list | None) -> str:
    """What became of the checkpoint's global batch ('' when it is split as before); a change that
    the sampler cannot map is refused."""
    saved_batch = saved.global_batch
    if saved_batch != now.global_batch:
        if now.sampler not in ELASTIC or history is None:
            raise ResumeError(
                f'cannot map the data position: the checkpoint was made with a global batch of {saved_batch} '
                f'(batch size {saved.batch_size} x {saved.world_size} ranks), this run has {now.global_batch} '
                f'({now.batch_size} x {now.world_size}) and sampler {now.sampler}. Keep the global batch '
                f'(batch_size {saved_batch} / ranks, when it divides), use a sampler that maps it '
                f'({", ".join(ELASTIC)}), or start a new run (load_from instead of resume).')
        ranks = '' if saved.world_size == now.world_size else \
            f', world size changed from {saved.world_size} to {now.world_size}'
        return (f'global batch changed from {saved_batch} ({saved.batch_size} x {saved.world_size} ranks) to '
                f'{now.global_batch} ({now.batch_size} x {now.world_size}{ranks}): each stream goes on from where it '
                'stood, every record of the interrupted pass read once across the two runs')
    if (saved.batch_size, saved.world_size) != (now.batch_size, now.world_size):
        return (f'the global batch of {saved_batch} is split {now.world_size} x {now.batch_size} instead of '
                f'{saved.world_size} x {saved.batch_size}: the same global batches go on')
    return ''


def _mix_rebase(iteration: int, saved: DataFacts, now: DataFacts) -> tuple[tuple | None, str]:
    """A mix's turns: where each source stands when its weights changed now or before (None for no
    mix), and the note of a change now ('' else)."""
    if saved.repeat is None or saved.origin is None:
        return None, ''
    origin = (saved.origin[0], saved.origin[1])
    if list(saved.repeat) != list(now.repeat or []):
        rebase = (iteration, source_batches_at(list(saved.repeat), origin, iteration))
        return rebase, (f'mixture weights changed from repeat={list(saved.repeat)} to {now.repeat}: each source goes '
                        f'on from where it stood (batches per source so far: {rebase[1]})')
    if tuple(origin) != (0, [0] * len(origin[1])):
        return origin, ''  # a run that changed weights before: its turns go on
    return None, ''


def _start_point(iteration: int, now: DataFacts, history: list | None, drop_last: bool, epoch_of_batch,
                 note: str, rebase) -> StartPoint:
    """Where this run's sampler starts after ``iteration`` global batches, as its kind of epoch counts
    (an endless sampler's, refused past ``ENDLESS_REPLAY`` draws a rank: it is replayed draw by draw)."""
    start = _start(iteration, now, history, drop_last, epoch_of_batch, note, rebase)
    if now.samples_per_epoch is None and epoch_of_batch is None:
        draws = start.skip if start.drawn is None else start.drawn // now.world_size
        if draws > ENDLESS_REPLAY:
            raise ResumeError(f'cannot resume the data position: {now.sampler} would replay {draws} draws a rank, one '
                              f'by one, before the first batch (iteration {iteration}), more than any run draws '
                              f'({ENDLESS_REPLAY}): resume from another checkpoint, or start a new run (load_from '
                              'instead of resume)')
    return start


def _start(iteration: int, now: DataFacts, history: list | None, drop_last: bool, epoch_of_batch,
           note: str, rebase) -> StartPoint:
    if history is not None and epoch_of_batch is None:  # mmengine's samplers after a change
        drawn = stream_position(history, iteration)
        if now.samples_per_epoch is not None:
            epoch, drawn = epoch_and_drawn(history, now.dataset_size, iteration)
        else:
            epoch = 0
        aligned = drawn % now.world_size == 0
        return StartPoint(epoch=epoch, skip=drawn // now.world_size if aligned else 0, position=drawn, note=note,
                          drawn=None if aligned else drawn)
    if now.samples_per_epoch is None:
        consumed = iteration * now.batch_size  # indices each rank drew, when the global batch is kept
        return StartPoint(epoch=0, skip=consumed, position=consumed, note=note, rebase=rebase)
    if epoch_of_batch is not None:
        epoch, batches = epoch_of_batch(iteration)
        return StartPoint(epoch=epoch, skip=batches * now.batch_size, position=iteration * now.batch_size,
                          note=note, rebase=rebase)
    per_epoch = now.samples_per_epoch
    batches_per_epoch = per_epoch // now.batch_size if drop_last else -(-per_epoch // now.batch_size)
    epoch, batches = divmod(iteration, batches_per_epoch)
    skip = batches * now.batch_size
    return StartPoint(epoch=epoch, skip=skip, position=epoch * per_epoch + skip, note=note, rebase=rebase)


class PositionedSampler:
    """``inner`` with its first ``start.skip`` indices skipped once, every index given out as a
    :class:`Draw` at its position in the global stream (mmengine's samplers deal it out to ranks in
    turn: this rank's ``i``-th index of an epoch is at ``i x world size + rank`` of it), its randomness
    keyed on (epoch, that place in the epoch's permutation): ``DefaultSampler``'s permutation and
    ``InfiniteSampler``'s endless stream depend on the seed only, so a record's key does not move
    when the ranks, the workers or the global batch change (the padding of an epoch's end aside,
    which repeats records anyway). A sampler that
    yields draws itself (the project's) is placed in O(1) by its ``resume_at``. Other attributes are
    the inner sampler's (``set_epoch``, ``seed``, ...)."""

    def __init__(self, inner, start: StartPoint, rank: int, world_size: int = 1):
        self.inner = inner
        self.rank, self.world_size = rank, world_size
        self._skip = start.skip
        self._drawn = start.skip  # an endless sampler's draws so far on this rank
        self._from = start.drawn  # the global batch changed: the global positions drawn before

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def __len__(self) -> int:
        return len(self.inner)

    def __iter__(self) -> Iterator[Draw]:
        skip, self._skip = self._skip, 0
        if hasattr(self.inner, 'epoch_of_batch'):  # it yields draws, and skips in O(1)
            self.inner.resume_at(skip // self.inner.batch_size)
            yield from self.inner
            return
        seed = getattr(self.inner, 'seed', 0) or 0
        drawn, self._from = self._from, None
        if drawn is not None:
            yield from self._rest(drawn, seed)
            return
        if is_endless(self.inner):
            epoch, first = 0, self._drawn
        else:
            epoch, first = getattr(self.inner, 'epoch', 0), skip
            self._drawn = first
        base = epoch * len(self.inner) * self.world_size
        for number, index in enumerate(itertools.islice(iter(self.inner), skip, None), first):
            self._drawn = number + 1
            place = number * self.world_size + self.rank  # in the epoch's permutation, whatever the batching
            yield Draw(index, base + place, seed, epoch, (epoch, place))

    def _rest(self, drawn: int, seed: int) -> Iterator[Draw]:
        """After a change of the global batch: this rank's share of the positions from ``drawn`` on,
        dealt in turn, of the endless stream (``InfiniteSampler``) or of the epoch (``DefaultSampler``,
        whose permutation is made here as it makes it, the epoch's end padded as it pads it)."""
        if is_endless(self.inner):
            stream = self.inner._infinite_indices()
            for number, index in enumerate(itertools.islice(stream, drawn + self.rank, None, self.world_size)):
                yield Draw(index, drawn + self.rank + number * self.world_size, seed, 0)
            return
        size, epoch = len(self.inner.dataset), self.inner.epoch
        if self.inner.shuffle:
            generator = torch.Generator()
            generator.manual_seed(self.inner.seed + epoch)
            order = torch.randperm(size, generator=generator).tolist()
        else:
            order = list(range(size))
        base = epoch * len(self.inner) * self.world_size
        end = drawn + -(-(size - drawn) // self.world_size) * self.world_size if self.inner.round_up else size
        for position in range(drawn + self.rank, end, self.world_size):
            yield Draw(order[position % size], base + position, seed, epoch, (epoch, position))


def _saved_deals(saved: DataFacts | None) -> list | None:
    """The deals a checkpoint's run read under; for a checkpoint without them, its ranks and batch."""
    if saved is None:
        return None
    return saved.deals or [[0, saved.world_size, saved.batch_size]]


def place_sampler(inner, iteration: int, saved: DataFacts | None, now: DataFacts, rank: int, drop_last: bool = False,
                  allow_data_change: bool = False) -> tuple['PositionedSampler', DataFacts, StartPoint]:
    """``inner`` placed where a run resumed after ``iteration`` global batches stands (the
    checkpoint's ``saved`` facts, this run's ``now``): the global batch's history and the mix's
    weights applied to it, its epoch set, wrapped to skip what was drawn. Also the facts to save."""
    checked_iteration(saved, iteration)
    history = batch_history(iteration, saved, now)
    if history:
        now = replace(now, history=history)
        if hasattr(inner, 'set_history'):
            inner.set_history(history)  # the global batch changed at a resume: the streams go on from there
    deal_note = ''
    if hasattr(inner, 'set_deals'):  # its batches depend on the ranks, the batch and the workers: it says which
        deals, deal_note = inner.set_deals(iteration, _saved_deals(saved), now.batch_size)
        now = replace(now, deals=deals)
    start = plan_resume(iteration, saved, now, drop_last=drop_last, allow_data_change=allow_data_change,
                        epoch_of_batch=getattr(inner, 'epoch_of_batch', None))
    if deal_note:
        start = replace(start, note=deal_note)
    if start.rebase is not None:
        inner.rebase(*start.rebase)
        now = replace(now, origin=[start.rebase[0], list(start.rebase[1])])
    if hasattr(inner, 'set_epoch'):
        inner.set_epoch(start.epoch)
    return PositionedSampler(inner, start, rank, now.world_size), now, start


def epoch_iterations(loader, epochs) -> int:
    """The iterations of ``epochs`` epochs of ``loader``: its sampler's own count where its epochs
    differ in length (``BucketSampler``: carried records complete batches), else ``epochs x len(loader)``."""
    sampler = getattr(getattr(loader, 'batch_sampler', None), 'sampler', None)
    if hasattr(sampler, 'batches_before') and int(epochs) == epochs:
        return sampler.batches_before(int(epochs))
    return epochs * len(loader)


def restore_seed(sampler, seed: int | None) -> bool:
    """Give ``sampler`` the seed of the checkpointed run (a run with ``randomness.seed=None`` draws
    a new one, and mmengine restores it only after the dataloader is built). True when it changed."""
    if seed is None or getattr(sampler, 'seed', seed) == seed:
        return False
    sampler.seed = seed
    if isinstance(sampler, InfiniteSampler):
        sampler.indices = sampler._indices_of_rank()  # its stream is made once, from the seed
    return True
