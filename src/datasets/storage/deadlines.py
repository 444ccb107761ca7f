"""One deadline for every request to an object store, its body included (:func:`request_deadline`,
which both clients' requests go through): a store that trickles a byte every few seconds is never
idle for the read timeout, so only a clock ends its request.

boto3's requests are ended by a watchdog thread that shuts down the socket of a request whose
deadline passed (a read blocked on it returns at once) and refuses the attempts botocore would
start after it; obstore's by its own whole-request ``timeout`` (``obstore_client``), set to the same
deadline, with no attempt started after it. Either way the request ends in a
``SampleError('too-slow')`` naming the object and the range: a counted, logged skip.
"""
from __future__ import annotations

import functools
import logging
import os
import socket
import threading
import time
from concurrent.futures import CancelledError
from contextlib import contextmanager

from src.datasets.errors import SampleError

logger = logging.getLogger(__name__)

# Seconds a request may take, body included. The largest read is a whole object of MAX_FILE_BYTES
# (512 MiB): 300 s pass it at 1.7 MiB/s (14 Mbit/s), and a shard part (MAX_SPAN, 16 MiB) at 55 KiB/s.
REQUEST_DEADLINE = 300.0
POLL = 0.25  # how often the watchdog looks again for the socket of a connection still connecting


class DeadlinePassed(CancelledError):
    """Raised in a request whose deadline passed; a ``CancelledError``, which botocore passes on
    unwrapped and never retries. :func:`request_deadline` turns it into the sample error."""


class Deadline:
    """One request's clock, over all its attempts and retries: ``what`` it asks (an object and its
    range), ``asked`` (what did not all come), ``where`` (the store's description) for the message."""

    def __init__(self, what: str, asked: str, where: str):
        self.what, self.asked, self.where = what, asked, where
        self.limit = float(REQUEST_DEADLINE)  # read now: tests shorten it
        self.start = time.monotonic()
        self.ends = self.start + self.limit
        self.connections = []  # boto3's connections it used, watched

    def passed(self) -> bool:
        return time.monotonic() >= self.ends

    def check(self) -> None:
        """``DeadlinePassed`` once the deadline passed: no attempt starts after it."""
        if self.passed():
            raise DeadlinePassed(self.what)

    def error(self) -> SampleError:
        elapsed = time.monotonic() - self.start
        return SampleError('too-slow', f'{self.what}: {self.asked} did not all come within {elapsed:.1f} s from '
                                       f'{self.where}: the store sends slower than a request may take '
                                       f'(REQUEST_DEADLINE = {self.limit:g} s); not asked again')


_local = threading.local()  # the deadline of the request this thread makes now


@contextmanager
def request_deadline(what: str, asked: str, where: str):
    """The one way a request to an object store is made: the block's requests (all attempts) end
    once ``REQUEST_DEADLINE`` has passed since it began, in ``SampleError('too-slow')``."""
    deadline = Deadline(what, asked, where)
    outer, _local.deadline = getattr(_local, 'deadline', None), deadline
    try:
        yield deadline
    except DeadlinePassed:
        raise deadline.error() from None
    finally:
        _local.deadline = outer
        _watchdog().forget(deadline)


class _Watchdog:
    """Shuts down the sockets of boto3's connections whose request's deadline passed, in a thread
    of this process made at first need (a forked worker makes its own)."""

    def __init__(self):
        self._changed = threading.Condition()
        self._watched: dict[int, tuple[object, Deadline]] = {}  # id(connection) -> (it, its request's deadline)
        self._thread = None

    def watch(self, connection, deadline: Deadline) -> None:
        with self._changed:
            self._watched[id(connection)] = (connection, deadline)  # a pooled connection's latest request
            deadline.connections.append(connection)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name='t2i-request-deadline', daemon=True)
                self._thread.start()
            self._changed.notify()

    def forget(self, deadline: Deadline) -> None:
        if not deadline.connections:
            return
        with self._changed:
            for connection in deadline.connections:
                if self._watched.get(id(connection), (None, None))[1] is deadline:
                    del self._watched[id(connection)]
            deadline.connections.clear()

    def _run(self) -> None:
        with self._changed:
            while True:
                now = time.monotonic()
                for key, (connection, deadline) in list(self._watched.items()):
                    if deadline.ends <= now and _shut(connection):
                        del self._watched[key]
                waits = [deadline.ends - now for _, deadline in self._watched.values()]
                self._changed.wait(max(min(waits, default=3600.0), POLL))


def _shut(connection) -> bool:
    """``connection``'s socket shut down (True), or False while it has none yet (connecting)."""
    sock = getattr(connection, 'sock', None)
    if sock is None:
        return False
    try:
        socket.socket.shutdown(sock, socket.SHUT_RDWR)  # the socket's own, under a TLS wrapper too
    except OSError:
        pass  # closed meanwhile
    return True


_WATCHDOG: tuple[int, _Watchdog] | None = None


def _watchdog() -> _Watchdog:
    global _WATCHDOG
    if _WATCHDOG is None or _WATCHDOG[0] != os.getpid():
        _WATCHDOG = (os.getpid(), _Watchdog())
    return _WATCHDOG[1]


def _forget_parents_watchdog() -> None:
    global _WATCHDOG
    _WATCHDOG = None  # its lock may have been held at the fork


os.register_at_fork(after_in_child=_forget_parents_watchdog)


class _WatchedConnection:
    """Mixed into botocore's connection classes: each use for a request under a deadline is
    watched, and none starts after the deadline (botocore's next retry is refused at once)."""

    def _watched(self) -> None:
        deadline = getattr(_local, 'deadline', None)
        if deadline is not None:
            deadline.check()
            _watchdog().watch(self, deadline)

    def connect(self, *args, **kwargs):
        self._watched()
        return super().connect(*args, **kwargs)

    def request(self, *args, **kwargs):
        self._watched()
        return super().request(*args, **kwargs)


@functools.lru_cache(maxsize=None)
def _watched_pool(pool):
    connection = type(f'Watched{pool.ConnectionCls.__name__}', (_WatchedConnection, pool.ConnectionCls), {})
    return type(f'Watched{pool.__name__}', (pool,), {'ConnectionCls': connection})


@functools.lru_cache(maxsize=None)
def _say_unwatched(version: str) -> None:
    logger.warning('botocore %s does not keep its connection pool classes where this project looks for them: '
                   'a request to an object store ends only when its store is idle for the read timeout, not at '
                   'REQUEST_DEADLINE', version)


def watch_connections(client):
    """boto3 ``client``, its connections ones that a passed deadline ends. botocore gives no hook to
    the connection of a request, so its pool classes are swapped, on this client only."""
    session = getattr(getattr(client, '_endpoint', None), 'http_session', None)
    pools = getattr(session, '_pool_classes_by_scheme', None)
    if not isinstance(pools, dict) or not pools:
        import botocore
        _say_unwatched(botocore.__version__)
        return client
    for scheme, pool in list(pools.items()):
        if not issubclass(pool.ConnectionCls, _WatchedConnection):
            pools[scheme] = _watched_pool(pool)
    return client
