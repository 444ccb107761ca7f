"""``ResumableTrainLoop``: xtuner's ``TrainLoop`` (``max_iters`` or ``max_epochs``) whose resume
places every rank's sampler where an uninterrupted run would stand, instead of calling
``next(dataloader_iterator)`` once per finished iteration (mmengine's way: at iteration 100,000 with
batch 32, 3.2M decoded images before training goes on).

The data position is saved in mmengine's checkpoint itself, as runtime info of the message hub
(``data_position``: the facts of :class:`~src.engine.data_facts.DataFacts`), next to the iteration
count mmengine saves; a checkpoint without it (mmengine's or xtuner's loop) resumes from its
iteration count. The dataloader iterator is made only once the sampler is placed, so no worker
reads a sample of the skipped batches, not even while prefetching.
"""
from __future__ import annotations

import contextlib
import logging

from mmengine.dist import get_dist_info
from mmengine.logging import print_log
from mmengine.registry import LOOPS
from mmengine.runner.base_loop import BaseLoop
from mmengine.runner.loops import IterBasedTrainLoop, _InfiniteDataloaderIterator
from mmengine.runner.utils import calc_dynamic_intervals

from src.engine.data_facts import DataFacts, facts_of, records_moved
from src.engine.positions import epoch_iterations, place_sampler, restore_seed

POSITION_KEY = 'data_position'


# mmengine 0.10.6's CheckpointHook makes a FileClient before a run and at every save, whatever its
# arguments, and each time logs that FileClient (and HardDiskBackend) will be deprecated: notes
# about mmengine's own code, which no config can act on. Its iterator warns at every epoch's end
# that the loader restarts and InfiniteSampler is recommended: here epochs end by design.
_MMENGINE_NOTES = ('"FileClient" will be deprecated', '"HardDiskBackend" is the alias',
                   'Reach the end of the dataloader')


@contextlib.contextmanager
def _without_mmengine_notes(logger):
    def keep(record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_MMENGINE_NOTES)
    logger.addFilter(keep)
    try:
        yield
    finally:
        logger.removeFilter(keep)


@LOOPS.register_module()
class ResumableTrainLoop(IterBasedTrainLoop):
    """xtuner ``TrainLoop``'s arguments: ``max_iters`` or ``max_epochs`` (epochs of the dataloader),
    and mmengine's ``val_begin``, ``val_interval``, ``dynamic_intervals``. ``allow_data_change``: resume
    at the checkpoint's position even when the dataset now holds other records (refused otherwise)."""

    def __init__(self, runner, dataloader, max_iters=None, max_epochs=None, val_begin: int = 1,
                 val_interval: int = 1000, dynamic_intervals=None, allow_data_change: bool = False) -> None:
        if (max_iters is None) == (max_epochs is None):
            raise ValueError('ResumableTrainLoop: give exactly one of max_iters and max_epochs in train_cfg, '
                             f'got max_iters={max_iters}, max_epochs={max_epochs}')
        # IterBasedTrainLoop.__init__ would start the dataloader iterator, whose workers prefetch
        # from the first batch on: this loop starts it in run(), once the position is known.
        BaseLoop.__init__(self, runner, dataloader)
        iters = max_iters if max_iters is not None else epoch_iterations(self.dataloader, max_epochs)
        if int(iters) != iters:
            raise ValueError(f'ResumableTrainLoop: max_iters must be a whole number, got {iters}')
        self._max_iters = int(iters)
        self._max_epochs_asked = max_epochs
        self._max_epochs = 1  # one big epoch, as IterBasedTrainLoop
        self._epoch = 0
        self._iter = 0
        self.val_begin = val_begin
        self.val_interval = val_interval
        self.stop_training = False  # set by EarlyStoppingHook
        if hasattr(self.dataloader.dataset, 'metainfo'):
            self.runner.visualizer.dataset_meta = self.dataloader.dataset.metainfo
        self.dynamic_milestones, self.dynamic_intervals = calc_dynamic_intervals(val_interval, dynamic_intervals)
        self.dataloader_iterator = None
        self.allow_data_change = allow_data_change
        # The hub outlives a runner in the same process (same experiment name): only a checkpoint
        # loaded after this point may put a data position there.
        runner.message_hub.pop_info(POSITION_KEY)

    def _place_sampler(self) -> None:
        """Wrap the sampler so that it starts where this run resumes, and record the position facts."""
        batch_sampler = getattr(self.dataloader, 'batch_sampler', None)
        if batch_sampler is None or not hasattr(batch_sampler, 'sampler'):
            raise TypeError('ResumableTrainLoop needs a dataloader with a batch size and a sampler')
        rank, world_size = get_dist_info()
        inner = batch_sampler.sampler
        hub = self.runner.message_hub
        saved_info = hub.get_info(POSITION_KEY) if self._iter else None
        saved = DataFacts.from_dict(saved_info) if saved_info else None
        if saved is not None and restore_seed(inner, saved.seed):
            print_log(f'sampler seed restored to the checkpoint\'s, {saved.seed}', logger='current')
        now = facts_of(self.dataloader, (rank, world_size))
        positioned, now, start = place_sampler(inner, self._iter, saved, now, rank,
                                               drop_last=getattr(batch_sampler, 'drop_last', False),
                                               allow_data_change=self.allow_data_change)
        if (now.history or now.deals) and self._max_epochs_asked is not None:  # the epochs' lengths as
            # the sampler reads them now (after a change of the global batch, or of a block shuffle's deal)
            self._max_iters = epoch_iterations(self.dataloader, self._max_epochs_asked)
        if self._iter and saved is not None and saved.data != now.data and saved.filters != now.filters:
            moved = records_moved(self.dataloader.dataset, saved.filters)
            if moved is not None:
                print_log(f'The filters changed: {moved[0]} records entered and {moved[1]} left the dataset '
                          f'({saved.filters} -> {now.filters})', logger='current', level=logging.WARNING)
        if self._iter:
            print_log(f'Resuming the data at iteration {self._iter}: sampler epoch {start.epoch}, '
                      f'{start.skip} indices skipped without reading a sample'
                      + (f' ({start.note})' if start.note else ''), logger='current', level=logging.INFO)
        batch_sampler.sampler = positioned
        hub.update_info(POSITION_KEY, now.to_dict())
        self.dataloader_iterator = _InfiniteDataloaderIterator(self.dataloader)
        self.dataloader_iterator._epoch = start.epoch

    def run(self):
        """Launch training, from where a resumed checkpoint left off."""
        with _without_mmengine_notes(self.runner.logger):
            return self._run()

    def _run(self):
        self.runner.call_hook('before_train')
        self.runner.call_hook('before_train_epoch')
        self._place_sampler()
        while self._iter < self._max_iters and not self.stop_training:
            self.runner.model.train()
            data_batch = next(self.dataloader_iterator)
            self.run_iter(data_batch)
            self._decide_current_val_interval()
            if (self.runner.val_loop is not None and self._iter >= self.val_begin
                    and (self._iter % self.val_interval == 0 or self._iter == self._max_iters)):
                self.runner.val_loop.run()
        self.runner.call_hook('after_train_epoch')
        self.runner.call_hook('after_train')
        return self.runner.model
