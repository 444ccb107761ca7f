"""img2dataset's download with every URL fetched through the URL rule (``src.prepare.url_fetch``).

img2dataset downloads in worker processes it starts itself (spawned processes, or Spark executors)
and calls its module's ``download_image`` there: :class:`GuardedDownloader`, pickled to them by
reference to this module, puts :func:`~src.prepare.url_fetch.fetch_image` in its place in whichever
process runs a shard, before the shard's first URL.
"""
from __future__ import annotations

import importlib
from functools import partial

import img2dataset.downloader

from src.prepare.url_fetch import UrlPolicy, fetch_image


class GuardedDownloader(img2dataset.downloader.Downloader):
    """img2dataset's shard downloader, fetching under ``policy``."""

    def __init__(self, *args, policy: UrlPolicy, **kwargs):
        super().__init__(*args, **kwargs)
        self.policy = policy

    def download_shard(self, row):
        img2dataset.downloader.download_image = partial(fetch_image, policy=self.policy)
        return super().download_shard(row)


def download(policy: UrlPolicy, arguments: dict) -> None:
    """``img2dataset.download(**arguments)``, every URL under ``policy``."""
    main = importlib.import_module('img2dataset.main')  # the package's ``main`` is its download function
    main.Downloader = partial(GuardedDownloader, policy=policy)
    main.download(**arguments)
