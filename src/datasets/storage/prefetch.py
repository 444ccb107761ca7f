"""Which files a batch's samples read next, told to the readers that gain by knowing
(``Reader.prefetch``): object storage, where each read waits on the network.

A DataLoader worker that reads sample after sample waits a request's latency for each (tens of
milliseconds on a real object store, more than decoding the image). Told a batch's files at once,
the readers fetch them together, in threads (``src.datasets.storage.object_store``); told a sample's caption
file and image together, a tar shard in a bucket gives both in one ranged GET. Readers of local
files do nothing.
"""
from __future__ import annotations

from typing import Sequence


def prefetch(samples: Sequence[Sequence[tuple[object, str]]], ahead: bool = False) -> None:
    """Tell the remote readers of ``samples`` (for each sample, the (reader, path) of each file it
    reads) their files, a list of paths a sample; ``ahead``: read after the current batch (fetched
    meanwhile, not waited for)."""
    samples_by_reader: dict[object, list[list[str]]] = {}
    for files in samples:
        sample: dict[object, list[str]] = {}  # one reader may hold both the caption file and the image
        for reader, path in files:
            if reader.remote:
                sample.setdefault(reader, []).append(path)
        for reader, paths in sample.items():
            samples_by_reader.setdefault(reader, []).append(paths)
    for reader, batch in samples_by_reader.items():
        if ahead:
            reader.prefetch(batch, ahead=True)
        else:
            reader.prefetch(batch)  # a reader of its own may not know ``ahead``
