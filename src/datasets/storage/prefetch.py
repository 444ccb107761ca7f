"""Which files a dataset's samples read next, told to the readers that gain by knowing
(``Reader.prefetch``): object storage, where each read waits on the network.

A DataLoader worker that reads sample after sample waits a request's latency for each (tens of
milliseconds on a real object store, more than decoding the image). Told a batch's files at once,
the readers fetch them together, in threads (``src.datasets.storage.object_store``); told a sample's caption
file and image together, a tar shard in a bucket gives both in one ranged GET. Readers of local
files do nothing.
"""
from __future__ import annotations

import contextlib
from typing import Sequence

from src.datasets.index.captions import ANNOTATION_KEY
from src.datasets.errors import SampleError


def _files_of(dataset, record: dict) -> list[tuple[object, str, str]]:
    """(reader, folder, relative path) of each file the sample of ``record`` reads."""
    files = []
    if ANNOTATION_KEY in record and not any(key in record for key in dataset.cap_keys):
        files.append((dataset.annotation_files, dataset.cap_root, record[ANNOTATION_KEY]))
    image = record.get(dataset.image_key)
    if dataset.decodes_images:
        files.append((dataset.image_files, dataset.image_root, image))
    elif dataset.latent_root is not None and isinstance(image, str):
        files.append((dataset.latent_files, dataset.latent_root, image + '.pt'))
    return files


def prefetch_records(dataset, records: Sequence[dict]) -> None:
    """Tell ``dataset``'s remote readers the files of the samples of ``records``, a list of paths
    a sample. A path that cannot be made (unsafe, not text) is left to its read to report."""
    samples_by_reader: dict[object, list[list[str]]] = {}
    for record in records:
        sample: dict[object, list[str]] = {}  # one reader may hold both the caption file and the image
        for reader, folder, relpath in _files_of(dataset, record):
            if reader.remote:
                with contextlib.suppress(SampleError, TypeError, ValueError):
                    sample.setdefault(reader, []).append(dataset.data_path_of(folder, relpath))
        for reader, paths in sample.items():
            samples_by_reader.setdefault(reader, []).append(paths)
    for reader, samples in samples_by_reader.items():
        reader.prefetch(samples)


def has_remote_reader(dataset) -> bool:
    return any(reader.remote for reader in (dataset.image_files, dataset.annotation_files, dataset.latent_files))
