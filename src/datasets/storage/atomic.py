"""Writes that a killed run never leaves half done: a temporary file beside the target, then os.replace."""
from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
from contextlib import contextmanager
from typing import IO, Iterable, Iterator

from src.datasets.errors import write_error
from src.datasets.storage.locks import HOST


TEMP_MARK = '.tmp-'  # <target>.tmp-<host>-<pid>: a killed writer's leftover is told by its host and pid


class WriteOutcome:
    """Set when an :func:`atomic_write` block ends: whether the target file was replaced."""

    changed: bool = False


class _SameOrWrite(io.RawIOBase):
    """The sink of ``atomic_write(only_if_changed=True)``: while what is written equals the target's
    bytes it only compares; at the first difference it starts the temp file with the equal prefix
    and writes on into it. An unchanged output is never written at all, so a re-run on a read-only
    root, or one that finds nothing new, writes nothing."""

    def __init__(self, path: str, tmp: str):
        self.path, self.tmp = path, tmp
        self.existing = open(path, 'rb') if os.path.isfile(path) else None
        self.out = None if self.existing else open(tmp, 'wb')
        self.position = 0

    def writable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.position

    def write(self, data) -> int:
        data = memoryview(data).cast('B')
        if self.out is None and self.existing.read(len(data)) != data:
            self._diverge()
        if self.out is not None:
            self.out.write(data)
        self.position += len(data)
        return len(data)

    def _diverge(self) -> None:
        self.out = open(self.tmp, 'wb')
        self.existing.seek(0)
        shutil.copyfileobj(_Prefix(self.existing, self.position), self.out)

    def finish(self, durable: bool) -> bool:
        """Whether the target must be replaced by the temp file (which is then complete)."""
        if self.out is None and self.existing.read(1):
            self._diverge()  # the target is longer: what was written is a prefix of it
        if self.out is None:
            return False
        self.out.flush()
        if durable:
            os.fsync(self.out.fileno())
        self.out.close()  # here, where an error (NFS reports some at close) fails the write
        return True

    def close(self) -> None:
        for f in (self.existing, self.out):
            if f is not None:
                _close_quietly(f)  # closed by ``finish`` already when the write succeeded
        super().close()


class _Prefix:
    """The first ``size`` bytes of a file, for ``shutil.copyfileobj``."""

    def __init__(self, f, size: int):
        self.f, self.left = f, size

    def read(self, n: int = -1) -> bytes:
        n = self.left if n < 0 else min(n, self.left)
        data = self.f.read(n)
        self.left -= len(data)
        return data


@contextmanager
def atomic_write(path: str | os.PathLike, mode: str = 'w', *, only_if_changed: bool = False,
                 durable: bool = True, outcome: WriteOutcome | None = None) -> Iterator[IO]:
    """Yield a file whose content replaces ``path`` only when the block finishes without error.

    With ``only_if_changed``, a target that already holds the same bytes is left untouched (its
    mtime too, and nothing is written: see ``_SameOrWrite``), so that a re-run that finds nothing
    new does not touch its outputs. ``durable`` also syncs the data to disk (a power cut, not just a
    killed process); skip it for the million small files of a dataset, where one sync each would
    take longer than the rest.
    """
    path = os.fspath(path)
    os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
    tmp = f'{path}{TEMP_MARK}{HOST}-{os.getpid()}'
    try:
        if only_if_changed:
            with _SameOrWrite(path, tmp) as sink:
                f = io.BufferedWriter(sink) if 'b' in mode else io.TextIOWrapper(io.BufferedWriter(sink), encoding='utf-8')
                yield f
                f.flush()
                changed = sink.finish(durable)
                f.detach() if 'b' in mode else f.detach().detach()  # the sink closes its own files
        else:
            f = open(tmp, mode, encoding=None if 'b' in mode else 'utf-8')
            try:
                yield f
                f.flush()
                if durable:
                    os.fsync(f.fileno())
            except BaseException:
                _close_quietly(f)  # a second error (the rest of the buffer refused) must not hide the first
                raise
            f.close()
            changed = True
        if changed:
            os.replace(tmp, path)
        if outcome is not None:
            outcome.changed = changed
    except OSError as exc:
        error = write_error(exc, path)
        if error is exc:
            raise
        raise error from None
    finally:
        with contextlib.suppress(OSError):
            os.remove(tmp)


def _close_quietly(f) -> None:
    """Close ``f`` after a failure: a second error (a full disk refusing the rest of the buffer)
    must not hide the first, nor the clean-up after it."""
    with contextlib.suppress(OSError):
        f.close()


def write_json(path: str | os.PathLike, obj, **kwargs) -> bool:
    """Write ``obj`` as indented JSON atomically, unless the file already holds it; return whether
    the file changed."""
    outcome = WriteOutcome()
    kwargs.setdefault('only_if_changed', True)
    with atomic_write(path, outcome=outcome, **kwargs) as f:
        json.dump(obj, f, indent=1, sort_keys=True)
        f.write('\n')
    return outcome.changed


def write_json_array(path: str | os.PathLike, chunks: Iterable[list], *,
                     only_if_changed: bool = True) -> tuple[int, bool]:
    """Stream a JSON array made of ``chunks`` (lists of JSON-able items) to ``path`` atomically.

    Each chunk is encoded by one ``json.dumps`` call (the C encoder; an indent would switch to the
    pure-Python one). Returns (items written, whether the file changed).
    """
    count = 0

    def encoded():
        nonlocal count
        for chunk in chunks:
            if chunk:
                count += len(chunk)
                yield json.dumps(chunk, ensure_ascii=False, separators=(',', ':'))[1:-1].encode()

    changed = write_encoded_json_array(path, encoded(), only_if_changed=only_if_changed)
    return count, changed


def write_encoded_json_array(path: str | os.PathLike, pieces: Iterable, *,
                             only_if_changed: bool = True) -> bool:
    """Write a JSON array whose items come already encoded: each piece (any bytes-like buffer) is
    one or more JSON values joined by commas, in UTF-8 (non-ASCII text is not escaped), and becomes
    one line. The file is a plain array that ``json.load`` reads. Returns whether it changed."""
    outcome = WriteOutcome()
    with atomic_write(path, 'wb', only_if_changed=only_if_changed, outcome=outcome) as f:
        f.write(b'[')
        separator = b'\n'
        for piece in pieces:
            f.write(separator)
            f.write(piece)
            separator = b',\n'
        f.write(b'\n]\n')
    return outcome.changed
