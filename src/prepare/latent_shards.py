"""The tar member index of a latent folder's shards (``tools/cache_latents.py``'s last step): the
prepare runner's ``--no-extract`` step over the shards that ``src.latents.store`` wrote."""
from __future__ import annotations

import os

from src.datasets.storage.tar_headers import TarJob
from src.datasets.storage.tar_index import INDEX_NAME
from src.latents.store import SHARDS, completed_shards
from src.prepare.runner import prepare
from src.prepare.tar_members import INDEX_MEMBERS


def index_shards(folder: str) -> str:
    """Write ``<folder>/tar_index.arrow`` over the whole shards (the --no-extract step); its path."""
    jobs = [TarJob(folder, shard, '') for shard in completed_shards(folder)]
    report = prepare('latents', folder, jobs, [SHARDS], lambda files, report: None, step=INDEX_MEMBERS,
                     num_processes=1)
    if report.index_error or report.by_status('failed'):
        raise OSError(f'cannot index the latent shards of {folder}: {report.summary()}')
    return os.path.join(folder, INDEX_NAME)
