"""Writes that a killed run never leaves half done: a temporary file beside the target, then os.replace."""
from __future__ import annotations

import filecmp
import json
import os
from contextlib import contextmanager
from typing import IO, Iterable, Iterator


class WriteOutcome:
    """Set when an :func:`atomic_write` block ends: whether the target file was replaced."""

    changed: bool = False


@contextmanager
def atomic_write(path: str | os.PathLike, mode: str = 'w', *, only_if_changed: bool = False,
                 durable: bool = True, outcome: WriteOutcome | None = None) -> Iterator[IO]:
    """Yield a file whose content replaces ``path`` only when the block finishes without error.

    With ``only_if_changed``, a target that already holds the same bytes is left untouched (its
    mtime too), so that a re-run that finds nothing new does not touch its outputs. ``durable``
    also syncs the data to disk (a power cut, not just a killed process); skip it for the
    million small files of a dataset, where one sync each would take longer than the rest.
    """
    path = os.fspath(path)
    os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
    tmp = f'{path}.tmp-{os.getpid()}'
    encoding = None if 'b' in mode else 'utf-8'
    try:
        with open(tmp, mode, encoding=encoding) as f:
            yield f
            if durable:
                f.flush()
                os.fsync(f.fileno())
        same = only_if_changed and os.path.isfile(path) and filecmp.cmp(tmp, path, shallow=False)
        if same:
            os.remove(tmp)
        else:
            os.replace(tmp, path)
        if outcome is not None:
            outcome.changed = not same
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_json(path: str | os.PathLike, obj, **kwargs) -> bool:
    """Write ``obj`` as indented JSON atomically; return whether the file changed."""
    outcome = WriteOutcome()
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
