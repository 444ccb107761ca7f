"""Reading a finite-per-epoch sampler as an iteration loop does: epoch after epoch, from any global batch."""
from __future__ import annotations

import itertools
from typing import Iterator


def stream_from(sampler, batch: int = 0) -> Iterator[int]:
    """``sampler``'s indices from global batch ``batch`` on, epoch after epoch (``set_epoch`` before
    each, as mmengine's loops), placed by ``epoch_of_batch`` and ``resume_at`` as a resume does."""
    epoch, skip = sampler.epoch_of_batch(batch)
    for epoch in itertools.count(epoch):
        sampler.set_epoch(epoch)
        sampler.resume_at(skip)
        skip = 0
        yield from sampler
