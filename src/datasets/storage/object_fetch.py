"""Fetching ahead for object storage: the bytes of a batch fetched in threads before their read
(``Kept``, bounded), how much of a batch one prefetch takes on (``fetch_within``), the rest of
a block shuffle's block fetched with its first batch (``block_rest``), and a reader's next block
fetched while it reads this one (``InFlight``)."""
from __future__ import annotations

import os
from collections import OrderedDict, deque
from concurrent.futures import ThreadPoolExecutor


# Bytes between a sample's members that one request still carries rather than two: their tar
# headers (512 bytes each, more with pax records), or a small member read along.
MAX_GAP = 64 * 1024
MAX_SPAN = 16 * 2 ** 20  # at most this many bytes a coalesced GET: larger runs go in parallel GETs
PREFETCH_THREADS = 8  # requests of a batch in flight at once, in each process
KEPT_BYTES = 256 * 2 ** 20  # fetched ahead and not yet read, at most, in each process


class Kept:
    """Bytes fetched before their read, each handed out once. Bounded (the oldest go first): what
    was fetched for a sample that was then skipped does not pile up. A batch's prefetch fetches no
    more than the bound leaves room for (:func:`fetch_within`), so that none of its own objects is
    pushed out by the next, to be fetched again."""

    def __init__(self, limit: int = KEPT_BYTES):
        self.limit = limit
        self._items: OrderedDict[str, bytes] = OrderedDict()
        self._bytes = 0
        self.largest = 0  # the largest object kept so far: the guess for one not fetched yet

    def touch(self, path: str) -> int | None:
        """The size of ``path``'s bytes, now the newest kept (a batch's own go last); None if not kept."""
        if path not in self._items:
            return None
        self._items.move_to_end(path)
        return len(self._items[path])

    def __contains__(self, path: str) -> bool:
        return path in self._items

    def __len__(self) -> int:
        return len(self._items)

    @property
    def bytes(self) -> int:
        """The bytes kept now."""
        return self._bytes

    def put(self, path: str, data: bytes) -> None:
        if path in self._items:
            return
        self._items[path] = data
        self._bytes += len(data)
        self.largest = max(self.largest, len(data))
        while self._bytes > self.limit:
            self._bytes -= len(self._items.popitem(last=False)[1])

    def take(self, path: str) -> bytes | None:
        data = self._items.pop(path, None)
        if data is not None:
            self._bytes -= len(data)
        return data


def block_rest(indices, block_size: int | None, size: int) -> range:
    """The indices after a batch (``indices``) to the end of its block of ``block_size``, where the
    batch is a run of neighbours inside one block (``BlockShuffleSampler``'s batches); else none. A
    worker's first batch of a block fetches them with its own (one request); its next batches,
    dealt to the same worker, find their bytes fetched."""
    if not block_size or block_size <= 1 or not len(indices):
        return range(0)
    first, last = int(indices[0]), int(indices[-1])
    if first // block_size != last // block_size or any(int(b) - int(a) != 1 for a, b in zip(indices, indices[1:])):
        return range(0)
    return range(last + 1, min(size, (first // block_size + 1) * block_size))


_THREADS: tuple[int, ThreadPoolExecutor] | None = None


def fetch_threads() -> ThreadPoolExecutor:
    """This process's fetching threads, made in it (a forked worker never uses its parent's)."""
    global _THREADS
    if _THREADS is None or _THREADS[0] != os.getpid():
        _THREADS = (os.getpid(), ThreadPoolExecutor(PREFETCH_THREADS, thread_name_prefix='t2i-fetch'))
    return _THREADS[1]


class InFlight:
    """Fetches started ahead of their batch and not waited for (a block shuffle's next block,
    fetched while the reader decodes this one), each a future of ``[(path, bytes), ...]`` in this
    process's fetching threads. Only the reading thread touches ``Kept``: it folds what came in
    (:meth:`settle`), waiting only for the fetches that hold the paths it needs now. A fetch started
    in another process is never waited for (a forked worker inherits the futures, not the threads)."""

    def __init__(self):
        self._pid, self._fetches = os.getpid(), []  # (paths, bytes claimed, future)

    def _own(self) -> list:
        if self._pid != os.getpid():
            self._pid, self._fetches = os.getpid(), []
        return self._fetches

    @property
    def claimed(self) -> int:
        """Bytes the fetches in flight will bring (counted against ``Kept``'s bound beforehand)."""
        return sum(claim for _, claim, _ in self._own())

    def __contains__(self, path: str) -> bool:
        return any(path in paths for paths, _, _ in self._own())

    def room(self, kept: Kept) -> int:
        """The bytes that fetches started now may bring: what ``kept``'s bound leaves beside all it
        holds and all in flight (what comes in waits in its future, where nothing is pushed out)."""
        return kept.limit - kept.bytes - self.claimed

    def missing(self, kept: Kept, paths, ahead: bool) -> tuple[list[str], int]:
        """Before a prefetch of ``paths``: what finished put in ``kept`` (for a batch read now,
        after waiting for the fetches that hold its paths; for one ``ahead``, without waiting); then
        the paths neither kept nor in flight, and the bytes of those kept (touched: a batch's own
        are pushed out last)."""
        paths = list(paths)
        self.settle(kept, () if ahead else paths)
        missing, held = [], 0
        for path in paths:
            size = kept.touch(path)
            if size is not None:
                held += size
            elif path not in self:
                missing.append(path)
        return missing, held

    def take(self, kept: Kept, path: str) -> bytes | None:
        """``path``'s bytes from ``kept``, once the fetch in flight that holds it is done; None
        where neither holds it."""
        if path not in kept and path in self:
            self.settle(kept, [path])
        return kept.take(path)

    def start(self, fetch, job, paths, claim: int) -> None:
        """``fetch(job)`` (a list of (path, bytes), or None) started for ``paths``, ``claim`` bytes."""
        self._own().append((frozenset(paths), claim, fetch_threads().submit(fetch, job)))

    def settle(self, kept: Kept, needed=()) -> None:
        """What finished is put in ``kept``, after waiting for the fetches holding any of ``needed``
        (a fetch's own error, such as a shard replaced, is raised here as its read would raise it)."""
        needed, fetches, self._fetches = set(needed), self._own(), []
        for number, (paths, claim, future) in enumerate(fetches):
            if not (future.done() or not paths.isdisjoint(needed)):
                self._fetches.append((paths, claim, future))
                continue
            try:
                fetched = future.result()
            except BaseException:
                self._fetches.extend(fetches[number + 1:])
                raise
            for path, data in fetched or ():
                kept.put(path, data)


_END = object()


def fetch_within(fetch, jobs, room: int, size=None, guess: int = 0):
    """Yields ``(job, fetch(job))`` for the first ``jobs`` whose results fit in ``room`` bytes
    together (a result of None is left out), fetched in this process's threads, at most
    ``PREFETCH_THREADS`` at a time and in order. Where ``size(job)`` gives a result's size
    beforehand, a job that would not fit ends the fetching; else each job in flight counts as the
    largest result seen (``guess`` before the first), and a result that still overflows the room is
    dropped (its read fetches it)."""
    pool, pending, jobs = fetch_threads(), deque(), iter(jobs)
    used, largest, more = 0, guess, room > 0
    while True:
        while more and len(pending) < PREFETCH_THREADS and (size is not None or largest or not pending):
            job = next(jobs, _END)
            expected = 0 if job is _END else size(job) if size is not None else largest
            if job is _END or used + sum(claim for _, _, claim in pending) + expected > room:
                more = False
                break
            pending.append((job, pool.submit(fetch, job), expected))
        if not pending:
            return
        job, future, _ = pending.popleft()
        data = future.result()
        if data is None:
            continue
        largest = max(largest, len(data))
        if used + len(data) > room:
            more = False
            continue
        used += len(data)
        yield job, data

