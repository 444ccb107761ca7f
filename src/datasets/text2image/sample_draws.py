"""How ``CaptionDataset`` draws its samples: each ``__getitem__`` call's generator (keyed on the
draw, see ``src.datasets.samplers.draws``), replacements under the failure policy
(``src.datasets.failure_policy``), and a batch's shared work (``__getitems__``). What a sample needs
is handed to ``prepare_data`` as arguments; only the process's own stream and failure counts are
kept per process (made on first use: a forked worker must not replay its parent's draws).
"""
from __future__ import annotations

import numbers
import os
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from mmengine.dist import get_rank
from torch.utils.data import get_worker_info

from src.datasets.errors import SampleError
from src.datasets.failure_policy import FailureTracker
from src.datasets.storage.object_fetch import block_rest
from src.datasets.text2image.upstream_hooks import current_draw, make_sample, sets_draw_rng


@dataclass
class _ProcessState:
    """What each process (main, every DataLoader worker) draws and counts on its own: ``rng``, the
    process's stream (plain indices, upstream's ``_retry``), and its failures."""
    pid: int
    rng: random.Random
    tracker: FailureTracker


class SampleDraws:
    """Mixed into ``CaptionDataset``; see the module."""

    _process_state: _ProcessState | None = None

    def _state(self) -> _ProcessState:
        """This process's state, made on first use in each process."""
        pid = os.getpid()
        if self._process_state is None or self._process_state.pid != pid:
            worker = get_worker_info()
            base_seed = self.seed if self.seed is not None else torch.initial_seed()
            # The index path too: datasets mixed in one ConcatDataset must not drop captions in step.
            stream = f'{base_seed}/{get_rank()}/{worker.id if worker is not None else "main"}/{self.data_path}'
            self._process_state = _ProcessState(
                pid=pid, rng=random.Random(stream),
                tracker=FailureTracker(self.data_path, self.max_refetch, self.max_failure_ratio))
        return self._process_state

    @property
    def failures(self) -> Counter:
        """Samples that could not be used in this process, by reason."""
        return self._state().tracker.failures

    def draw_rng(self, idx) -> random.Random:
        """The random generator of one ``__getitem__`` call (crop, caption dropout, replacements).

        An index that says where it stands in the global sample stream (a ``Draw``, given out by
        the project's samplers and ``ResumableTrainLoop``) gets a generator of its own, keyed on
        (seed, the draw's key: its place in a stream batching does not move, ``draws``): the same
        sample on any number of ranks and workers, resumed or not, and (bucket streams, mmengine's
        samplers) whatever the global batch. A plain index draws from the process's stream."""
        key = getattr(idx, 'key', None)
        if key is None:
            return self._state().rng
        seed = self.seed if self.seed is not None else idx.seed
        return random.Random(f'{seed}/{"/".join(map(str, key))}/{self.data_path}')

    def sample_rng(self, idx) -> random.Random:
        """The generator of sample ``idx`` where its caller gives none: the draw an upstream-style
        call runs under (``upstream_hooks``), else ``draw_rng(idx)``."""
        rng = current_draw()
        return self.draw_rng(idx) if rng is None else rng

    def __getitems__(self, indices: Sequence) -> list:
        """A batch, as torch's DataLoader asks for one: in object storage, the files of all its
        samples are fetched at once (``src.datasets.storage.prefetch``); the prompts whose captions are in
        the index are tokenized one after another (``PromptEncoder.batch_ids``), each handed to its
        sample; then the samples are made in turn. The same samples as ``self[idx]`` one by one."""
        tokenize = self._tokenizes_batches and self.prompt_ids is None
        records = [self.index[idx] for idx in indices] if self.files.remote or tokenize else None
        if self.files.remote:  # with BlockShuffleSampler's blocks, the rest of the batch's block too,
            self._prefetch(records + [self.index[i] for i in block_rest(indices, self.read_blocks, len(self))])
            ahead = ahead_of(indices, len(self))
            if ahead:  # and this worker's next block, fetched while this one is read (a hint: never an error)
                self._prefetch([self.index[i] for i in ahead], ahead=True)
        if not tokenize:
            return [self[idx] for idx in indices]
        ids = self.prompts.batch_ids(records, self.cap_keys, self.caption_prompt)
        return [self._drawn(idx, prompt_ids) for idx, prompt_ids in zip(indices, ids)]

    @sets_draw_rng
    def __getitem__(self, idx):
        """Sample ``idx``, or, when it cannot be used, a random other one: see ``failure_policy``
        for when drawing stops."""
        return self._drawn(idx)

    def _drawn(self, idx, prompt_ids: torch.Tensor | None = None) -> dict:
        """Sample ``idx`` (its prompt's ids, where its batch made them) or its replacements, under
        the failure policy; each made with the draw's generator."""
        tracker = self._state().tracker
        rng = self.draw_rng(idx)
        streak = 0
        while True:
            if self.debug or streak:
                idx, prompt_ids = 0 if self.debug else self.replacement(idx, rng), None
            try:
                sample = make_sample(self.prepare_data, idx, rng, prompt_ids)
            except SampleError as err:
                streak += 1
                tracker.failure(err, streak)
                continue
            tracker.success()
            return sample


def ahead_of(indices: Sequence, size: int) -> list[int]:
    """The indices a batch's first says its reader reads next (a sampler's ``Ahead``), those of a
    dataset of ``size`` samples: a hint for fetching, so one a sampler of its own gets wrong (out of
    range, not an index) is passed over, never an error of the batch."""
    ahead = getattr(indices[0], 'ahead', None) if len(indices) else None
    if not isinstance(ahead, (tuple, list)):
        return []
    return [int(i) for i in ahead if isinstance(i, numbers.Integral) and 0 <= i < size]
