"""``--no-extract``: index the members of a dataset's tars in place instead of extracting them.

:data:`INDEX_MEMBERS` is the preparation runner's step for it (the runner gives it parallelism,
resume markers and ``--start/--end`` slices, as it gives them to extraction): one pass over each
tar's headers (no member data is read) writes that tar's member index; once every tar is done,
:func:`combine` joins them into ``<root>/tar_index.arrow``, which ``src.datasets.storage.tar_index`` reads.

Members that safe extraction refuses (links, devices, absolute names, names with ``..``) are
refused here too, by the same rule; a damaged tar gives its complete members and is reported.
"""
from __future__ import annotations

import os

from src.datasets.storage.tar_headers import TarJob, TarResult
from src.datasets.storage.tar_index import INDEX_NAME, TarMemberIndex
from src.datasets.storage.tar_index_writer import STEP_NAME, combine, index_tar, shard_index_path  # noqa: F401
from src.prepare.listing import PathListing


class IndexMembers:
    """The preparation runner's step for ``--no-extract``: index each tar's members, in place.

    ``process`` writes one tar's member index; ``listing`` (called once every tar is done) combines
    them into ``<root>/tar_index.arrow`` and returns the member paths; ``read`` serves a member's
    bytes to the index builders (caption json and .txt files).
    """

    name = STEP_NAME
    options: dict = {}  # nothing but the tar decides its member index

    def __init__(self):
        self._open_indexes: dict[str, TarMemberIndex] = {}

    def __getstate__(self) -> dict:
        return {}  # the runner sends the step to worker processes: no open index travels

    def __setstate__(self, state: dict) -> None:
        self.__init__()

    def process(self, job: TarJob) -> TarResult:
        return index_tar(job)

    def listing(self, root: str, jobs: list[TarJob], folders: list[str] = (), refused=None) -> PathListing:
        """The members of ``jobs`` (all of them land in ``folders``): loose files beside the tars
        are not listed, since the dataset, reading through the member index, would not find them
        (nor links: ``refused`` is for the file listing's)."""
        index = TarMemberIndex.open(combine(root, jobs))
        earlier = self._open_indexes.pop(os.path.abspath(root), None)
        if earlier is not None:
            earlier.close()
        self._open_indexes[os.path.abspath(root)] = index
        return PathListing.of(index.path_column())

    def read(self, root: str, path: str) -> bytes:
        root = os.path.abspath(root)
        if root not in self._open_indexes:
            self._open_indexes[root] = TarMemberIndex.open(os.path.join(root, INDEX_NAME))
        return self._open_indexes[root].read(path)


INDEX_MEMBERS = IndexMembers()
